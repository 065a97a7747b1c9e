"""Inference on images from outside the data set: reconstructions, and classes of user photos and IDX files.

`vqlib.photos.load_inputs` turns photos of any size and IDX files into
FashionMNIST-like uint8 tensors; `infer_images` is `vqlib infer-cls`: classes,
probabilities, and whether each image looks like FashionMNIST (`vqlib.ood`, and
for a photo the premises of its preparation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .checkpoints import load_vqvae
from .classify import load_classifier, predict
from .data import CLASS_NAMES, FashionMNIST, load_fashion_mnist, to_float
from .device import autocast, resolve_device, resolve_precision
from .errors import CheckpointError, ConfigError, DataError
from .files import save_figure, write_csv, write_json
from .photos import PreparedPhoto, load_inputs, photo_problem
from .photos import load_images as load_images  # where callers have always found it
from .plots import reconstruction_figure
from .train import evaluate_vqvae


@torch.inference_mode()
def reconstruct(model, images: torch.Tensor, *, batch_size: int = 1000, precision: str = "fp32") -> torch.Tensor:
    """uint8 images (N, 28, 28) -> reconstructions (N, 1, 28, 28) in [0, 1], fp32 on the CPU; the forward in `precision`."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        with autocast(precision, device):
            out.append(model(to_float(images[i : i + batch_size], device)).reconstruction.float().cpu())
    return torch.cat(out)


def infer_vqvae(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    num_images: int = 20,
    data: Optional[FashionMNIST] = None,
    device: str = "auto",
    precision: str = "auto",
) -> dict:
    """Reconstruct the first `num_images` test images into a PNG grid; return test metrics.

    Writes `output` (the PNG) and, beside it, the metrics as JSON. `precision`
    ('auto', 'fp32', 'bf16') is resolved by `vqlib.device.resolve_precision` and
    recorded in the metrics.
    """
    if num_images < 1:
        raise ConfigError(f"num_images must be at least 1, not {num_images}")
    data = data or load_fashion_mnist()
    resolved = resolve_device(device)
    precision = resolve_precision(precision, resolved)
    model, _ = load_vqvae(checkpoint, device=resolved)
    images, labels = data.test_images[:num_images], data.test_labels[:num_images]
    fig = reconstruction_figure(
        images,
        reconstruct(model, images, precision=precision),
        labels=[CLASS_NAMES[int(c)] for c in labels],
        title=f"VQ-VAE K={model.config.num_embeddings}, D={model.config.embedding_dim}: test images",
    )
    output = save_figure(fig, output)
    metrics = evaluate_vqvae(model, data.test_images, data.test_labels, precision=precision)
    metrics["precision"] = precision
    write_json(Path(output).with_suffix(".json"), {"checkpoint": str(checkpoint), "split": "test", **metrics})
    return metrics


# ----------------------------------------------------------------------------- user images and infer-cls


def classifier_vqvae(ckpt: dict, vqvae_checkpoint: Optional[str | os.PathLike] = None) -> Path:
    """The VQ-VAE checkpoint a classifier was trained on: `vqvae_checkpoint`, else the path it recorded
    (as given at training, or relative to the project root)."""
    from . import paths
    from .checkpoints import resolve_checkpoint

    if vqvae_checkpoint:
        return resolve_checkpoint(vqvae_checkpoint, kind="vqvae")
    recorded = ckpt.get("vqvae_checkpoint")
    if not isinstance(recorded, str) or not recorded:
        raise CheckpointError("the classifier does not record the VQ-VAE it was trained on; pass --vqvae-checkpoint")
    found = resolve_checkpoint(recorded, kind="vqvae")
    if not found.is_file() and not found.is_absolute() and (paths.project_root() / found).is_file():
        found = paths.project_root() / found
    return found


# More images than this and `vqlib infer-cls` prints a summary instead of the table (which goes to a file).
TABLE_ROWS = 20


