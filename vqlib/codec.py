"""The code as a lossy codec: bits from the prior, PSNR, JPEG and WebP beside it.

An encoder that sends an image's 12 x 12 code with an arithmetic coder driven
by the prior's conditionals p(c_i | c_<i) spends -log2 p(code) bits plus at
most 2 for the whole message, and a little more for the coder's finite
precision (Witten, Neal and Cleary 1987; MacKay 2003, section 6.2). So the
codec's rate is the prior's negative log-likelihood of the code. The codec does
not know the class: the rate is the unconditional likelihood (``classes=None``;
a class-conditional prior trained with class dropout answers it too). Its
output is the VQ-VAE's reconstruction of the code, rounded to 8-bit pixels as
any image codec's output is. The prior and the decoder are shared by both ends
in advance, as JPEG's standard tables are; they are not counted in the rate.

Beside it, Pillow's JPEG and WebP at a sweep of qualities on the same images,
each image a file of its own. A file's bytes are counted twice: whole, and
without its header (`jpeg_header_bytes`, `webp_header_bytes`: everything but
the entropy-coded data), because on a 28 x 28 image the header is a large
share of the file and a codec built for such images would not send most of it.

Distortion is measured as the project measures the VQ-VAE (`train.evaluate_vqvae`):
PSNR = 10 log10(1 / MSE) of the mean squared error over every pixel of every
image, pixels in [0, 1]; the mean of per-image PSNRs is recorded beside it.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from . import paths
from .checkpoints import PRETRAINED_PREFIX
from .data import FashionMNIST, load_fashion_mnist, subset
from .device import resolve_device
from .errors import ConfigError
from .files import save_figure, write_csv
from .progress import progress_bar

FORMATS = ("JPEG", "WEBP")
# WebP reaches the VQ-VAE's 26-28 dB near quality 5-20, JPEG near 40-60: the sweep covers both.
QUALITIES = (1, 5, 10, 20, 30, 50, 70, 90, 95)
# Each format at its smallest files for a quality: JPEG with Huffman tables fitted to the image
# (not the standard ones), WebP with its slowest, best method (6 of 0-6).
ENCODER_OPTIONS = {"JPEG": {"optimize": True}, "WEBP": {"method": 6}}
PRIOR_CODEC = "VQ-VAE + prior"
FIXED_CODEC = "VQ-VAE, fixed-length code (144 log2 K bits)"
TABLE_FILE = "rate_distortion.csv"
FIGURE_FILE = "rate_distortion.png"


# ----------------------------------------------------------------------------- headers


def jpeg_header_bytes(data: bytes) -> int:
    """Bytes of a baseline JPEG file that are not entropy-coded data: the markers up to the end of the
    start-of-scan segment (SOI, APPn, DQT, SOF, DHT, SOS) and the end-of-image marker."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        raise ConfigError("not a whole JPEG file: it must start with the SOI marker and end with EOI")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ConfigError(f"not a JPEG file: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded data follows its segment
            return pos + 2
    raise ConfigError("not a JPEG file with a scan: no start-of-scan marker")


