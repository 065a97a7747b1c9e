"""Training and evaluation of the VQ-VAE.

`train_vqvae` takes the two configs and the data, writes only inside its
checkpoint folder (best.pt, last.pt, history.json, config.json) and returns the
model with its per-epoch history. The whole training split lives on the
training device as one float tensor; a batch is an index tensor into it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import paths
from .checkpoints import checkpoint_precision, load_checkpoint, save_checkpoint
from .config import TrainConfig, VQVAEConfig, changed_fields, from_dict, split_fields, with_defaults
from .data import CLASS_NAMES, NUM_CLASSES, FashionMNIST, batch_indices, load_fashion_mnist, subset, to_float
from .device import autocast, resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state
from .errors import CheckpointError, ConfigError, TrainingError
from .files import ensure_dir, utc_timestamp, write_json
from .models import VQVAE
from .models.quantizer import code_histogram, perplexity_and_usage
from .progress import progress_bar

# Fields of TrainConfig that may differ between a run and its resumption: where it
# runs and how fast, not what it computes (the speed switches change results only
# within float tolerance). The precision asked for may differ too ('auto' against
# the 'fp32' it resolved to), but the resolved precision may not: `read_last` checks it.
RESUMABLE_CHANGES = {"epochs", "device", "checkpoint_dir", "results_dir", "precision", "channels_last", "compile"}


@dataclass
class VQVAERun:
    """What `train_vqvae` returns: the best epoch's model (eval mode, = best.pt) and where its files are."""

    model: VQVAE
    history: list[dict]  # one dict per epoch: pandas.DataFrame(history) is the table
    checkpoint_dir: Path
    model_config: VQVAEConfig
    train_config: TrainConfig
    precision: str = "fp32"  # what the run trained in (vqlib.device.resolve_precision), as its checkpoints record

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"


def default_checkpoint_dir(model_config: VQVAEConfig) -> Path:
    return (
        paths.checkpoints_dir()
        / "vqvae"
        / paths.vqvae_run_name(model_config.num_embeddings, model_config.embedding_dim)
    )


def default_results_dir(model_config: VQVAEConfig) -> Path:
    return paths.results_dir() / "vqvae" / paths.vqvae_run_name(model_config.num_embeddings, model_config.embedding_dim)


# ----------------------------------------------------------------------------- speed switches


def apply_speed_switches(model: VQVAE, train_config: TrainConfig) -> VQVAE:
    """Channels-last (the model's own default) or NCHW weights, and `torch.compile`, in place.

    The state_dict keys stay as they are, so checkpoints load either way.

    Channels-last: a conv with channels-last weights gives channels-last outputs
    whatever its input's layout, so the whole network runs NHWC, and the
    quantizer's (B, D, H, W) -> (B*H*W, D) flattening becomes a view, not a copy.
    Only the encoder and decoder are compiled: the quantizer's codebook-health
    bookkeeping changes buffers in place and would break the graph.
    """
    model.to(memory_format=torch.channels_last if train_config.channels_last else torch.contiguous_format)
    if train_config.compile:
        model.encoder.compile()
        model.decoder.compile()
    return model


def make_optimizer(model: VQVAE, train_config: TrainConfig) -> torch.optim.Optimizer:
    # The fused kernel updates every parameter in one pass (CPU and CUDA); the default
    # for-each path launches ~10 ops per parameter tensor, a measurable share of a small model's step.
    return torch.optim.Adam(model.parameters(), lr=train_config.learning_rate, fused=True)


