"""Project folders, computed from the package's own location.

Nothing in vqlib depends on the directory a run was launched from: notebooks
executed by papermill, the CLI and the tests all ask this module. Set
``VQLIB_ROOT`` to put data, checkpoints and results somewhere else (for an
installed, non-editable copy of the package, for example).
"""

from __future__ import annotations

import os
import re
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


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def vqvae_run_name(num_embeddings: int, embedding_dim: int) -> str:
    """The folder name of one grid point, ``K{K}_D{D}``, used under checkpoints/ and results/."""
    return f"K{num_embeddings}_D{embedding_dim}"


def parse_vqvae_run_name(name: str) -> Optional[tuple[int, int]]:
    """(K, D) of a name made by `vqvae_run_name`, or None for a name of another form."""
    match = re.fullmatch(r"K(\d+)_D(\d+)", name)
    return (int(match.group(1)), int(match.group(2))) if match else None
