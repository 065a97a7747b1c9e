"""The small public API: published models by name, and images in, codes, images and classes out.

A face over the modules, not a second implementation: loading goes through
checkpoints.py and classify.py, encoding through `classify.encode_codes`,
reconstruction through `infer.reconstruct`, class probabilities through
`classify.predict`, splits through `data.load_fashion_mnist`. What this module
adds is the conversion of whatever images a user holds into what those
functions take, checked once, with one sentence when it is wrong::

    import vqlib

    vqvae = vqlib.load_pretrained("K100_D64")
    images, labels = vqlib.load_split("test")
    codes = vqvae.encode(images[:8])        # int64 (8, 12, 12)
    recon = vqvae.decode(codes)             # float32 (8, 1, 28, 28) in [0, 1]

Images, everywhere: uint8 in [0, 255] or float in [0, 1], a numpy array or a
torch tensor, of shape (28, 28), (N, 28, 28) or (N, 1, 28, 28). Results are
torch tensors on the CPU (class names are a list of str), computed under
`torch.no_grad()` in batches, so that the 10,000 test images need no more
memory than 1,000.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import paths
from .checkpoints import (
    KIND_NAMES,
    PRETRAINED_PREFIX,
    config_from_checkpoint,
    load_checkpoint,
    load_vqvae,
    pretrained_kind,
    pretrained_names,
)
from .classify import _same_code, encode_codes, load_classifier, predict
from .config import ClassifierConfig
from .data import CLASS_NAMES, IMAGE_SIZE, load_fashion_mnist
from .device import resolve_device
from .errors import CheckpointError, InputError
from .files import read_json_or_empty
from .models.classifier import LATENT_SIZE

__all__ = [
    "CLASSES",
    "PretrainedClassifier",
    "PretrainedPrior",
    "PretrainedVQVAE",
    "list_pretrained",
    "load_pretrained",
    "load_split",
    "psnr",
]

CLASSES: tuple[str, ...] = CLASS_NAMES
"""The ten FashionMNIST class names, in label order: ``CLASSES[label]`` names a label."""

# Images per forward pass: the encoder's activations of 1,000 images take about 150 MB in float32.
BATCH_SIZE = 1000
_SHAPES = f"({IMAGE_SIZE}, {IMAGE_SIZE}), (N, {IMAGE_SIZE}, {IMAGE_SIZE}) or (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE})"


# ----------------------------------------------------------------------------- inputs


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object or not (np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.bool_)):
            raise InputError(f"{what} must be numbers, not a numpy array of {value.dtype}")
        # A copy where torch could not share the memory: read-only or strided arrays (a flipped view, say).
        if not value.flags.writeable or not value.flags.c_contiguous:
            value = np.array(value, order="C")
        return torch.from_numpy(value)
    raise InputError(f"{what} must be a numpy array or a torch tensor, not {type(value).__name__}")


def as_images(images, what: str = "images") -> torch.Tensor:
    """Any accepted form of images -> uint8 (N, 28, 28) or float32 (N, 28, 28) in [0, 1], on the CPU.

    Accepted: uint8 in [0, 255] or float in [0, 1], numpy or torch, of shape
    (28, 28), (N, 28, 28) or (N, 1, 28, 28). Anything else is an `InputError`.
    uint8 stays uint8 (the exact pixels); float becomes float32.
    """
    x = _as_tensor(images, what)
    shape = tuple(x.shape)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    elif x.dim() == 4 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.dim() != 3 or tuple(x.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"{what} must have shape {_SHAPES}, not {shape}")
    if len(x) == 0:
        raise InputError(f"{what} holds no image (shape {shape})")
    if x.dtype == torch.uint8:
        return x
    if not x.dtype.is_floating_point:
        raise InputError(
            f"{what} must be uint8 in [0, 255] or float in [0, 1], not {str(x.dtype).replace('torch.', '')}"
        )
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} holds NaN or infinite values; images are uint8 in [0, 255] or float in [0, 1]")
    low, high = x.min().item(), x.max().item()
    if low < 0.0 or high > 1.0:
        stored = low >= 0.0 and high <= 255.0  # uint8 pixels held as float
        hint = " (uint8 pixels stored as float? pass them as uint8, or divide by 255)" if stored else ""
        raise InputError(f"float {what} must lie in [0, 1], but they range from {low:g} to {high:g}{hint}")
    return x


def _float_images(images, what: str = "images") -> torch.Tensor:
    """Images in any accepted form -> float32 (N, 28, 28) in [0, 1]."""
    x = as_images(images, what)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A result made under torch.inference_mode as an ordinary tensor: a user may change it in place."""
    return t.clone() if t.is_inference() else t


