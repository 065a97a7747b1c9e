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
from their last snapshotted epoch. The finished rows of a label-efficiency
study that are not published (its classifier is not, or it runs again with
other settings) are snapshotted the same way, with the last epoch of each
network row under way (`snapshot_label_efficiency`,
``checkpoints/inprogress/label_efficiency/``), and restored, with the published
ones, by `restore_label_efficiency`. A finished run publishes no last.pt
(optimiser state): only what is small and useful stays.

Once the grid has chosen its best configuration among published runs, the
stages after it are published too (`publish_stages`), each only when all its
outputs exist, so that a published set never looks complete when it is not:

- ``results/published/grid/``: notebook 02's loss curves and K x D heatmaps;
- the chosen classifier (notebook 03's, on the best VQ-VAE) as
  ``checkpoints/pretrained/RUN/`` (``pretrained:RUN``) and its metrics, test
  report and label efficiency (with its finished rows, label_efficiency.runs.jsonl)
  in ``results/published/classifier/RUN/``;
- ``results/published/analysis/``: notebook 04's analysis.json and figures;
- ``results/published/reports/``: the HTML reports and index.html, once the
  three stages above are published and the reports are newer than their notebooks.

Beside the study, `publish_seed_spread` publishes the summary of a grid run
with several seeds (``vqlib grid --seeds 0,1,2``) into
``results/published/seed_spread/summary.csv``: the seed-to-seed spread that
says whether the study's winner won by more than the noise of one training run.

A grid trained at the protocol with the cosine learning rate (``vqlib grid --lr-schedule cosine``)
publishes apart from the study whose run names it shares (`publish_lr_schedule`): its runs in
``results/published/lr_schedule/NAME/``, their checkpoints as ``pretrained:NAME_cosine``, its
unfinished runs snapshotted in ``checkpoints/inprogress/lr_schedule/NAME/``, and a summary and
a comparison with the published constant-rate runs of the same seeds beside them.

No published JSON names a path of the machine that ran the study: checkpoints
become ``pretrained:NAME``, other paths inside the project become relative.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from . import paths
from .checkpoints import BEST_FILE, PRETRAINED_PREFIX
from .errors import CheckpointError, ConfigError, OutputError, ResultFileError
from .files import atomic_path, ensure_dir, read_json, read_json_or_empty, write_csv, write_json
from .grid import RUN_FILE, SUMMARY_FILE, with_seed_statistics
from .notebooks import (
    ANALYSIS_FIGURES,
    ANALYSIS_FILE,
    GENERATION_FILE,
    LABEL_EFFICIENCY_FIGURE,
    PRIOR_FIGURES,
    SUMMARY_FIGURES,
    TRAIN_NOTEBOOK,
)
from .train import METRICS_FILE

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_FILES = ("best.pt", "config.json", "history.json")
SNAPSHOT_FILES = ("last.pt", *CHECKPOINT_FILES)
RESULT_FILES = (METRICS_FILE, RUN_FILE, TRAIN_NOTEBOOK)
# What notebook 03 leaves in its results folder besides metrics.json (written last, and published last).
CLASSIFIER_RESULT_FILES = (
    "metrics_test.json",
    "per_class_test.csv",
    "confusion_matrix_test.csv",
    "confusion_matrix_test.png",
    "label_efficiency.csv",
    LABEL_EFFICIENCY_FIGURE,
)
# The repository's budget for everything published, README figures and the snapshots of runs in progress included:
# the protocol's extra seeds (about 2 MB a snapshot) and the prior over the code need room beside the study.
PUBLISHED_LIMIT_BYTES = 40 * 1000 * 1000


def published_grid_dir() -> Path:
    return paths.published_dir() / "grid"


def published_classifier_dir() -> Path:
    return paths.published_dir() / "classifier"


def published_analysis_dir() -> Path:
    return paths.published_dir() / "analysis"


def published_reports_dir() -> Path:
    return paths.published_dir() / "reports"


def published_seed_spread_dir() -> Path:
    return paths.published_dir() / "seed_spread"


def published_folders() -> list[Path]:
    """Every folder `vqlib publish` writes (tracked in git), and the README's figures."""
    return [paths.pretrained_dir(), inprogress_dir(), paths.published_dir(), paths.figures_dir()]


def published_bytes() -> int:
    """Size of every file in the published folders."""
    return sum(f.stat().st_size for folder in published_folders() for f in folder.rglob("*") if f.is_file())


def inprogress_dir() -> Path:
    """Snapshots of runs still training (tracked, so a fresh clone can continue them)."""
    return paths.checkpoints_dir() / "inprogress"


def _copy(source: Path, target: Path) -> None:
    ensure_dir(target.parent)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def portable(value: Any, renames: Optional[dict[str, str]] = None) -> Any:
    """A JSON value with no path of this machine in it: every string in `renames` (a checkpoint's
    path) replaced by its published name (``pretrained:NAME``), other absolute paths inside the
    project by their path relative to it, and those outside it by their file name."""
    renames = renames or {}
    if isinstance(value, dict):
        return {k: portable(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, renames) for v in value]
    if not isinstance(value, str):
        return value
    if value in renames:
        return renames[value]
    if not value.startswith("/"):
        return value
    path = Path(value)
    try:
        return path.resolve().relative_to(paths.project_root()).as_posix()
    except ValueError:
        return path.name


def portable_text(text: str, renames: Optional[dict[str, str]] = None, root: Optional[str | os.PathLike] = None) -> str:
    """Text (an executed notebook, an HTML report) with no path of this machine in it: every string of
    `renames` (a checkpoint's path) replaced by its published name, longest first, then every path under
    `root` (the project root by default) by its path relative to it.

    The same rule as `portable`, for files whose paths sit inside free text: a printed
    config, a parameters cell, papermill's metadata.
    """
    for old in sorted(renames or {}, key=len, reverse=True):
        text = text.replace(old, renames[old])
    root = os.fspath(root or paths.project_root()).rstrip("/")
    # A path under the root loses the root; the root alone becomes "."; a sibling folder whose name merely
    # starts with the root's (study2 beside study) is left alone.
    text = text.replace(root + "/", "")
    return re.sub(re.escape(root) + r"(?![\w.-])", ".", text)


def source_project_root(path: str | os.PathLike) -> Path:
    """The project folder (a clone of vqlib: pyproject.toml beside vqlib/) that holds `path`; this project's
    when none does. A study may run in a worktree of its own and be published from another clone."""
    for folder in Path(path).resolve().parents:
        if (folder / "pyproject.toml").is_file() and (folder / "vqlib").is_dir():
            return folder
    return paths.project_root()


def run_renames(checkpoint_root: str | os.PathLike, names: list[str], suffix: str = "") -> dict[str, str]:
    """{path of a grid run's best.pt, as the grid writes it: pretrained:NAME} for published runs
    (``pretrained:NAME<suffix>`` for runs published under another name than their run's)."""
    root = Path(checkpoint_root).resolve()
    return {str(root / name / "best.pt"): PRETRAINED_PREFIX + name + suffix for name in names}


def portable_vqvae_payload(ckpt: dict) -> dict:
    """A VQ-VAE checkpoint's entries (kind and format left out) with its TrainConfig's folders dropped:
    they name folders of the machine that trained it, and nothing reads them back (grid.PLACEMENT_FIELDS)."""
    payload = {k: v for k, v in ckpt.items() if k not in ("kind", "format_version")}
    if isinstance(payload.get("train_config"), dict):
        payload["train_config"] = {**payload["train_config"], "checkpoint_dir": None, "results_dir": None}
    return payload


class _Writer:
    """Writes published files atomically, and only those whose content changed (no churn in git)."""

    def __init__(self) -> None:
        self.changed = 0
        self.kept: set[Path] = set()

    def _bytes(self, target: Path, data: bytes) -> None:
        self.kept.add(target)
        if target.is_file() and target.read_bytes() == data:
            return
        ensure_dir(target.parent)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        self.changed += 1

    def copy(self, source: Path, target: Path) -> None:
        self._bytes(target, source.read_bytes())

    def text(self, source: Path, target: Path, renames: Optional[dict[str, str]] = None) -> None:
        """Copy a text file (notebook, HTML) with the machine's paths made portable (`portable_text`): those
        under the project that wrote it (another clone, for a study run in its own worktree) and under this one."""
        text = portable_text(source.read_text(encoding="utf-8"), renames, root=source_project_root(source))
        self._bytes(target, portable_text(text).encode("utf-8"))

    def json(self, target: Path, value: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self._bytes(target, write_json(Path(tmp) / target.name, value).read_bytes())

    def csv(self, target: Path, frame) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self._bytes(target, write_csv(Path(tmp) / target.name, frame).read_bytes())

    def checkpoint(self, target: Path, kind: str, payload: dict) -> None:
        # torch.save writes a random serialization id into every file: compare what it holds instead.
        from .checkpoints import load_checkpoint, save_checkpoint

        self.kept.add(target)
        if target.is_file():
            try:
                old = load_checkpoint(target, kind=kind)
            except CheckpointError:
                old = None
            if old is not None and _same_checkpoint(old, {"kind": kind, **payload}):
                return
        save_checkpoint(target, kind, payload)
        self.changed += 1

    def remove_others(self, folder: Path, pattern: str = "*") -> None:
        """Remove the files of `folder` (matching `pattern`) that this writer did not write: a stale set."""
        for path in folder.glob(pattern):
            if path.is_file() and path not in self.kept:
                path.unlink()
                self.changed += 1

    def note(self, what: str) -> str:
        return f"{what} ({self.changed} file(s) written)" if self.changed else f"{what} (up to date)"


def _same_checkpoint(old: dict, new: dict) -> bool:
    """Whether a loaded checkpoint holds `new`: the same entries, tensors equal in value, dtype and shape."""
    import torch

    old = {k: v for k, v in old.items() if k != "format_version"}
    if set(old) != set(new):
        return False
    a, b = old.pop("state_dict"), new["state_dict"]
    if old != {k: v for k, v in new.items() if k != "state_dict"} or set(a) != set(b):
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


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
    """Copy finished runs (all, or `names`) of a grid into the published folders; return the names copied.

    A run is copied when its published files are missing or older than the run's
    metrics; the checkpoint is written before the metrics that name it. The run
    folders go to `published` (default: the study's grid, whose summary and
    choice are published too; the protocol's extra seeds go to their own folder).
    The checkpoint is published as ``pretrained:NAME<suffix>``, and the run's
    snapshot, kept while it trained, is removed from `snapshots` (default:
    `inprogress_dir`).
    """
    from .checkpoints import load_checkpoint

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
                write_json(pretrained / file, portable(read_json(checkpoint_root / name / file)))
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
            write_json(published / name / RUN_FILE, portable(read_json(grid_folder / name / RUN_FILE)))
        metrics = read_json(source_metrics)
        metrics = portable({**metrics, "checkpoint": PRETRAINED_PREFIX + name + suffix})
        write_json(target_metrics, metrics)
        shutil.rmtree(snapshots / name, ignore_errors=True)
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
    from .checkpoints import load_checkpoint, save_checkpoint

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


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _rows_published(rows: list[str], name: str) -> bool:
    """Whether every one of these finished label-efficiency rows is in classifier `name`'s published runs file."""
    from .label_efficiency import RUNS_FILE

    return set(rows) <= set(_lines(published_classifier_dir() / name / RUNS_FILE))


class LabelEfficiencySnapshot(NamedTuple):
    """What `snapshot_label_efficiency` took of one classifier folder."""

    rows: int  # finished rows (label_efficiency.runs.jsonl)
    unfinished: tuple[str, ...]  # network rows under way: the file names of their last epochs (.unfinished/)


def _unfinished_rows(folder: Path) -> list[Path]:
    from .label_efficiency import UNFINISHED_DIR

    return sorted((folder / UNFINISHED_DIR).glob("*.pt"))


def snapshot_label_efficiency() -> dict[str, LabelEfficiencySnapshot]:
    """Snapshot the label-efficiency study of every classifier folder that holds rows its published copy does not
    (a study not yet published, or one run again with other settings): its finished rows
    (label_efficiency.runs.jsonl) and the last epoch of each network row under way (.unfinished/, replaced as a
    whole). Drop the snapshots whose rows are all published and that have nothing under way.

    Notebook 03's label efficiency at the protocol runs for hours, one network row
    (the CNN on all labels) for more than one; with these snapshotted, a fresh clone
    (`vqlib publish --restore`) continues it from the last finished row, and that
    row from its last snapshotted epoch, instead of from the start.
    """
    from .label_efficiency import RUNS_FILE, UNFINISHED_DIR

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
            _copy(path, target / UNFINISHED_DIR / path.name)
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
    from .label_efficiency import RUNS_FILE, UNFINISHED_DIR

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
            _copy(path, folder / UNFINISHED_DIR / path.name)
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


# ----------------------------------------------------------------------------- the stages after the grid


@dataclass
class StageResult:
    """What `publish_stages` did with one stage: published (or already up to date), or not, and why."""

    stage: str
    published: bool
    note: str

    def line(self) -> str:
        return f"{self.stage}: {'published' if self.published else 'not published'}: {self.note}"


# What publish_seed_spread reads from a grid's summary.csv.
SEED_SPREAD_COLUMNS = ("name", "num_embeddings", "embedding_dim", "seed", "status", "val_mse")


def publish_seed_spread(grid_folder: str | os.PathLike) -> StageResult:
    """Publish the summary.csv of a grid trained with several seeds per configuration, without
    its machine paths, into ``results/published/seed_spread/``."""
    import pandas as pd

    summary = Path(grid_folder) / SUMMARY_FILE
    if not summary.is_file():
        raise OutputError(
            f"{paths.shown(summary)} does not exist: run `vqlib grid --seeds 0,1,2 --grid-dir "
            f"{paths.shown(Path(grid_folder))}` first"
        )
    try:
        frame = pd.read_csv(summary)
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ResultFileError(f"cannot read {paths.shown(summary)} as a grid summary ({exc})") from None
    missing = [c for c in SEED_SPREAD_COLUMNS if c not in frame]
    if missing:
        raise ResultFileError(f"{paths.shown(summary)} is not a grid summary: it has no column {', '.join(missing)}")
    # The grid's own count of successful seeds per K x D (recomputed: the file may predate the column).
    frame = with_seed_statistics(frame)
    seeds = frame["seeds_done"]
    if seeds.empty or seeds.max() < 2:
        raise ConfigError(
            f"{paths.shown(summary)} holds one successful seed per configuration at most, so it has no spread "
            "to publish; train the grid with --seeds 0,1,2"
        )
    # The checkpoints and notebooks stay on the machine that trained them: only the numbers are published.
    frame = frame.drop(columns=[c for c in ("checkpoint", "notebook") if c in frame])
    writer = _Writer()
    writer.csv(published_seed_spread_dir() / SUMMARY_FILE, frame)
    return StageResult(
        "seed spread",
        True,
        writer.note(
            f"{len(frame)} runs, {int(seeds.min())}-{int(seeds.max())} successful seeds per configuration, "
            f"in {paths.shown(published_seed_spread_dir())}"
        ),
    )


def published_protocol_seeds_dir() -> Path:
    return paths.published_dir() / "protocol_seeds"


def publish_protocol_seeds(grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike) -> StageResult:
    """Publish a grid trained at the protocol with seeds other than the study's (``vqlib grid --profile
    full --seeds 1,2``): each finished run as ``pretrained:NAME`` with its metrics in
    ``results/published/protocol_seeds/NAME/``, and a summary.csv of those runs beside the study's own
    seed-0 runs of the same K x D, with each configuration's mean and std over its seeds.

    Unfinished runs are snapshotted by `snapshot_unfinished`, as the study's are.
    """
    import pandas as pd

    from .grid import collect_grid

    for folder, what in ((grid_folder, "--protocol-seeds the --grid-dir"), (checkpoint_root, "--checkpoint-root the")):
        if not Path(folder).is_dir():
            raise OutputError(
                f"{paths.shown(Path(folder))} does not exist: give {what} folder of "
                "`vqlib grid --profile full --seeds 1,2`"
            )
    target = published_protocol_seeds_dir()
    publish_runs(grid_folder, checkpoint_root, published=target)
    extra = collect_grid(target)
    extra = extra[extra["status"] == "success"]
    if extra.empty:
        return StageResult("protocol seeds", False, f"no finished run in {paths.shown(Path(grid_folder))} yet")
    configs = set(zip(extra["num_embeddings"], extra["embedding_dim"], strict=True))
    study = collect_grid(published_grid_dir())
    study = study[[(k, d) in configs for k, d in zip(study["num_embeddings"], study["embedding_dim"], strict=True)]]
    frame = pd.concat([study, extra], ignore_index=True).drop(columns=["history"], errors="ignore")
    frame = frame.sort_values(["num_embeddings", "embedding_dim", "seed"], ignore_index=True)
    frame["checkpoint"] = PRETRAINED_PREFIX + frame["name"]
    frame = with_seed_statistics(frame.drop(columns=[c for c in ("notebook",) if c in frame]))
    writer = _Writer()
    writer.csv(target / SUMMARY_FILE, frame)
    return StageResult(
        "protocol seeds",
        True,
        writer.note(
            f"{len(extra)} run(s) with other seeds beside the study's {len(study)}, "
            f"in {paths.shown(target / SUMMARY_FILE)}"
        ),
    )


# ----------------------------------------------------------------------------- the cosine learning-rate schedule

LR_SCHEDULE = "cosine"
LR_SCHEDULE_SUFFIX = "_cosine"  # K100_D64 trained with the cosine rate publishes as pretrained:K100_D64_cosine
COMPARISON_FILE = "comparison.csv"
LR_SCHEDULE_COLUMNS = (
    "name",
    "schedule",
    "num_embeddings",
    "embedding_dim",
    "seed",
    "val_mse",
    "val_perplexity",
    "val_usage",
    "best_epoch",
    "epochs",
    "checkpoint",
)
LR_SCHEDULE_METRICS = ("val_mse", "val_perplexity")


def published_lr_schedule_dir() -> Path:
    return paths.published_dir() / "lr_schedule"


def lr_schedule_snapshots_dir() -> Path:
    """Snapshots of cosine runs still training. Their names are those of the study's runs (K100_D64, ...),
    so they live apart from the study's snapshots, which `restore_runs` finds as inprogress/K*_D*."""
    return inprogress_dir() / "lr_schedule"


def _recorded_schedule(train_config: Any) -> str:
    """The learning-rate schedule a recorded TrainConfig names (constant for runs recorded before it existed)."""
    from .config import TrainConfig, with_defaults

    return str(with_defaults(TrainConfig, train_config if isinstance(train_config, dict) else {})["lr_schedule"])


def _check_cosine(grid_folder: Path, checkpoint_root: Path) -> None:
    """Refuse a grid whose finished or unfinished runs were not trained with the cosine rate: published as
    NAME_cosine, a constant-rate run would pass for what it is not."""
    records = {
        name: read_json_or_empty(grid_folder / name / METRICS_FILE).get("train_config")
        for name in finished_runs(grid_folder)
    }
    for folder in sorted(checkpoint_root.glob("K*_D*")):
        if folder.name not in records and (folder / "last.pt").is_file():
            records[folder.name] = read_json_or_empty(folder / "config.json").get("train")
    for name, train_config in records.items():
        schedule = _recorded_schedule(train_config)
        if schedule != LR_SCHEDULE:
            raise ConfigError(
                f"{name} in {paths.shown(grid_folder)} was trained with the {schedule} learning-rate schedule: "
                f"--lr-schedule publishes runs of `vqlib grid --lr-schedule {LR_SCHEDULE}` only"
            )


def publish_lr_schedule(grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike) -> list[str]:
    """Publish the finished runs of a grid trained with the cosine learning rate (``vqlib grid --profile full
    --lr-schedule cosine --grid-dir GRID_DIR --checkpoint-root CKPT``); return the names copied.

    Each finished run's metrics.json, run.json and executed notebook go to
    ``results/published/lr_schedule/NAME/`` and its checkpoint to
    ``checkpoints/pretrained/NAME_cosine/`` (``pretrained:NAME_cosine``): the
    plain names are the study's constant-rate models, never replaced. Unfinished
    runs are snapshotted by `snapshot_lr_schedule`, the comparison with the
    constant rate written by `publish_lr_schedule_comparison`.
    """
    grid_folder, checkpoint_root = Path(grid_folder), Path(checkpoint_root)
    if not grid_folder.is_dir():
        raise OutputError(
            f"{paths.shown(grid_folder)} does not exist: give --lr-schedule the --grid-dir of "
            f"`vqlib grid --lr-schedule {LR_SCHEDULE}`"
        )
    if not checkpoint_root.is_dir():
        raise OutputError(
            f"{paths.shown(checkpoint_root)} does not exist: give --checkpoint-root the one that grid trains into"
        )
    _check_cosine(grid_folder, checkpoint_root)
    return publish_runs(
        grid_folder,
        checkpoint_root,
        published=published_lr_schedule_dir(),
        suffix=LR_SCHEDULE_SUFFIX,
        snapshots=lr_schedule_snapshots_dir(),
    )


def snapshot_lr_schedule(grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike) -> dict[str, int]:
    """Snapshot the cosine grid's unfinished runs into ``checkpoints/inprogress/lr_schedule/NAME/``
    (as `snapshot_unfinished` does the study's); return {name: epochs done}."""
    return snapshot_unfinished(grid_folder, checkpoint_root, snapshots=lr_schedule_snapshots_dir())


def restore_lr_schedule(grid_folder: str | os.PathLike, checkpoint_root: str | os.PathLike) -> list[str]:
    """Copy the published cosine runs and the snapshots of unfinished ones back into GRID_DIR and CKPT
    (`restore_runs`), where the same ``vqlib grid`` command reuses the first and continues the second."""
    return restore_runs(
        grid_folder,
        checkpoint_root,
        published=published_lr_schedule_dir(),
        suffix=LR_SCHEDULE_SUFFIX,
        snapshots=lr_schedule_snapshots_dir(),
    )


def lr_schedule_summary() -> pd.DataFrame:
    """One row per published cosine run and one per published constant-rate run of the same K, D and seed
    (seed 0: the study's grid; other seeds: the protocol seeds), read from the published folders alone."""
    import pandas as pd

    from .grid import collect_grid

    cosine = collect_grid(published_lr_schedule_dir())
    cosine = cosine[cosine["status"] == "success"].assign(
        schedule=LR_SCHEDULE, checkpoint=lambda f: PRETRAINED_PREFIX + f["name"] + LR_SCHEDULE_SUFFIX
    )
    frames = [cosine]
    for run in cosine.itertuples():
        folder = published_grid_dir() if run.seed == 0 else published_protocol_seeds_dir()
        constant = collect_grid(folder, names=[run.name])
        constant = constant[constant["status"] == "success"]
        frames.append(constant.assign(schedule="constant", checkpoint=PRETRAINED_PREFIX + run.name))
    frame = pd.concat(frames, ignore_index=True)[list(LR_SCHEDULE_COLUMNS)]
    return frame.sort_values(["num_embeddings", "embedding_dim", "seed", "schedule"], ignore_index=True)


def lr_schedule_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """Per K x D and metric (`LR_SCHEDULE_METRICS`): cosine - constant paired by seed, with both schedules'
    mean and std and a verdict (`vqlib.grid.paired_comparison`)."""
    import pandas as pd

    from .grid import paired_comparison

    rows = [
        {
            "num_embeddings": k,
            "embedding_dim": d,
            **paired_comparison(group, metric, by="schedule", a="constant", b=LR_SCHEDULE),
        }
        for (k, d), group in summary.groupby(["num_embeddings", "embedding_dim"])
        for metric in LR_SCHEDULE_METRICS
    ]
    return pd.DataFrame(rows)


def publish_lr_schedule_comparison() -> StageResult:
    """Write ``results/published/lr_schedule/summary.csv`` and ``comparison.csv`` from the published runs."""
    stage = "lr schedule comparison"
    target = published_lr_schedule_dir()
    summary = lr_schedule_summary()
    if summary.empty:
        return StageResult(stage, False, f"no finished cosine run is published in {paths.shown(target)} yet")
    comparison = lr_schedule_comparison(summary)
    writer = _Writer()
    writer.csv(target / SUMMARY_FILE, summary)
    writer.csv(target / COMPARISON_FILE, comparison)
    counts = summary["schedule"].value_counts()
    verdicts = "; ".join(f"{row.metric}: {row.verdict}" for row in comparison.itertuples())
    return StageResult(
        stage,
        True,
        writer.note(
            f"{counts.get(LR_SCHEDULE, 0)} cosine run(s) beside {counts.get('constant', 0)} constant-rate run(s) "
            f"({verdicts}), in {paths.shown(target / SUMMARY_FILE)} and {COMPARISON_FILE}"
        ),
    )


def _missing(files: list[Path]) -> Optional[str]:
    absent = [f for f in files if not f.is_file()]
    if not absent:
        return None
    more = f" and {len(absent) - 1} more file(s)" if len(absent) > 1 else ""
    return f"{paths.shown(absent[0])}{more} missing"


def publish_stages(
    grid_folder: str | os.PathLike, checkpoint_root: Optional[str | os.PathLike] = None
) -> list[StageResult]:
    """Publish the grid summary's figures, the chosen classifier, the analysis, notebook 06's measures of the
    prior and the reports, each only when the grid's best.json names a published run and all the stage's outputs
    exist; then the codec's rate-distortion comparison, when it measures published priors."""
    grid_folder = Path(grid_folder)
    stages = ("grid summary", "classifier", "analysis", "prior", "reports")
    best = read_json_or_empty(grid_folder / BEST_FILE)
    name, checkpoint = best.get("name"), best.get("checkpoint")
    # The codec's comparison reads published models only, whatever the grid chose.
    if not isinstance(name, str) or not isinstance(checkpoint, str):
        why = f"the grid has no best configuration yet (no {paths.shown(grid_folder / BEST_FILE)}: notebook 02 runs after the grid)"
        return [*(StageResult(stage, False, why) for stage in stages), _publish_codec()]
    if name not in finished_runs(published_grid_dir()):
        why = f"the grid's best configuration, {name}, is not a published run"
        return [*(StageResult(stage, False, why) for stage in stages), _publish_codec()]
    done = [
        _publish_summary(grid_folder),
        _publish_classifier(name, checkpoint),
        _publish_analysis(name, checkpoint),
        _publish_prior_measures(name, checkpoint),
    ]
    reports = _publish_reports(grid_folder, done, Path(checkpoint_root) if checkpoint_root else None)
    return [*done, reports, _publish_codec()]


def _publish_summary(grid_folder: Path) -> StageResult:
    stage = "grid summary"
    missing = _missing([grid_folder / f for f in SUMMARY_FIGURES])
    if missing:
        return StageResult(stage, False, f"{missing} (notebook 02 writes them)")
    writer = _Writer()
    for file in SUMMARY_FIGURES:
        writer.copy(grid_folder / file, published_grid_dir() / file)
    return StageResult(stage, True, writer.note(f"{', '.join(SUMMARY_FIGURES)} in {paths.shown(published_grid_dir())}"))


def _publish_classifier(vqvae_name: str, vqvae_checkpoint: str) -> StageResult:
    """The classifier notebook 03 recorded on the best VQ-VAE: its checkpoint (as ``pretrained:RUN``,
    paired with ``pretrained:<vqvae_name>``), then its results, metrics.json last."""
    from .checkpoints import load_checkpoint
    from .classify import load_classifier
    from .label_efficiency import RUNS_FILE
    from .reports import classifier_record

    stage = "classifier"
    found = classifier_record(vqvae_checkpoint)
    if found is None:
        return StageResult(
            stage,
            False,
            f"no classifier record on {vqvae_name} in {paths.shown(paths.classifier_dir())} (notebook 03 writes it)",
        )
    record_path, record = found
    source = record_path.parent
    checkpoint = Path(str(record.get("classifier_checkpoint") or ""))
    run = checkpoint.parent.name
    missing = _missing(
        [checkpoint.parent / f for f in CHECKPOINT_FILES] + [source / f for f in CLASSIFIER_RESULT_FILES]
    )
    if missing:
        return StageResult(stage, False, missing)
    if paths.parse_vqvae_run_name(run):
        return StageResult(stage, False, f"its checkpoint folder, {run}, is named like a VQ-VAE run")
    vqvae_published = PRETRAINED_PREFIX + vqvae_name
    try:
        # Published, the classifier must read the code of the published VQ-VAE, weight for weight.
        load_classifier(checkpoint, vqvae_checkpoint=vqvae_published)
        ckpt = load_checkpoint(checkpoint, kind="classifier")
    except CheckpointError as exc:
        return StageResult(stage, False, str(exc))
    renames = {vqvae_checkpoint: vqvae_published, str(checkpoint): PRETRAINED_PREFIX + run}
    target_checkpoints, target_results = paths.pretrained_dir() / run, published_classifier_dir() / run
    writer = _Writer()
    # A published checkpoint names its VQ-VAE as published and no folder of this machine: eval-cls
    # writes into results/classifier/RUN of whoever runs it, infer-cls finds pretrained:NAME.
    payload = portable({k: v for k, v in ckpt.items() if k not in ("kind", "format_version", "state_dict")}, renames)
    # load_classifier has just checked that its VQ-VAE is the published one, whatever path it recorded.
    placement = {"vqvae_checkpoint": vqvae_published, "checkpoint_dir": None, "results_dir": None}
    payload.update(
        vqvae_checkpoint=vqvae_published,
        results_dir=None,
        model_config={**payload["model_config"], **placement},
        state_dict=ckpt["state_dict"],
    )
    writer.checkpoint(target_checkpoints / "best.pt", "classifier", payload)
    config = portable(read_json(checkpoint.parent / "config.json"), renames)
    config["vqvae_checkpoint"] = vqvae_published
    if isinstance(config.get("classifier"), dict):
        config["classifier"] = {**config["classifier"], **placement}
    writer.json(target_checkpoints / "config.json", config)
    writer.copy(checkpoint.parent / "history.json", target_checkpoints / "history.json")
    for file in CLASSIFIER_RESULT_FILES:
        if file.endswith(".json"):
            writer.json(target_results / file, portable(read_json(source / file), renames))
        else:
            writer.copy(source / file, target_results / file)
    writer.json(target_results / METRICS_FILE, portable(record, renames))
    # Its label efficiency's finished rows: a rerun with other settings for some methods reuses the others'.
    if (source / RUNS_FILE).is_file():
        writer.text(source / RUNS_FILE, target_results / RUNS_FILE, renames)
    writer.remove_others(target_results)
    # One classifier is published: the one of the current choice.
    for other in published_classifier_dir().iterdir():
        if other.is_dir() and other.name != run:
            shutil.rmtree(other)
            if not paths.parse_vqvae_run_name(other.name):
                shutil.rmtree(paths.pretrained_dir() / other.name, ignore_errors=True)
            writer.changed += 1
    return StageResult(
        stage,
        True,
        writer.note(
            f"{run} as {PRETRAINED_PREFIX}{run} (on {vqvae_published}), its results in {paths.shown(target_results)}"
        ),
    )


def _publish_analysis(vqvae_name: str, vqvae_checkpoint: str) -> StageResult:
    stage = "analysis"
    source = paths.analysis_dir()
    missing = _missing([source / ANALYSIS_FILE] + [source / f for f in ANALYSIS_FIGURES])
    if missing:
        return StageResult(stage, False, f"{missing} (notebook 04 writes them)")
    summary = read_json_or_empty(source / ANALYSIS_FILE)
    if summary.get("checkpoint") != vqvae_checkpoint:
        return StageResult(
            stage,
            False,
            f"{paths.shown(source / ANALYSIS_FILE)} analyses {summary.get('checkpoint')}, not the grid's best, {vqvae_name} "
            "(notebook 04 runs on it in `vqlib run`)",
        )
    writer = _Writer()
    target = published_analysis_dir()
    for file in ANALYSIS_FIGURES:
        writer.copy(source / file, target / file)
    writer.json(target / ANALYSIS_FILE, portable(summary, {vqvae_checkpoint: PRETRAINED_PREFIX + vqvae_name}))
    writer.remove_others(target)
    return StageResult(
        stage, True, writer.note(f"{ANALYSIS_FILE} and {len(ANALYSIS_FIGURES)} figures in {paths.shown(target)}")
    )


def published_prior_measures_dir() -> Path:
    return paths.published_dir() / "prior"


def _publish_prior_measures(vqvae_name: str, vqvae_checkpoint: str) -> StageResult:
    """Notebook 06's record (generation.json) and figures, when they measure a prior over the grid's best VQ-VAE."""
    stage = "prior"
    source = paths.prior_dir()
    missing = _missing([source / GENERATION_FILE] + [source / f for f in PRIOR_FIGURES])
    if missing:
        return StageResult(stage, False, f"{missing} (notebook 06 writes them)")
    record = read_json_or_empty(source / GENERATION_FILE)
    published_vqvae = PRETRAINED_PREFIX + vqvae_name
    measured = str(record.get("vqvae"))
    # A prior records its VQ-VAE as pretrained:NAME or as an absolute path; the grid's choice may name the same file
    # by another spelling of its path.
    local = not measured.startswith(PRETRAINED_PREFIX) and Path(measured).resolve() == Path(vqvae_checkpoint).resolve()
    if measured != published_vqvae and not local:
        return StageResult(
            stage,
            False,
            f"{paths.shown(source / GENERATION_FILE)} measures a prior over {record.get('vqvae')}, not over the "
            f"grid's best, {vqvae_name} (notebook 06 runs on it in `vqlib run`)",
        )
    writer = _Writer()
    target = published_prior_measures_dir()
    for file in PRIOR_FIGURES:
        writer.copy(source / file, target / file)
    writer.json(
        target / GENERATION_FILE, portable(record, {vqvae_checkpoint: published_vqvae, measured: published_vqvae})
    )
    writer.remove_others(target)
    judge = _publish_judge(writer, record.get("feature_classifier"))
    return StageResult(
        stage,
        True,
        writer.note(
            f"{GENERATION_FILE} of {record.get('prior')} and {len(PRIOR_FIGURES)} figures in {paths.shown(target)}"
            f"; {judge}"
        ),
    )


def _publish_judge(writer: _Writer, summary: Any) -> str:
    """The pixel classifier whose features notebook 06's record measures in (its `feature_classifier`), beside the
    published models, so that a clone measures in the same space without training it (it is also CAS's real twin).
    Other published ones are removed; when it is not cached here, what is published stays."""
    from .generation import cached_pixel_classifier, pixel_classifier_cache, published_pixel_classifiers

    found = cached_pixel_classifier(summary)
    if found is None:
        return f"its pixel classifier is not in {paths.shown(pixel_classifier_cache())} (what is published stays)"
    target = published_pixel_classifiers() / found.parent.name / "best.pt"
    writer.copy(found, target)
    for other in published_pixel_classifiers().glob("*/best.pt"):
        if other != target:
            shutil.rmtree(other.parent)
            writer.changed += 1
    return f"its pixel classifier in {paths.shown(target.parent)}"


def published_codec_dir() -> Path:
    return paths.published_dir() / "codec"


def _publish_codec() -> StageResult:
    """`vqlib rate-distortion`'s table and figure (results/codec/). Every prior in them is a published one
    (``pretrained:NAME``) or a file of this project whose weights are those the table records
    (`prior_weights_sha256`): such a prior is published by its path under the project and its digest, and a clone
    trains it again with the command of docs/codec.md. A prior outside the project, or changed since it was
    measured, is refused: the table would name what nobody can find."""
    import pandas as pd

    from .codec import FIGURE_FILE, TABLE_FILE
    from .prior import load_prior, weights_digest

    stage = "codec"
    source = paths.results_dir() / "codec"
    missing = _missing([source / TABLE_FILE, source / FIGURE_FILE])
    if missing:
        return StageResult(stage, False, f"{missing} (vqlib rate-distortion writes them)")
    frame = pd.read_csv(source / TABLE_FILE)
    priors = frame[frame["kind"] == "prior"]
    renames, local = {}, []
    recorded_digests = priors["prior_weights_sha256"] if "prior_weights_sha256" in priors else [None] * len(priors)
    root = paths.project_root().resolve()
    for name, recorded in zip(priors["source"].astype(str), recorded_digests, strict=True):
        if name.startswith(PRETRAINED_PREFIX) or name in renames:
            continue
        path = Path(name).resolve()
        if not path.is_relative_to(root):
            return StageResult(
                stage,
                False,
                f"{paths.shown(source / TABLE_FILE)} measures the prior {name}, outside this project: publish it with "
                "`vqlib publish --prior DIR` and run `vqlib rate-distortion --prior pretrained:NAME ...` again",
            )
        try:
            digest = weights_digest(load_prior(path)[0])
        except (CheckpointError, OSError) as exc:
            return StageResult(stage, False, f"the prior {name} of {paths.shown(source / TABLE_FILE)}: {exc}")
        if not isinstance(recorded, str):  # a table written before the digests were recorded, or a blank cell
            return StageResult(
                stage,
                False,
                f"{paths.shown(source / TABLE_FILE)} does not record the weights of the prior {paths.shown(path)} "
                "(it predates prior_weights_sha256); run `vqlib rate-distortion` again",
            )
        if digest != recorded:
            return StageResult(
                stage,
                False,
                f"the prior {paths.shown(path)} has other weights than {paths.shown(source / TABLE_FILE)} measured; "
                "run `vqlib rate-distortion` again",
            )
        renames[name] = path.relative_to(root).as_posix()
        local.append(renames[name])
    writer = _Writer()
    target = published_codec_dir()
    writer.text(source / TABLE_FILE, target / TABLE_FILE, renames)  # as written, the priors' paths made relative
    writer.copy(source / FIGURE_FILE, target / FIGURE_FILE)
    writer.remove_others(target)
    unpublished = f"; {len(local)} prior(s) by their files, not published ({', '.join(local)})" if local else ""
    return StageResult(
        stage, True, writer.note(f"{TABLE_FILE} and {FIGURE_FILE} in {paths.shown(target)}{unpublished}")
    )


def _publish_reports(
    grid_folder: Path, earlier: list[StageResult], checkpoint_root: Optional[Path] = None
) -> StageResult:
    from .reports import executed_notebooks

    stage = "reports"
    waiting = [r.stage for r in earlier if not r.published]
    if waiting:
        return StageResult(
            stage, False, f"they describe the whole study, and the {' and '.join(waiting)} stage is not published"
        )
    source = paths.reports_dir()
    reports = [(source / f"{name}.html", notebook) for name, notebook, _ in executed_notebooks(grid_folder)]
    index = source / "index.html"
    missing = _missing([report for report, _ in reports] + [index])
    if missing:
        return StageResult(stage, False, f"{missing} (`vqlib report` writes them)")
    stale = [report for report, notebook in reports if report.stat().st_mtime < notebook.stat().st_mtime]
    if not stale and any(index.stat().st_mtime < report.stat().st_mtime for report, _ in reports):
        stale = [index]
    if stale:
        return StageResult(
            stage, False, f"{paths.shown(stale[0])} is older than what it reports on (`vqlib report` writes it again)"
        )
    writer = _Writer()
    target = published_reports_dir()
    # The reports print checkpoints and folders: the runs' checkpoints become pretrained:NAME.
    renames = run_renames(checkpoint_root or paths.checkpoints_dir() / "grid", finished_runs(published_grid_dir()))
    for report, _ in reports:
        writer.text(report, target / report.name, renames)
    writer.text(index, target / index.name, renames)  # last: the index names the reports
    writer.remove_others(target, "*.html")
    return StageResult(stage, True, writer.note(f"{len(reports)} reports and index.html in {paths.shown(target)}"))


# ----------------------------------------------------------------------------- priors over the code

PRIOR_FILES = ("best.pt", "config.json", "history.json")  # a finished prior, as checkpoints/pretrained/NAME/ holds it
PRIOR_SNAPSHOT_FILES = ("last.pt", "best.pt", "config.json", "history.json")  # an unfinished one: enough to resume


def prior_snapshots_dir() -> Path:
    """Where unfinished priors are snapshotted: ``checkpoints/inprogress/prior/<run name>/``."""
    return inprogress_dir() / "prior"


def published_prior_name(prior_dir: str | os.PathLike) -> str:
    """The name a prior publishes under: ``NAME_prior`` for a prior over ``pretrained:NAME``'s code, and
    ``NAME_prior_background`` for its background model (the names `vqlib.ood` looks for)."""
    from .checkpoints import load_checkpoint
    from .ood import BACKGROUND_SUFFIX, PRIOR_SUFFIX
    from .prior import KIND

    ckpt = load_checkpoint(Path(prior_dir) / "last.pt", kind=KIND)
    vqvae = str(ckpt["vqvae_checkpoint"])
    if not vqvae.startswith(PRETRAINED_PREFIX):
        raise CheckpointError(
            f"the prior in {paths.shown(Path(prior_dir))} was trained on {vqvae}, not on a published VQ-VAE "
            f"(pretrained:NAME): only priors over a published model's code are published"
        )
    background = BACKGROUND_SUFFIX if ckpt["model_config"].get("perturbation", 0) > 0 else ""
    return vqvae[len(PRETRAINED_PREFIX) :] + PRIOR_SUFFIX + background


def _portable_prior_payload(ckpt: dict) -> dict:
    payload = {k: v for k, v in ckpt.items() if k not in ("kind", "format_version")}
    payload["model_config"] = {**payload["model_config"], "checkpoint_dir": None}
    return portable(payload)


def publish_prior(prior_dir: str | os.PathLike) -> StageResult:
    """Publish a prior trained by `vqlib train-prior` on a published VQ-VAE.

    Finished (early stopping ended it, or it ran all its epochs): best.pt, config.json and history.json
    into ``checkpoints/pretrained/NAME/`` (`published_prior_name`), so that ``pretrained:NAME`` loads it
    anywhere, and its snapshot removed. Unfinished: last.pt (the optimiser state included), best.pt and
    both JSON files into ``checkpoints/inprogress/prior/<run name>/``, from which `restore_priors` puts
    it back where ``vqlib train-prior ... --resume`` continues it on another machine.
    """
    from .checkpoints import load_checkpoint
    from .prior import KIND

    prior_dir = Path(prior_dir)
    if not (prior_dir / "last.pt").is_file():
        raise CheckpointError(f"{paths.shown(prior_dir)} holds no last.pt: it is not a prior's checkpoint folder")
    name = published_prior_name(prior_dir)
    last = load_checkpoint(prior_dir / "last.pt", kind=KIND)
    epochs, done = last["model_config"]["epochs"], len(last["history"])
    writer = _Writer()
    snapshot = prior_snapshots_dir() / last["run_name"]
    if not (last["stopped"] or done >= epochs):
        for file in PRIOR_SNAPSHOT_FILES:
            if file.endswith(".pt"):
                if (prior_dir / file).is_file():
                    ckpt = load_checkpoint(prior_dir / file, kind=KIND)
                    writer.checkpoint(snapshot / file, KIND, _portable_prior_payload(ckpt))
            else:
                writer.json(snapshot / file, portable(read_json(prior_dir / file)))
        return StageResult(
            f"prior {name}",
            False,
            writer.note(f"still training ({done} of {epochs} epochs): snapshot in {paths.shown(snapshot)}"),
        )
    target = paths.pretrained_dir() / name
    best = load_checkpoint(prior_dir / "best.pt", kind=KIND)
    writer.checkpoint(target / "best.pt", KIND, _portable_prior_payload(best))
    writer.json(target / "config.json", portable(read_json(prior_dir / "config.json")))
    writer.json(target / "history.json", portable(read_json(prior_dir / "history.json")))
    writer.remove_others(target)
    shutil.rmtree(snapshot, ignore_errors=True)
    bits = min(row["val_bits_per_image"] for row in last["history"])
    return StageResult(
        f"prior {name}",
        True,
        writer.note(f"pretrained:{name}: {done} epochs, best validation {bits:.1f} bits per image"),
    )


def restore_priors() -> list[str]:
    """Copy each snapshot of an unfinished prior back to its training folder (checkpoints/prior/<run name>/),
    where the folder holds no last.pt of its own; ``vqlib train-prior ... --resume`` continues from it."""
    restored = []
    for snapshot in sorted(prior_snapshots_dir().glob("*")):
        target = paths.checkpoints_dir() / "prior" / snapshot.name
        if not snapshot.is_dir() or (target / "last.pt").is_file():
            continue  # a local last.pt is at least as new as the snapshot taken from it
        for file in PRIOR_SNAPSHOT_FILES:
            if (snapshot / file).is_file():
                _copy(snapshot / file, target / file)
        restored.append(snapshot.name)
    return restored