def learning_rate_at(train_config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of global step `step` of `total_steps`: constant, or cosine from
    learning_rate to 0 (Loshchilov and Hutter 2017, without restarts).

    A pure function of the step, so a resumed run sets the same rates without any
    scheduler state in last.pt.
    """
    if train_config.lr_schedule == "constant":
        return train_config.learning_rate
    return train_config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def train_step(
    model: VQVAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    train_config: TrainConfig,
    device: torch.device,
    *,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """One Adam step on the batch `x` (float, on the device), in `precision` ('fp32' or 'bf16';
    None resolves `train_config.precision` for `device`).

    Returns (reconstruction MSE, VQ loss, perplexity, usage) of the batch as one
    detached tensor, without reading it back: the caller decides when to sync.
    The benchmark times this same function. Under bf16 only the forward's
    convolutions run in bf16: the loss is computed from fp32 copies, the
    quantizer's loss and statistics are fp32 already, weights and Adam stay fp32.
    """
    precision = precision or resolve_precision(train_config.precision, device)
    with autocast(precision, device):
        out = model(x)
    recon = F.mse_loss(out.reconstruction.float(), x)
    loss = recon + out.vq.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([recon, out.vq.loss, out.vq.perplexity, out.vq.usage]).detach()


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate_vqvae(
    model: VQVAE,
    images: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    batch_size: int = 1000,
    precision: str = "fp32",
) -> dict:
    """Reconstruction MSE, PSNR (two definitions), perplexity and codebook usage on a split (uint8 images).

    MSE is the mean over pixels and images. Two PSNRs, pixels in [0, 1], because
    they differ by about 0.4 dB on a quick model (22.10 vs 22.48) and papers use
    either: "psnr" is 10 log10(1 / MSE) of that split-wide mean MSE (the PSNR of
    the mean error, what the grid has always recorded as val_psnr / test_psnr);
    "psnr_mean_per_image" is the mean over images of each image's 10 log10(1 / MSE),
    the average many papers report. Perplexity and usage come from the code histogram of the
    whole split, so they do not depend on the batch size. With `labels`, also the
    MSE of each class. `precision` is that of the forward pass ('fp32' or 'bf16'); the
    errors are computed in fp32 from its output either way.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    k = model.config.num_embeddings
    per_image = []
    counts = torch.zeros(k, dtype=torch.long, device=device)
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        with autocast(precision, device):
            out = model(x)
        per_image.append(F.mse_loss(out.reconstruction.float(), x, reduction="none").mean(dim=(1, 2, 3)))
        counts += code_histogram(out.vq.indices, k)
    model.train(was_training)
    per_image = torch.cat(per_image).cpu()
    mse = per_image.mean().item()
    perplexity, usage = perplexity_and_usage(counts)
    result = {
        "mse": mse,
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "psnr_mean_per_image": (10 * torch.log10(1.0 / per_image.double().clamp_min(1e-12))).mean().item(),
        "perplexity": perplexity.item(),
        "codebook_usage": usage.item(),
    }
    if labels is not None:
        labels = labels.cpu()
        result["per_class_mse"] = {
            CLASS_NAMES[c]: per_image[labels == c].mean().item() for c in range(NUM_CLASSES) if (labels == c).any()
        }
    return result


# ----------------------------------------------------------------------------- training


def read_last(path: str | os.PathLike, model_config: VQVAEConfig, train_config: TrainConfig) -> dict:
    """last.pt at `path`, checked to continue a run of these configs; a CheckpointError says why not.

    The precision the run continues in is the checkpoint's ('auto' keeps it, see
    `resume_precision`); an explicit other one is refused here.
    """
    ckpt = load_checkpoint(path, kind="vqvae")
    if "optimizer" not in ckpt or "rng" not in ckpt:
        raise CheckpointError(f"cannot resume from {path}: it is not a last.pt (it has no optimiser or RNG state)")
    problem = _config_problem(ckpt, model_config, train_config)
    if problem:
        raise CheckpointError(f"cannot resume from {path}: {problem}")
    # The device only decides whether a bf16 run would be slow here (resolve_device would refuse a missing GPU).
    device = torch.device("cuda" if train_config.device != "cpu" and torch.cuda.is_available() else "cpu")
    resume_precision(ckpt, path, train_config.precision, device)
    return ckpt


def resume_precision(ckpt: dict, path: str | os.PathLike, requested: str, device: torch.device) -> str:
    """The precision a resumed run continues in: the checkpoint's own (missing: fp32), whatever
    'auto' would choose on this machine; another explicit precision is a CheckpointError."""
    try:
        return resolve_precision(requested, device, recorded=checkpoint_precision(ckpt, path))
    except ConfigError as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from None


def _config_problem(ckpt: dict, model_config: VQVAEConfig, train_config: TrainConfig) -> Optional[str]:
    """Only RESUMABLE_CHANGES may differ (more epochs, another device, other folders, speed
    switches): anything else would make the continued run another run."""
    diff = changed_fields(with_defaults(VQVAEConfig, ckpt["model_config"]), dataclasses.asdict(model_config))
    if diff:
        return f"it was trained with another model configuration ({diff})"
    diff = changed_fields(
        with_defaults(TrainConfig, ckpt["train_config"]), dataclasses.asdict(train_config), RESUMABLE_CHANGES
    )
    if diff:
        return f"it was trained with other settings ({diff})"
    epochs = with_defaults(TrainConfig, ckpt["train_config"])["epochs"]
    if train_config.lr_schedule == "cosine" and train_config.epochs != epochs:
        return f"its cosine schedule decays over its own {epochs} epochs; resume it with epochs={epochs}"
    return None


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB; NaN where the OS does not say.

    Recorded after every epoch: a long run whose resident memory grows from
    epoch to epoch leaks (the full study is the project's soak test).
    """
    try:
        import resource

        # ru_maxrss is in KiB on Linux.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ImportError, OSError, ValueError, IndexError):
        return math.nan, math.nan
    return current, peak


def train_vqvae(
    model_config: VQVAEConfig,
    train_config: TrainConfig,
    data: Optional[FashionMNIST] = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> VQVAERun:
    """Train one VQ-VAE with Adam; keep best.pt (lowest validation MSE) and last.pt; return the best epoch's model.

    With `resume`, continue from last.pt in the checkpoint folder (model,
    optimiser, epoch, RNG states, history); a missing last.pt starts afresh.
    A NaN or infinite loss stops training with `TrainingError`; last.pt then
    still holds the last good epoch.
    """
    device = resolve_device(train_config.device)
    data = data or load_fashion_mnist()
    # The subset is checked before the checkpoint folder exists: a refused run writes nothing.
    images, _ = subset(data.train_images, data.train_labels, train_config.train_subset, train_config.seed)
    ckpt_dir = ensure_dir(train_config.checkpoint_dir or default_checkpoint_dir(model_config))
    train_x = to_float(images, device)
    n = len(train_x)

    # The validation split goes to the device once, not once per epoch.
    val_images = data.val_images.to(device)

    seed_everything(train_config.seed)
    model = apply_speed_switches(VQVAE(model_config).to(device), train_config)
    optimizer = make_optimizer(model, train_config)
    history: list[dict] = []
    start_epoch = 0
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if resume and last_path.is_file():
        ckpt = read_last(last_path, model_config, train_config)
        precision = resume_precision(ckpt, last_path, train_config.precision, device)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        set_rng_state(ckpt["rng"])
    else:
        precision = resolve_precision(train_config.precision, device)
    write_json(
        ckpt_dir / "config.json", {"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config)}
    )
    best_mse = min((row["val_mse"] for row in history), default=math.inf)

    steps_per_epoch = math.ceil(n / train_config.batch_size)
    total_steps = train_config.epochs * steps_per_epoch
    bar = progress_bar(
        total=(train_config.epochs - start_epoch) * steps_per_epoch,
        enabled=progress,
        desc=f"VQ-VAE {paths.vqvae_run_name(model_config.num_embeddings, model_config.embedding_dim)}",
        unit="step",
    )
    for epoch in range(start_epoch, train_config.epochs):
        model.train()
        # Shuffling depends on (seed, epoch) alone, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(train_config.seed * 100_003 + epoch)
        sums = torch.zeros(4, device=device)  # recon MSE, VQ loss, perplexity, usage: summed per step
        restarts_before = int(model.quantizer.restarts)
        started = time.perf_counter()
        for step, idx in enumerate(batch_indices(n, train_config.batch_size, generator=generator, device=device)):
            if train_config.lr_schedule != "constant":
                rate = learning_rate_at(train_config, epoch * steps_per_epoch + step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = rate
            sums += train_step(model, optimizer, train_x[idx], train_config, device, precision=precision)
            if step % 25 == 0 or step == steps_per_epoch - 1:
                # Reading the loss back is a device sync: do it every 25 steps, not every step.
                current = sums / (step + 1)
                if not torch.isfinite(current).all():
                    bar.close()
                    raise TrainingError(
                        f"the training loss became {current[0].item() + current[1].item()} in epoch "
                        f"{epoch + 1}; lower the learning rate (last good checkpoint: {last_path})"
                    )
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{train_config.epochs}",
                    mse=f"{current[0].item():.4f}",
                    ppl=f"{current[2].item():.1f}",
                )
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        means = (sums / steps_per_epoch).tolist()
        if not all(map(math.isfinite, means)):
            raise TrainingError(
                f"the training loss became non-finite in epoch {epoch + 1}; "
                f"lower the learning rate (last good checkpoint: {last_path})"
            )
        # Validation runs in fp32 even in bf16: it picks the best checkpoint, and bf16
        # rounding (~0.4%) would be noise on that choice; it is 5,000 images, cheap.
        val = evaluate_vqvae(model, val_images, batch_size=1000)
        row = {
            "epoch": epoch + 1,
            "train_mse": means[0],
            "train_vq_loss": means[1],
            "train_perplexity": means[2],
            "train_usage": means[3],
            "val_mse": val["mse"],
            "val_psnr": val["psnr"],
            "val_perplexity": val["perplexity"],
            "val_usage": val["codebook_usage"],
            "codes_restarted": int(model.quantizer.restarts) - restarts_before,
            "learning_rate": optimizer.param_groups[0]["lr"],  # of the epoch's last step
            "epoch_seconds": seconds,
            "images_per_s": n / seconds,
            "precision": precision,
        }
        row["rss_mb"], row["peak_rss_mb"] = memory_mb()
        # The machine's 1-minute load: a slow epoch on a busy machine is not a slow program.
        row["load_avg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
        row["threads"] = torch.get_num_threads()
        row["code"] = paths.code_version()
        history.append(row)

        payload = {
            "model_config": dataclasses.asdict(model_config),
            "train_config": dataclasses.asdict(train_config),
            "state_dict": model.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "precision": precision,
        }
        if row["val_mse"] < best_mse:
            best_mse = row["val_mse"]
            save_checkpoint(best_path, "vqvae", payload)
        save_checkpoint(last_path, "vqvae", {**payload, "optimizer": optimizer.state_dict(), "rng": rng_state()})
        write_json(ckpt_dir / "history.json", history)
        if progress:
            bar.write(
                f"epoch {epoch + 1}/{train_config.epochs}: train MSE {row['train_mse']:.4f}, "
                f"val MSE {row['val_mse']:.4f}, val perplexity {row['val_perplexity']:.1f}, "
                f"codes used {row['val_usage']:.0%}, {row['images_per_s']:.0f} images/s"
            )
    bar.close()
    # The run's result is the best epoch (the one best.pt and the metrics describe), not the last.
    if history and history[-1]["val_mse"] > best_mse:
        model.load_state_dict(load_checkpoint(best_path, kind="vqvae")["state_dict"])
    model.eval()
    return VQVAERun(
        model=model,
        history=history,
        checkpoint_dir=ckpt_dir,
        model_config=model_config,
        train_config=train_config,
        precision=precision,
    )


# ----------------------------------------------------------------------------- what notebook 01 records

METRICS_FILE = "metrics.json"  # the run's result; `status: success` marks it complete for the grid


def vqvae_results_dir(model_config: VQVAEConfig, train_config: TrainConfig) -> Path:
    """Where notebook 01 writes its metrics and figures."""
    return Path(train_config.results_dir) if train_config.results_dir else default_results_dir(model_config)


def configs_from_parameters(values: dict[str, Any]) -> tuple[VQVAEConfig, TrainConfig]:
    """The two configs of notebook 01 from its parameters (any extra names are ignored)."""
    return (
        from_dict(VQVAEConfig, split_fields(VQVAEConfig, values)),
        from_dict(TrainConfig, split_fields(TrainConfig, values)),
    )


def record_vqvae_run(run, results_dir: str | os.PathLike) -> dict:
    """Write the metrics JSON of one trained VQ-VAE (`train.VQVAERun`); return it.

    The validation numbers are those of the best epoch, the one best.pt holds.
    ``status: success`` is what makes the grid count the run as complete.
    """
    best = min(run.history, key=lambda row: row["val_mse"])
    metrics = {
        "status": "success",
        "name": paths.vqvae_run_name(
            run.model_config.num_embeddings, run.model_config.embedding_dim, run.train_config.seed
        ),
        "num_embeddings": run.model_config.num_embeddings,
        "embedding_dim": run.model_config.embedding_dim,
        "seed": run.train_config.seed,
        # What the run trained in ('auto' resolved on its machine); older runs were fp32.
        "precision": getattr(run, "precision", "fp32"),
        "best_epoch": best["epoch"],
        "val_mse": best["val_mse"],
        "val_psnr": best["val_psnr"],
        "val_perplexity": best["val_perplexity"],
        "val_usage": best["val_usage"],
        "train_seconds": float(sum(row["epoch_seconds"] for row in run.history)),
        "images_per_s": float(np.mean([row["images_per_s"] for row in run.history])),
        # Soak figures of the whole run, resumed parts included: the largest resident memory
        # of any epoch, and every code version that trained an epoch (older histories lack them).
        "peak_rss_mb": max((row.get("peak_rss_mb", math.nan) for row in run.history), default=math.nan),
        "code": sorted({row["code"] for row in run.history if "code" in row}),
        "checkpoint": str(run.best_checkpoint.resolve()),
        "model_config": dataclasses.asdict(run.model_config),
        "train_config": dataclasses.asdict(run.train_config),
        "history": run.history,
        "finished": utc_timestamp(),
    }
    write_json(Path(results_dir) / METRICS_FILE, metrics)
    return metrics
