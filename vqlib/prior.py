"""The prior stage: an autoregressive model of a frozen VQ-VAE's code, trained on cached codes.

The VQ-VAE paper fits a prior over the discrete code after the VQ-VAE (van den
Oord et al. 2017, section 3.2): the code's likelihood in bits, new codes
sampled and decoded into images, the rest of a partly known code completed,
and any cells of a code redrawn given all the others (`resample`). The
encoder is frozen, so each split is encoded once (`classify.encode_codes`)
and the full splits' codes are cached on disk, keyed by a SHA-256 of the
VQ-VAE's weights (checkpoints/code-cache/).

`train_prior` writes only inside its checkpoint folder (best.pt, last.pt,
history.json, config.json). A prior checkpoint (kind ``prior``) holds its
config, the VQ-VAE's weight digest and the network's shape, loads with
``torch.load(weights_only=True)``, and is refused beside a VQ-VAE whose
weights differ from the ones it was trained on: its code would mean other
things.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import paths
from .checkpoints import (
    PRETRAINED_PREFIX,
    build_checked,
    checkpoint_label,
    checkpoint_precision,
    config_from_checkpoint,
    load_checkpoint,
    load_vqvae,
    pretrained_names,
    resolve_vqvae_checkpoint,
    save_checkpoint,
)
from .classify import encode_codes
from .config import PriorConfig, changed_fields, is_guidance, with_defaults
from .data import CLASS_NAMES, NUM_CLASSES, FashionMNIST, batch_indices, load_fashion_mnist, subset
from .device import autocast, resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state
from .errors import CheckpointError, ConfigError, OutputError, TrainingError
from .files import atomic_path, ensure_dir, save_figure, utc_timestamp, write_json
from .models.prior import GatedPixelCNN, PositionPrior, PriorTransformer
from .progress import progress_bar

KIND = "prior"
LN2 = math.log(2.0)
# What may differ between a last.pt and the run that continues it: how long and where, not what it computes.
# The precision asked for may differ ('auto' against the 'fp32' it resolved to); the resolved one may not.
PRIOR_RESUMABLE_CHANGES = {"epochs", "patience", "device", "checkpoint_dir", "precision"}


# ----------------------------------------------------------------------------- the VQ-VAE's code


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights and buffers (names and bytes): a prior belongs to exactly one VQ-VAE.

    The same digest as the OOD detector's cache key, so both name a VQ-VAE alike.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def split_codes(vqvae, data: FashionMNIST, split: str, size: Optional[int] = None, seed: int = 0):
    """(codes (N, 12, 12) uint8/int16, labels (N,)) of a split, or of a stratified subset of `size` of it.

    A whole split's codes are cached on disk under checkpoints/code-cache/, named by
    the VQ-VAE's digest and the split: encoding the 55,000 training images takes
    about a minute on 2 cores, and every prior trained on that VQ-VAE reuses it. A
    cache that cannot be written or read only means encoding again.
    """
    images, labels = data.split(split)
    if size is not None:
        images, labels = subset(images, labels, min(size, len(labels)), seed)
        return encode_codes(vqvae, images).cpu().clone(), labels  # clone: an inference tensor cannot train
    path = paths.checkpoints_dir() / "code-cache" / f"{weights_digest(vqvae)[:16]}_{split}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if (
                isinstance(cached, dict)
                and isinstance(cached.get("codes"), torch.Tensor)
                and cached["codes"].shape == (len(labels), *cached["codes"].shape[1:])
                and torch.equal(cached.get("labels"), labels)
            ):
                return cached["codes"], labels
        except Exception:  # noqa: BLE001 - a damaged cache file is encoded again and replaced
            pass
    codes = encode_codes(vqvae, images).cpu().clone()
    try:
        with atomic_path(path) as tmp:
            torch.save({"codes": codes, "labels": labels}, tmp)
    except (OutputError, OSError):
        pass
    return codes, labels


# ----------------------------------------------------------------------------- the network


def build_prior(config: PriorConfig, num_codes: int, grid_size: tuple[int, int] = (12, 12)):
    """The network a config describes, for a code of `num_codes` indices on a `grid_size` grid.

    Its `class_conditional` attribute (not a weight) says whether it is trained
    with classes: the class embeddings of a prior trained without them are never
    trained, and sampling refuses to use them.
    """
    if config.architecture == "pixelcnn":
        model = GatedPixelCNN(
            num_codes,
            grid_size=grid_size,
            num_classes=NUM_CLASSES,
            layers=config.layers,
            width=config.width,
            kernel=config.kernel,
        )
    else:
        model = PriorTransformer(
            num_codes,
            grid_size=grid_size,
            num_classes=NUM_CLASSES,
            layers=config.layers,
            heads=config.heads,
            width=config.width,
            dropout=config.dropout,
        )
    model.class_conditional = bool(config.class_conditional)
    return model


def class_index(name: str | int) -> int:
    """A class given by name (case and spaces ignored, 'T-shirt' for 'T-shirt/top') or by its index 0-9."""
    text = str(name).strip().lower()
    if text.isdigit() and int(text) < NUM_CLASSES:
        return int(text)
    for i, known in enumerate(CLASS_NAMES):
        if text in (known.lower(), known.lower().split("/")[0], known.lower().replace(" ", "-")):
            return i
    raise ConfigError(f"there is no FashionMNIST class {name!r}; use one of {', '.join(CLASS_NAMES)} (or 0-9)")


# ----------------------------------------------------------------------------- training


@dataclass
class PriorRun:
    """What `train_prior` returns: the best epoch's network (eval mode, = best.pt) and where its files are."""

    model: torch.nn.Module
    history: list[dict]
    checkpoint_dir: Path
    config: PriorConfig
    vqvae_checkpoint: Path
    best_epoch: int
    best_val_bits_per_image: float
    precision: str = "fp32"  # what the training steps ran in, as the checkpoints record

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"


