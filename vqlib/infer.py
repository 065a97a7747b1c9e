"""Inference on images from outside the data set: reconstructions, and classes of user photos and IDX files.

`load_images` turns photos of any size and IDX files into FashionMNIST-like
uint8 tensors; `infer_images` is `vqlib infer-cls`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .checkpoints import load_vqvae
from .classify import load_classifier, predict
from .data import CLASS_NAMES, IMAGE_SIZE, FashionMNIST, load_fashion_mnist, read_idx, to_float
from .device import resolve_device
from .errors import ConfigError, DataError
from .files import save_figure, write_csv, write_json
from .plots import reconstruction_figure
from .train import evaluate_vqvae


@torch.inference_mode()
def reconstruct(model, images: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> reconstructions (N, 1, 28, 28) in [0, 1], on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat(
        [
            model(to_float(images[i : i + batch_size], device)).reconstruction.cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def infer_vqvae(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    num_images: int = 20,
    data: Optional[FashionMNIST] = None,
    device: str = "auto",
) -> dict:
    """Reconstruct the first `num_images` test images into a PNG grid; return test metrics.

    Writes `output` (the PNG) and, beside it, the metrics as JSON.
    """
    if num_images < 1:
        raise ConfigError(f"num_images must be at least 1, not {num_images}")
    data = data or load_fashion_mnist()
    model, _ = load_vqvae(checkpoint, device=resolve_device(device))
    images, labels = data.test_images[:num_images], data.test_labels[:num_images]
    fig = reconstruction_figure(
        images,
        reconstruct(model, images),
        labels=[CLASS_NAMES[int(c)] for c in labels],
        title=f"VQ-VAE K={model.config.num_embeddings}, D={model.config.embedding_dim}: test images",
    )
    output = save_figure(fig, output)
    metrics = evaluate_vqvae(model, data.test_images, data.test_labels)
    write_json(Path(output).with_suffix(".json"), {"checkpoint": str(checkpoint), "split": "test", **metrics})
    return metrics


# ----------------------------------------------------------------------------- user images and infer-cls

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _is_idx(path: Path) -> bool:
    if path.suffix == ".gz":
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"\x00\x00\x08\x03", b"\x00\x00\x08\x01")


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
    still inverts them); other images go through `fashion_mnist_like`.
    """
    from PIL import Image, UnidentifiedImageError

    if not inputs:
        raise ConfigError("no input given; pass an IDX file or image files")
    images, names = [], []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise DataError(f"{path} does not exist or is not a file")
        if _is_idx(path):
            array = read_idx(path, expected_magic=0x00000803)
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
        try:
            with Image.open(path) as image:
                image.load()
                images.append(fashion_mnist_like(image, invert=invert)[None])
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path} is neither an IDX file nor an image Pillow can read ({exc})") from None
        names.append(str(path))
    return torch.from_numpy(np.concatenate(images)), names


def infer_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    output: Optional[str | os.PathLike] = None,
    invert: Optional[bool] = None,
    device: str = "auto",
):
    """Predict the class of each input image; returns a DataFrame (input, predicted, probability, one column per class).

    With `output`, also writes it as CSV or JSON (by the suffix).
    """
    import pandas as pd

    if output is not None and Path(output).suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"the output must end in .csv or .json, not {Path(output).name!r}")
    model, _ = load_classifier(checkpoint, device=resolve_device(device))
    images, names = load_images(inputs, invert=invert)
    probabilities = predict(model, images).numpy()
    predicted = probabilities.argmax(1)
    frame = pd.DataFrame(
        {"input": names, "predicted": [CLASS_NAMES[i] for i in predicted], "probability": probabilities.max(1)}
    )
    for c, name in enumerate(CLASS_NAMES):
        frame[name] = probabilities[:, c]
    if output is not None:
        if Path(output).suffix.lower() == ".csv":
            write_csv(output, frame)
        else:
            write_json(output, frame.to_dict(orient="records"))
    return frame
