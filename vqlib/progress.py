"""Progress bars: `tqdm.auto` (terminal and notebooks), switchable per call and by environment.

tqdm reads TQDM_DISABLE only as a default, which an explicit ``disable=`` overrides;
the grid starts its papermill kernels with TQDM_DISABLE=1 so that reports hold
no progress-bar debris, so every bar of the package goes through this function.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_disabled_by_environment() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


def progress_bar(*, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm.auto bar, off when `enabled` is False or TQDM_DISABLE is set."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=not enabled or progress_disabled_by_environment(), **kwargs)
