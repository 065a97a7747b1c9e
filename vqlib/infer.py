"""Inference on images from outside the data set: reconstructions, and classes of user photos and IDX files.

`load_images` turns photos of any size and IDX files into FashionMNIST-like
uint8 tensors; `infer_images` is `vqlib infer-cls`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .checkpoints import load_vqvae
from .classify import load_classifier, predict
from .data import CLASS_NAMES, IMAGE_SIZE, FashionMNIST, load_fashion_mnist, read_idx, to_float
from .device import autocast, resolve_device, resolve_precision
from .errors import CheckpointError, ConfigError, DataError
from .files import save_figure, write_csv, write_json
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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _is_idx(path: Path) -> bool:
    if path.suffix == ".gz":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    return head in (b"\x00\x00\x08\x03", b"\x00\x00\x08\x01")


# The largest photo decoded: Pillow's own bomb threshold (89.5 megapixels, about 270 MB as
# RGB), where Pillow only warns and decodes anyway; here it is a refusal. A 30 kB PNG can
# declare 16,000 x 16,000 pixels: the size in the header is checked before
# anything is decoded. Kept as vqlib's own number in case another library changes Pillow's.
MAX_PHOTO_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# fashion_mnist_like works in float32 on the whole photo; the result has 28 x 28 pixels, so
# a longer side of 1,024 keeps the crop exact to a thirty-sixth of an output pixel.
WORKING_SIDE = 1024
# What Pillow's decoders raise on bytes they cannot decode: each format plugin has its own
# (SyntaxError for a broken PNG chunk, struct.error for a short TIFF tag, ValueError for bad
# EXIF, ...). They are caught around Pillow's calls only, never around vqlib's own code.
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)


def _decode_photo(path: Path):
    """Open, size-check, decode and orient one photo with Pillow; every failure is a DataError naming it."""
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # Pillow warns (and decodes anyway) between 89 and 179 megapixels: here that is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PHOTO_PIXELS:
                    raise DataError(
                        f"{path} is {width} x {height} pixels, more than the {MAX_PHOTO_PIXELS // 1_000_000} "
                        "megapixels vqlib decodes (a decompression bomb, or a photo to scale down first)"
                    )
                image.draft("RGB", (WORKING_SIDE, WORKING_SIDE))  # JPEG decodes at 1/2 to 1/8 scale when large
                image.load()
                image = ImageOps.exif_transpose(image)
                if max(image.size) > WORKING_SIDE:
                    image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
                image = _normalise_mode(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path} is refused as a decompression bomb ({str(exc).split('.')[0]})") from None
    except _DECODER_ERRORS as exc:
        raise DataError(
            f"{path} is neither an IDX file nor an image Pillow can read ({str(exc).splitlines()[0][:160] or type(exc).__name__})"
        ) from None
    if min(image.size) < 1:
        raise DataError(f"{path} has no pixels ({image.size[0]} x {image.size[1]})")
    return image


def _normalise_mode(image):
    """An image in mode L, or RGBA where it has transparency: the two fashion_mnist_like needs."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit and float grayscale: Pillow's convert("L") clips at 255; scale to the image's range instead.
        array = np.asarray(image, dtype=np.float64)
        low, high = np.nanmin(array), np.nanmax(array)
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        from PIL import Image

        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8))
    return image.convert("L")


