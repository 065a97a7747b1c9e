"""The grid's runs published as they finish, snapshots of the runs and label-efficiency studies still under
way, and their restoration on a fresh clone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

from .. import paths
from ..checkpoints import BEST_FILE, PRETRAINED_PREFIX
from ..errors import OutputError
from ..files import atomic_path, ensure_dir, read_json, read_json_or_empty, write_json
from ..grid import RUN_FILE, SUMMARY_FILE
from ..notebooks import TRAIN_NOTEBOOK
from ..train import METRICS_FILE
from .common import (
    CHECKPOINT_FILES,
    SNAPSHOT_FILES,
    _copy,
    _lines,
    _Writer,
    inprogress_dir,
    portable,
    portable_vqvae_payload,
    published_classifier_dir,
    published_grid_dir,
    run_renames,
)


def finished_runs(grid_folder: str | os.PathLike) -> list[str]:
    """Names of the runs in `grid_folder` whose metrics record success."""
    root = Path(grid_folder)
    return sorted(
        p.name
        for p in root.glob("K*_D*")
        if paths.parse_vqvae_run_name(p.name) and read_json_or_empty(p / METRICS_FILE).get("status") == "success"
    )


def publish_runs(
    grid_folder: str | os.PathLike,
    checkpoint_root: str | os.PathLike,
    names: Optional[list[str]] = None,
    *,
    published: Optional[Path] = None,
    suffix: str = "",
    snapshots: Optional[Path] = None,
) -> list[str]:
    """Copy finished runs (all, or `names`) of a grid into the published folders; return the names whose published
    files changed.

    A run is copied when its published files are missing or older than the run's
    metrics, and a file only when its content changed; the checkpoint is written
    before the metrics that name it. The run
    folders go to `published` (default: the study's grid, whose summary and
    choice are published too; the protocol's extra seeds go to their own folder).
    The checkpoint is published as ``pretrained:NAME<suffix>``, and the run's
    snapshot, kept while it trained, is removed from `snapshots` (default:
    `inprogress_dir`).
    """
    from ..checkpoints import load_checkpoint

    grid_folder, checkpoint_root = Path(grid_folder), Path(checkpoint_root)
    study = published is None
    published = published_grid_dir() if study else Path(published)
    snapshots = inprogress_dir() if snapshots is None else Path(snapshots)
    done = finished_runs(grid_folder)
    wanted = done if names is None else names
    missing = sorted(set(wanted) - set(done))
    if missing:
        raise OutputError(f"cannot publish {', '.join(missing)}: no successful run of that name in {grid_folder}")
    copied = []
    for name in wanted:
        source_metrics = grid_folder / name / METRICS_FILE
        target_metrics = published / name / METRICS_FILE
        if target_metrics.is_file() and target_metrics.stat().st_mtime >= source_metrics.stat().st_mtime:
            continue
        for file in CHECKPOINT_FILES:
            if not (checkpoint_root / name / file).is_file():
                raise OutputError(f"cannot publish {name}: {checkpoint_root / name / file} is missing")
        writer = _Writer()
        pretrained = paths.pretrained_dir() / (name + suffix)
        for file in CHECKPOINT_FILES:
            if file.endswith(".json"):  # config.json names the folders it was trained in
                writer.json(pretrained / file, portable(read_json(checkpoint_root / name / file)))
            else:  # best.pt: the same weights, without the folders its TrainConfig names
                ckpt = load_checkpoint(checkpoint_root / name / file, kind="vqvae")
                writer.checkpoint(pretrained / file, "vqvae", portable_vqvae_payload(ckpt))
        if (grid_folder / name / TRAIN_NOTEBOOK).is_file():
            # The executed notebook prints its config and folders, and papermill records its paths.
            writer.text(
                grid_folder / name / TRAIN_NOTEBOOK,
                published / name / TRAIN_NOTEBOOK,
                run_renames(checkpoint_root, [name], suffix),
            )
        if (grid_folder / name / RUN_FILE).is_file():
            writer.json(published / name / RUN_FILE, portable(read_json(grid_folder / name / RUN_FILE)))
        metrics = read_json(source_metrics)
        metrics = portable({**metrics, "checkpoint": PRETRAINED_PREFIX + name + suffix})
        writer.json(target_metrics, metrics)
        shutil.rmtree(snapshots / name, ignore_errors=True)
        if writer.changed:  # a run whose files were rewritten with the same content is not news
            copied.append(name)
    if study:
        _publish_choice(grid_folder)
    return copied


def _publish_choice(grid_folder: Path) -> None:
    """The grid's summary.csv and best.json, with every checkpoint named as published (pretrained:NAME)."""
    import pandas as pd

    published = set(finished_runs(published_grid_dir()))
    best = read_json_or_empty(grid_folder / BEST_FILE)
    writer = _Writer()
    if best.get("name") in published:
        writer.json(
            published_grid_dir() / BEST_FILE, portable({**best, "checkpoint": PRETRAINED_PREFIX + best["name"]})
        )
    if (grid_folder / SUMMARY_FILE).is_file():
        summary = pd.read_csv(grid_folder / SUMMARY_FILE)
        summary["checkpoint"] = [PRETRAINED_PREFIX + name if name in published else "" for name in summary["name"]]
        summary = summary.drop(columns=["notebook"], errors="ignore")  # a path on the machine that ran it
        writer.csv(published_grid_dir() / SUMMARY_FILE, summary)


def snapshot_unfinished(
    grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike, *, snapshots: Optional[Path] = None
) -> dict[str, int]:
    """Snapshot every unfinished run with a last.pt into `snapshots` (default: checkpoints/inprogress/);
    return {name: epochs done}.

    The snapshot holds no path of the machine: the checkpoints' TrainConfig folders are dropped and
    config.json made portable (a resumed run may change its folders: train.RESUMABLE_CHANGES).
    """
    from ..checkpoints import load_checkpoint, save_checkpoint

    snapshots = inprogress_dir() if snapshots is None else Path(snapshots)
    done = set(finished_runs(grid_folder))
    taken = {}
    for folder in sorted(Path(checkpoint_root).glob("K*_D*")):
        name = folder.name
        if name in done or not paths.parse_vqvae_run_name(name) or not (folder / "last.pt").is_file():
            continue
        # last.pt first: copied before best.pt, the snapshot never holds a last.pt newer than its best.pt.
        for file in SNAPSHOT_FILES:
            source, target = folder / file, snapshots / name / file
            if not source.is_file():
                continue
            ensure_dir(target.parent)
            if file.endswith(".pt"):
                save_checkpoint(target, "vqvae", portable_vqvae_payload(load_checkpoint(source, kind="vqvae")))
            elif file == "config.json":
                write_json(target, portable(read_json(source)))
            else:
                _copy(source, target)
        taken[name] = load_checkpoint(snapshots / name / "last.pt")["epoch"]
    return taken


def label_efficiency_snapshots() -> Path:
    """Where the finished rows of label-efficiency studies not yet published are kept."""
    return inprogress_dir() / "label_efficiency"


def _rows_published(rows: list[str], name: str) -> bool:
    """Whether every one of these finished label-efficiency rows is in classifier `name`'s published runs file."""
    from ..label_efficiency import RUNS_FILE

    return set(rows) <= set(_lines(published_classifier_dir() / name / RUNS_FILE))


class LabelEfficiencySnapshot(NamedTuple):
    """What `snapshot_label_efficiency` took of one classifier folder."""

    rows: int  # finished rows (label_efficiency.runs.jsonl)
    unfinished: tuple[str, ...]  # rows under way (.unfinished/): a network's last epoch, a regression's fits folder


def _unfinished_rows(folder: Path) -> list[Path]:
    """The rows under way in a classifier folder: each network row's last epoch (METHOD_Npc_sSEED.pt) and each
    regression row's folder of finished fits (METHOD_Npc_sSEED/, one C=<c>.npz per value of C)."""
    from ..label_efficiency import UNFINISHED_DIR

    under_way = (folder / UNFINISHED_DIR).glob("*")
    return sorted(p for p in under_way if (p.is_file() and p.suffix == ".pt") or (p.is_dir() and any(p.glob("*.npz"))))


def _copy_row(source: Path, target: Path) -> None:
    """Copy a row under way: a last epoch, or a fits folder file by file (each fit is whole or absent)."""
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if path.is_file():
                _copy(path, target / path.name)
    else:
        _copy(source, target)


def snapshot_label_efficiency() -> dict[str, LabelEfficiencySnapshot]:
    """Snapshot the label-efficiency study of every classifier folder that holds rows its published copy does not
    (a study not yet published, or one run again with other settings): its finished rows
    (label_efficiency.runs.jsonl) and each row under way (.unfinished/, replaced as a whole): a network's last
    epoch, a regression's finished fits. Drop the snapshots whose rows are all published and that have nothing under way.

    Notebook 03's label efficiency at the protocol runs for hours, one network row
    (the CNN on all labels) for more than one; with these snapshotted, a fresh clone
    (`vqlib publish --restore`) continues it from the last finished row, and that
    row from its last snapshotted epoch, instead of from the start.
    """
    from ..label_efficiency import RUNS_FILE, UNFINISHED_DIR

    taken = {}
    folders = {p.parent for p in paths.classifier_dir().glob(f"*/{RUNS_FILE}")}
    folders |= {p.parent for p in paths.classifier_dir().glob(f"*/{UNFINISHED_DIR}")}
    for folder in sorted(folders):
        name, rows, unfinished = folder.name, _lines(folder / RUNS_FILE), _unfinished_rows(folder)
        if _rows_published(rows, name) and not unfinished:
            continue
        target = label_efficiency_snapshots() / name
        if rows:
            _copy(folder / RUNS_FILE, target / RUNS_FILE)
        shutil.rmtree(target / UNFINISHED_DIR, ignore_errors=True)
        for path in unfinished:
            _copy_row(path, target / UNFINISHED_DIR / path.name)
        taken[name] = LabelEfficiencySnapshot(len(rows), tuple(p.name for p in unfinished))
    if label_efficiency_snapshots().is_dir():
        for snapshot in sorted(p for p in label_efficiency_snapshots().iterdir() if p.is_dir()):
            if snapshot.name not in taken and _rows_published(_lines(snapshot / RUNS_FILE), snapshot.name):
                shutil.rmtree(snapshot)
    return taken


def restore_label_efficiency() -> list[str]:
    """Put the label-efficiency studies, published and snapshotted, where this checkout has nothing of its own for
    them (a local runs file or row under way is at least as new as any copy taken from it): the finished rows, and
    the snapshotted epochs of the rows under way. Notebook 03 run again reuses every row measured with its settings
    and continues the others."""
    from ..label_efficiency import RUNS_FILE, UNFINISHED_DIR

    restored = []
    snapshots = label_efficiency_snapshots()
    sources = {p.parent.name for p in published_classifier_dir().glob(f"*/{RUNS_FILE}")}
    sources |= {p.name for p in snapshots.iterdir() if p.is_dir()} if snapshots.is_dir() else set()
    for name in sorted(sources):
        folder = paths.classifier_dir() / name
        if (folder / RUNS_FILE).is_file() or (folder / UNFINISHED_DIR).is_dir():
            continue
        rows = _lines(published_classifier_dir() / name / RUNS_FILE)
        known = set(rows)
        rows += [line for line in _lines(snapshots / name / RUNS_FILE) if line not in known]
        if rows:
            ensure_dir(folder)
            with atomic_path(folder / RUNS_FILE) as tmp:
                tmp.write_text("".join(line + "\n" for line in rows))
        under_way = _unfinished_rows(snapshots / name)
        for path in under_way:
            _copy_row(path, folder / UNFINISHED_DIR / path.name)
        if rows or under_way:
            restored.append(name)
    return restored


def restore_runs(
    grid_folder: str | os.PathLike,
    checkpoint_root: str | os.PathLike,
    *,
    published: Optional[Path] = None,
    suffix: str = "",
    snapshots: Optional[Path] = None,
) -> list[str]:
    """Copy the published runs into a grid's folders where the grid has no finished run of that name,
    and the snapshots of unfinished runs where the grid has no last.pt of its own.

    The restored metrics name the restored best.pt by its path, as the grid
    writes them; the grid then reuses a finished run when its settings match,
    and continues an unfinished one from its last.pt. `published` is where the
    runs were published (default: the study's grid, whose runs and snapshots
    have seed 0; the protocol's extra seeds have other seeds). `suffix` and
    `snapshots` are those the runs were published with (`publish_runs`): a
    study of its own, with its own snapshot folder, takes every snapshot in it.
    """
    grid_folder, checkpoint_root = Path(grid_folder), Path(checkpoint_root)
    study = published is None
    published_grid = published_grid_dir() if study else Path(published)
    own_snapshots = snapshots is not None
    snapshots = Path(snapshots) if own_snapshots else inprogress_dir()
    have = set(finished_runs(grid_folder))
    restored = []
    for name in finished_runs(published_grid):
        if name in have:
            continue
        for file in CHECKPOINT_FILES:
            _copy(paths.pretrained_dir() / (name + suffix) / file, checkpoint_root / name / file)
        if (published_grid / name / TRAIN_NOTEBOOK).is_file():
            _copy(published_grid / name / TRAIN_NOTEBOOK, grid_folder / name / TRAIN_NOTEBOOK)
        if (published_grid / name / RUN_FILE).is_file():
            record = read_json(published_grid / name / RUN_FILE)
            record["notebook"] = str((grid_folder / name / TRAIN_NOTEBOOK).resolve())
            write_json(grid_folder / name / RUN_FILE, record)
        metrics = read_json(published_grid / name / METRICS_FILE)
        metrics["checkpoint"] = str((checkpoint_root / name / "best.pt").resolve())
        write_json(grid_folder / name / METRICS_FILE, metrics)
        # As old as what it was restored from: the next publish has nothing new to copy back.
        published_time = (published_grid / name / METRICS_FILE).stat().st_mtime
        os.utime(grid_folder / name / METRICS_FILE, (published_time, published_time))
        restored.append(name)
    for snapshot in sorted(snapshots.glob("K*_D*")):
        name = snapshot.name
        if name in have or name in restored or (checkpoint_root / name / "last.pt").is_file():
            continue  # a local last.pt is at least as new as the snapshot it was taken from
        if not own_snapshots and (paths.parse_vqvae_run_name(name)[2] == 0) != study:
            continue  # the study's grid has seed 0; the protocol's extra seeds go to their own grid
        for file in SNAPSHOT_FILES:
            if (snapshot / file).is_file():
                _copy(snapshot / file, checkpoint_root / name / file)
        restored.append(name)
    return restored