def run_name(config: PriorConfig, vqvae_checkpoint: str | os.PathLike) -> str:
    """<VQ-VAE run folder>_<architecture>_<cond|uncond>[_background], e.g. K100_D64_transformer_uncond.

    A prior trained on perturbed codes (`perturbation` > 0) is the out-of-distribution
    detector's background model: its name ends in _background, so that it sits beside
    the prior it belongs to.
    """
    cond = "cond" if config.class_conditional else "uncond"
    background = "_background" if config.perturbation > 0 else ""
    return f"{Path(vqvae_checkpoint).resolve().parent.name}_{config.architecture}_{cond}{background}"


def perturb_codes(
    codes: torch.Tensor, rate: float, num_codes: int, *, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """A copy of `codes` with each position replaced, with probability `rate`, by a code drawn uniformly from [0, K).

    Ren et al. 2019's background model is trained on inputs perturbed this way: the
    perturbation is meant to destroy the semantic structure and keep the population-level
    statistics (which codes are common, and where), which the likelihood ratio then
    cancels (how far 10% does so for a transformer over codes: docs/robustness.md).
    The draw may return the code already there, as in their mutation.
    """
    if rate <= 0:
        return codes
    device = codes.device
    replace = torch.rand(codes.shape, generator=generator, device=device) < rate
    drawn = torch.randint(0, num_codes, codes.shape, generator=generator, device=device)
    return torch.where(replace, drawn.to(codes.dtype), codes)


def default_checkpoint_dir(config: PriorConfig, vqvae_checkpoint: str | os.PathLike) -> Path:
    return paths.checkpoints_dir() / "prior" / run_name(config, vqvae_checkpoint)


@torch.inference_mode()
def mean_nll(model, codes: torch.Tensor, classes: Optional[torch.Tensor], *, batch_size: int = 500) -> float:
    """Mean negative log-likelihood per code position in nats over a set of codes (eval mode)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(codes), batch_size):
        part = None if classes is None else classes[start : start + batch_size]
        total += -model.log_prob(codes[start : start + batch_size], part).double().sum().item()
    model.train(was_training)
    return total / (len(codes) * model.length)


def train_prior(
    config: PriorConfig,
    data: Optional[FashionMNIST] = None,
    *,
    resume: bool = False,
    progress: bool = True,
    vqvae_file: Optional[str | os.PathLike] = None,
) -> PriorRun:
    """Train the prior with Adam on the VQ-VAE's cached training codes; keep best.pt (lowest validation NLL).

    Each epoch ends with the validation split's NLL (class-conditional when the
    prior is), which chooses best.pt and stops training after `patience` epochs
    without improvement. With `resume`, training continues from last.pt (model,
    optimiser, RNG states, history; a missing one starts afresh); on the CPU the
    result is bitwise that of an uninterrupted run.

    `vqvae_file` is where this machine holds a copy of the VQ-VAE that
    `config.vqvae_checkpoint` names on another machine (a Ray worker's copy of
    the driver's file): the weights are read from the copy, and the prior
    records the name as given.
    """
    device = resolve_device(config.device)
    data = data or load_fashion_mnist()
    given = str(config.vqvae_checkpoint or "")
    if vqvae_file is None:
        vqvae_path = named = resolve_vqvae_checkpoint(config.vqvae_checkpoint)
        # pretrained:NAME as given (it resolves in any clone); a path made absolute, so the prior finds it from anywhere.
        recorded = given if given.startswith("pretrained:") else str(vqvae_path.resolve())
    else:
        vqvae_path, recorded = Path(vqvae_file), given
        named = Path(given.removeprefix("pretrained:")) / "best.pt" if given.startswith("pretrained:") else Path(given)
    vqvae, _ = load_vqvae(vqvae_path, device=device)
    digest = weights_digest(vqvae)
    k = vqvae.config.num_embeddings
    ckpt_dir = ensure_dir(config.checkpoint_dir or default_checkpoint_dir(config, named))
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    resumed = read_last(last_path, config, digest) if resume and last_path.is_file() else None
    # A run keeps one precision for life: a resumed run continues in the one its last.pt records.
    try:
        precision = resolve_precision(
            config.precision, device, recorded=None if resumed is None else checkpoint_precision(resumed, last_path)
        )
    except ConfigError as exc:
        raise CheckpointError(f"cannot resume from {last_path}: {exc}") from None

    started = time.perf_counter()
    train_codes, train_labels = split_codes(vqvae, data, "train", config.train_subset, config.seed)
    val_codes, val_labels = split_codes(vqvae, data, "val", config.val_subset, config.seed)
    encode_seconds = time.perf_counter() - started
    grid = tuple(train_codes.shape[1:])
    train_codes, train_labels = train_codes.to(device), train_labels.to(device)
    val_codes, val_labels = val_codes.to(device), val_labels.to(device)
    if config.perturbation > 0:
        # A background model is validated on its own objective: validation codes perturbed alike, once, by the seed.
        generator = torch.Generator(device=device).manual_seed(config.seed)
        val_codes = perturb_codes(val_codes.long(), config.perturbation, k, generator=generator)
    write_json(
        ckpt_dir / "config.json",
        {"prior": dataclasses.asdict(config), "vqvae_checkpoint": recorded, "vqvae_digest": digest},
    )

    seed_everything(config.seed)
    model = build_prior(config, k, grid).to(device)
    # Adam as the VQ-VAE paper's prior; the fused kernel updates every tensor in one pass (as train.py).
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, fused=True)
    history: list[dict] = []
    stopped = False
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        optimizer.load_state_dict(resumed["optimizer"])
        history, stopped = list(resumed["history"]), bool(resumed["stopped"])
        set_rng_state(resumed["rng"])
    about = {
        "model_config": dataclasses.asdict(config),
        "network": {"num_codes": k, "grid_size": list(grid), "num_classes": NUM_CLASSES},
        "vqvae_checkpoint": recorded,
        "vqvae_config": dataclasses.asdict(vqvae.config),
        "vqvae_digest": digest,
        "run_name": run_name(config, named),
        "precision": precision,
    }
    best_nll = min((row["val_nll"] for row in history), default=math.inf)
    n = len(train_codes)
    steps_per_epoch = math.ceil(n / config.batch_size)
    start_epoch = config.epochs if stopped else len(history)
    val_classes = val_labels if config.class_conditional else None
    bar = progress_bar(
        total=max(config.epochs - start_epoch, 0) * steps_per_epoch,
        enabled=progress,
        desc=f"prior {about['run_name']}",
        unit="step",
    )
    if history:
        bar.set_postfix(val_bits_per_code=f"{history[-1]['val_bits_per_code']:.3f}")
    training_started = None
    for epoch in range(start_epoch, config.epochs):
        model.train()
        # Shuffling depends on (seed, epoch) alone, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loss_sum = torch.zeros((), device=device)
        epoch_started, cpu_started = time.perf_counter(), time.process_time()
        steps = cut = 0
        for step, idx in enumerate(batch_indices(n, config.batch_size, generator=generator, device=device)):
            # Linear warm-up from the global step: a function of (epoch, step), nothing to save.
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * min(1.0, (global_step + 1) / max(config.warmup_steps, 1))
            classes = None
            if config.class_conditional:
                classes = train_labels[idx].clone()
                # Class dropout: these sequences learn the unconditional distribution, so one
                # model answers classes=None too (the classifier-free guidance recipe's trick).
                classes[torch.rand(len(idx), device=device) < config.class_dropout] = NUM_CLASSES
            # The background model sees each batch freshly perturbed (the global RNG, saved in last.pt: resumable).
            batch = perturb_codes(train_codes[idx].long(), config.perturbation, k)
            # bf16 autocast covers the network's matmuls; the loss is computed from fp32 logits (model.loss).
            with autocast(precision, device):
                loss = model.loss(batch, classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
            if step % 25 == 0 or step == steps_per_epoch - 1:
                current = (loss_sum / steps).item()  # a sync: every 25 steps, not every step
                if not math.isfinite(current):
                    bar.close()
                    raise TrainingError(
                        f"the prior's training loss became {current} in epoch {epoch + 1}; "
                        f"lower the learning rate (last good checkpoint: {last_path})"
                    )
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{config.epochs}",
                    train_bits_per_code=f"{current / LN2:.3f}",
                    val_bits_per_code=f"{history[-1]['val_bits_per_code']:.3f}" if history else "-",
                )
            bar.update(1)
            if training_started is None:
                # The clock of max_seconds starts after the first step: its one-off costs (lazy
                # imports of the optimiser, allocator warm-up) took 15 s on a busy machine.
                training_started = time.perf_counter()
            elif config.max_seconds is not None and time.perf_counter() - training_started >= config.max_seconds:
                cut = 1
                break
        seconds = time.perf_counter() - epoch_started
        # CPU seconds beside wall seconds: on a shared machine they say how much of the wall time was this run's.
        cpu_seconds = time.process_time() - cpu_started
        val_started = time.perf_counter()
        val_nll = mean_nll(model, val_codes, val_classes)
        row = {
            "epoch": epoch + 1,
            "steps": steps,
            "train_nll": (loss_sum / max(steps, 1)).item(),
            "val_nll": val_nll,
            "val_bits_per_code": val_nll / LN2,
            "val_bits_per_image": val_nll / LN2 * model.length,
            "epoch_seconds": seconds,
            "sequences_per_s": min(steps * config.batch_size, n) / seconds,
            "cpu_seconds": cpu_seconds,
            "val_seconds": time.perf_counter() - val_started,
            "cut_by_max_seconds": bool(cut),
            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
            "threads": torch.get_num_threads(),
            "precision": precision,
            "code": paths.code_version(),
        }
        history.append(row)
        improved = val_nll < best_nll
        if improved:
            best_nll = val_nll
        since_best = len(history) - 1 - min(range(len(history)), key=lambda i: history[i]["val_nll"])
        stopped = bool(cut) or since_best >= config.patience
        payload = {**about, "state_dict": model.state_dict(), "epoch": epoch + 1, "history": history}
        if improved:
            save_checkpoint(best_path, KIND, payload)
        save_checkpoint(
            last_path, KIND, {**payload, "optimizer": optimizer.state_dict(), "rng": rng_state(), "stopped": stopped}
        )
        write_json(ckpt_dir / "history.json", history)
        bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", val_bits_per_code=f"{row['val_bits_per_code']:.3f}")
        if progress:
            bar.write(
                f"epoch {epoch + 1}/{config.epochs}: train {row['train_nll'] / LN2:.3f} bits/code, "
                f"validation {row['val_bits_per_code']:.3f} bits/code ({row['val_bits_per_image']:.1f} bits/image), "
                f"{row['sequences_per_s']:.0f} sequences/s" + (" (cut by max_seconds)" if cut else "")
            )
        if stopped:
            break
    bar.close()
    best_epoch = min(range(len(history)), key=lambda i: history[i]["val_nll"]) + 1
    if history[-1]["val_nll"] > best_nll:
        model.load_state_dict(load_checkpoint(best_path, kind=KIND)["state_dict"])
    model.eval()
    if progress:
        print(
            f"best validation {history[best_epoch - 1]['val_bits_per_image']:.1f} bits per image at epoch "
            f"{best_epoch} of {len(history)} (trained in {precision}; encoding once {encode_seconds:.1f} s)"
        )
    return PriorRun(
        model=model,
        history=history,
        checkpoint_dir=ckpt_dir,
        config=config,
        vqvae_checkpoint=vqvae_path,
        best_epoch=best_epoch,
        best_val_bits_per_image=history[best_epoch - 1]["val_bits_per_image"],
        precision=precision,
    )


def read_last(path: Path, config: PriorConfig, digest: str) -> dict:
    """last.pt, checked to continue exactly this run (same settings, same VQ-VAE weights); else a CheckpointError."""
    ckpt = load_checkpoint(path, kind=KIND)
    if not {"optimizer", "rng", "history", "stopped"} <= set(ckpt):
        raise CheckpointError(f"cannot resume from {path}: it is not a last.pt (it has no optimiser or RNG state)")
    diff = changed_fields(with_defaults(PriorConfig, ckpt["model_config"]), dataclasses.asdict(config))
    diff = {key: value for key, value in diff.items() if key not in PRIOR_RESUMABLE_CHANGES}
    if diff:
        raise CheckpointError(f"cannot resume from {path}: it was trained with other settings ({diff})")
    if ckpt.get("vqvae_digest") != digest:
        raise CheckpointError(f"cannot resume from {path}: it was trained on the code of another VQ-VAE")
    return ckpt


def prior_for(config: PriorConfig, data: Optional[FashionMNIST] = None, *, progress: bool = True) -> PriorRun:
    """The prior `config` describes: one already trained with these settings on this VQ-VAE is reused (an
    unfinished one is resumed), else it is trained now.

    Where: `config.checkpoint_dir`, else the default folder
    (checkpoints/prior/<VQ-VAE run>_<architecture>_<cond|uncond>). When the default
    folder holds a prior trained with other settings (or on another VQ-VAE), that prior
    is left alone and this one goes to a sibling folder named by its settings' digest, so
    a quick profile's small prior and the protocol's never overwrite each other.
    """
    data = data or load_fashion_mnist()
    if config.checkpoint_dir is None:
        vqvae_path = resolve_vqvae_checkpoint(config.vqvae_checkpoint)
        folder = default_checkpoint_dir(config, vqvae_path)
        same = _same_prior(folder / "last.pt", config, vqvae_path)
        if same is None and ((folder / "last.pt").is_file() or (folder / "best.pt").is_file()):
            folder = folder.with_name(f"{folder.name}_{settings_digest(config)[:8]}")
            same = _same_prior(folder / "last.pt", config, vqvae_path)
        # The same VQ-VAE may have been named otherwise (pretrained:NAME, a path): the run's own name resumes it.
        config = dataclasses.replace(config, checkpoint_dir=str(folder), **(same or {}))
    return train_prior(config, data, resume=True, progress=progress)


# What may differ between a finished prior and one asked for again with the same settings.
_NOT_SETTINGS = ("device", "checkpoint_dir", "vqvae_checkpoint")


def settings_digest(config: PriorConfig | dict) -> str:
    """SHA-256 of the settings that decide what a prior learns (not where it runs or is written)."""
    import json

    values = config if isinstance(config, dict) else dataclasses.asdict(config)
    settings = {k: v for k, v in values.items() if k not in _NOT_SETTINGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def published_prior_for(config: PriorConfig) -> Optional[str]:
    """``pretrained:NAME`` of a published prior trained with `config`'s settings on the code of `config`'s
    VQ-VAE (the same weights, by their digest), so that it need not be trained again; None when there is none."""
    names = pretrained_names(KIND)
    if not names:
        return None
    vqvae, _ = load_vqvae(resolve_vqvae_checkpoint(config.vqvae_checkpoint))
    digest, wanted = weights_digest(vqvae), settings_digest(config)
    for name in names:
        try:
            ckpt = load_checkpoint(PRETRAINED_PREFIX + name, kind=KIND)
        except CheckpointError:
            continue
        saved = ckpt.get("model_config")
        if ckpt.get("vqvae_digest") == digest and isinstance(saved, dict):
            if settings_digest(with_defaults(PriorConfig, saved)) == wanted:
                return PRETRAINED_PREFIX + name
    return None


def _same_prior(path: Path, config: PriorConfig, vqvae_path: Path) -> Optional[dict]:
    """When the last.pt at `path` is a run of these settings on this VQ-VAE (by its weights' digest): the
    VQ-VAE as that run named it, {"vqvae_checkpoint": ...}; else None."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path, kind=KIND)
    except CheckpointError:
        return None
    saved = ckpt.get("model_config")
    if not isinstance(saved, dict):
        return None
    if changed_fields(with_defaults(PriorConfig, saved), dataclasses.asdict(config), ignore=_NOT_SETTINGS):
        return None
    vqvae, _ = load_vqvae(vqvae_path)
    if ckpt.get("vqvae_digest") != weights_digest(vqvae):
        return None
    return {"vqvae_checkpoint": saved.get("vqvae_checkpoint")}


def fit_position_prior(
    codes: torch.Tensor,
    num_codes: int,
    classes: Optional[torch.Tensor] = None,
    *,
    num_classes: int = NUM_CLASSES,
    smoothing: float = 1.0,
) -> PositionPrior:
    """The per-position categorical model of `codes` (N, H, W): counts of each code at each position, per class
    (when `classes` are given) and over all codes (the "no class" row), smoothed by adding `smoothing` to
    every count.

    Add-one (Laplace) smoothing, as the OOD detector's code likelihood: a code never seen
    at a position costs log2(N + K) bits, not infinity. It is the baseline of notebook 06:
    what a prior knows without looking at any other position.
    """
    if codes.ndim != 3 or len(codes) == 0:
        raise ConfigError(f"fit_position_prior needs codes shaped (N, H, W) with N >= 1, not {tuple(codes.shape)}")
    if not smoothing > 0:
        raise ConfigError(f"smoothing must be positive, not {smoothing!r}")
    n, height, width = codes.shape
    flat = codes.reshape(n, -1).long().cpu()
    if int(flat.min()) < 0 or int(flat.max()) >= num_codes:
        raise ConfigError(f"the codes hold indices outside 0-{num_codes - 1}")
    length = height * width
    positions = torch.arange(length).expand(n, length)
    pooled = torch.zeros(length * num_codes, dtype=torch.float64)
    pooled.index_add_(0, (positions * num_codes + flat).reshape(-1), torch.ones(n * length, dtype=torch.float64))
    pooled = pooled.view(1, length, num_codes)
    if classes is None:
        counts = pooled.expand(num_classes, length, num_codes)
    else:
        classes = torch.as_tensor(classes).long().cpu().reshape(-1)
        if len(classes) != n or int(classes.min()) < 0 or int(classes.max()) >= num_classes:
            raise ConfigError(f"give one class in 0-{num_classes - 1} per code ({n})")
        index = (classes[:, None] * length + positions) * num_codes + flat
        counts = torch.zeros(num_classes * length * num_codes, dtype=torch.float64)
        counts.index_add_(0, index.reshape(-1), torch.ones(n * length, dtype=torch.float64))
        counts = counts.view(num_classes, length, num_codes)
    counts = torch.cat([counts, pooled]) + smoothing
    return PositionPrior((counts / counts.sum(-1, keepdim=True)).log(), grid_size=(height, width))


def training_codes(ckpt: dict, vqvae, data: FashionMNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, labels) a prior checkpoint was trained on: its training subset (seed and size from its config)."""
    config = with_defaults(PriorConfig, ckpt["model_config"])
    return split_codes(vqvae, data, "train", config["train_subset"], config["seed"])


# ----------------------------------------------------------------------------- load and use


def load_prior(
    name_or_path: str | os.PathLike, *, vqvae: Optional[torch.nn.Module] = None, device: torch.device | str = "cpu"
):
    """A prior in eval mode, rebuilt from its checkpoint alone (``pretrained:NAME`` works); returns (model, checkpoint).

    With `vqvae`, the prior is checked against it: a VQ-VAE of another K, or
    whose weights differ from those the prior was trained on, is refused.
    """
    ckpt = load_checkpoint(name_or_path, kind=KIND)
    config = config_from_checkpoint(PriorConfig, ckpt["model_config"], name_or_path, "prior")
    network = ckpt.get("network")
    if (
        not isinstance(network, dict)
        or not all(type(network.get(key)) is int and network[key] >= 1 for key in ("num_codes", "num_classes"))
        or not isinstance(network.get("grid_size"), list)
        or len(network["grid_size"]) != 2
        or not all(type(v) is int and 1 <= v <= 64 for v in network["grid_size"])
        or not isinstance(ckpt.get("vqvae_digest"), str)
    ):
        raise CheckpointError(f"{name_or_path} is not a complete prior checkpoint (its network or VQ-VAE digest)")
    if vqvae is not None:
        check_pair(ckpt, vqvae, name_or_path)
    model = build_checked(
        lambda: build_prior(config, network["num_codes"], tuple(network["grid_size"])), ckpt, name_or_path, "prior"
    )
    return model.to(device).eval(), ckpt


def check_pair(ckpt: dict, vqvae, prior_name: str | os.PathLike, vqvae_name: str | os.PathLike = "") -> None:
    """Refuse a VQ-VAE whose code is not the one the prior models: another K, or other weights."""
    k, theirs = ckpt["network"]["num_codes"], vqvae.config.num_embeddings
    trained_on = ckpt.get("vqvae_checkpoint")
    named = f"the VQ-VAE {vqvae_name}" if vqvae_name else "this VQ-VAE"
    if k != theirs:
        raise CheckpointError(
            f"the prior {prior_name} models a code of K={k} indices, but {named} has K={theirs}; "
            f"pass the VQ-VAE it was trained on ({trained_on})"
        )
    if ckpt["vqvae_digest"] != weights_digest(vqvae):
        raise CheckpointError(
            f"the prior {prior_name} was trained on the code of another VQ-VAE than {named} (its weights differ); "
            f"pass the VQ-VAE it was trained on ({trained_on})"
        )


def paired_pretrained_prior(vqvae) -> Optional[str]:
    """``pretrained:NAME`` of a published prior trained on this VQ-VAE's code (the same weights' digest), a
    class-conditional one first; None when none is published."""
    digest, found = weights_digest(vqvae), []
    for name in pretrained_names(KIND):
        try:
            ckpt = load_checkpoint(PRETRAINED_PREFIX + name, kind=KIND)
        except CheckpointError:
            continue
        if ckpt.get("vqvae_digest") == digest:
            found.append((not ckpt["model_config"].get("class_conditional"), name))
    return PRETRAINED_PREFIX + min(found)[1] if found else None


def load_pair(
    prior: str | os.PathLike, vqvae_checkpoint: Optional[str | os.PathLike] = None, *, device="cpu"
) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(prior, VQ-VAE, prior checkpoint): the VQ-VAE is the one the prior names unless `vqvae_checkpoint` is given,
    and it is checked against the prior either way."""
    model, ckpt = load_prior(prior, device=device)
    vqvae_path = vqvae_checkpoint or ckpt.get("vqvae_checkpoint")
    vqvae, _ = load_vqvae(resolve_vqvae_checkpoint(vqvae_path), device=device)
    check_pair(ckpt, vqvae, prior, vqvae_path)
    return model, vqvae, ckpt


def prior_to_measure(
    prior_checkpoint: Optional[str | os.PathLike],
    config: PriorConfig,
    data: Optional[FashionMNIST] = None,
    *,
    progress: bool = True,
) -> tuple[torch.nn.Module, torch.nn.Module, dict, str]:
    """(prior, VQ-VAE, prior checkpoint, how to name it) for notebook 06, on `config.device`.

    `prior_checkpoint` (a path or ``pretrained:NAME``) beside `config.vqvae_checkpoint`
    (None: the VQ-VAE the prior names); without one, the prior `config` describes: a published one trained
    with these settings on this VQ-VAE (`published_prior_for`), else `prior_for` (reused when trained here with
    these settings, else trained now).
    """
    path = prior_checkpoint or published_prior_for(config)
    if path is not None and prior_checkpoint is None and progress:
        print(f"the prior with these settings is published: {path} is measured, not trained again")
    path = path or prior_for(config, data, progress=progress).best_checkpoint
    prior, vqvae, ckpt = load_pair(
        path, config.vqvae_checkpoint if prior_checkpoint else None, device=resolve_device(config.device)
    )
    return prior, vqvae, ckpt, checkpoint_label(path)


def trained_config(ckpt: dict, name: str | os.PathLike = "the prior checkpoint") -> PriorConfig:
    """The PriorConfig a prior checkpoint was trained with."""
    return config_from_checkpoint(PriorConfig, ckpt["model_config"], name, "prior")


@torch.no_grad()  # not inference_mode: the codes it returns may be trained on
def bits_per_image(
    prior, codes: torch.Tensor, classes=None, *, batch_size: int = 500, progress: bool = False, desc: str = "bits"
) -> torch.Tensor:
    """-log2 p(code) of each code (N, 12, 12): (N,) float64 bits. `classes`: None, or (N,) class indices.

    With `progress`, a bar counts the codes (10,000 take minutes on a CPU for the default transformer).
    """
    device = next(prior.parameters()).device
    out = []
    bar = progress_bar(total=len(codes), enabled=progress, desc=desc, unit="image")
    for start in range(0, len(codes), batch_size):
        part = None if classes is None else torch.as_tensor(classes)[start : start + batch_size].to(device)
        out.append(-prior.log_prob(codes[start : start + batch_size].to(device), part).double().cpu() / LN2)
        bar.update(len(out[-1]))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@torch.no_grad()
def position_bits(prior, codes: torch.Tensor, classes=None, *, batch_size: int = 500) -> torch.Tensor:
    """-log2 p(c_i | c_<i, class) of every position of each code (N, 12, 12): (N, 144) float64 bits.

    Their sum over positions is `bits_per_image`; their mean over codes, a map of
    where in the image the code is hard to predict.
    """
    device = next(prior.parameters()).device
    out = []
    for start in range(0, len(codes), batch_size):
        part = None if classes is None else torch.as_tensor(classes)[start : start + batch_size].to(device)
        out.append(-prior.position_log_probs(codes[start : start + batch_size].to(device), part).double().cpu() / LN2)
    return torch.cat(out) if out else torch.zeros(0, getattr(prior, "length", 0), dtype=torch.float64)


def _generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def _class_tensor(classes, num: int, num_classes: int, prior=None) -> Optional[torch.Tensor]:
    if classes is None:
        return None
    if prior is not None and not getattr(prior, "class_conditional", True):
        raise ConfigError(
            "this prior was trained without classes (no --class-conditional), so it cannot draw a given class; "
            "sample without a class, or train a prior with --class-conditional"
        )
    if isinstance(classes, (str, int)):
        classes = [class_index(classes)] * num
    classes = torch.as_tensor([class_index(c) if isinstance(c, str) else int(c) for c in classes])
    if len(classes) != num or bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ConfigError(f"give one class for all samples or one per sample ({num}), each in 0-{num_classes - 1}")
    return classes


@torch.no_grad()  # not inference_mode: the codes it returns may be trained on
def sample_images(
    prior,
    vqvae,
    num: int = 64,
    *,
    classes=None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: Optional[int] = None,
    guidance: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` codes drawn from the prior and decoded: (images (num, 1, 28, 28) float in [0, 1], codes (num, 12, 12)).

    `classes`: None (unconditional), a class name or index for all, or one per sample.
    `guidance` > 0: classifier-free guidance towards the class (`PriorTransformer.sample`); it needs `classes`.
    """
    _check_sampling(num, temperature, top_k, prior.num_codes, guidance)
    if guidance > 0 and classes is None:
        raise ConfigError("guidance pushes samples towards their class: give a class, or set guidance to 0")
    device = next(prior.parameters()).device
    codes = prior.sample(
        num,
        _class_tensor(classes, num, prior.num_classes, prior),
        temperature=temperature,
        top_k=top_k,
        generator=_generator(seed, device),
        guidance=guidance,
    )
    return vqvae.decode_indices(codes.to(next(vqvae.parameters()).device)).clamp(0, 1).cpu(), codes.cpu()


@torch.no_grad()  # not inference_mode: the codes it returns may be trained on
def complete(
    prior,
    vqvae,
    image: torch.Tensor,
    keep_rows: int,
    *,
    num: int = 8,
    classes=None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first `keep_rows` code rows of `image` (uint8 (28, 28)) and sample the rest `num` times.

    Returns (images (num, 1, 28, 28) float in [0, 1], codes (num, 12, 12)); the kept rows are the image's own code.
    """
    height, width = prior.grid_size
    if not isinstance(keep_rows, int) or not 0 <= keep_rows <= height:
        raise ConfigError(f"keep_rows must be an integer from 0 to {height} (the code's rows), not {keep_rows!r}")
    _check_sampling(num, temperature, top_k, prior.num_codes)
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.shape[-2:] != (28, 28):
        raise ConfigError("the image to complete must be one uint8 28x28 FashionMNIST-like image")
    code = encode_codes(vqvae, image.reshape(1, 28, 28)).long()
    device = next(prior.parameters()).device
    codes = prior.sample(
        num,
        _class_tensor(classes, num, prior.num_classes, prior),
        temperature=temperature,
        top_k=top_k,
        generator=_generator(seed, device),
        prefix=code.reshape(1, -1)[:, : keep_rows * width].to(device),
    )
    return vqvae.decode_indices(codes.to(next(vqvae.parameters()).device)).clamp(0, 1).cpu(), codes.cpu()


def _checked_codes(prior, codes) -> torch.Tensor:
    """Codes (H, W) or (N, H, W) of integers in [0, K) on the prior's grid, as given (not copied)."""
    height, width = prior.grid_size
    codes = torch.as_tensor(codes)
    if (
        codes.dim() not in (2, 3)
        or tuple(codes.shape[-2:]) != (height, width)
        or codes.numel() == 0
        or codes.dtype.is_floating_point
        or codes.dtype.is_complex
        or codes.dtype == torch.bool
    ):
        raise ConfigError(
            f"codes must be integer code maps of shape ({height}, {width}) or (N, {height}, {width}), "
            f"not {codes.dtype} of shape {tuple(codes.shape)}"
        )
    if bool(((codes < 0) | (codes >= prior.num_codes)).any()):
        raise ConfigError(f"codes must lie in 0 to {prior.num_codes - 1} (the prior's K={prior.num_codes})")
    return codes


def _checked_mask(prior, mask) -> torch.Tensor:
    """A boolean (H, W) mask of the cells to resample."""
    height, width = prior.grid_size
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or tuple(mask.shape) != (height, width):
        raise ConfigError(
            f"the mask must be a boolean ({height}, {width}) array (True: resample the cell), "
            f"not {mask.dtype} of shape {tuple(mask.shape)}"
        )
    return mask


@torch.no_grad()  # not inference_mode: the codes it returns may be trained on
def full_conditional(
    prior, codes, cell: tuple[int, int], *, classes=None, temperature: float = 1.0, top_k: Optional[int] = None
) -> torch.Tensor:
    """p(code at `cell` = v | every other code) for v in 0..K-1: (K,) for one code map (H, W), (N, K) for (N, H, W).

    Exact: the K codes that differ only at the cell are scored by the prior
    (`full_conditional_logits`) and normalised over v; `temperature` T raises the
    distribution to the power 1/T. `top_k` scores only the k values likeliest given
    the codes before the cell (the rest get 0): k/K of the cost, no longer exact.
    """
    codes = _checked_codes(prior, codes)
    height, width = prior.grid_size
    row, col = cell
    if not (0 <= row < height and 0 <= col < width):
        raise ConfigError(f"cell ({row}, {col}) is not on the {height} x {width} code grid")
    _check_sampling(1, temperature, top_k, prior.num_codes)
    flat = codes.reshape(-1, height * width)
    device = next(prior.parameters()).device
    was_training = prior.training
    prior.eval()
    try:
        logits = prior.full_conditional_logits(
            flat.to(device), row * width + col, _class_tensor(classes, len(flat), prior.num_classes, prior), top_k=top_k
        )
    finally:
        prior.train(was_training)
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    return probs[0] if codes.dim() == 2 else probs


@torch.no_grad()  # not inference_mode: the codes it returns may be trained on
def resample(
    prior,
    codes,
    mask,
    *,
    classes=None,
    sweeps: int = 1,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: Optional[int] = None,
) -> torch.Tensor:
    """Redraw the masked cells of `codes` given all the others: `sweeps` Gibbs sweeps in raster order.

    `codes`: (H, W) or (N, H, W) code maps; `mask`: boolean (H, W), True where a cell is
    redrawn (the same cells in every map). Each masked cell in turn is drawn from its exact
    full conditional given every other cell, the ones before it and the ones after it
    (`full_conditional`), so a drawn cell agrees with its whole surroundings, not only with
    the cells before it as in `complete`. Cells outside the mask never change. `temperature`
    T draws each cell from its conditional raised to 1/T, which makes the sweeps target the
    joint p(code)^(1/T) over the masked cells. `top_k` as in `full_conditional`. A mask
    without a True cell returns the codes unchanged (as `complete` with nothing left to
    sample). Returns long codes of the input's shape, on the input's device.
    """
    codes = _checked_codes(prior, codes)
    mask = _checked_mask(prior, mask)
    if not (isinstance(sweeps, int) and not isinstance(sweeps, bool) and sweeps >= 1):
        raise ConfigError(f"sweeps must be a positive integer, not {sweeps!r}")
    _check_sampling(1, temperature, top_k, prior.num_codes)
    device = next(prior.parameters()).device
    out = codes.reshape(-1, prior.length).long().to(device, copy=True)
    cells = torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()
    classes = _class_tensor(classes, len(out), prior.num_classes, prior)
    generator = _generator(seed, device)
    was_training = prior.training
    prior.eval()
    try:
        for _ in range(sweeps if cells else 0):
            for i in cells:
                logits = prior.full_conditional_logits(out, i, classes, top_k=top_k) / temperature
                out[:, i] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
    finally:
        prior.train(was_training)
    return out.view(codes.shape).to(codes.device)


def _check_sampling(num: int, temperature: float, top_k: Optional[int], k: int, guidance: float = 0.0) -> None:
    if not is_guidance(guidance):
        raise ConfigError(f"guidance must be a number of at least 0 (0: no guidance), not {guidance!r}")
    if not isinstance(num, int) or num < 1:
        raise ConfigError(f"the number of samples must be a positive integer, not {num!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, not {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k):
        raise ConfigError(f"top_k must be a positive integer (at most K={k} matters) or None, not {top_k!r}")


def sampling_record(ckpt: dict, **settings) -> dict:
    """What a sample file records beside the codes: the prior, the VQ-VAE and the settings."""
    return {
        "prior_run": ckpt.get("run_name"),
        "vqvae_checkpoint": ckpt.get("vqvae_checkpoint"),
        "vqvae_digest": ckpt.get("vqvae_digest"),
        "written": utc_timestamp(),
        **settings,
    }


# ----------------------------------------------------------------------------- a run folder (a grid point)

METRICS_FILE = "metrics.json"  # the name notebook 01 gives a VQ-VAE run's record (train.METRICS_FILE)
SAMPLES_FIGURE = "samples.png"
SAMPLES_SHOWN = 16


def train_and_record(
    config: PriorConfig,
    results_dir: str | os.PathLike,
    data: Optional[FashionMNIST] = None,
    *,
    resume: bool = False,
    progress: bool = False,
    vqvae_file: Optional[str | os.PathLike] = None,
) -> dict:
    """Train a prior (`train_prior`) and record its run folder; returns the metrics it wrote.

    The folder gets metrics.json (status, settings, the VQ-VAE's digest, the
    best validation bits per image beside the fixed-length code's 144 log2 K,
    timing, history) and samples.png: unconditional samples decoded by the
    VQ-VAE, so the bits are never read without the images they buy (STYLE.md
    rule 19). metrics.json is written last: it is the mark of a finished run.
    """
    import matplotlib.pyplot as plt

    from .plots import image_grid

    results = ensure_dir(results_dir)
    (results / METRICS_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    run = train_prior(config, data, resume=resume, progress=progress, vqvae_file=vqvae_file)
    train_seconds = time.perf_counter() - started
    vqvae, _ = load_vqvae(vqvae_file or run.vqvae_checkpoint)
    ckpt = load_checkpoint(run.best_checkpoint, kind=KIND)
    sampled = time.perf_counter()
    images, codes = sample_images(run.model.cpu(), vqvae, SAMPLES_SHOWN, seed=config.seed)
    sample_seconds = time.perf_counter() - sampled
    bits = bits_per_image(run.model, codes)
    half = SAMPLES_SHOWN // 2
    figure = image_grid(
        [images[:half], images[half:]],
        title=f"{ckpt['run_name']}: {SAMPLES_SHOWN} unconditional samples, "
        f"{bits.mean().item():.0f} bits each on average (validation {run.best_val_bits_per_image:.0f})",
    )
    save_figure(figure, results / SAMPLES_FIGURE)
    plt.close(figure)
    best = run.history[run.best_epoch - 1]
    k = vqvae.config.num_embeddings
    metrics = {
        "status": "success",
        "stage": "prior",
        "run_name": ckpt["run_name"],
        "prior_config": dataclasses.asdict(config),
        "vqvae_checkpoint": ckpt["vqvae_checkpoint"],
        "vqvae_digest": ckpt["vqvae_digest"],
        "num_embeddings": k,
        "embedding_dim": vqvae.config.embedding_dim,
        "val_bits_per_image": run.best_val_bits_per_image,
        "val_bits_per_code": best["val_bits_per_code"],
        # What the code costs without a prior: every position a uniform choice among K.
        "uniform_bits_per_image": run.model.length * math.log2(k),
        "best_epoch": run.best_epoch,
        "epochs_run": len(run.history),
        "train_seconds": train_seconds,
        "sequences_per_s": best["sequences_per_s"],
        "precision": run.precision,  # what the training steps ran in ('auto' resolves per machine)
        "samples_seconds": sample_seconds,
        "checkpoint": str(run.best_checkpoint.resolve()),
        "history": run.history,
        "code": paths.code_version(),
        "written": utc_timestamp(),
    }
    write_json(results / METRICS_FILE, metrics)
    return metrics
