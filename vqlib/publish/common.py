"""What every part of publishing shares: the published folders, paths made portable, the writer that
rewrites only what changed, and a stage's result."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import paths
from ..checkpoints import PRETRAINED_PREFIX
from ..errors import CheckpointError
from ..files import atomic_path, ensure_dir, write_csv, write_json
from ..grid import RUN_FILE
from ..notebooks import LABEL_EFFICIENCY_FIGURE, TRAIN_NOTEBOOK
from ..train import METRICS_FILE

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
        from ..checkpoints import load_checkpoint, save_checkpoint

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


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


@dataclass
class StageResult:
    """What `publish_stages` did with one stage: published (or already up to date), or not, and why."""

    stage: str
    published: bool
    note: str

    def line(self) -> str:
        return f"{self.stage}: {'published' if self.published else 'not published'}: {self.note}"


def _missing(files: list[Path]) -> Optional[str]:
    absent = [f for f in files if not f.is_file()]
    if not absent:
        return None
    more = f" and {len(absent) - 1} more file(s)" if len(absent) > 1 else ""
    return f"{paths.shown(absent[0])}{more} missing"