def fashion_mnist_like(image, *, invert: Optional[bool] = None) -> np.ndarray:
    """A Pillow image of any size and mode -> 28x28 uint8, garment light on a dark background.

    FashionMNIST images are grayscale, the garment light on black, cropped to
    the object and scaled so that its longer side fills the 28 pixels
    (Xiao et al. 2017, section 2). `invert=None` decides from the border: a
    light border means a dark-on-light photo, which is inverted.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Transparent areas become the background of a photo (white); the inversion turns them dark.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
        if invert is None:
            invert = True
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    if invert is None:
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = bool(border.mean() > 127)
    if invert:
        gray = 255.0 - gray
    # Crop to the object: pixels clearly above the background level.
    background = np.percentile(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]), 50)
    gray = np.clip(gray - background, 0, None)
    mask = gray > 0.1 * max(gray.max(), 1e-6)
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = gray.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = gray
    if square.max() > 0:
        square *= 255.0 / square.max()
    small = Image.fromarray(square.astype(np.uint8), mode="L").resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS
    )
    return np.asarray(small, dtype=np.uint8)


def load_images(
    inputs: Sequence[str | os.PathLike], *, invert: Optional[bool] = None
) -> tuple[torch.Tensor, list[str]]:
    """IDX image files and/or image files -> uint8 (N, 28, 28) tensor and a name for each image.

    IDX files are taken as they are (already FashionMNIST's format; `invert=True`
    still inverts them); other images go through `fashion_mnist_like`. Any
    input that cannot be read ends in a `DataError` naming it.
    """
    from PIL import Image

    if not inputs:
        raise ConfigError("no input given; pass an IDX file or image files")
    images, names = [], []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise DataError(f"{path} does not exist or is not a file")
        if _is_idx(path):
            array = read_idx(path, expected_magic=0x00000803)
            if len(array) == 0:
                raise DataError(f"{path} is an IDX file of images that holds no image")
            if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
                array = np.stack(
                    [
                        np.asarray(Image.fromarray(a).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
                        for a in array
                    ]
                )
            if invert:
                array = 255 - array
            images.append(array)
            names += [f"{path}[{i}]" for i in range(len(array))]
            continue
        images.append(fashion_mnist_like(_decode_photo(path), invert=invert)[None])
        names.append(str(path))
    return torch.from_numpy(np.concatenate(images)), names


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


def ood_scores(
    ckpt: dict,
    images: torch.Tensor,
    *,
    vqvae_checkpoint: Optional[str | os.PathLike] = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, str]:
    """(OOD score, flag, note) per image for a classifier's checkpoint dict (see vqlib.ood).

    The score needs the classifier's VQ-VAE (its decoder) and, the first time,
    the FashionMNIST training and validation splits to fit the detector. Where
    either is missing the predictions still stand: the scores are NaN and the
    note says why, in one sentence.
    """
    from .classify import _same_code
    from .ood import detector_for, score_images

    missing = np.full(len(images), np.nan), np.zeros(len(images), dtype=bool)
    try:
        path = classifier_vqvae(ckpt, vqvae_checkpoint)
        vqvae, detector = detector_for(path, device=device)
    except (CheckpointError, DataError) as exc:
        return (*missing, f"no out-of-distribution score: {exc}")
    finetuned = bool(ckpt.get("model_config", {}).get("finetune"))
    if not finetuned and not _same_code(ckpt["state_dict"], vqvae.state_dict()):
        return (
            *missing,
            f"no out-of-distribution score: {path} is not the VQ-VAE this classifier was trained on; "
            "pass that one with --vqvae-checkpoint",
        )
    score, flag = score_images(detector, vqvae, images)
    return score, flag, ""


def infer_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    output: Optional[str | os.PathLike] = None,
    invert: Optional[bool] = None,
    device: str = "auto",
    vqvae_checkpoint: Optional[str | os.PathLike] = None,
    precision: str = "auto",
):
    """Predict the class of each input image; returns a DataFrame (input, predicted, probability, ood_score,
    ood_flag, one column per class).

    `ood_score` is the percentile, among FashionMNIST validation images, of how
    unlike FashionMNIST the image looks to the classifier's VQ-VAE (vqlib.ood);
    `ood_flag` marks the images beyond the detector's threshold (the validation
    99th percentile), whose predictions are unreliable. ``frame.attrs`` holds
    the threshold and, when no score could be computed, the reason.

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
    images, names = load_images(inputs, invert=invert)
    probabilities = predict(model, images, precision=precision).numpy()
    predicted = probabilities.argmax(1)
    score, flag, note = ood_scores(ckpt, images, vqvae_checkpoint=vqvae_checkpoint, device=resolved)
    frame = pd.DataFrame(
        {
            "input": names,
            "predicted": [CLASS_NAMES[i] for i in predicted],
            "probability": probabilities.max(1),
            "ood_score": score,
            "ood_flag": flag,
        }
    )
    for c, name in enumerate(CLASS_NAMES):
        frame[name] = probabilities[:, c]
    frame.attrs.update(ood_threshold_percentile=THRESHOLD_PERCENTILE, ood_note=note, precision=precision)
    if output is not None:
        if Path(output).suffix.lower() == ".csv":
            write_csv(output, frame)
        else:
            write_json(output, frame.to_dict(orient="records"))
    return frame


def unreliable_sentence(frame, *, listed: int = 10) -> str:
    """One plain sentence on which predictions of `infer_images` are unreliable (or why none could be judged)."""
    if frame.attrs.get("ood_note"):
        return frame.attrs["ood_note"]
    flagged = frame.loc[frame["ood_flag"], "input"].tolist()
    total, limit = len(frame), frame.attrs.get("ood_threshold_percentile", 99.0)
    if not flagged:
        return f"all {total} images look like FashionMNIST (out-of-distribution score at most the validation {limit:g}th percentile)"
    names = ", ".join(flagged[:listed]) + (f" and {len(flagged) - listed} more" if len(flagged) > listed else "")
    return (
        f"{len(flagged)} of {total} images do not look like FashionMNIST (score above the validation {limit:g}th "
        f"percentile): their predictions are unreliable: {names}"
    )
