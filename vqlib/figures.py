"""The README's figures, from the published study alone: `vqlib figures` (`make figures`).

Reads only what git tracks (``results/published/`` and ``checkpoints/pretrained/``):
no training, no data, no GPU. The grid's figures are drawn again by the
functions notebook 02 draws them with (`plots.plot_losses`, `plots.grid_heatmaps`),
over every published run, so they show a study still in progress as far as it
got, and so are label efficiency's paired differences, from its published rows; the
classifier's other figure and the analysis's need the data and the models, so they are
the published copies of what notebooks 03, 04 and 06 and `vqlib rate-distortion` drew.

Reruns do not churn git: fixed size and dpi, no software version or date in
the PNG, and a file is rewritten only when its content changes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import paths
from .errors import OutputError
from .files import atomic_path, ensure_dir, save_figure
from .grid import SUMMARY_FILE
from .notebooks import ANALYSIS_FILE, LABEL_EFFICIENCY_FIGURE
from .train import METRICS_FILE

FIGURE_DPI = 110
# PNG text chunks matplotlib would write (its version): left out, so a rerun elsewhere gives the same bytes.
PNG_METADATA = {"Software": None}
# The analysis figures the README shows, as notebook 04 names them.
ANALYSIS_README_FIGURES = (
    "tsne.png",
    "code_usage_per_class.png",
    "code_patches.png",
    "reconstructions_per_class.png",
    "per_class_mse.png",
    "interpolations.png",
)


SEED_SPREAD_FIGURE = "seed_spread.png"
# Label efficiency's paired differences to the head on the frozen code, drawn from the published rows.
PAIRED_DIFFERENCES_FIGURE = "label_efficiency_paired.png"
# Notebook 06's figures the README shows, copied under these names (the prior's samples and completions).
PRIOR_README_FIGURES = {"samples_per_class.png": "prior_samples.png", "completions.png": "prior_completions.png"}
# `vqlib rate-distortion`'s figure, published by `vqlib publish`'s codec stage.
CODEC_README_FIGURE = "rate_distortion.png"


class NothingPublishedError(OutputError):
    """No run of the study is published yet, so there is nothing to draw."""


@dataclass
class FiguresResult:
    folder: Path
    written: list[Path] = field(default_factory=list)  # drawn or copied, changed or not
    changed: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "NAME: why", one per figure not made


def _write_if_changed(target: Path, data: bytes, result: FiguresResult) -> None:
    result.written.append(target)
    if target.is_file() and target.read_bytes() == data:
        return
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    result.changed.append(target)


def _save(fig, target: Path, result: FiguresResult) -> None:
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        drawn = save_figure(fig, Path(tmp) / target.name, dpi=FIGURE_DPI, metadata=PNG_METADATA)
        plt.close(fig)
        _write_if_changed(target, drawn.read_bytes(), result)


def write_figures(out: Optional[str | os.PathLike] = None) -> FiguresResult:
    """Draw (or copy) every README figure the published study allows into `out` (docs/figures).

    A figure whose inputs are not published yet is skipped and named in
    `skipped`; with nothing published at all, a `NothingPublishedError`.
    """
    from .grid import collect_grid, load_losses
    from .plots import grid_heatmaps, plot_losses
    from .publish import (
        finished_runs,
        published_analysis_dir,
        published_classifier_dir,
        published_codec_dir,
        published_grid_dir,
        published_prior_measures_dir,
        published_seed_spread_dir,
    )

    result = FiguresResult(folder=Path(out) if out else paths.figures_dir())
    runs = finished_runs(published_grid_dir())
    analysis = published_analysis_dir()
    classifiers = sorted(p.parent for p in published_classifier_dir().glob(f"*/{METRICS_FILE}"))
    spread = published_seed_spread_dir() / SUMMARY_FILE
    if not runs and not (analysis / ANALYSIS_FILE).is_file() and not classifiers and not spread.is_file():
        raise NothingPublishedError(
            f"nothing is published under {paths.published_dir()} yet, so there is no figure to draw; "
            "run the study and `vqlib publish` first"
        )
    ensure_dir(result.folder)

    if runs:
        frame = collect_grid(published_grid_dir(), names=runs)
        title = f"Training of the {len(runs)} published configuration(s)"
        _save(plot_losses(load_losses(published_grid_dir()), title=title), result.folder / "loss_curves.png", result)
        _save(grid_heatmaps(frame), result.folder / "grid_heatmaps.png", result)
    else:
        why = f"no finished grid run is published in {paths.shown(published_grid_dir())}"
        result.skipped += [f"loss_curves.png: {why}", f"grid_heatmaps.png: {why}"]

    if spread.is_file():
        import pandas as pd

        frame = pd.read_csv(spread)
        fig = grid_heatmaps(frame)
        budget = {
            f"{int(e)} epochs on {'all' if pd.isna(n) else f'{int(n):,}'} training images"
            for e, n in zip(frame["epochs"], frame["train_subset"], strict=True)
            if not pd.isna(e)
        }
        fig.suptitle(f"Seed-to-seed spread of the grid: {'; '.join(sorted(budget))} per run", y=1.02)
        _save(fig, result.folder / SEED_SPREAD_FIGURE, result)
    else:
        result.skipped.append(f"{SEED_SPREAD_FIGURE}: no grid with several seeds is published in {paths.shown(spread)}")

    if (analysis / ANALYSIS_FILE).is_file():
        for name in ANALYSIS_README_FIGURES:
            if (analysis / name).is_file():
                _write_if_changed(result.folder / name, (analysis / name).read_bytes(), result)
            else:
                result.skipped.append(f"{name}: not in {paths.shown(analysis)}")
    else:
        why = f"the analysis (notebook 04) is not published in {paths.shown(analysis)}"
        result.skipped += [f"{name}: {why}" for name in ANALYSIS_README_FIGURES]

    # publish keeps one classifier: the one of the grid's choice.
    efficiency = [c / LABEL_EFFICIENCY_FIGURE for c in classifiers if (c / LABEL_EFFICIENCY_FIGURE).is_file()]
    if efficiency:
        _write_if_changed(result.folder / LABEL_EFFICIENCY_FIGURE, efficiency[-1].read_bytes(), result)
    else:
        result.skipped.append(
            f"{LABEL_EFFICIENCY_FIGURE}: the classifier (notebook 03) is not published in "
            f"{paths.shown(published_classifier_dir())}"
        )

    # The paired differences are drawn again from the published rows, as notebook 03 draws them.
    rows = [c / "label_efficiency.csv" for c in classifiers if (c / "label_efficiency.csv").is_file()]
    if rows:
        import pandas as pd

        from .label_efficiency import paired_differences
        from .plots import paired_differences_figure

        differences = paired_differences(pd.read_csv(rows[-1]), reference="vq_head")
        _save(paired_differences_figure(differences), result.folder / PAIRED_DIFFERENCES_FIGURE, result)
    else:
        result.skipped.append(
            f"{PAIRED_DIFFERENCES_FIGURE}: the classifier (notebook 03) is not published in "
            f"{paths.shown(published_classifier_dir())}"
        )

    prior = published_prior_measures_dir()
    for name, target in PRIOR_README_FIGURES.items():
        if (prior / name).is_file():
            _write_if_changed(result.folder / target, (prior / name).read_bytes(), result)
        else:
            result.skipped.append(f"{target}: notebook 06's {name} is not published in {paths.shown(prior)}")
    codec = published_codec_dir() / CODEC_README_FIGURE
    if codec.is_file():
        _write_if_changed(result.folder / CODEC_README_FIGURE, codec.read_bytes(), result)
    else:
        result.skipped.append(f"{CODEC_README_FIGURE}: the codec comparison is not published in {paths.shown(codec)}")
    return result
