"""Matplotlib / seaborn figures shared by the notebooks and the CLI.

Each function draws into a new figure and returns it; saving is the caller's
choice (`vqlib.files.save_figure` writes atomically). Images are drawn with
plain matplotlib: no torchvision, whose wheels for torch 2.13 are CUDA builds that
fail to import beside the CPU build of torch.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import matplotlib

# matplotlib >= 3.9 reports the notebook backend as "inline", older ones by its module name.
if matplotlib.get_backend().lower() not in (
    "inline",
    "module://matplotlib_inline.backend_inline",
    "nbagg",
    "widget",
    "ipympl",
):
    matplotlib.use("Agg")  # no display outside notebooks

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter


def epoch_axis(ax) -> None:
    """Whole epochs on the x axis: a 2-epoch run gets ticks 1 and 2, not 1.0, 1.2, ..., 2.0."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _as_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 or (N, 1, 28, 28) float in [0, 1] -> (N, 28, 28) float in [0, 1]."""
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    if images.dtype == np.uint8:
        images = images / 255.0
    return np.clip(images, 0.0, 1.0)


def image_grid(
    rows: Sequence[torch.Tensor | np.ndarray],
    *,
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    scale: float = 1.0,
):
    """A grid with one row per entry of `rows`, each an (N, 28, 28) batch of images."""
    rows = [_as_images(r) for r in rows]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(scale * n_cols * 0.9, scale * n_rows * 0.9 + (0.4 if title else 0)), squeeze=False
    )
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


def reconstruction_figure(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    *,
    per_row: int = 10,
    labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
):
    """Originals above their reconstructions, `per_row` images per pair of rows."""
    rows, row_labels = [], []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], reconstructions[start : start + per_row]]
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
        epoch_axis(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ablation_figure(table, *, title: Optional[str] = None):
    """Grouped bars of the codebook ablation: validation MSE, codes used and perplexity / K, per config and variant.

    `table` is the frame of `vqlib.ablation.codebook_ablation` (columns K, D,
    variant, val_mse, val_usage, val_perplexity).
    """
    import pandas as pd

    frame = pd.DataFrame(table)
    frame["config"] = [f"K={k}, D={d}" for k, d in zip(frame["K"], frame["D"], strict=True)]
    configs = list(dict.fromkeys(frame["config"]))
    variants = list(dict.fromkeys(frame["variant"]))
    panels = [
        ("val_mse", "validation MSE", 1.0, "Reconstruction (lower is better)"),
        ("val_usage", "codes used on validation (%)", 100.0, "Codebook usage"),
        ("perplexity_fraction", "validation perplexity / K (%)", 100.0, "Perplexity relative to K"),
    ]
    frame["perplexity_fraction"] = frame["val_perplexity"] / frame["K"]
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 3.6))
    width = 0.8 / max(len(variants), 1)
    x = np.arange(len(configs))
    for ax, (column, label, scale, panel_title) in zip(axes, panels, strict=True):
        for i, variant in enumerate(variants):
            rows = frame[frame["variant"] == variant].set_index("config").reindex(configs)
            bars = ax.bar(x + (i - (len(variants) - 1) / 2) * width, scale * rows[column], width, label=variant)
            # Four digits for the MSE: the variants differ in the third decimal.
            ax.bar_label(bars, fmt="%.4f" if scale == 1.0 else "%.0f", fontsize=6, padding=2, rotation=90)
        ax.set_xticks(x, configs)
        ax.set(ylabel=label, title=panel_title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.3 * frame["val_mse"].max())
    axes[1].set_ylim(0, 120)
    axes[2].set_ylim(0, 120)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(variants), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def confusion_matrix_figure(
    matrix, *, class_names: Optional[Sequence[str]] = None, normalize: bool = True, title: Optional[str] = None
):
    """Seaborn heatmap of a confusion matrix (rows: true class, columns: predicted).

    With `normalize`, colours and numbers are the share of each true class
    (each row sums to 1), so classes of any size compare; the raw counts are in
    the CSV written next to the figure.
    """
    import seaborn as sns

    from .data import CLASS_NAMES

    matrix = np.asarray(matrix)
    names = list(class_names or CLASS_NAMES)
    shown = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None) if normalize else matrix
    fig, ax = plt.subplots(figsize=(8.5, 7))
    sns.heatmap(
        shown,
        annot=True,
        fmt=".2f" if normalize else "d",
        cmap="Blues",
        square=True,
        cbar=True,
        xticklabels=names,
        yticklabels=names,
        annot_kws={"fontsize": 7},
        ax=ax,
        vmin=0,
        vmax=1 if normalize else None,
    )
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


