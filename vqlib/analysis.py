"""What the discrete code of a trained VQ-VAE says about the images.

Everything notebook 04 shows is computed here, on plain tensors and arrays, so
each piece has a test: the encoder's latents (codes and per-image pooled
continuous vectors), t-SNE of the pooled latents, code usage per class and the
codes most specific to each class, the image patch a latent cell sees (its
receptive field, computed from the encoder's layers), per-class reconstruction
errors, and interpolation between images in the continuous latent space. The
original study's claims, measured on these, are in claims.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import CLASS_NAMES, NUM_CLASSES, to_float
from .errors import ConfigError

# ----------------------------------------------------------------------------- latents


@dataclass
class EncodedSplit:
    """One pass of the encoder over a split: what the analysis needs, not the whole z_e."""

    indices: torch.Tensor  # (N, 12, 12) int64 code of each latent cell
    pooled: np.ndarray  # (N, D) float32: the continuous z_e averaged over the 12x12 cells
    labels: np.ndarray  # (N,) int64


@torch.inference_mode()
def encode_split(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000) -> EncodedSplit:
    """Codes and pooled continuous latents of uint8 images (N, 28, 28), on the CPU.

    The full z_e of 10,000 test images at D=64 is 370 MB; only its per-image mean
    (for t-SNE) and the code indices are kept.
    """
    device = next(model.parameters()).device
    model.eval()
    indices, pooled = [], []
    for start in range(0, len(images), batch_size):
        z = model.encoder(to_float(images[start : start + batch_size], device))
        indices.append(model.quantizer(z).indices.cpu())
        pooled.append(z.mean(dim=(2, 3)).float().cpu())
    return EncodedSplit(torch.cat(indices), torch.cat(pooled).numpy(), np.asarray(labels, dtype=np.int64))


def tsne_embedding(
    features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0, standardize: bool = True
) -> np.ndarray:
    """2-D t-SNE of (N, F) features (scikit-learn, random initialisation drawn from `seed`); returns (N, 2).

    `standardize` scales every feature to unit variance first; leave it off for
    principal components, whose unequal variances are the information.

    Random initialisation, not PCA: with init="pca" scikit-learn's result does
    not depend on `random_state` (seeds 1 and 2 gave identical maps), so a seed
    could not stand for another t-SNE run. With "random" each seed is another
    run; the claim's bootstrap still covers the image sample only, one run.
    """
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if len(features) < 5:
        raise ConfigError(f"t-SNE needs at least 5 points, not {len(features)}")
    # scikit-learn refuses perplexity >= n_samples; small smoke runs get a smaller one.
    perplexity = min(perplexity, (len(features) - 1) / 3)
    # Standardised features: pooled latents of different channels differ in scale by 10x
    # and more, and t-SNE's distances would otherwise follow the loudest channels.
    if standardize:
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    return TSNE(
        n_components=2, perplexity=perplexity, init="random", learning_rate="auto", random_state=seed
    ).fit_transform(features)


def stratified_sample(labels: np.ndarray | torch.Tensor, size: Optional[int], seed: int = 0) -> np.ndarray:
    """Indices of `size` items with the classes as balanced as the labels allow (all when None), sorted."""
    labels = np.asarray(labels)
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    if size < 1:
        raise ConfigError(f"a sample needs at least one item, not {size}")
    rng = np.random.Generator(np.random.PCG64(seed))
    # Round-robin over the classes in a shuffled order of each: balanced, and exact in size.
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [idx[i] for i in range(max(map(len, per_class))) for idx in per_class if i < len(idx)]
    return np.sort(np.asarray(order[:size]))


# ----------------------------------------------------------------------------- codebook usage per class


def code_counts_per_class(indices: torch.Tensor, labels: np.ndarray | torch.Tensor, num_embeddings: int) -> np.ndarray:
    """(classes, K) counts: how many latent cells of the images of each class use each code."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    flat = indices.reshape(len(indices), -1).cpu()
    counts = torch.zeros(NUM_CLASSES, num_embeddings, dtype=torch.long)
    # One bincount over (class, code) pairs instead of a loop over the classes.
    pairs = labels[:, None] * num_embeddings + flat
    counts += torch.bincount(pairs.reshape(-1), minlength=NUM_CLASSES * num_embeddings).view(
        NUM_CLASSES, num_embeddings
    )
    return counts.numpy()


