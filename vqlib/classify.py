"""The classifier stage: a head trained on the frozen VQ-VAE code, evaluated, used, and measured.

The encoder is frozen, so its output for an image never changes: the training
and validation splits are encoded once into code indices (uint8 for K <= 256:
55,000 x 144 bytes is 8 MB) and every epoch trains the head from codebook
look-ups. `train_classifier` writes only inside its checkpoint folder
(best.pt, history.json, config.json); `evaluate_classifier` writes only
inside its results folder. `fit` is the one training loop of every head and
baseline (label_efficiency.py uses it too).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import paths
from .checkpoints import (
    build_checked,
    checkpoint_precision,
    config_from_checkpoint,
    load_checkpoint,
    load_vqvae,
    resolve_vqvae_checkpoint,
    save_checkpoint,
)
from .config import (
    LABELS_PER_CLASS_AVAILABLE,
    ClassifierConfig,
    VQVAEConfig,
    changed_fields,
)
from .data import (
    CLASS_NAMES,
    NUM_CLASSES,
    FashionMNIST,
    batch_indices,
    load_fashion_mnist,
    stratified_subset,
    to_float,
)
from .device import autocast, resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state
from .errors import CheckpointError, ConfigError, TrainingError
from .files import ensure_dir, save_figure, write_csv, write_json
from .models import VQVAE, ClassificationHead, VQVAEClassifier
from .progress import progress_bar

# Published test accuracies on FashionMNIST to read our numbers beside (no target): the benchmark table of
# the dataset's repository (Xiao et al. 2017, github.com/zalandoresearch/fashion-mnist), all 60,000 labels.
PUBLISHED_REFERENCES = {"2 conv + pool + BN on pixels (Fashion-MNIST benchmark)": 0.934}

# What may differ between a last.pt and the run that continues it: where it runs and writes, and the
# precision asked for ('auto' against the 'fp32' it resolved to); the resolved precision may not differ.
CLASSIFIER_RESUMABLE_CHANGES = {"device", "checkpoint_dir", "results_dir", "precision"}

# ----------------------------------------------------------------------------- where things are


def run_name(vqvae_checkpoint: str | os.PathLike, labels_per_class: Optional[int], finetune: bool) -> str:
    """<VQ-VAE run folder>_<labels>_<frozen|finetune>, e.g. K50_D32_all_frozen or K50_D32_100pc_finetune."""
    labels = "all" if labels_per_class is None else f"{labels_per_class}pc"
    return f"{Path(vqvae_checkpoint).resolve().parent.name}_{labels}_{'finetune' if finetune else 'frozen'}"


def default_checkpoint_dir(config: ClassifierConfig, vqvae_checkpoint: str | os.PathLike) -> Path:
    return paths.checkpoints_dir() / "classifier" / run_name(vqvae_checkpoint, config.labels_per_class, config.finetune)


def default_results_dir(config: ClassifierConfig, vqvae_checkpoint: str | os.PathLike) -> Path:
    return paths.results_dir() / "classifier" / run_name(vqvae_checkpoint, config.labels_per_class, config.finetune)


# ----------------------------------------------------------------------------- the code-index cache


def code_dtype(num_embeddings: int) -> torch.dtype:
    """The smallest integer type that holds indices 0..K-1."""
    return torch.uint8 if num_embeddings <= 256 else torch.int16 if num_embeddings <= 32768 else torch.int32


@torch.inference_mode()
def encode_codes(
    model: VQVAE | VQVAEClassifier, images: torch.Tensor, batch_size: int = 1000, *, precision: str = "fp32"
) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> code indices (N, 12, 12) as uint8 (K <= 256) or int16, on the model's device.

    The model is put in eval mode for the pass and returned to its mode after:
    in train mode the quantizer would update its codebook. Under 'bf16' the
    encoder runs in bf16 and the nearest-code search in fp32, so a position
    whose two nearest codes are almost tied may get the other one.
    """
    device = next(model.parameters()).device
    quantizer = model.quantizer
    was_training = model.training
    model.eval()
    encoder = model.encoder
    dtype = code_dtype(quantizer.num_embeddings)
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(precision, device):
            z = encoder(to_float(images[start : start + batch_size], device))
        b, d, h, w = z.shape
        out.append(quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w).to(dtype))
    model.train(was_training)
    return torch.cat(out)