def webp_header_bytes(data: bytes) -> int:
    """Bytes of a lossy WebP file that are not the VP8 bitstream's coded data: the RIFF header, every
    chunk header and every chunk but 'VP8 ', and the VP8 key frame's 10-byte header (frame tag,
    start code, width and height)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ConfigError("not a WebP file: it must start with a RIFF header of form WEBP")
    pos, payload = 12, None
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"VP8 ":
            payload = size - 10
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if payload is None:
        raise ConfigError("not a lossy WebP file: it holds no 'VP8 ' chunk")
    return len(data) - payload


HEADERS = {"JPEG": jpeg_header_bytes, "WEBP": webp_header_bytes}


# ----------------------------------------------------------------------------- distortion


def distortion(images: torch.Tensor, decoded: torch.Tensor) -> dict:
    """MSE, PSNR of the mean MSE, and mean per-image PSNR of uint8 images (N, 28, 28) against their decoded uint8
    versions; pixels in [0, 1]. An exact copy reports 120 dB, as `train.evaluate_vqvae` does."""
    if images.shape != decoded.shape or images.dtype != torch.uint8 or decoded.dtype != torch.uint8:
        raise ConfigError("images and decoded images must be uint8 tensors of the same shape")
    per_image = (images.double() - decoded.double()).div(255.0).pow(2).flatten(1).mean(1)
    mse = per_image.mean().item()
    return {
        "mse": mse,
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "psnr_mean_per_image": (10 * torch.log10(1.0 / per_image.clamp_min(1e-12))).mean().item(),
    }


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1], (N, 1, 28, 28) or (N, 28, 28) -> uint8 (N, 28, 28), rounded as an 8-bit file is."""
    return images.reshape(len(images), 28, 28).clamp(0, 1).mul(255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- JPEG and WebP


def check_qualities(qualities: Sequence[int]) -> list[int]:
    values = list(dict.fromkeys(qualities))
    if not values or not all(isinstance(q, int) and not isinstance(q, bool) and 0 <= q <= 100 for q in values):
        raise ConfigError(f"qualities must be integers from 0 to 100, such as 5,10,50,95, not {list(qualities)!r}")
    return values


def check_formats(formats: Sequence[str]) -> list[str]:
    values = [str(f).upper() for f in dict.fromkeys(formats)]
    unknown = [f for f in values if f not in FORMATS]
    if not values or unknown:
        raise ConfigError(f"formats must be among {', '.join(FORMATS)}, not {list(formats)!r}")
    return values


def pillow_round_trip(images: torch.Tensor, fmt: str, quality: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Each uint8 image (N, 28, 28) saved as its own `fmt` file at `quality` and decoded again.

    Returns (file bytes (N,), header bytes (N,), decoded uint8 images (N, 28, 28)).
    WebP has no grey-level mode: Pillow codes the grey image as colour with flat
    chroma, and the decoded image is converted back to grey (ITU-R 601 luma).
    """
    from PIL import Image

    fmt = check_formats([fmt])[0]
    (quality,) = check_qualities([quality])
    header = HEADERS[fmt]
    sizes, headers, decoded = [], [], []
    for image in images.numpy():
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, fmt, quality=quality, **ENCODER_OPTIONS[fmt])
        data = buffer.getvalue()
        sizes.append(len(data))
        headers.append(header(data))
        with Image.open(io.BytesIO(data)) as back:
            decoded.append(np.asarray(back.convert("L"), dtype=np.uint8))
    return np.array(sizes), np.array(headers), torch.from_numpy(np.stack(decoded))


def pillow_row(images: torch.Tensor, fmt: str, quality: int) -> dict:
    """One rate-distortion point of a Pillow codec at one quality, on `images`."""
    from PIL import __version__ as pillow_version

    started = time.perf_counter()
    sizes, headers, decoded = pillow_round_trip(images, fmt, quality)
    payload = sizes - headers
    return {
        "codec": fmt,
        "kind": "image codec",
        "setting": f"quality {quality}",
        "quality": quality,
        "images": len(images),
        "bits_per_image": 8 * sizes.mean(),
        "payload_bits_per_image": 8 * payload.mean(),
        "header_bits_per_image": 8 * headers.mean(),
        **distortion(images, decoded),
        "seconds": time.perf_counter() - started,
        "source": f"Pillow {pillow_version}, {ENCODER_OPTIONS[fmt]}",
    }


# ----------------------------------------------------------------------------- the VQ-VAE and its prior


def codec_codes(vqvae, data: FashionMNIST, test_subset: Optional[int], seed: int = 0):
    """(images uint8 (N, 28, 28), codes (N, 12, 12)) of the test split or of its stratified subset of
    `test_subset` (the same images `codec_images` picks); the whole split's codes come from the code cache."""
    from .prior import split_codes

    images, _ = codec_images(data, test_subset, seed)
    codes, _ = split_codes(vqvae, data, "test", test_subset, seed)
    return images, codes


def codec_images(data: FashionMNIST, test_subset: Optional[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images a rate-distortion run compares the codecs on: all 10,000, or a stratified subset."""
    images, labels = data.split("test")
    if test_subset is not None and not (isinstance(test_subset, int) and 10 <= test_subset <= len(labels)):
        raise ConfigError(
            f"test_subset must be an integer from 10 to {len(labels)}, or None for all, not {test_subset!r}"
        )
    return subset(images, labels, test_subset, seed)


@torch.no_grad()
def decode_codes(vqvae, codes: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Codes (N, 12, 12) -> the VQ-VAE's reconstructions as uint8 images (N, 28, 28)."""
    device = next(vqvae.parameters()).device
    out = [
        to_uint8(vqvae.decode_indices(codes[start : start + batch_size].long().to(device)).float().cpu())
        for start in range(0, len(codes), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, 28, 28, dtype=torch.uint8)


def prior_rows(
    prior_name: str | os.PathLike,
    data: FashionMNIST,
    *,
    test_subset: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """The rate-distortion points of one prior's VQ-VAE: its code sent with the prior (the NLL), and sent at a
    fixed length (144 log2 K bits, what the code costs without a prior). Both decode to the same images."""
    from .prior import bits_per_image, load_pair, weights_digest

    started = time.perf_counter()
    prior, vqvae, ckpt = load_pair(prior_name, device=resolve_device(device))
    images, codes = codec_codes(vqvae, data, test_subset, seed)
    bits = bits_per_image(prior, codes, classes=None)
    measured = distortion(images, decode_codes(vqvae, codes))
    k = vqvae.config.num_embeddings
    about = {
        "num_embeddings": k,
        "embedding_dim": vqvae.config.embedding_dim,
        "images": len(images),
        **measured,
        "class_conditional_prior": bool(ckpt["model_config"].get("class_conditional")),
        # A published prior by its name, a file by its absolute path (`vqlib publish` makes it relative to the project).
        "source": str(prior_name) if str(prior_name).startswith(PRETRAINED_PREFIX) else str(Path(prior_name).resolve()),
        "prior_weights_sha256": weights_digest(prior),
    }
    fixed = codes.shape[1] * codes.shape[2] * math.log2(k)
    seconds = time.perf_counter() - started
    return [
        {
            "codec": PRIOR_CODEC,
            "kind": "prior",
            "setting": str(ckpt.get("run_name") or prior_name),
            "bits_per_image": bits.mean().item(),
            "payload_bits_per_image": bits.mean().item(),
            "header_bits_per_image": 0.0,
            "bits_per_image_std": bits.std().item() if len(bits) > 1 else math.nan,
            **about,
            "seconds": seconds,
        },
        {
            "codec": FIXED_CODEC,
            "kind": "fixed-length",
            "setting": f"K={k}",
            "bits_per_image": fixed,
            "payload_bits_per_image": fixed,
            "header_bits_per_image": 0.0,
            **about,
            "seconds": 0.0,
        },
    ]


COLUMNS = [
    "codec",
    "kind",
    "setting",
    "quality",
    "num_embeddings",
    "embedding_dim",
    "images",
    "bits_per_image",
    "payload_bits_per_image",
    "header_bits_per_image",
    "bits_per_pixel",
    "payload_bits_per_pixel",
    "bits_per_image_std",
    "mse",
    "psnr",
    "psnr_mean_per_image",
    "class_conditional_prior",
    "seconds",
    "source",
    "prior_weights_sha256",
]


def rate_distortion(
    priors: Sequence[str | os.PathLike],
    data: Optional[FashionMNIST] = None,
    *,
    test_subset: Optional[int] = None,
    qualities: Sequence[int] = QUALITIES,
    formats: Sequence[str] = FORMATS,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Every codec's rate (bits per image, with and without headers) and distortion (PSNR) on the same test images.

    One row per prior (and its fixed-length code) and per format and quality.
    `test_subset` takes a stratified subset of the 10,000 test images.
    """
    qualities, formats = check_qualities(qualities), check_formats(formats)
    data = data or load_fashion_mnist()
    images, _ = codec_images(data, test_subset, seed)
    rows: list[dict] = []
    total = len(priors) + len(formats) * len(qualities)
    with progress_bar(total=total, enabled=progress, desc="rate-distortion", unit="codec") as bar:
        for prior in priors:
            bar.set_postfix_str(Path(str(prior)).parent.name or str(prior))
            rows.extend(prior_rows(prior, data, test_subset=test_subset, seed=seed, device=device))
            bar.update(1)
        for fmt in formats:
            for quality in qualities:
                bar.set_postfix_str(f"{fmt} {quality}")
                rows.append(pillow_row(images, fmt, quality))
                bar.update(1)
    frame = pd.DataFrame(rows)
    frame["bits_per_pixel"] = frame["bits_per_image"] / images[0].numel()
    frame["payload_bits_per_pixel"] = frame["payload_bits_per_image"] / images[0].numel()
    return frame.reindex(columns=COLUMNS)


def write_rate_distortion(frame: pd.DataFrame, folder: Optional[str | os.PathLike] = None) -> tuple[Path, Path]:
    """rate_distortion.csv and rate_distortion.png (`plots.rate_distortion_figure`) in `folder`
    (default results/codec); returns both paths."""
    import matplotlib.pyplot as plt

    from .plots import rate_distortion_figure

    folder = Path(folder) if folder else paths.results_dir() / "codec"
    table = write_csv(folder / TABLE_FILE, frame)
    fig = rate_distortion_figure(frame)
    figure = save_figure(fig, folder / FIGURE_FILE)
    plt.close(fig)
    return table, figure
