"""The published study: grid runs copied into tracked folders, and back.

A finished grid run is published as soon as it ends, so that a long study that
spans several machines or sessions loses at most the run in progress:

- ``checkpoints/pretrained/NAME/``: best.pt, config.json, history.json
  (``pretrained:NAME`` loads it anywhere a checkpoint is taken);
- ``results/published/grid/NAME/``: metrics.json (its checkpoint named
  ``pretrained:NAME``), run.json and the executed notebook.

A run still training is snapshotted too (`snapshot_unfinished`): its last.pt,
best.pt and history in ``checkpoints/inprogress/NAME/``, replaced at every
publish and removed once the run is published as finished. `restore_runs`
copies both back into a grid's folders, so that ``vqlib run --profile full``
on a fresh clone reuses the finished runs and continues the unfinished ones
from their last snapshotted epoch. A finished run publishes no last.pt
(optimiser state): only what is small and useful stays.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from . import paths
from .checkpoints import BEST_FILE, PRETRAINED_PREFIX
from .errors import OutputError
from .files import atomic_path, ensure_dir, read_json, read_json_or_empty, write_csv, write_json
from .grid import RUN_FILE, SUMMARY_FILE
from .notebooks import TRAIN_NOTEBOOK
from .train import METRICS_FILE

CHECKPOINT_FILES = ("best.pt", "config.json", "history.json")
SNAPSHOT_FILES = ("last.pt", *CHECKPOINT_FILES)
RESULT_FILES = (METRICS_FILE, RUN_FILE, TRAIN_NOTEBOOK)


def published_grid_dir() -> Path:
    return paths.published_dir() / "grid"


def inprogress_dir() -> Path:
    """Snapshots of runs still training (tracked, so a fresh clone can continue them)."""
    return paths.checkpoints_dir() / "inprogress"


def _copy(source: Path, target: Path) -> None:
    ensure_dir(target.parent)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def finished_runs(grid_folder: str | os.PathLike) -> list[str]:
    """Names of the runs in `grid_folder` whose metrics record success."""
    root = Path(grid_folder)
    return sorted(
        p.name
        for p in root.glob("K*_D*")
        if paths.parse_vqvae_run_name(p.name) and read_json_or_empty(p / METRICS_FILE).get("status") == "success"
    )


def publish_runs(
    grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike, names: Optional[list[str]] = None
) -> list[str]:
    """Copy finished runs (all, or `names`) of a grid into the published folders; return the names copied.

    A run is copied when its published files are missing or older than the run's
    metrics; the checkpoint is written before the metrics that name it.
    """
    grid_folder, checkpoint_root = Path(grid_folder), Path(checkpoint_root)
    done = finished_runs(grid_folder)
    wanted = done if names is None else names
    missing = sorted(set(wanted) - set(done))
    if missing:
        raise OutputError(f"cannot publish {', '.join(missing)}: no successful run of that name in {grid_folder}")
    copied = []
    for name in wanted:
        source_metrics = grid_folder / name / METRICS_FILE
        target_metrics = published_grid_dir() / name / METRICS_FILE
        if target_metrics.is_file() and target_metrics.stat().st_mtime >= source_metrics.stat().st_mtime:
            continue
        for file in CHECKPOINT_FILES:
            if not (checkpoint_root / name / file).is_file():
                raise OutputError(f"cannot publish {name}: {checkpoint_root / name / file} is missing")
        for file in CHECKPOINT_FILES:
            _copy(checkpoint_root / name / file, paths.pretrained_dir() / name / file)
        for file in (RUN_FILE, TRAIN_NOTEBOOK):
            if (grid_folder / name / file).is_file():
                _copy(grid_folder / name / file, published_grid_dir() / name / file)
        metrics = read_json(source_metrics)
        metrics["checkpoint"] = PRETRAINED_PREFIX + name
        write_json(target_metrics, metrics)
        shutil.rmtree(inprogress_dir() / name, ignore_errors=True)
        copied.append(name)
    _publish_choice(grid_folder)
    return copied


def _publish_choice(grid_folder: Path) -> None:
    """The grid's summary.csv and best.json, with every checkpoint named as published (pretrained:NAME)."""
    import pandas as pd

    published = set(finished_runs(published_grid_dir()))
    best = read_json_or_empty(grid_folder / BEST_FILE)
    if best.get("name") in published:
        write_json(published_grid_dir() / BEST_FILE, {**best, "checkpoint": PRETRAINED_PREFIX + best["name"]})
    if (grid_folder / SUMMARY_FILE).is_file():
        summary = pd.read_csv(grid_folder / SUMMARY_FILE)
        summary["checkpoint"] = [PRETRAINED_PREFIX + name if name in published else "" for name in summary["name"]]
        summary = summary.drop(columns=["notebook"], errors="ignore")  # a path on the machine that ran it
        write_csv(published_grid_dir() / SUMMARY_FILE, summary)


def snapshot_unfinished(grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike) -> dict[str, int]:
    """Snapshot every unfinished run with a last.pt into checkpoints/inprogress/; return {name: epochs done}."""
    from .checkpoints import load_checkpoint

    done = set(finished_runs(grid_folder))
    taken = {}
    for folder in sorted(Path(checkpoint_root).glob("K*_D*")):
        name = folder.name
        if name in done or not paths.parse_vqvae_run_name(name) or not (folder / "last.pt").is_file():
            continue
        # last.pt first: copied before best.pt, the snapshot never holds a last.pt newer than its best.pt.
        for file in SNAPSHOT_FILES:
            if (folder / file).is_file():
                _copy(folder / file, inprogress_dir() / name / file)
        taken[name] = load_checkpoint(inprogress_dir() / name / "last.pt")["epoch"]
    return taken


def restore_runs(grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike) -> list[str]:
    """Copy the published runs into a grid's folders where the grid has no finished run of that name,
    and the snapshots of unfinished runs where the grid has no last.pt of its own.

    The restored metrics name the restored best.pt by its path, as the grid
    writes them; the grid then reuses a finished run when its settings match,
    and continues an unfinished one from its last.pt.
    """
    grid_folder, checkpoint_root = Path(grid_folder), Path(checkpoint_root)
    have = set(finished_runs(grid_folder))
    restored = []
    for name in finished_runs(published_grid_dir()):
        if name in have:
            continue
        for file in CHECKPOINT_FILES:
            _copy(paths.pretrained_dir() / name / file, checkpoint_root / name / file)
        for file in (RUN_FILE, TRAIN_NOTEBOOK):
            if (published_grid_dir() / name / file).is_file():
                _copy(published_grid_dir() / name / file, grid_folder / name / file)
        metrics = read_json(published_grid_dir() / name / METRICS_FILE)
        metrics["checkpoint"] = str((checkpoint_root / name / "best.pt").resolve())
        write_json(grid_folder / name / METRICS_FILE, metrics)
        restored.append(name)
    for snapshot in sorted(inprogress_dir().glob("K*_D*")):
        name = snapshot.name
        if name in have or name in restored or (checkpoint_root / name / "last.pt").is_file():
            continue  # a local last.pt is at least as new as the snapshot it was taken from
        for file in SNAPSHOT_FILES:
            if (snapshot / file).is_file():
                _copy(snapshot / file, checkpoint_root / name / file)
        restored.append(name)
    return restored