# ----------------------------------------------------------------------------- one training loop for all


@dataclass
class Inputs:
    """A split as stored (code indices or uint8 images) and how a batch of it becomes the model's input."""

    stored: torch.Tensor
    labels: torch.Tensor
    to_input: Callable[[torch.Tensor], torch.Tensor]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.to_input(self.stored[idx])


def code_lookup(quantizer) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stored uint8/int16 code indices -> quantized latents (B, D, 12, 12), by codebook look-up."""
    return lambda codes: quantizer.lookup(codes.long())


def evaluate_logits(model: nn.Module, inputs: Inputs, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        logits = torch.cat(
            [
                model(
                    inputs.batch(torch.arange(s, min(s + batch_size, len(inputs.labels)), device=inputs.stored.device))
                )
                for s in range(0, len(inputs.labels), batch_size)
            ]
        )
    model.train(was_training)
    return logits


def fit(
    model: nn.Module,
    param_groups: list[dict],
    train: Inputs,
    val: Inputs,
    *,
    epochs: int,
    config: ClassifierConfig,
    seed: int,
    desc: str,
    progress: bool,
    resume_from: Optional[dict] = None,
    on_epoch: Optional[Callable[[dict], None]] = None,
    precision: str = "fp32",
) -> tuple[list[dict], dict, int]:
    """AdamW with cosine decay; the state of the best validation accuracy is kept (early stopping).

    Returns (history, best state_dict, best epoch). An epoch is one pass over the
    labelled images or `min_steps_per_epoch` steps, whichever is longer: with 10
    labels per class one pass is a single step, far too few between two
    validation checks. The cosine decay spans `epochs`, the cap: with a
    generous cap, patience on validation ends the run while the learning rate
    is still high, and the kept state is the best epoch's, not the last.
    `stopping` says afterwards which of the two ended it.

    `on_epoch` receives, after every epoch, what training needs to go on
    (optimiser, schedule, history, best so far, RNG states); `resume_from` is
    such a dict, and training continues after its epoch. The caller restores
    the model's weights of that epoch.

    `precision` ('fp32' or 'bf16', resolved) is that of the training forward
    passes; the loss is computed from fp32 logits and validation runs in fp32.
    """
    device = train.stored.device
    n = len(train.labels)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = max(math.ceil(n / batch_size), config.min_steps_per_epoch)
    optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.5 * (1 + math.cos(math.pi * min(step, epochs * steps_per_epoch) / (epochs * steps_per_epoch))),
    )
    history: list[dict] = []
    best_acc, best_loss, best_epoch, best_state = -1.0, math.inf, 0, None
    start_epoch, stopped = 0, False
    if resume_from is not None:
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        history = list(resume_from["history"])
        best_acc, best_loss, best_epoch = resume_from["best_acc"], resume_from["best_loss"], resume_from["best_epoch"]
        best_state, stopped = resume_from["best_state"], resume_from["stopped"]
        start_epoch = len(history)
        set_rng_state(resume_from["rng"])
    if stopped:
        start_epoch = epochs  # early stopping had already ended this run
    bar = progress_bar(
        total=max(epochs - start_epoch, 0) * steps_per_epoch, desc=desc, unit="step", enabled=progress, leave=False
    )
    for epoch in range(start_epoch, epochs):
        model.train()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        started = time.perf_counter()
        sums = torch.zeros(2, device=device)  # summed loss and correct predictions
        seen = 0
        batches = _epoch_batches(n, batch_size, steps_per_epoch, generator, device)
        for idx in batches:
            x, y = train.batch(idx), train.labels[idx]
            with autocast(precision, device):
                logits = model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum()])
            seen += len(y)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        train_loss, train_correct = sums.tolist()
        if not math.isfinite(train_loss):
            bar.close()
            raise TrainingError(
                f"the classifier's training loss became {train_loss} in epoch {epoch + 1}; lower the learning rate"
            )
        val_logits = evaluate_logits(model, val)
        val_loss = F.cross_entropy(val_logits, val.labels).item()
        val_acc = (val_logits.argmax(1) == val.labels).float().mean().item()
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss / seen,
            "train_acc": train_correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epoch_seconds": seconds,
            "images_per_s": seen / seconds,
            "precision": precision,
        }
        history.append(row)
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", val_acc=f"{val_acc:.4f}")
        if val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss):
            best_acc, best_loss, best_epoch = val_acc, val_loss, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stopped = epoch + 1 - best_epoch >= config.patience
        if on_epoch is not None:
            on_epoch(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "best_acc": best_acc,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "stopped": stopped,
                    "rng": rng_state(),
                }
            )
        if stopped:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return history, best_state, best_epoch


def stopping(history: list[dict], best_epoch: int, *, max_epochs: int, patience: int) -> dict:
    """How a run of `fit` ended: its last epoch, the epoch kept, and why it stopped there.

    `fit` stops when `patience` epochs in a row brought no better validation
    accuracy (early stopping: training had converged on what validation
    measures), else at `max_epochs` (the cap: it may still have been
    improving, and a larger cap could change the result). A run whose last
    epoch is both the cap and the end of its patience counts as early stopping.
    """
    epochs = len(history)
    early = epochs - best_epoch >= patience
    return {
        "stopped_epoch": epochs,
        "best_epoch": best_epoch,
        "max_epochs": max_epochs,
        "patience": patience,
        "early_stopping": bool(early),
        "reason": (
            f"early stopping: no validation improvement for {patience} epoch{'s' if patience != 1 else ''}"
            if early
            else f"cap of {max_epochs} epochs reached"
        ),
    }


def _epoch_batches(n: int, batch_size: int, steps: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """`steps` batches from as many shuffled passes over range(n) as needed."""
    out: list[torch.Tensor] = []
    while len(out) < steps:
        for idx in batch_indices(n, batch_size, generator=generator, device=device):
            if len(out) == steps:
                break
            out.append(idx)
    return out


def label_subset(data: FashionMNIST, labels_per_class: Optional[int], seed: int) -> torch.Tensor:
    """Indices into the training split: `labels_per_class` of each class (seeded), or all of them."""
    if labels_per_class is None:
        return torch.arange(len(data.train_labels))
    return torch.from_numpy(stratified_subset(data.train_labels, labels_per_class, seed))


# ----------------------------------------------------------------------------- train


@dataclass
class ClassifierRun:
    """What `train_classifier` returns: the trained classifier (eval mode) and where its files are."""

    model: VQVAEClassifier
    history: list[dict]  # one dict per epoch: pandas.DataFrame(history) is the table
    checkpoint_dir: Path
    results_dir: Path
    config: ClassifierConfig
    vqvae_checkpoint: Path
    best_epoch: int
    best_val_acc: float
    train_seconds: float  # head training alone (epochs and validation), without the one-off encoding
    encode_seconds: float  # the one-off encoding of train and validation splits (0 without the cache)
    train_images: int = 0
    extra: dict = field(default_factory=dict)
    stopping: dict = field(default_factory=dict)  # `stopping`: the last epoch and why training ended there
    precision: str = "fp32"  # what the head (and the code cache) trained in, as its checkpoints record

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"


def build_classifier(config: ClassifierConfig, vqvae: VQVAE) -> VQVAEClassifier:
    head = ClassificationHead.from_config(config, vqvae.config.embedding_dim)
    return VQVAEClassifier(vqvae, head, finetune=config.finetune)


def train_classifier(
    config: ClassifierConfig, data: Optional[FashionMNIST] = None, *, resume: bool = False, progress: bool = True
) -> ClassifierRun:
    """Train the head on the VQ-VAE's code (frozen, or fine-tuned with `config.finetune`).

    Model selection and early stopping use the validation split only. Writes
    best.pt (classifier config, VQ-VAE config and checkpoint path, weights,
    history), last.pt (the same for the latest epoch, with what training needs
    to go on), history.json and config.json into the checkpoint folder.
    With `resume`, training continues from last.pt (a missing one starts afresh);
    on the CPU the result is bitwise that of an uninterrupted run.
    """
    device = resolve_device(config.device)
    data = data or load_fashion_mnist()
    vqvae_path = resolve_vqvae_checkpoint(config.vqvae_checkpoint)
    vqvae, _ = load_vqvae(vqvae_path, device=device)
    ckpt_dir = ensure_dir(config.checkpoint_dir or default_checkpoint_dir(config, vqvae_path))
    results_dir = Path(config.results_dir or default_results_dir(config, vqvae_path))
    last_path = ckpt_dir / "last.pt"
    resumed = _resumable_classifier(last_path, config, vqvae_path, vqvae) if resume and last_path.is_file() else None
    precision = (
        resolve_precision(config.precision, device)
        if resumed is None
        else resolve_precision(config.precision, device, recorded=checkpoint_precision(resumed, last_path))
    )
    write_json(
        ckpt_dir / "config.json",
        {
            "classifier": dataclasses.asdict(config),
            "vqvae": dataclasses.asdict(vqvae.config),
            "vqvae_checkpoint": str(vqvae_path),
        },
    )

    seed_everything(config.seed)
    model = build_classifier(config, vqvae).to(device)
    idx = label_subset(data, config.labels_per_class, config.seed)
    train_images, train_labels = data.train_images[idx], data.train_labels[idx].to(device)
    val_labels = data.val_labels.to(device)

    encode_seconds = 0.0
    if config.cache_codes and not config.finetune:
        started = time.perf_counter()
        train = Inputs(
            encode_codes(model, train_images, precision=precision), train_labels, code_lookup(model.quantizer)
        )
        val = Inputs(
            encode_codes(model, data.val_images, precision=precision), val_labels, code_lookup(model.quantizer)
        )
        encode_seconds = time.perf_counter() - started
        trained, params = model.head, [{"params": model.head.parameters(), "lr": config.learning_rate}]
    else:
        to_input = lambda x: to_float(x, device)  # noqa: E731
        train = Inputs(train_images.to(device), train_labels, to_input)
        val = Inputs(data.val_images.to(device), val_labels, to_input)
        trained, params = model, [{"params": model.head.parameters(), "lr": config.learning_rate}]
        if config.finetune:
            params.append({"params": model.encoder.parameters(), "lr": config.encoder_learning_rate})
    for group in params:
        group["initial_lr"] = group["lr"]
    name = run_name(vqvae_path, config.labels_per_class, config.finetune)
    about = {
        "model_config": dataclasses.asdict(config),
        "vqvae_config": dataclasses.asdict(vqvae.config),
        "vqvae_checkpoint": str(vqvae_path),
        "run_name": name,
        "results_dir": str(results_dir),
        "precision": precision,
    }
    # Training time across interruptions: what last.pt had spent (older ones record only their epochs') plus this call.
    earlier_seconds = 0.0
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        earlier_seconds = resumed.get("train_seconds", sum(row["epoch_seconds"] for row in resumed["history"]))

    def save_last(fit_state: dict) -> None:
        save_checkpoint(
            last_path,
            "classifier",
            {
                **about,
                "state_dict": model.state_dict(),
                "epoch": len(fit_state["history"]),
                "history": fit_state["history"],
                "fit": fit_state,
                "train_seconds": earlier_seconds + time.perf_counter() - started,
            },
        )
        write_json(ckpt_dir / "history.json", fit_state["history"])

    started = time.perf_counter()
    history, _, best_epoch = fit(
        trained,
        params,
        train,
        val,
        epochs=config.epochs,
        config=config,
        seed=config.seed,
        desc=f"classifier {name}",
        progress=progress,
        resume_from=resumed["fit"] if resumed is not None else None,
        on_epoch=save_last,
        precision=precision,
    )
    train_seconds = earlier_seconds + time.perf_counter() - started
    model.eval()
    best = history[best_epoch - 1]
    stop = stopping(history, best_epoch, max_epochs=config.epochs, patience=config.patience)
    save_checkpoint(
        ckpt_dir / "best.pt",
        "classifier",
        {**about, "state_dict": model.state_dict(), "epoch": best_epoch, "history": history, "stopping": stop},
    )
    write_json(ckpt_dir / "stopping.json", stop)
    if progress:
        print(
            f"best validation accuracy {best['val_acc']:.4f} at epoch {best_epoch} of {len(history)} "
            f"({stop['reason']}); {len(idx)} training images, head training {train_seconds:.1f} s"
            + (f" (+ {encode_seconds:.1f} s encoding once)" if encode_seconds else "")
        )
    return ClassifierRun(
        model=model,
        history=history,
        checkpoint_dir=ckpt_dir,
        results_dir=results_dir,
        config=config,
        vqvae_checkpoint=vqvae_path,
        best_epoch=best_epoch,
        best_val_acc=best["val_acc"],
        train_seconds=train_seconds,
        encode_seconds=encode_seconds,
        train_images=len(idx),
        stopping=stop,
        precision=precision,
    )


def resumable(config: ClassifierConfig) -> bool:
    """Whether `config`'s checkpoint folder holds a last.pt that `train_classifier(config, resume=True)` continues:
    trained with these settings on the VQ-VAE as it is now. A finished run is then reused at no cost (its early
    stopping had ended it), an interrupted one goes on from its last epoch; on the CPU either is bitwise the run
    that was never interrupted. Notebook 03 asks this, so that a study stopped during its classifiers does not
    train them again; a last.pt of other settings is not continued (the run starts afresh and replaces it).
    """
    vqvae_path = resolve_vqvae_checkpoint(config.vqvae_checkpoint)
    last_path = Path(config.checkpoint_dir or default_checkpoint_dir(config, vqvae_path)) / "last.pt"
    if not last_path.is_file():
        return False
    vqvae, _ = load_vqvae(vqvae_path, device=resolve_device(config.device))
    try:
        _resumable_classifier(last_path, config, vqvae_path, vqvae)
    except CheckpointError:
        return False
    return True


def _resumable_classifier(path: Path, config: ClassifierConfig, vqvae_path: Path, vqvae: VQVAE) -> dict:
    """last.pt, checked to continue exactly this run: same settings, same VQ-VAE weights."""
    ckpt = load_checkpoint(path, kind="classifier")
    if "fit" not in ckpt:
        raise CheckpointError(f"cannot resume from {path}: it is not a last.pt (it has no optimiser state)")
    diff = changed_fields(ckpt["model_config"], dataclasses.asdict(config), CLASSIFIER_RESUMABLE_CHANGES)
    if diff:
        raise CheckpointError(f"cannot resume from {path}: it was trained with other settings ({diff})")
    try:
        resolve_precision(config.precision, vqvae.quantizer.codebook.device, recorded=checkpoint_precision(ckpt, path))
    except ConfigError as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from None
    # A fine-tuned encoder has moved away from the VQ-VAE's: only a frozen one can be compared.
    if Path(ckpt["vqvae_checkpoint"]) != vqvae_path or (
        not config.finetune and not _same_code(ckpt["state_dict"], vqvae.state_dict())
    ):
        raise CheckpointError(
            f"cannot resume from {path}: it was trained on the VQ-VAE {ckpt['vqvae_checkpoint']} "
            f"as it was then, not on {vqvae_path} as it is now"
        )
    return ckpt


# ----------------------------------------------------------------------------- load


def load_classifier(
    path: str | os.PathLike, *, vqvae_checkpoint: Optional[str | os.PathLike] = None, device: torch.device | str = "cpu"
) -> tuple[VQVAEClassifier, dict]:
    """A classifier in eval mode, rebuilt from its checkpoint alone; returns (model, checkpoint).

    The checkpoint holds the encoder and codebook it was trained on, so it needs
    no other file. With `vqvae_checkpoint`, it is also checked against that
    VQ-VAE: one of another configuration, or another run of the same
    configuration (another code), is refused.
    """
    ckpt = load_checkpoint(path, kind="classifier")
    if "vqvae_config" not in ckpt:
        raise CheckpointError(
            f"{path} is a classifier checkpoint without the VQ-VAE configuration it was trained on; retrain it"
        )
    config = config_from_checkpoint(ClassifierConfig, ckpt["model_config"], path, "classifier")
    vqvae_config = config_from_checkpoint(VQVAEConfig, ckpt["vqvae_config"], path, "VQ-VAE")
    if vqvae_checkpoint is not None:
        paired = load_checkpoint(vqvae_checkpoint, kind="vqvae")
        if paired["model_config"] != ckpt["vqvae_config"]:
            diff = ", ".join(
                f"{k}={v} (not {paired['model_config'].get(k)})"
                for k, v in ckpt["vqvae_config"].items()
                if paired["model_config"].get(k) != v
            )
            raise CheckpointError(
                f"the classifier {path} was trained on a VQ-VAE with {diff}, so it cannot be paired "
                f"with {vqvae_checkpoint}; pass the VQ-VAE it was trained on ({ckpt.get('vqvae_checkpoint')})"
            )
        if not config.finetune and not _same_code(ckpt["state_dict"], paired["state_dict"]):
            raise CheckpointError(
                f"the classifier {path} was trained on the code of another VQ-VAE run than {vqvae_checkpoint} "
                f"(same configuration, other weights); pass {ckpt.get('vqvae_checkpoint')}"
            )
    model = build_checked(lambda: build_classifier(config, VQVAE(vqvae_config)), ckpt, path, "classifier")
    return model.to(device).eval(), ckpt


def _same_code(classifier_state: dict, vqvae_state: dict) -> bool:
    """Whether the frozen encoder and codebook in a classifier are those of a VQ-VAE state."""
    for key, value in vqvae_state.items():
        if key.startswith(("encoder.", "quantizer.codebook")):
            other = classifier_state.get(key)
            if other is None or other.shape != value.shape or not torch.equal(other, value):
                return False
    return True


def _as_model(checkpoint_or_model, device) -> tuple[VQVAEClassifier, dict]:
    if isinstance(checkpoint_or_model, ClassifierRun):
        return checkpoint_or_model.model, {
            "results_dir": str(checkpoint_or_model.results_dir),
            "run_name": checkpoint_or_model.checkpoint_dir.name,
        }
    if isinstance(checkpoint_or_model, nn.Module):
        return checkpoint_or_model, {}
    return load_classifier(checkpoint_or_model, device=device)


# ----------------------------------------------------------------------------- evaluate and predict


@torch.inference_mode()
def predict(
    model: VQVAEClassifier, images: torch.Tensor, *, batch_size: int = 1000, precision: str = "fp32"
) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> class probabilities (N, 10), on the CPU; the forward pass in `precision`."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        with autocast(precision, device):
            logits = model(to_float(images[s : s + batch_size], device))
        out.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out)


def classification_report_frame(labels: np.ndarray, predicted: np.ndarray):
    """Per-class precision, recall, F1 and support (scikit-learn), one row per class."""
    import pandas as pd
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(NUM_CLASSES)), zero_division=0
    )
    return pd.DataFrame(
        {"class": list(CLASS_NAMES), "precision": precision, "recall": recall, "f1": f1, "support": support}
    )


def classification_metrics(labels, predicted) -> dict:
    """Accuracy, macro F1, the per-class report (DataFrame) and the confusion matrix (rows: true class)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(
            f1_score(labels, predicted, labels=list(range(NUM_CLASSES)), average="macro", zero_division=0)
        ),
        "report": classification_report_frame(labels, predicted),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=list(range(NUM_CLASSES))),
    }