# ----------------------------------------------------------------------------- the VQ-VAE


class PretrainedVQVAE:
    """A VQ-VAE in eval mode with image-level methods. Build it with `load_pretrained`.

    Attributes: `model` (the `vqlib.models.VQVAE`), `config` (its `VQVAEConfig`),
    `num_embeddings` (K, the codebook's size), `embedding_dim` (D), `checkpoint`
    (where it was loaded from), `device`.
    """

    def __init__(self, model, checkpoint: str):
        self.model = model.eval()
        self.config = model.config
        self.num_embeddings: int = model.config.num_embeddings
        self.embedding_dim: int = model.config.embedding_dim
        self.checkpoint = checkpoint
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        return f"PretrainedVQVAE({self.checkpoint!r}, K={self.num_embeddings}, D={self.embedding_dim})"

    def encode(self, images, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images -> code indices, int64 (N, 12, 12), each in [0, K): one codebook entry per 12 x 12 position."""
        codes = encode_codes(self.model, as_images(images), batch_size=batch_size)
        return codes.cpu().long()

    def decode(self, codes, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Code indices, integers in [0, K) of shape (12, 12) or (N, 12, 12) -> images, float32 (N, 1, 28, 28) in [0, 1]."""
        codes = self._codes(codes)
        with torch.no_grad():
            out = [
                self.model.decode_indices(codes[s : s + batch_size].to(self.device)).float().cpu()
                for s in range(0, len(codes), batch_size)
            ]
        return torch.cat(out)

    def reconstruct(self, images, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images -> their reconstructions through the code, float32 (N, 1, 28, 28) in [0, 1]."""
        from .infer import reconstruct

        return _plain(reconstruct(self.model, as_images(images), batch_size=batch_size).float())

    def latents(self, images, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images -> the encoder's continuous output before quantization, float32 (N, D, 12, 12)."""
        from .data import to_float

        x = as_images(images)
        with torch.no_grad():
            out = [
                self.model.encoder(to_float(x[s : s + batch_size], self.device)).float().cpu().contiguous()
                for s in range(0, len(x), batch_size)
            ]
        return torch.cat(out)

    def quantized(self, images, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images -> quantized latents (the codebook vectors the decoder reads), float32 (N, D, 12, 12)."""
        return self.lookup(self.encode(images, batch_size=batch_size))

    def lookup(self, codes) -> torch.Tensor:
        """Code indices (12, 12) or (N, 12, 12) -> their codebook vectors, float32 (N, D, 12, 12)."""
        codes = self._codes(codes)
        with torch.no_grad():
            return self.model.quantizer.lookup(codes.to(self.device)).float().cpu().contiguous()

    def _codes(self, codes) -> torch.Tensor:
        """Code indices in any accepted form -> int64 (N, 12, 12), checked against the codebook's size."""
        x = _as_tensor(codes, "codes")
        shape = tuple(x.shape)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or tuple(x.shape[1:]) != (LATENT_SIZE, LATENT_SIZE) or len(x) == 0:
            raise InputError(
                f"codes must have shape ({LATENT_SIZE}, {LATENT_SIZE}) or (N, {LATENT_SIZE}, {LATENT_SIZE}) "
                f"with N >= 1, not {shape} (encode gives them)"
            )
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise InputError(
                f"codes must be integers (indices into the codebook), not {str(x.dtype).replace('torch.', '')}"
            )
        x = x.long()
        low, high = x.min().item(), x.max().item()
        if low < 0 or high >= self.num_embeddings:
            raise InputError(
                f"codes must lie in [0, {self.num_embeddings - 1}] for this codebook of {self.num_embeddings} "
                f"entries, but they range from {low} to {high}"
            )
        return x


# ----------------------------------------------------------------------------- the classifier


class PretrainedClassifier:
    """A classifier on a VQ-VAE's code, in eval mode. Build it with `load_pretrained`.

    Attributes: `model` (the `vqlib.models.VQVAEClassifier`), `config` (its
    `ClassifierConfig`), `checkpoint`, `device`, and `vqvae`: the VQ-VAE whose
    code it reads, loaded on first use (`PretrainedVQVAE`).
    """

    def __init__(self, model, ckpt: dict, checkpoint: str):
        self.model = model.eval()
        self.config = config_from_checkpoint(ClassifierConfig, ckpt["model_config"], checkpoint, "classifier")
        self.checkpoint = checkpoint
        self.device = next(model.parameters()).device
        self._ckpt = ckpt
        self._vqvae: Optional[PretrainedVQVAE] = None

    def __repr__(self) -> str:
        return f"PretrainedClassifier({self.checkpoint!r}, on {self._ckpt.get('vqvae_checkpoint')!r})"

    @property
    def vqvae(self) -> PretrainedVQVAE:
        """The VQ-VAE this classifier was trained on (the one its checkpoint records), checked to hold the same code."""
        if self._vqvae is None:
            from .infer import classifier_vqvae

            path = classifier_vqvae(self._ckpt)
            model, _ = load_vqvae(path, device=self.device)
            if not self.config.finetune and not _same_code(self._ckpt["state_dict"], model.state_dict()):
                raise CheckpointError(
                    f"{paths.shown(path)} is not the VQ-VAE the classifier {self.checkpoint} was trained on "
                    "(same name, other weights)"
                )
            self._vqvae = PretrainedVQVAE(model, _shown_source(self._ckpt["vqvae_checkpoint"]))
        return self._vqvae

    def predict_proba(self, images, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images -> class probabilities, float32 (N, 10), each row summing to 1 (columns in `CLASSES` order)."""
        return _plain(predict(self.model, as_images(images), batch_size=batch_size))

    def predict(self, images, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images -> predicted labels, int64 (N,) in [0, 10): ``CLASSES[label]`` names one."""
        return self.predict_proba(images, batch_size=batch_size).argmax(1)

    def classify(self, images, *, batch_size: int = BATCH_SIZE) -> list[str]:
        """Images -> the predicted class name of each, a list of N str from `CLASSES`."""
        return [CLASSES[i] for i in self.predict(images, batch_size=batch_size).tolist()]


# ----------------------------------------------------------------------------- loading


def _published_kinds() -> str:
    """'the published VQ-VAEs are ...; the published classifiers are ...' for an error message."""
    parts = []
    for kind in KIND_NAMES:
        names = pretrained_names(kind)
        if names:
            parts.append(f"the published {KIND_NAMES[kind]}s are {', '.join(names)}")
    return "; ".join(parts) if parts else f"none is published under {paths.shown(paths.pretrained_dir())}"


def _shown_source(text: str) -> str:
    return text if text.startswith(PRETRAINED_PREFIX) else paths.shown(text)


class PretrainedPrior:
    """A prior over a VQ-VAE's code, with that VQ-VAE, in eval mode. Build it with `load_pretrained`.

    An autoregressive model of the 12 x 12 code indices in raster order, with an
    exact likelihood ([docs/prior.md]). Attributes: `model` (the prior network),
    `vqvae` (a `PretrainedVQVAE`: the VQ-VAE whose code it models, checked weight
    for weight), `num_codes` (K), `class_conditional` (whether it draws a given
    class), `checkpoint`, `device`. Classes, wherever taken: None (no class), a
    name ("Trouser") or an index for all, or one per image.
    """

    def __init__(self, model, vqvae_model, checkpoint: str):
        self.model = model.eval()
        self.vqvae = PretrainedVQVAE(vqvae_model, "the VQ-VAE of " + checkpoint)
        self.num_codes: int = model.num_codes
        self.class_conditional: bool = bool(getattr(model, "class_conditional", True))
        self.checkpoint = checkpoint
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        kind = "class-conditional" if self.class_conditional else "unconditional"
        return f"PretrainedPrior({self.checkpoint!r}, K={self.num_codes}, {kind})"

    def sample(self, num: int = 64, *, classes=None, temperature: float = 1.0, top_k=None, seed=None, guidance=0.0):
        """`num` new images: (images float32 (num, 1, 28, 28) in [0, 1], their codes int64 (num, 12, 12)).

        `temperature` divides the logits, `top_k` draws among the k likeliest codes of each position,
        `seed` makes the draw repeatable; `guidance` w > 0 pushes each sample towards its class
        (classifier-free guidance: logits c + w (c - u), given the class and given none; needs `classes`)."""
        from .prior import sample_images

        images, codes = sample_images(
            self.model,
            self.vqvae.model,
            num,
            classes=classes,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            guidance=guidance,
        )
        return images.float(), codes.long()

    def log_prob(self, codes, *, classes=None) -> torch.Tensor:
        """The exact log-likelihood (nats) of each code: float64 (N,). Codes as `PretrainedVQVAE.decode` takes them."""
        from .prior import _class_tensor

        codes = self.vqvae._codes(codes)
        labels = _class_tensor(classes, len(codes), self.model.num_classes, self.model)
        with torch.no_grad():
            return self.model.log_prob(codes.to(self.device), labels).double().cpu()

    def bits(self, images, *, classes=None) -> torch.Tensor:
        """-log2 p(code) of each image's code, float64 (N,): what the code of the image costs under the prior."""
        return -self.log_prob(self.vqvae.encode(images), classes=classes) / math.log(2)


def load_pretrained(
    name: str | os.PathLike, device: str = "auto"
) -> PretrainedVQVAE | PretrainedClassifier | PretrainedPrior:
    """A published model by name ("K100_D64", "K100_D64_all_frozen", "K100_D64_prior", or "pretrained:NAME"), or
    a checkpoint file.

    Returns a `PretrainedVQVAE` for a VQ-VAE checkpoint, a `PretrainedClassifier`
    for a classifier checkpoint and a `PretrainedPrior` (with its VQ-VAE) for a prior, in eval mode on
    `device` ("auto": CUDA when available, else the CPU; or "cpu", "cuda").
    `list_pretrained()` lists the published names. An unknown name or a file
    that is not a vqlib checkpoint is a `CheckpointError` in one sentence.
    """
    text = os.fspath(name)
    is_name = text.startswith(PRETRAINED_PREFIX) or (
        "/" not in text and os.sep not in text and not text.endswith(".pt") and not Path(text).exists()
    )
    if is_name:
        bare = text[len(PRETRAINED_PREFIX) :] if text.startswith(PRETRAINED_PREFIX) else text
        if not bare or not (paths.pretrained_dir() / bare / "best.pt").is_file():
            raise CheckpointError(f"there is no published model {bare!r}; {_published_kinds()}")
        text = PRETRAINED_PREFIX + bare
    resolved = resolve_device(device)
    kind = load_checkpoint(text)["kind"]
    source = _shown_source(text)
    if kind == "vqvae":
        model, _ = load_vqvae(text, device=resolved)
        return PretrainedVQVAE(model, source)
    if kind == "classifier":
        model, ckpt = load_classifier(text, device=resolved)
        return PretrainedClassifier(model, ckpt, source)
    if kind == "prior":
        from .prior import load_pair

        model, vqvae, _ = load_pair(text, device=resolved)
        return PretrainedPrior(model, vqvae, source)
    raise CheckpointError(f"{source} is a {kind} checkpoint; load_pretrained loads VQ-VAEs, classifiers and priors")


def load_split(name: str, *, data_dir: Optional[str | os.PathLike] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the real FashionMNIST: images uint8 (N, 28, 28) in [0, 255] and labels int64 (N,) in [0, 10).

    `name` is "train" (55,000 images), "val" (5,000, carved from the official
    training set with a fixed seed) or "test" (the official 10,000). The files
    are found as `vqlib data` finds them (`data_dir`, VQLIB_DATA_DIR, data/,
    the Debian package), downloaded when none is there.
    """
    images, labels = load_fashion_mnist(data_dir).split(name)
    return images, labels


def psnr(images, reconstructions) -> float:
    """PSNR in dB of the mean squared error over all pixels: 10 log10(1 / MSE), pixels in [0, 1].

    The PSNR of the mean error, as the project reports val_psnr and test_psnr
    (not the mean of per-image PSNRs). Both arguments take any accepted image
    form (uint8 or float, numpy or torch, with or without the channel axis) and
    must hold the same number of images.
    """
    a, b = _float_images(images, "images"), _float_images(reconstructions, "reconstructions")
    if a.shape != b.shape:
        raise InputError(f"images and reconstructions must hold the same number of images, not {len(a)} and {len(b)}")
    mse = (a.double() - b.double()).pow(2).mean().item()
    # As train.evaluate_vqvae: an exact copy reports 120 dB, not infinity.
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _vqvae_metrics(name: str) -> dict:
    """A published VQ-VAE's metrics: the study's grid, the protocol's other seeds, or the cosine-rate runs."""
    published = paths.published_dir()
    for path in (
        published / "grid" / name / "metrics.json",
        published / "protocol_seeds" / name / "metrics.json",
        published / "lr_schedule" / name.removesuffix("_cosine") / "metrics.json",
    ):
        metrics = read_json_or_empty(path)
        if metrics.get("checkpoint") == PRETRAINED_PREFIX + name:
            return metrics
    return {}


def list_pretrained():
    """The published models as a pandas DataFrame, one row each, read from the published files (no weights loaded).

    Columns: name (for `load_pretrained`), kind ("vqvae", "classifier" or "prior"), K and D
    (of the VQ-VAE; a classifier's and a prior's are those of the code they read), val_mse and
    val_psnr (a VQ-VAE's validation reconstruction error at its best epoch),
    test_accuracy (a classifier's), vqvae (the VQ-VAE a classifier or a prior reads) and
    size_mb (of best.pt, in MB).
    """
    import pandas as pd

    rows = []
    for name in pretrained_names():
        kind = pretrained_kind(name)
        folder = paths.pretrained_dir() / name
        config = read_json_or_empty(folder / "config.json")
        size_mb = (folder / "best.pt").stat().st_size / 1e6
        if kind == "classifier":
            metrics = read_json_or_empty(paths.published_dir() / "classifier" / name / "metrics.json")
            model = config.get("vqvae", {})
            vqvae = str(config.get("vqvae_checkpoint", "")).removeprefix(PRETRAINED_PREFIX)
            row = {"val_mse": math.nan, "val_psnr": math.nan, "test_accuracy": metrics.get("test_accuracy", math.nan)}
        elif kind == "prior":
            vqvae = str(config.get("vqvae_checkpoint", "")).removeprefix(PRETRAINED_PREFIX)
            model = read_json_or_empty(paths.pretrained_dir() / vqvae / "config.json").get("model", {})
            row = {"val_mse": math.nan, "val_psnr": math.nan, "test_accuracy": math.nan}
        else:
            metrics = _vqvae_metrics(name)
            model, vqvae = config.get("model", {}), ""
            row = {
                "val_mse": metrics.get("val_mse", math.nan),
                "val_psnr": metrics.get("val_psnr", math.nan),
                "test_accuracy": math.nan,
            }
        rows.append(
            {
                "name": name,
                "kind": kind,
                "K": model.get("num_embeddings"),
                "D": model.get("embedding_dim"),
                **row,
                "vqvae": vqvae,
                "size_mb": round(size_mb, 2),
            }
        )
    columns = ["name", "kind", "K", "D", "val_mse", "val_psnr", "test_accuracy", "vqvae", "size_mb"]
    # VQ-VAEs first, by codebook size then dimension (K25 before K100), then the classifiers, then the priors.
    frame = pd.DataFrame(rows, columns=columns)
    frame["_order"] = frame["kind"].map({"vqvae": 0, "classifier": 1, "prior": 2})
    return frame.sort_values(["_order", "K", "D", "name"]).drop(columns="_order").reset_index(drop=True)