def ood_scores(
    ckpt: dict,
    images: torch.Tensor,
    photos: Optional[Sequence[Optional[PreparedPhoto]]] = None,
    *,
    vqvae_checkpoint: Optional[str | os.PathLike] = None,
    prior: Optional[str | os.PathLike] = None,
    background_prior: Optional[str | os.PathLike] = None,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(OOD score, flag, reason, note) per image for a classifier's checkpoint dict (see vqlib.ood).

    The score is the detector's validation percentile of the image's likelihood
    ratio; an image is flagged above the threshold percentile, and a photo also
    when it fails a premise of its preparation (`vqlib.photos.photo_problem`);
    `reason` says why, per image. The detector needs the classifier's VQ-VAE, a
    prior over its code and the prior's background model (by default the published
    ones), and the first time the FashionMNIST validation split. Where one is
    missing and was not asked for by name, the predictions still stand: the scores
    are NaN and the note says why, in one sentence; a prior passed by name that
    cannot be used is an error.
    """
    from .classify import _same_code
    from .ood import detector_for

    photos = list(photos) if photos is not None else [None] * len(images)
    reasons = [photo_problem(p) if p is not None else "" for p in photos]
    flag = np.array([bool(r) for r in reasons], dtype=bool)
    score = np.full(len(images), np.nan)
    try:
        path = classifier_vqvae(ckpt, vqvae_checkpoint)
        detector = detector_for(path, prior, background_prior, device=device, progress=progress)
    except (CheckpointError, DataError) as exc:
        if prior is not None or background_prior is not None:
            raise
        return score, flag, reasons, f"no out-of-distribution score: {exc}"
    finetuned = bool(ckpt.get("model_config", {}).get("finetune"))
    if not finetuned and not _same_code(ckpt["state_dict"], detector.models.vqvae.state_dict()):
        return (
            score,
            flag,
            reasons,
            f"no out-of-distribution score: {path} is not the VQ-VAE this classifier was trained on; "
            "pass that one with --vqvae-checkpoint",
        )
    score, above = detector.score(images, progress=progress and len(images) > 1000)
    limit = detector.threshold_percentile
    reasons = [
        "; ".join(filter(None, (f"score above the validation {limit:g}th percentile" if a else "", r)))
        for a, r in zip(above, reasons, strict=True)
    ]
    return score, above | flag, reasons, ""


def infer_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    output: Optional[str | os.PathLike] = None,
    invert: Optional[bool] = None,
    device: str = "auto",
    vqvae_checkpoint: Optional[str | os.PathLike] = None,
    prior: Optional[str | os.PathLike] = None,
    background_prior: Optional[str | os.PathLike] = None,
    precision: str = "auto",
    progress: bool = False,
):
    """Predict the class of each input image; returns a DataFrame (input, predicted, probability, ood_score,
    ood_flag, ood_reason, one column per class).

    `ood_score` is the percentile, among FashionMNIST validation images, of how
    unlike FashionMNIST the image looks to the prior over the classifier's code
    (vqlib.ood); `ood_flag` marks the images beyond the detector's threshold (the
    validation 99th percentile) and the photos that fail a premise of their
    preparation (vqlib.photos); `ood_reason` says which. ``frame.attrs`` holds the
    threshold and, when no score could be computed, the reason.

    With `output`, also writes it as CSV or JSON (by the suffix). `precision`
    ('auto', 'fp32', 'bf16') is that of the classifier's forward pass (resolved by
    `vqlib.device.resolve_precision`, kept in ``frame.attrs``); the OOD score stays fp32.
    """
    import pandas as pd

    from .ood import THRESHOLD_PERCENTILE

    if output is not None and Path(output).suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"the output must end in .csv or .json, not {Path(output).name!r}")
    resolved = resolve_device(device)
    precision = resolve_precision(precision, resolved)
    model, ckpt = load_classifier(checkpoint, device=resolved)
    images, names, photos = load_inputs(inputs, invert=invert)
    probabilities = predict(model, images, precision=precision).numpy()
    predicted = probabilities.argmax(1)
    score, flag, reason, note = ood_scores(
        ckpt,
        images,
        photos,
        vqvae_checkpoint=vqvae_checkpoint,
        prior=prior,
        background_prior=background_prior,
        device=resolved,
        progress=progress,
    )
    frame = pd.DataFrame(
        {
            "input": names,
            "predicted": [CLASS_NAMES[i] for i in predicted],
            "probability": probabilities.max(1),
            "ood_score": score,
            "ood_flag": flag,
            "ood_reason": reason,
        }
    )
    for c, name in enumerate(CLASS_NAMES):
        frame[name] = probabilities[:, c]
    frame.attrs.update(ood_threshold_percentile=THRESHOLD_PERCENTILE, ood_note=note, precision=precision)
    if output is not None:
        write_predictions(output, frame)
    return frame


def write_predictions(path: str | os.PathLike, frame) -> Path:
    """The predictions as CSV or JSON (records), by the suffix; atomic."""
    if Path(path).suffix.lower() == ".csv":
        return write_csv(path, frame)
    return write_json(path, frame.to_dict(orient="records"))


def default_predictions_path(inputs: Sequence[str | os.PathLike]) -> Path:
    """Where `vqlib infer-cls` writes a table too long to print: results/infer-cls/<first input>_predictions.csv."""
    from . import paths

    stem = Path(inputs[0]).name.split(".")[0] or "input"
    return paths.results_dir() / "infer-cls" / f"{stem}_predictions.csv"


def class_counts(frame) -> str:
    """'Trouser 1000, T-shirt/top 998, ...': how many images each class was predicted for, most first."""
    counts = frame["predicted"].value_counts()
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def expected_flagged(n: int, threshold_percentile: float) -> tuple[float, int]:
    """(expected share, the count FashionMNIST itself could give): the share above the threshold percentile, and
    the largest count of n FashionMNIST images flagged that is not unusual (the binomial 99.9% quantile)."""
    from scipy.stats import binom

    rate = (100.0 - threshold_percentile) / 100.0
    return rate, int(binom.ppf(0.999, n, rate))


def ood_summary(frame, *, listed: int = 10, table: Optional[str | os.PathLike] = None) -> str:
    """Plain sentences on which predictions of `infer_images` are unreliable, beside the rate FashionMNIST itself
    gives at the threshold (or why none could be judged). `table`: where the flagged rows can be read."""
    total, limit = len(frame), frame.attrs.get("ood_threshold_percentile", 99.0)
    rate, plausible = expected_flagged(total, limit)
    flagged = frame.loc[frame["ood_flag"], "input"].tolist()
    by_photo = int((frame["ood_flag"] & ~frame["ood_reason"].str.startswith("score above")).sum())
    note = frame.attrs.get("ood_note", "")
    threshold = f"the validation {limit:g}th percentile"
    # The expected count, where it is at least about one image.
    expected = f"about {rate:.0%} of FashionMNIST images" + (
        f" ({rate * total:.0f} of {total})" if rate * total >= 1 else ""
    )
    if len(flagged) <= listed:
        which = ": " + ", ".join(flagged)
    else:
        which = f" (column ood_flag{f' of {table}' if table else ''})"
    if not flagged:
        text = f"none of the {total} images is flagged as unlike FashionMNIST ({expected} are, at {threshold})"
    elif len(flagged) <= plausible and not by_photo:
        text = (
            f"{len(flagged)} of {total} images ({len(flagged) / total:.1%}) score above {threshold}, as {expected} "
            f"do: a rate FashionMNIST itself gives, no sign of images from elsewhere; these predictions are the "
            f"least reliable{which}"
        )
    else:
        photos = f", {by_photo} of them photos that fail a premise of their preparation" if by_photo else ""
        text = (
            f"{len(flagged)} of {total} images ({len(flagged) / total:.1%}{photos}) do not look like FashionMNIST, "
            f"where {expected} score above {threshold}: their predictions are unreliable{which}"
        )
    if note:  # no score: only the photos' own checks could flag anything
        if not by_photo:
            return note
        return (
            f"{note}; {by_photo} of {total} images are photos that fail a premise of their preparation (column "
            f"ood_reason): their predictions are unreliable{which}"
        )
    return text