def code_frequencies(counts: np.ndarray) -> np.ndarray:
    """Each class's row of counts as frequencies (rows sum to 1; a class without images stays 0)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def class_specific_codes(counts: np.ndarray, *, top: int = 3, min_share: float = 0.005) -> pd.DataFrame:
    """The `top` codes most specific to each class.

    Specificity of code k for class c is P(class c | code k): the share of all
    cells using k that lie in images of class c (on a class-balanced split,
    1/10 means "not specific at all"). Codes that cover less than `min_share` of
    the class's cells are left out, so a code seen twice in one image does not
    win with 100 %. Returns one row per (class, code): class, code,
    specificity, share_of_class (the code's frequency within the class), cells.
    """
    freq = code_frequencies(counts)
    code_totals = counts.sum(axis=0)
    specificity = np.divide(counts, code_totals, out=np.zeros(counts.shape, dtype=float), where=code_totals > 0)
    rows = []
    for c in range(counts.shape[0]):
        eligible = np.flatnonzero(freq[c] >= min_share)
        ranked = eligible[np.lexsort((-freq[c, eligible], -specificity[c, eligible]))][:top]
        rows += [
            {
                "class": CLASS_NAMES[c],
                "code": int(k),
                "specificity": float(specificity[c, k]),
                "share_of_class": float(freq[c, k]),
                "cells": int(counts[c, k]),
            }
            for k in ranked
        ]
    return pd.DataFrame(rows, columns=["class", "code", "specificity", "share_of_class", "cells"])


# ----------------------------------------------------------------------------- receptive field and patches


@dataclass(frozen=True)
class ReceptiveField:
    """Which input pixels a latent cell sees: cell i covers pixels [first(i), first(i) + size)."""

    size: int  # side of the square window in input pixels
    stride: int  # input pixels between neighbouring cells
    offset: float  # input coordinate of the centre of cell 0 (pixel centres at 0, 1, ...)

    def first(self, cell: int) -> int:
        return int(round(self.offset + cell * self.stride - (self.size - 1) / 2))


def receptive_field(encoder: nn.Module) -> ReceptiveField:
    """The receptive field of one output cell of `encoder`, from its convolutions in order.

    The usual recurrence (size += (k - 1) * stride_so_far; the centre moves by
    ((k - 1) / 2 - padding) * stride_so_far; stride_so_far *= s), over every
    Conv2d in module order. A residual block's branch is a chain of its own
    convolutions; its skip path sees less, so the union is the branch's field,
    which is what walking the branch's convolutions in order computes.
    """
    size, stride, offset = 1, 1, 0.0
    found = False
    for module in encoder.modules():
        if isinstance(module, nn.ConvTranspose2d):
            raise ConfigError("receptive_field expects an encoder of ordinary convolutions, not transposed ones")
        if isinstance(module, nn.Conv2d):
            found = True
            (k, _), (s, _), (p, _), (d, _) = module.kernel_size, module.stride, module.padding, module.dilation
            k_eff = d * (k - 1) + 1
            offset += ((k_eff - 1) / 2 - p) * stride
            size += (k_eff - 1) * stride
            stride *= s
    if not found:
        raise ConfigError("the encoder holds no Conv2d layer, so it has no receptive field to compute")
    return ReceptiveField(size=size, stride=stride, offset=offset)


def cell_patch(image: np.ndarray | torch.Tensor, row: int, col: int, field: ReceptiveField) -> np.ndarray:
    """The (size, size) window of a 2-D image that latent cell (row, col) sees; zero padding outside."""
    image = np.asarray(image)
    h, w = image.shape
    top, left = field.first(row), field.first(col)
    patch = np.zeros((field.size, field.size), dtype=image.dtype)
    y0, y1 = max(top, 0), min(top + field.size, h)
    x0, x1 = max(left, 0), min(left + field.size, w)
    if y0 < y1 and x0 < x1:
        patch[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return patch


def code_patches(
    images: torch.Tensor | np.ndarray,
    indices: torch.Tensor,
    code: int,
    field: ReceptiveField,
    *,
    count: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Up to `count` image patches whose latent cell uses `code`, from distinct images.

    Returns the patches (n, size, size) and, for each, (image, row, col). The
    images are chosen at random (seeded) among those that use the code; in
    each, the cell is the first one that uses it.
    """
    images = np.asarray(images)
    hits = (indices == code).reshape(len(indices), -1).cpu().numpy()
    users = np.flatnonzero(hits.any(axis=1))
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = np.sort(rng.permutation(users)[:count])
    width = indices.shape[-1]
    where = [(int(i), *divmod(int(np.argmax(hits[i])), width)) for i in chosen]
    patches = [cell_patch(images[i], r, c, field) for i, r, c in where]
    size = field.size
    return (np.stack(patches) if patches else np.zeros((0, size, size), dtype=images.dtype)), where


# ----------------------------------------------------------------------------- per-class reconstruction error


@torch.inference_mode()
def per_image_mse(model, images: torch.Tensor, *, batch_size: int = 1000) -> np.ndarray:
    """Reconstruction MSE of each uint8 image (mean over its pixels), shape (N,)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        out.append((model(x).reconstruction - x).pow(2).mean(dim=(1, 2, 3)).cpu())
    return torch.cat(out).numpy()


def per_class_errors(errors: np.ndarray, labels: np.ndarray | torch.Tensor) -> pd.DataFrame:
    """Per-class mean, standard deviation, median and count of per-image errors, lowest mean first.

    `rank` is 1 for the class reconstructed best.
    """
    frame = pd.DataFrame({"class": [CLASS_NAMES[int(c)] for c in np.asarray(labels)], "mse": np.asarray(errors)})
    table = (
        frame.groupby("class")["mse"]
        .agg(mse_mean="mean", mse_std="std", mse_median="median", images="count")
        .sort_values("mse_mean")
        .reset_index()
    )
    table["rank"] = np.arange(1, len(table) + 1)
    return table


# ----------------------------------------------------------------------------- interpolation


def different_class_pairs(labels: np.ndarray | torch.Tensor, count: int, *, seed: int = 0) -> list[tuple[int, int]]:
    """`count` pairs of image indices whose classes differ, each class pair used once, seeded."""
    labels = np.asarray(labels)
    rng = np.random.Generator(np.random.PCG64(seed))
    present = np.unique(labels)
    class_pairs = [(a, b) for a in present for b in present if a < b]
    if count > len(class_pairs):
        raise ConfigError(
            f"asked for {count} interpolation pairs, but the images hold only {len(class_pairs)} "
            "pairs of different classes"
        )
    pairs = []
    for k in rng.permutation(len(class_pairs))[:count]:
        a, b = class_pairs[k]
        pairs.append((int(rng.choice(np.flatnonzero(labels == a))), int(rng.choice(np.flatnonzero(labels == b)))))
    return pairs


@dataclass
class Interpolation:
    """Decodes along the straight line between two images' continuous latents."""

    weights: np.ndarray  # (steps,) from 0 (first image) to 1 (second image)
    quantized: torch.Tensor  # (steps, 1, 28, 28): each mixed latent quantized, then decoded
    continuous: torch.Tensor  # (steps, 1, 28, 28): each mixed latent decoded as it is
    codes_changed: np.ndarray  # (steps,) share of the 144 codes that differ from the first step's


@torch.inference_mode()
def interpolate(model, image_a: torch.Tensor, image_b: torch.Tensor, *, steps: int = 8) -> Interpolation:
    """Linear interpolation of the encoder's output z_e between two uint8 images (28, 28).

    The quantized strip is what the VQ-VAE can actually produce: every mixture
    is snapped to its nearest codes before decoding. The continuous strip
    decodes the mixtures unquantized, which the decoder never saw in training.
    """
    if steps < 2:
        raise ConfigError(f"an interpolation needs at least 2 steps, not {steps}")
    device = next(model.parameters()).device
    model.eval()
    z = model.encoder(to_float(torch.stack([torch.as_tensor(image_a), torch.as_tensor(image_b)]), device))
    weights = torch.linspace(0.0, 1.0, steps, device=device).view(-1, 1, 1, 1)
    mixed = (1 - weights) * z[0:1] + weights * z[1:2]
    vq = model.quantizer(mixed)
    changed = (vq.indices != vq.indices[0:1]).float().mean(dim=(1, 2))
    return Interpolation(
        weights=weights.view(-1).cpu().numpy(),
        quantized=model.decode(vq.quantized).cpu(),
        continuous=model.decode(mixed).cpu(),
        codes_changed=changed.cpu().numpy(),
    )


def specific_code_patches(
    images: torch.Tensor | np.ndarray,
    indices: torch.Tensor,
    specific: pd.DataFrame,
    field: ReceptiveField,
    *,
    labels: Optional[np.ndarray | torch.Tensor] = None,
    classes: int = 4,
    per_code: int = 8,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[str]]:
    """Patches of the most specific code of the `classes` classes whose best code is most specific.

    `specific` is `class_specific_codes`'s table; each code is shown once.
    With `labels`, the patches of a code come from images of its class.
    Returns one (n, size, size) array of patches per chosen code, and a label
    for each row.
    """
    best = (
        specific.sort_values(["specificity", "share_of_class"], ascending=False)
        .drop_duplicates("class")
        .drop_duplicates("code")
        .head(classes)
    )
    rows, row_labels = [], []
    images = np.asarray(images)
    for row in best.to_dict(orient="records"):
        keep = (
            np.arange(len(indices))
            if labels is None
            else np.flatnonzero(np.asarray(labels) == CLASS_NAMES.index(row["class"]))
        )
        patches, _ = code_patches(
            images[keep], indices[torch.from_numpy(keep)], row["code"], field, count=per_code, seed=seed
        )
        if len(patches):
            rows.append(patches)
            row_labels.append(f"code {row['code']}: {row['class']}\n({row['specificity']:.0%} of its uses)")
    return rows, row_labels
