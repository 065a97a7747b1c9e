"""Matplotlib / seaborn figures shared by the notebooks and the CLI.

Each function draws into a new figure and returns it; saving is the caller's
choice (`vqlib.files.save_figure` writes atomically). Images are drawn with
plain matplotlib: no torchvision (ENVIRONMENT.md).
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"):
    matplotlib.use("Agg")  # no display outside notebooks

import matplotlib.pyplot as plt
import numpy as np
import torch


def _as_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 or (N, 1, 28, 28) float in [0, 1] -> (N, 28, 28) float in [0, 1]."""
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    if images.dtype == np.uint8:
        images = images / 255.0
    return np.clip(images, 0.0, 1.0)


def image_grid(rows: Sequence[torch.Tensor | np.ndarray], *, row_labels: Optional[Sequence[str]] = None,
               col_labels: Optional[Sequence[str]] = None, title: Optional[str] = None, scale: float = 1.0):
    """A grid with one row per entry of `rows`, each an (N, 28, 28) batch of images."""
    rows = [_as_images(r) for r in rows]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols * 0.9, scale * n_rows * 0.9 + (0.4 if title else 0)),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(row[j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, *, per_row: int = 10,
                          labels: Optional[Sequence[str]] = None, title: Optional[str] = None):
    """Originals above their reconstructions, `per_row` images per pair of rows."""
    rows, row_labels = [], []
    for start in range(0, len(originals), per_row):
        rows += [originals[start:start + per_row], reconstructions[start:start + per_row]]
        row_labels += ["original", "reconstruction"]
    return image_grid(rows, row_labels=row_labels, col_labels=labels[:per_row] if labels else None, title=title)


def loss_curves(history, *, title: Optional[str] = None):
    """Training and validation reconstruction MSE, perplexity and codebook usage per epoch."""
    import pandas as pd

    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(frame["epoch"], frame["train_mse"], marker="o", label="train")
    axes[0].plot(frame["epoch"], frame["val_mse"], marker="o", label="validation")
    axes[0].set(xlabel="epoch", ylabel="reconstruction MSE", yscale="log", title="Reconstruction")
    axes[1].plot(frame["epoch"], frame["train_perplexity"], marker="o", label="train (per batch)")
    axes[1].plot(frame["epoch"], frame["val_perplexity"], marker="o", label="validation (whole split)")
    axes[1].set(xlabel="epoch", ylabel="perplexity", title="Codebook perplexity")
    axes[2].plot(frame["epoch"], 100 * frame["train_usage"], marker="o", label="train (per batch)")
    axes[2].plot(frame["epoch"], 100 * frame["val_usage"], marker="o", label="validation (whole split)")
    axes[2].set(xlabel="epoch", ylabel="codes used (%)", ylim=(0, 105), title="Codebook usage")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
