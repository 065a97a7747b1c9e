"""Project folders, computed from the package's own location.

Nothing in vqlib depends on the directory a run was launched from: notebooks
executed by papermill, the CLI and the tests all ask this module. Set
``VQLIB_ROOT`` to put data, checkpoints and results somewhere else (for an
installed, non-editable copy of the package, for example).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    return Path(os.environ.get("VQLIB_ROOT", PACKAGE_DIR.parent)).resolve()


def data_dir() -> Path:
    """Where `vqlib data` downloads the official files when no other copy is found."""
    return project_root() / "data" / "FashionMNIST" / "raw"


def checkpoints_dir() -> Path:
    return project_root() / "checkpoints"


def results_dir() -> Path:
    return project_root() / "results"


def vqvae_checkpoint_dir(name: str) -> Path:
    """Checkpoints of a VQ-VAE trained by hand (`vqlib train-vqvae`, notebook 01 alone)."""
    return checkpoints_dir() / "vqvae" / name


def vqvae_results_dir(name: str) -> Path:
    """Metrics and figures of a VQ-VAE trained by hand."""
    return results_dir() / "vqvae" / name


def classifier_dir() -> Path:
    """Results of notebook 03 and the classifier commands, one folder per run."""
    return results_dir() / "classifier"


def analysis_dir() -> Path:
    """Figures and analysis.json of notebook 04."""
    return results_dir() / "analysis"


def prior_dir() -> Path:
    """Figures and generation.json of notebook 06 (the prior: bits and samples)."""
    return results_dir() / "prior"


def reports_dir() -> Path:
    """The study's HTML reports and their index."""
    return results_dir() / "reports"


def grid_dir() -> Path:
    """The grid's run folders, summary.csv and best.json (`vqlib grid`, `vqlib run`)."""
    return results_dir() / "grid"


def pretrained_dir() -> Path:
    """The published study's checkpoints, tracked in git: ``pretrained:NAME`` is ``NAME/best.pt`` here."""
    return checkpoints_dir() / "pretrained"


def published_dir() -> Path:
    """The published study's results (summary, metrics, reports), tracked in git."""
    return results_dir() / "published"


def figures_dir() -> Path:
    """The README's figures (`vqlib figures` draws them from the published study), tracked in git."""
    return project_root() / "docs" / "figures"


def shown(path: str | os.PathLike) -> str:
    """A path for a message: relative to the project root when inside it, else as it is."""
    try:
        return Path(path).resolve().relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)


def notebooks_dir() -> Path:
    """The notebooks: those of the project root, else those beside the package (a VQLIB_ROOT
    that holds only data and results still runs the package's own notebooks)."""
    own = project_root() / "notebooks"
    return own if own.is_dir() else PACKAGE_DIR.parent / "notebooks"


def vqvae_run_name(num_embeddings: int, embedding_dim: int, seed: int = 0) -> str:
    """The folder name of one grid point, ``K{K}_D{D}`` (``K{K}_D{D}_s{seed}`` for a seed other than 0).

    Seed 0, the default of every profile, keeps the plain name, so a one-seed
    grid, its published checkpoints (``pretrained:K100_D16``) and older run
    folders keep their names when seeds are added.
    """
    return f"K{num_embeddings}_D{embedding_dim}" + (f"_s{seed}" if seed else "")


def parse_vqvae_run_name(name: str) -> Optional[tuple[int, int, int]]:
    """(K, D, seed) of a name made by `vqvae_run_name`, or None for a name of another form."""
    match = re.fullmatch(r"K(\d+)_D(\d+)(?:_s(\d+))?", name)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)) if match else None


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """The git commit of the code this process imported, ``-dirty`` when vqlib or notebooks had local changes.

    Recorded with every trained epoch, so a result says which code made it. A
    process imports the package once, so one reading per process is the truth.
    "unknown" outside a git checkout (an installed copy).
    """
    root = PACKAGE_DIR.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "vqlib", "notebooks")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