LABEL_EFFICIENCY_NAMES = {
    "vq_head": "frozen VQ code + conv head",
    "vq_linear": "frozen VQ code + logistic regression",
    "z_linear": "encoder output before quantization + logistic regression",
    "pixel_convnet": "ConvNet from scratch on pixels",
    "pixel_linear": "logistic regression on pixels",
}


def label_efficiency_figure(frame, *, title: Optional[str] = None, references: Optional[dict] = None):
    """Test accuracy against labels per class (log x axis): a line per method (mean over seeds), a band from min to max.

    `references` (name -> accuracy, e.g. `classify.PUBLISHED_REFERENCES`) are drawn as dashed horizontal lines.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (name, accuracy) in enumerate((references or {}).items()):
        ax.axhline(100 * accuracy, color="k", linestyle=(0, (4, 2 + 2 * i)), linewidth=1, label=name)
    from .config import canonical_method

    frame = frame.assign(method=frame["method"].map(canonical_method))  # older files name pixel_cnn
    for method, rows in frame.groupby("method", sort=False):
        stats = rows.groupby("labels_per_class")["test_acc"].agg(["mean", "min", "max"]).sort_index()
        x = stats.index.to_numpy()
        (line,) = ax.plot(x, 100 * stats["mean"], marker="o", label=LABEL_EFFICIENCY_NAMES.get(method, method))
        ax.fill_between(x, 100 * stats["min"], 100 * stats["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = sorted(frame["labels_per_class"].unique())
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set(
        xlabel="labelled images per class (log scale)",
        ylabel="test accuracy (%)",
        title=title or "Label efficiency: mean over seeds, band = min to max",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def paired_differences_figure(differences, *, title: Optional[str] = None):
    """Each method's test accuracy minus the reference's, in points, paired by seed: a panel per label count, the
    mean difference as a dot and its t-interval as a line (`label_efficiency.paired_differences`'s table). A hollow
    dot is a difference of one seed, with no interval. An interval across 0 is a difference the seeds do not
    settle. Methods keep the colours of `label_efficiency_figure`."""
    from .config import LABELS_PER_CLASS_AVAILABLE, canonical_method

    d = differences.assign(method=differences["method"].map(canonical_method))
    counts = sorted(d["labels_per_class"].unique())
    methods = [m for m in LABEL_EFFICIENCY_NAMES if m in set(d["method"])]
    methods += [m for m in dict.fromkeys(d["method"]) if m not in methods]
    order = [*LABEL_EFFICIENCY_NAMES, *(m for m in methods if m not in LABEL_EFFICIENCY_NAMES)]
    colour = {m: f"C{order.index(m)}" for m in methods}
    fig, axes = plt.subplots(
        1, len(counts), figsize=(1.2 + 2.3 * len(counts), 1.4 + 0.45 * len(methods)), sharey=True, squeeze=False
    )
    for ax, count in zip(axes[0], counts, strict=True):
        rows = d[d["labels_per_class"] == count].set_index("method")
        for y, method in enumerate(reversed(methods)):
            if method not in rows.index:
                continue
            row = rows.loc[method]
            interval = row["seeds"] > 1 and np.isfinite(row["low"])
            if interval:
                ax.plot([100 * row["low"], 100 * row["high"]], [y, y], color=colour[method], linewidth=2.5)
            ax.plot(
                100 * row["mean_difference"], y, "o", color=colour[method], markerfacecolor=None if interval else "none"
            )
        ax.axvline(0, color="k", linewidth=0.8)
        seeds = int(rows["seeds"].max()) if len(rows) else 0
        label = "all" if count == LABELS_PER_CLASS_AVAILABLE else f"{count:,}"
        ax.set_title(f"{label} per class ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("points", fontsize=8)
    reference = d["reference"].iloc[0] if len(d) else "the reference"
    axes[0][0].set_yticks(range(len(methods)))
    axes[0][0].set_yticklabels([LABEL_EFFICIENCY_NAMES.get(m, m) for m in reversed(methods)], fontsize=8)
    fig.suptitle(
        title
        or f"Test accuracy minus the {LABEL_EFFICIENCY_NAMES.get(reference, reference)}'s, paired by seed (95% interval)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the code as a codec


def rate_distortion_figure(frame, *, title: Optional[str] = None):
    """PSNR against bits per image (log x axis): each image codec as two lines, whole files (solid) and without
    their headers (dashed); each prior's VQ-VAE as a filled star (its code sent with the prior) and a hollow one
    (the code at a fixed length). `frame` is `codec.rate_distortion`'s table; its `kind` column says which is which."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for fmt, rows in frame[frame["kind"] == "image codec"].groupby("codec", sort=False):
        rows = rows.sort_values("quality")
        name = {"WEBP": "WebP"}.get(fmt, fmt)
        (line,) = ax.plot(rows["bits_per_image"], rows["psnr"], marker="o", markersize=3, label=f"{name}, whole file")
        ax.plot(
            rows["payload_bits_per_image"],
            rows["psnr"],
            marker="o",
            markersize=3,
            linestyle="--",
            color=line.get_color(),
            label=f"{name}, without header",
        )
    for kind, filled in (("prior", True), ("fixed-length", False)):
        rows = frame[frame["kind"] == kind]
        if not len(rows):
            continue
        ax.scatter(
            rows["bits_per_image"], rows["psnr"], marker="*", s=140, zorder=3, label=rows["codec"].iloc[0],
            **({"color": "k"} if filled else {"facecolors": "none", "edgecolors": "k"}),
        )  # fmt: skip
        for row in rows.itertuples() if filled else ():  # one label per VQ-VAE: both stars share its PSNR
            ax.annotate(
                f"K={row.num_embeddings:g}", (row.bits_per_image, row.psnr), textcoords="offset points",
                xytext=(-8, 9), fontsize=8,
            )  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    images = int(frame["images"].max()) if len(frame) else 0
    ax.set(
        xlabel="bits per image (log scale)",
        ylabel="PSNR (dB) of the mean squared error",
        title=title or f"Rate and distortion on {images:,} FashionMNIST test images",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- grid (notebook 02)


def _grid_line_styles(names: Sequence[str]) -> list[dict]:
    """A colour per codebook size K and a line style per dimension D, from run names K{K}_D{D}.

    Nine lines of one colour map are hard to tell apart; K x D as colour x dash
    reads like the grid. Names of another form get a colour each.
    """
    from .paths import parse_vqvae_run_name

    parsed = [parse_vqvae_run_name(name) for name in names]
    palette = plt.get_cmap("tab10").colors
    if not all(parsed):
        return [{"color": palette[i % len(palette)]} for i in range(len(names))]
    ks = sorted({k for k, _, _ in parsed})
    ds = sorted({d for _, d, _ in parsed})
    dashes = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    return [
        {
            "color": palette[ks.index(k) % len(palette)],
            "linestyle": dashes[ds.index(d) % len(dashes)],
            "marker": markers[ds.index(d) % len(markers)],
        }
        for k, d, _ in parsed
    ]


def plot_losses(losses, *, title: Optional[str] = "Training of every grid configuration"):
    """The original study's `plot_losses`: training and validation MSE per epoch, one line per configuration.

    `losses` maps a run name (K{K}_D{D}) to its per-epoch history
    (`vqlib.grid.load_losses`).
    """
    import pandas as pd

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for (name, history), style in zip(losses.items(), _grid_line_styles(list(losses)), strict=True):
        frame = pd.DataFrame(history)
        # Markers on at most about ten epochs: on fifty they would hide the dashes that tell D apart.
        style = {"marker": "o", **style, "ms": 4, "markevery": max(1, len(frame) // 10), "linewidth": 1.3}
        axes[0].plot(frame["epoch"], frame["train_mse"], label=name, **style)
        axes[1].plot(frame["epoch"], frame["val_mse"], label=name, **style)
    for ax, split in zip(axes, ("training", "validation"), strict=True):
        ax.set(xlabel="epoch", ylabel="reconstruction MSE", yscale="log", title=f"{split} MSE")
        ax.grid(alpha=0.3)
        epoch_axis(ax)
    axes[1].legend(fontsize=7, ncol=2, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _like(value: float, shown: str, fmt: str) -> str:
    """`value` with as many decimals as `shown` (a mean as the heatmap prints it): 0.00744 ± 0.00004, not ± 4.48e-05."""
    if fmt.endswith("%") or "." not in shown:
        return f"{value:{fmt}}"
    return f"{value:.{len(shown.split('.')[1])}f}"


def grid_heatmaps(
    frame,
    metrics: Sequence[tuple[str, str, str]] = (
        ("val_mse", "validation MSE (lower is better)", "#.3g"),
        ("val_perplexity", "validation perplexity", ".1f"),
        ("val_usage", "codes used on validation", ".0%"),
    ),
):
    """One K x D heatmap per metric of the grid table (rows: K, columns: D); failed runs stay blank.

    With several seeds per configuration each cell shows the mean over its
    successful seeds and, below it, their standard deviation.
    """
    import pandas as pd
    import seaborn as sns

    ok = frame["status"] == "success" if "status" in frame else pd.Series(True, index=frame.index)
    seeds = int(frame[ok].groupby(["num_embeddings", "embedding_dim"]).size().max()) if ok.any() else 1
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8 + 0.4 * (seeds > 1)), squeeze=False)
    for ax, (column, label, fmt) in zip(axes[0], metrics, strict=True):
        # Failed runs become NaN: they stay blank and do not enter a mean.
        values = frame.assign(value=frame[column].where(ok).astype(float))
        table = values.pivot_table(
            index="num_embeddings", columns="embedding_dim", values="value", aggfunc=["mean", "std"], dropna=False
        )
        mean, std = table["mean"], table["std"].reindex_like(table["mean"])
        cmap = "viridis_r" if column.endswith("mse") else "viridis"
        # Shares on their whole scale: a grid where every code is used reads as full, not as a flat minimum.
        scale = {"vmin": 0.0, "vmax": 1.0} if fmt.endswith("%") else {}
        if seeds > 1:
            annot = [
                [
                    "" if np.isnan(m) else f"{m:{fmt}}\n± {_like(sd, f'{m:{fmt}}', fmt)}"
                    for m, sd in zip(mrow, srow, strict=True)
                ]
                for mrow, srow in zip(mean.to_numpy(), std.to_numpy(), strict=True)
            ]
            sns.heatmap(
                mean, annot=np.array(annot), fmt="", cmap=cmap, ax=ax, cbar=False, annot_kws={"fontsize": 8}, **scale
            )
            label = f"{label}\nmean ± std over {seeds} seeds"
        else:
            sns.heatmap(mean, annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar=False, annot_kws={"fontsize": 9}, **scale)
        ax.set(xlabel="code dimension D", ylabel="codebook size K", title=label)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- latent analysis (notebook 04)


def tsne_scatter(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, title: Optional[str] = None):
    """2-D t-SNE points coloured by class, with a legend of class names."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    colors = plt.cm.tab10(np.arange(len(class_names)))
    for c, name in enumerate(class_names):
        mask = np.asarray(labels) == c
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, color=colors[c], label=name)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title or "t-SNE of the encoder's latents (mean over the 12x12 cells of each image)")
    fig.tight_layout()
    return fig


def class_code_heatmap(frequencies: np.ndarray, class_names: Sequence[str], *, title: Optional[str] = None):
    """Class x code heatmaps of code frequencies (each row sums to 1), codes sorted by their most frequent class.

    Top: the share of each class's latent cells that use the code, on a log
    colour scale (a few background codes take a quarter of all cells; on a
    linear scale they would hide everything else). Bottom: each code's
    frequency relative to the class that uses it most (1 = that class), where
    the codes a class owns form a bright block and codes all classes share
    form bright columns.
    """
    import seaborn as sns
    from matplotlib.colors import LogNorm

    order = np.lexsort((-frequencies.max(axis=0), frequencies.argmax(axis=0)))
    sorted_freq = frequencies[:, order]
    k = frequencies.shape[1]
    fig, axes = plt.subplots(2, 1, figsize=(min(2 + 0.16 * k, 18), 7.6), sharex=True)
    floor = 1e-4  # zero counts (codes a class never uses) are drawn as this
    sns.heatmap(
        np.maximum(sorted_freq, floor),
        ax=axes[0],
        cmap="magma",
        norm=LogNorm(vmin=floor, vmax=max(sorted_freq.max(), floor * 10)),
        cbar_kws={"label": "share of the class's cells (log)"},
        yticklabels=class_names,
        xticklabels=False,
    )
    axes[0].set_title(title or "Codebook usage per class (test images)")
    relative = sorted_freq / np.maximum(sorted_freq.max(axis=0, keepdims=True), 1e-12)
    sns.heatmap(
        relative,
        ax=axes[1],
        cmap="magma",
        vmin=0,
        vmax=1,
        cbar_kws={"label": "relative to the code's top class"},
        yticklabels=class_names,
        xticklabels=[str(i) for i in order] if k <= 64 else False,
    )
    axes[1].set_title(
        "The same, each code relative to the class that uses it most: blocks are the codes a class owns", fontsize=10
    )
    axes[1].set(xlabel="code (sorted by the class that uses it most)", ylabel="")
    axes[1].tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    return fig


def code_patches_figure(patches: Sequence[np.ndarray], row_labels: Sequence[str], *, title: Optional[str] = None):
    """One row of image patches (the receptive field of a latent cell) per code."""
    return image_grid(
        list(patches),
        row_labels=row_labels,
        scale=1.1,
        title=title or "Image patches whose latent cell uses a class-specific code",
    )


def class_reconstructions(
    originals: Sequence, reconstructions: Sequence, class_names: Sequence[str], *, title: Optional[str] = None
):
    """For each class, a row of test images and, below it, their reconstructions."""
    rows, labels = [], []
    for name, orig, recon in zip(class_names, originals, reconstructions, strict=True):
        rows += [orig, recon]
        labels += [name, "reconstructed"]
    return image_grid(
        rows,
        row_labels=labels,
        scale=0.9,
        title=title or "Test images (odd rows) above their reconstructions (even rows)",
    )


def per_class_mse_bars(table, *, title: Optional[str] = None):
    """Per-class reconstruction MSE, sorted, with the per-image standard deviation as error bars.

    `table` is `vqlib.analysis.per_class_errors`'s frame (class, mse_mean, mse_std).
    """
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(table)))
    ax.bar(table["class"], table["mse_mean"], yerr=table["mse_std"], color=colors, capsize=3)
    ax.set(ylabel="test reconstruction MSE", title=title or "Reconstruction error per class (mean ± std over images)")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def interpolation_figure(interpolations: Sequence, pair_names: Sequence[str], *, title: Optional[str] = None):
    """For each pair, the quantized decodes (top) and the unquantized decodes (below) along the line."""
    rows, labels = [], []
    for interp, name in zip(interpolations, pair_names, strict=True):
        rows += [interp.quantized, interp.continuous]
        labels += [f"{name}\nquantized", "unquantized"]
    weights = interpolations[0].weights if interpolations else []
    return image_grid(
        rows,
        row_labels=labels,
        col_labels=[f"t={w:.2f}" for w in weights],
        scale=1.0,
        title=title or "Linear interpolation of the encoder's output between two test images",
    )


# ----------------------------------------------------------------------------- explorer (notebook 05)
# Plain RGB arrays drawn with numpy and PIL, not matplotlib: a widget redraws them on every
# edit, and a matplotlib figure takes tens of ms to render where these take well under one.

EDIT_COLOR = (230, 30, 30)  # edited cells and changed pixels
SELECTION_COLOR = (20, 90, 230)  # the selected rectangle and the pixels it can reach


def code_colors(num_codes: int) -> np.ndarray:
    """(K, 3) uint8: a light colour per code, hues spread by the golden ratio so that neighbouring codes differ."""
    from matplotlib.colors import hsv_to_rgb

    hues = (np.arange(num_codes) * 0.6180339887) % 1.0
    hsv = np.stack([hues, np.full(num_codes, 0.45), np.full(num_codes, 0.97)], axis=1)
    return (255 * hsv_to_rgb(hsv)).round().astype(np.uint8)


def gray_rgb(image: np.ndarray | torch.Tensor, scale: int = 8) -> np.ndarray:
    """A (H, W) image in [0, 1] (or uint8) as (H*scale, W*scale, 3) uint8, nearest-neighbour enlarged."""
    gray = _as_images(np.asarray(image)[None])[0]
    pixels = (255 * gray).round().astype(np.uint8)
    return np.repeat(np.repeat(np.stack([pixels] * 3, axis=-1), scale, axis=0), scale, axis=1)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _outline(draw, box: tuple[int, int, int, int], color, width: int) -> None:
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), outline=color, width=width)


@functools.lru_cache(maxsize=8)
def code_tiles(num_codes: int, cell: int) -> np.ndarray:
    """(K, cell, cell, 3) uint8: each code's cell, its colour with its index written on it, drawn once."""
    from PIL import Image, ImageDraw

    font = _font(max(8, cell // 2))
    tiles = np.empty((num_codes, cell, cell, 3), dtype=np.uint8)
    for code, color in enumerate(code_colors(num_codes)):
        img = Image.new("RGB", (cell, cell), tuple(int(v) for v in color))
        draw = ImageDraw.Draw(img)
        draw.text((cell / 2, cell / 2), str(code), fill=(0, 0, 0), font=font, anchor="mm")
        # A white line on the right and bottom: equal neighbouring codes still read as separate cells.
        draw.line((0, cell - 1, cell, cell - 1), fill=(255, 255, 255))
        draw.line((cell - 1, 0, cell - 1, cell), fill=(255, 255, 255))
        tiles[code] = np.asarray(img)
    return tiles


def code_map_rgb(
    codes: np.ndarray | torch.Tensor,
    num_codes: int,
    *,
    cell: int = 22,
    edited: Optional[np.ndarray] = None,
    selection: Optional[tuple[tuple[int, int], tuple[int, int]]] = None,
) -> np.ndarray:
    """A code map drawn as cells coloured by code with the index in each; `edited` cells framed in red,
    the `selection` ((first row, last row), (first col, last col)) framed in blue."""
    from PIL import Image, ImageDraw

    codes = np.asarray(codes)
    h, w = codes.shape
    # Cached tiles put together by indexing: drawing 144 numbers anew took 25 ms per map.
    cells = code_tiles(num_codes, cell)[codes].transpose(0, 2, 1, 3, 4).reshape(h * cell, w * cell, 3)
    if edited is None and selection is None:
        return cells
    img = Image.fromarray(cells)
    draw = ImageDraw.Draw(img)
    if edited is not None:
        for r, c in zip(*np.nonzero(np.asarray(edited)), strict=True):
            _outline(draw, (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell), EDIT_COLOR, 2)
    if selection is not None:
        (r0, r1), (c0, c1) = selection
        _outline(draw, (c0 * cell, r0 * cell, (c1 + 1) * cell, (r1 + 1) * cell), SELECTION_COLOR, 3)
    return np.asarray(img)


def change_rgb(
    image: np.ndarray,
    difference: np.ndarray,
    changed: np.ndarray,
    *,
    window: Optional[tuple[int, int, int, int]] = None,
    scale: int = 8,
) -> np.ndarray:
    """The image in grey with the changed pixels tinted red (stronger for larger changes), and the pixel
    `window` (top, left, bottom, right) an edit of the selection can reach framed in blue."""
    from PIL import Image, ImageDraw

    rgb = gray_rgb(image, 1).astype(float) * 0.6
    strength = np.clip(np.abs(difference) / max(float(np.abs(difference).max()), 1e-6), 0.35, 1.0)
    tint = np.asarray(EDIT_COLOR, dtype=float)
    mask = np.asarray(changed)
    rgb[mask] = (1 - strength[mask, None]) * rgb[mask] + strength[mask, None] * tint
    rgb = np.repeat(np.repeat(rgb.round().astype(np.uint8), scale, axis=0), scale, axis=1)
    if window is None:
        return rgb
    img = Image.fromarray(rgb)
    top, left, bottom, right = window
    _outline(ImageDraw.Draw(img), (left * scale, top * scale, right * scale, bottom * scale), SELECTION_COLOR, 2)
    return np.asarray(img)


def heatmap_rgb(values: np.ndarray, *, cell: int = 22, vmax: Optional[float] = None) -> np.ndarray:
    """A (H, W) map of signed values as cells: red for positive, blue for negative, white for 0."""
    values = np.asarray(values, dtype=float)
    vmax = vmax or max(float(np.abs(values).max()), 1e-6)
    t = np.clip(values / vmax, -1.0, 1.0)[..., None]
    white = np.array([255.0, 255.0, 255.0])
    red, blue = np.array([200.0, 20.0, 20.0]), np.array([30.0, 70.0, 200.0])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    rgb = rgb.round().astype(np.uint8)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def patch_strip_rgb(patches: np.ndarray, *, scale: int = 4, gap: int = 4) -> np.ndarray:
    """Image patches (n, s, s) side by side on white, enlarged; a blank strip when there are none."""
    patches = np.asarray(patches)
    if len(patches) == 0:
        return np.full((scale * 12, scale * 12, 3), 255, dtype=np.uint8)
    tiles = [gray_rgb(p, scale) for p in patches]
    size = tiles[0].shape[0]
    strip = np.full((size, len(tiles) * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        strip[:, i * (size + gap) : i * (size + gap) + size] = tile
    return strip


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG file content of an RGB uint8 array (what an ipywidgets Image shows)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    # compress_level 1: a few times faster than the default 6, and these images are small anyway.
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the original study's claims (notebook 04)


def tsne_comparison(
    maps: dict, labels: np.ndarray, class_names: Sequence[str], *, accuracy: Optional[dict] = None, title=None
):
    """t-SNE maps side by side (name -> (N, 2) points, same images), each titled with its k-NN accuracy."""
    fig, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps) + 1.5, 5.6), squeeze=False)
    colors = plt.cm.tab10(np.arange(len(class_names)))
    labels = np.asarray(labels)
    for ax, (name, points) in zip(axes[0], maps.items(), strict=True):
        for c, cname in enumerate(class_names):
            mask = labels == c
            ax.scatter(points[mask, 0], points[mask, 1], s=5, alpha=0.7, color=colors[c], label=cname)
        ax.set_xticks([]), ax.set_yticks([])
        extra = f"\n10-NN accuracy in the map: {accuracy[name]:.2f}" if accuracy and name in accuracy else ""
        ax.set_title(f"{name}{extra}", fontsize=10)
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def specificity_histogram(claim: dict, *, title: Optional[str] = None):
    """Each code's largest P(class | code), observed and with shuffled labels (`codebook_usage_claim`'s numbers)."""
    numbers = claim["numbers"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(0, 1, 41)
    ax.hist(numbers["max_specificity_per_code"], bins=bins, alpha=0.7, label="true labels")
    if len(numbers["max_specificity_per_code_shuffled"]):
        ax.hist(numbers["max_specificity_per_code_shuffled"], bins=bins, alpha=0.6, label="labels shuffled once")
    ax.axvline(numbers["bar"], color="k", linestyle="--", linewidth=1, label=f"bar {numbers['bar']:g}")
    ax.set(
        xlabel="largest P(class | code), equal class priors",
        ylabel="codes",
        title=title or f"How class-specific each code is (NMI code-class {numbers['nmi']:.3f})",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def interpolation_claim_figure(claim: dict, *, title: Optional[str] = None):
    """Per path: each step relative to the path's mean step, and each interior frame's distance from a cross-fade."""
    numbers = claim["numbers"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for path in numbers["per_path"]:
        steps = np.asarray(path["steps"])
        axes[0].plot(np.arange(1, len(steps) + 1), steps / max(steps.mean(), 1e-12), color="C0", alpha=0.4)
        dev = np.asarray(path["crossfade_deviation"])
        axes[1].plot(np.arange(1, len(dev) + 1), dev, color="C1", alpha=0.4)
    axes[0].axhline(numbers["max_step_ratio"], color="k", linestyle="--", linewidth=1, label="smoothness bar")
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].set(xlabel="step along the path", ylabel="RMS change / mean step", title="Change per step (1 = even)")
    axes[0].legend(fontsize=8)
    axes[1].axhline(
        numbers["crossfade_tolerance"], color="k", linestyle="--", linewidth=1, label="cross-fade tolerance"
    )
    axes[1].set(
        xlabel="interior frame",
        ylabel="distance from cross-fade / end-to-end",
        title="Distance from a pixel cross-fade of the ends (0 = cross-fade)",
    )
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        epoch_axis(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reconstruction_claim_figure(claim: dict, *, title: Optional[str] = None):
    """Per class, mean per-image MSE and its coefficient of variation with bootstrap intervals; named classes marked."""
    numbers = claim["numbers"]
    rows = numbers["per_class"]
    names = [r["class"] for r in rows]
    best, worst = set(numbers["best_named"]), set(numbers["worst_named"])
    colors = ["C2" if n in best else "C3" if n in worst else "C7" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, key, label in (
        (axes[0], "mse_mean", "mean per-image MSE"),
        (axes[1], "cv", "coefficient of variation (std / mean)"),
    ):
        values = np.array([r[key] for r in rows])
        ci = np.array([r[f"{key}_interval" if key == "mse_mean" else "cv_interval"] for r in rows])
        ax.bar(names, values, color=colors, yerr=[values - ci[:, 0], ci[:, 1] - values], capsize=3)
        ax.set(ylabel=label)
        ax.tick_params(axis="x", rotation=35)
        ax.grid(axis="y", alpha=0.3)
    band = numbers["band"]
    axes[0].axvline(band - 0.5, color="k", linestyle="--", linewidth=1)
    axes[0].axvline(len(rows) - band - 0.5, color="k", linestyle="--", linewidth=1)
    axes[0].set_title(
        f"Classes by reconstruction error (green: the original study's best, red: its worst; dashes: the {band} best / worst)",
        fontsize=9,
    )
    axes[1].set_title(f"Variability relative to the mean ({numbers['confidence']:.0%} bootstrap intervals)", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the prior (notebook 06)


def position_bits_figure(maps: dict, *, title: Optional[str] = None):
    """One heatmap per model of the mean test bits at each code position (12 x 12), on a shared colour scale,
    and, when there are two or more, the first model's map minus the last's (what the last one gains where)."""
    names = list(maps)
    grids = [np.asarray(maps[name], dtype=float) for name in names]
    panels = len(grids) + (1 if len(grids) >= 2 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 3.4), squeeze=False)
    vmax = max(float(g.max()) for g in grids)
    for ax, name, grid in zip(axes[0], names, grids, strict=False):  # the last axis: the difference
        image = ax.imshow(grid, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{name}\n{grid.sum():.0f} bits per image", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[0][: len(grids)]), shrink=0.8, label="bits per position")
    if len(grids) >= 2:
        ax = axes[0][-1]
        gain = grids[0] - grids[-1]
        limit = float(np.abs(gain).max()) or 1.0
        image = ax.imshow(gain, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{names[0]}\nminus {names[-1]}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.8, label="bits saved")
    fig.suptitle(title or "Mean test bits at each position of the 12 x 12 code (raster order: left to right, top down)")
    return fig


def samples_beside_real(groups: dict, class_names: Sequence[str], *, title: Optional[str] = None):
    """One row per class, the groups of images side by side: `groups` maps a caption to (classes, n, 28, 28)
    images (uint8 or float in [0, 1])."""
    names = list(groups)
    arrays = [np.asarray(groups[name]) for name in names]
    per_group = [a.shape[1] for a in arrays]
    rows = len(class_names)
    columns = sum(per_group) + len(names) - 1  # a blank column between groups
    fig, axes = plt.subplots(rows, columns, figsize=(0.62 * columns + 1.2, 0.66 * rows + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    start = 0
    for name, array, n in zip(names, arrays, per_group, strict=True):
        images = _as_images(array.reshape(-1, *array.shape[-2:])).reshape(rows, n, *array.shape[-2:])
        for r in range(rows):
            for j in range(n):
                axes[r, start + j].imshow(images[r, j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, start].set_title(name, fontsize=9, loc="left")
        start += n + 1
    for r, label in enumerate(class_names):
        axes[r, 0].text(-4, 14, label, fontsize=8, ha="right", va="center")
    fig.suptitle(title or "Per class: real test images beside samples", y=0.99)
    fig.subplots_adjust(left=0.1, wspace=0.05, hspace=0.1)
    return fig


def completions_figure(originals, reconstructions, completions: Sequence, keep_rows: int, *, title=None):
    """Per test image: the image, its reconstruction, then completions that keep its first `keep_rows` code rows.

    `originals` and `reconstructions`: (n, 28, 28); `completions`: n batches of (m, 28, 28) or (m, 1, 28, 28).
    """
    rows = [
        np.concatenate([_as_images(np.asarray(o)[None]), _as_images(np.asarray(r)[None]), _as_images(c)])
        for o, r, c in zip(originals, reconstructions, completions, strict=True)
    ]
    n = len(completions[0]) if len(completions) else 0
    return image_grid(
        rows,
        col_labels=["test image", "reconstruction", *[f"completion {i + 1}" for i in range(n)]],
        title=title or f"Completions: the first {keep_rows} of 12 code rows kept, the rest sampled",
    )


def frechet_figure(table, *, title: Optional[str] = None):
    """Horizontal bars of the Fréchet distance of each set (`generation.frechet_table`), its value written at the end."""
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(table) + 1.2))
    names = [f"{s} ({n:,})" for s, n in zip(table["set"], table["images"], strict=True)]
    values = table["frechet_distance"].to_numpy()
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(table)))
    ax.barh(names[::-1], values[::-1], color=colors[::-1])
    for y, value in enumerate(values[::-1]):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set(xlabel="Fréchet distance to the validation images' features (lower is closer)")
    ax.set_title(title or "Fréchet distance in the feature space of a classifier trained on real pixels", fontsize=10)
    ax.set_xlim(0, 1.18 * max(values.max(), 1e-9))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def class_accuracy_figure(table, *, title: Optional[str] = None):
    """Grouped bars: the classifier's accuracy on each class (`generation.class_accuracy_table`), one bar per set."""
    classes = [c for c in table.index if c != "all"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(len(table.columns), 1)
    x = np.arange(len(classes))
    for i, column in enumerate(table.columns):
        ax.bar(x + (i - (len(table.columns) - 1) / 2) * width, 100 * table.loc[classes, column], width, label=column)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set(ylabel="classified as its class (%)", ylim=(0, 100))
    ax.set_title(title or "How recognisably each class is drawn (the classifier trained on real pixels)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    # Below the class names: inside, it hid bars; above, the title.
    ax.legend(fontsize=8, ncol=len(table.columns), loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    fig.tight_layout()
    return fig


def nearest_distance_figure(distances: dict, *, title: Optional[str] = None):
    """Histograms (as outlines, on shared bins) of each set's distance to its nearest training image."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    values = np.concatenate([np.asarray(d, dtype=float) for d in distances.values()])
    bins = np.linspace(0, float(values.max()) * 1.02 if len(values) else 1.0, 50)
    for name, d in distances.items():
        ax.hist(d, bins=bins, histtype="step", linewidth=1.6, density=True, label=f"{name} (median {np.median(d):.2f})")
    ax.set(xlabel="Euclidean distance to the nearest training image (pixels in [0, 1])", ylabel="density")
    ax.set_title(title or "Distance to the nearest training image: alike if the prior does not copy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
