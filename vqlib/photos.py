"""Photos and IDX files -> FashionMNIST-like uint8 tensors, and the checks of the photo's own premises.

FashionMNIST was made from product photos on a plain light-grey background
(Xiao et al. 2017, section 2): trimmed to the product, its longer side scaled to
28 pixels, negated, grayscale. `prepare_photo` does the same to a user's photo and
measures the two premises that make the 28 x 28 result a fair stand-in for it:

- a plain background: the four corners have one colour, within the 5% of the
  maximum intensity that Xiao et al.'s trimming treats as the corner's colour;
- the detail survives: the 28 x 28 image, scaled back up, explains at least half
  of the variance of the crop it was made from. Smoothing a landscape, a page of
  text or noise into 28 x 28 pixels leaves a grey blur that may well look like a
  garment; the image the classifier sees then no longer speaks for the photo.

Both thresholds are fixed by those two statements, not measured on any photo.
`photo_problem` turns a failed premise into one sentence; `vqlib.infer` flags
the photo with it beside the out-of-distribution score of the 28 x 28 image.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .data import IMAGE_SIZE, read_idx
from .errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Xiao et al. 2017, section 2: edges "close to the color of the corner pixels", within 5% of the
# maximum possible intensity, are background and trimmed. The same tolerance, between the corners.
CORNER_TOLERANCE = 0.05 * 255
# The 28 x 28 image must explain at least half of the crop's variance: below that, most of what
# the photo shows is invisible to the model, and its score judges a blur.
MIN_DETAIL_KEPT = 0.5


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
# prepare_photo works in float32 on the whole photo; the result has 28 x 28 pixels, so
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
    """An image in mode L, or RGBA where it has transparency: the two prepare_photo needs."""
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


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo made FashionMNIST-like, and how well the photo met the premises of that preparation."""

    image: np.ndarray  # uint8 (28, 28), garment light on black
    corner_spread: float  # largest difference between the four corners' grey levels (0-255)
    detail_kept: float  # share of the crop's variance that the 28 x 28 image explains (1: nothing lost)

    @property
    def plain_background(self) -> bool:
        return self.corner_spread <= CORNER_TOLERANCE

    @property
    def detail_survives(self) -> bool:
        return self.detail_kept >= MIN_DETAIL_KEPT


def _corner_spread(gray: np.ndarray) -> float:
    """Largest difference between the median grey levels of the four corner patches.

    A patch is one output pixel's worth of the photo (1/28 of its shorter side): the corner pixel
    at the scale the model sees, robust to a speck of JPEG noise in the photo's own corner pixel.
    """
    h, w = gray.shape
    side = max(1, round(min(h, w) / IMAGE_SIZE))
    corners = [gray[:side, :side], gray[:side, -side:], gray[-side:, :side], gray[-side:, -side:]]
    medians = [float(np.median(c)) for c in corners]
    return max(medians) - min(medians)


def _detail_kept(square: np.ndarray, small: np.ndarray) -> float:
    """1 - |crop - the 28 x 28 image scaled back|^2 / |crop - its mean|^2, on the crop's own pixel grid."""
    from PIL import Image

    side = square.shape[0]
    variance = float(((square - square.mean()) ** 2).sum())
    if side <= IMAGE_SIZE or variance == 0.0:
        return 1.0  # nothing was scaled down, or there is nothing to lose
    back = np.asarray(
        Image.fromarray(small.astype(np.float32)).resize((side, side), Image.Resampling.LANCZOS),
        dtype=np.float32,
    )
    return float(1.0 - ((square - back) ** 2).sum() / variance)


def prepare_photo(image, *, invert: Optional[bool] = None) -> PreparedPhoto:
    """A Pillow image of any size and mode -> 28x28 uint8 (garment light on a dark background) and its checks.

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
    corner_spread = _corner_spread(gray)
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
    small = np.array(  # a copy: Pillow's buffer is read-only, and callers make tensors of it
        Image.fromarray(square.astype(np.uint8), mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS),
        dtype=np.uint8,
    )
    return PreparedPhoto(image=small, corner_spread=corner_spread, detail_kept=_detail_kept(square, small))


def fashion_mnist_like(image, *, invert: Optional[bool] = None) -> np.ndarray:
    """A Pillow image of any size and mode -> 28x28 uint8, garment light on a dark background (`prepare_photo`)."""
    return prepare_photo(image, invert=invert).image


def photo_problem(photo: PreparedPhoto) -> str:
    """Why the 28 x 28 image does not stand for the photo, in a few words; '' when both premises hold."""
    problems = []
    if not photo.plain_background:
        problems.append(
            f"no plain background (its corners differ by {photo.corner_spread:.0f} grey levels, "
            f"more than {CORNER_TOLERANCE:.0f})"
        )
    if not photo.detail_survives:
        problems.append(f"28 x 28 pixels keep only {max(photo.detail_kept, 0):.0%} of the photo's detail")
    return "; ".join(problems)


def load_inputs(
    inputs: Sequence[str | os.PathLike], *, invert: Optional[bool] = None
) -> tuple[torch.Tensor, list[str], list[Optional[PreparedPhoto]]]:
    """IDX image files and/or image files -> uint8 (N, 28, 28), a name for each image, and for each photo its
    `PreparedPhoto` (None for the images of IDX files, which are taken as they are).

    IDX files are already FashionMNIST's format (`invert=True` still inverts
    them); other images go through `prepare_photo`. Any input that cannot be
    read ends in a `DataError` naming it.
    """
    from PIL import Image

    if not inputs:
        raise ConfigError("no input given; pass an IDX file or image files")
    images, names, photos = [], [], []
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
            photos += [None] * len(array)
            continue
        photo = prepare_photo(_decode_photo(path), invert=invert)
        images.append(photo.image[None])
        names.append(str(path))
        photos.append(photo)
    return torch.from_numpy(np.concatenate(images)), names, photos


def load_images(
    inputs: Sequence[str | os.PathLike], *, invert: Optional[bool] = None
) -> tuple[torch.Tensor, list[str]]:
    """IDX image files and/or image files -> uint8 (N, 28, 28) tensor and a name for each image (`load_inputs`)."""
    images, names, _ = load_inputs(inputs, invert=invert)
    return images, names