def evaluate_classifier(
    checkpoint_or_model,
    data: Optional[FashionMNIST] = None,
    *,
    split: str = "test",
    results_dir: Optional[str | os.PathLike] = None,
    device: str = "auto",
    write: bool = True,
) -> dict:
    """Accuracy, per-class precision/recall/F1 and confusion matrix of one split.

    `checkpoint_or_model` is a classifier checkpoint path, a `ClassifierRun` or
    a model. Writes metrics_<split>.json, per_class_<split>.csv,
    confusion_matrix_<split>.csv and confusion_matrix_<split>.png into
    `results_dir` (default: the folder named in the checkpoint, or
    results/classifier/<run>). Returns the metrics with the report DataFrame,
    the confusion matrix (ndarray) and the paths written under "files".
    """
    import pandas as pd

    from .plots import confusion_matrix_figure

    data = data or load_fashion_mnist()
    model, info = _as_model(checkpoint_or_model, resolve_device(device))
    images, labels = data.split(split)
    probabilities = predict(model, images)
    metrics = classification_metrics(labels.numpy(), probabilities.argmax(1).numpy())
    metrics["split"] = split
    metrics["images"] = len(labels)
    if not write:
        return metrics
    if results_dir is None:
        # A published checkpoint records no folder of the machine that trained it: its run name decides.
        if info.get("results_dir"):
            results_dir = info["results_dir"]
        elif isinstance(info.get("run_name"), str) and info["run_name"]:
            results_dir = paths.classifier_dir() / Path(info["run_name"]).name
        else:
            raise ConfigError("results_dir is needed to evaluate a model that is not a checkpoint or a ClassifierRun")
    out = ensure_dir(results_dir)
    files = {
        "metrics": write_json(
            out / f"metrics_{split}.json",
            {
                "checkpoint": None
                if isinstance(checkpoint_or_model, nn.Module)
                else str(getattr(checkpoint_or_model, "best_checkpoint", checkpoint_or_model)),
                "split": split,
                "images": len(labels),
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "per_class": metrics["report"].set_index("class").to_dict(orient="index"),
            },
        ),
        "per_class": write_csv(out / f"per_class_{split}.csv", metrics["report"]),
        "confusion_matrix_csv": write_csv(
            out / f"confusion_matrix_{split}.csv",
            pd.DataFrame(metrics["confusion_matrix"], columns=list(CLASS_NAMES)).assign(
                **{"true class": list(CLASS_NAMES)}
            )[["true class", *CLASS_NAMES]],
        ),
    }
    fig = confusion_matrix_figure(
        metrics["confusion_matrix"],
        title=f"{info.get('run_name', 'classifier')}: {split} accuracy {metrics['accuracy']:.2%}",
    )
    files["confusion_matrix_png"] = save_figure(fig, out / f"confusion_matrix_{split}.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    metrics["files"] = files
    return metrics


# ----------------------------------------------------------------------------- frozen against fine-tuned


def compare_classifiers(
    run: ClassifierRun,
    evaluation: dict,
    data: Optional[FashionMNIST] = None,
    *,
    with_finetune: bool = False,
    references: Optional[dict] = None,
    resume: bool = False,
    progress: bool = True,
):
    """The trained classifier, optionally its other variant, and the published references, in one table.

    With `with_finetune`, the classifier of `run`'s settings is trained again
    with the other `finetune` value (the fine-tuned encoder beside the frozen
    one, or the reverse) into sibling folders (`<folder>_finetune` or
    `<folder>_frozen` when the folders were given) and evaluated on the test
    split. Returns rows: classifier, labels_per_class, val_accuracy,
    test_accuracy, test_macro_f1, source, stopped_epoch, stop_reason; the
    references carry only a test accuracy. With `resume`, the other variant continues (or reuses) its
    last.pt when it is `resumable`, and trains afresh otherwise.
    """
    import pandas as pd

    def name(config: ClassifierConfig) -> str:
        return "fine-tuned encoder + head" if config.finetune else "head on the frozen code"

    def row(r: ClassifierRun, ev: dict) -> dict:
        return {
            "classifier": name(r.config),
            "labels_per_class": r.config.labels_per_class or LABELS_PER_CLASS_AVAILABLE,
            "val_accuracy": r.best_val_acc,
            "test_accuracy": ev["accuracy"],
            "test_macro_f1": ev["macro_f1"],
            "source": f"this run ({r.checkpoint_dir.name})",
            "stopped_epoch": r.stopping.get("stopped_epoch"),
            "stop_reason": r.stopping.get("reason"),
        }

    rows = [row(run, evaluation)]
    if with_finetune:
        other = not run.config.finetune
        suffix = "_finetune" if other else "_frozen"
        config = dataclasses.replace(
            run.config,
            finetune=other,
            checkpoint_dir=run.config.checkpoint_dir and run.config.checkpoint_dir.rstrip("/") + suffix,
            results_dir=run.config.results_dir and run.config.results_dir.rstrip("/") + suffix,
        )
        other_run = train_classifier(config, data, resume=resume and resumable(config), progress=progress)
        rows.append(row(other_run, evaluate_classifier(other_run, data, split="test")))
    for ref, accuracy in (PUBLISHED_REFERENCES if references is None else references).items():
        rows.append(
            {
                "classifier": ref,
                "labels_per_class": 6000,  # the benchmark trains on all 60,000 training images
                "val_accuracy": math.nan,
                "test_accuracy": accuracy,
                "test_macro_f1": math.nan,
                "source": "published",
                "stopped_epoch": None,
                "stop_reason": None,
            }
        )
    columns = ["classifier", "labels_per_class", "val_accuracy", "test_accuracy", "test_macro_f1", "source"]
    # Where training stopped and why: the cap, or patience on validation.
    return pd.DataFrame(rows, columns=[*columns, "stopped_epoch", "stop_reason"])


# ----------------------------------------------------------------------------- record


def record_classifier_results(results_dir: str | os.PathLike, run: ClassifierRun, evaluation: dict, **extra) -> Path:
    """Write metrics.json: the run's budget and validation score, the test metrics, and `extra` entries
    (notebook 03 adds the label-efficiency means)."""
    record = {
        "vqvae_checkpoint": str(run.vqvae_checkpoint),
        "classifier_checkpoint": str(run.best_checkpoint),
        "config": dataclasses.asdict(run.config),
        "train_images": run.train_images,
        "epochs_run": len(run.history),
        "best_epoch": run.best_epoch,
        "stopped_epoch": run.stopping.get("stopped_epoch"),
        "stop_reason": run.stopping.get("reason"),
        "val_accuracy": run.best_val_acc,
        "train_seconds": run.train_seconds,
        "encode_seconds": run.encode_seconds,
        "precision": run.precision,
        "test_accuracy": evaluation["accuracy"],
        "test_macro_f1": evaluation["macro_f1"],
        "test_per_class_f1": dict(zip(evaluation["report"]["class"], evaluation["report"]["f1"], strict=True)),
    }
    record.update(extra)
    return write_json(Path(results_dir) / "metrics.json", record)
