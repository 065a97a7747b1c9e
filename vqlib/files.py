"""Atomic file writes: a crash at any moment leaves the old file or the new one.

Every checkpoint, JSON, CSV, figure and executed notebook goes through
`atomic_path`: the content is written to a temporary file in the target's
folder (same file system, so the rename is atomic) and moved into place with
`os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError, ResultFileError


def utc_timestamp() -> str:
    """Now, as recorded in run files: ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) or raise `OutputError` naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the output folder {path} ({exc.strerror}); choose a folder you can write to"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"the output folder {path} is not writable; choose a folder you can write to")
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_orphans(path: Path) -> None:
    """Remove temporary files of `path` whose writer died (SIGKILL, power loss) before moving them into place.

    Their names carry the writer's PID; a file of a living process is another
    write in progress and is left alone.
    """
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path`.

    The temporary file is `.NAME.PID.XXXX.tmp`; a later write of the same
    target removes those that a killed writer left behind.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp makes the file private (0600), and os.replace would keep that: give it
    # the mode any other new file gets, so shared reports and checkpoints stay readable.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_orphans(path)


def _plain(obj: Any) -> Any:
    """JSON has no NaN/inf or numpy scalars: turn them into null and Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    return Path(path)


# A record the project writes is a few hundred kB at most (metrics.json with its history);
# a file far beyond that is not one of them, and reading it whole would cost its size in memory.
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path`; a missing, unreadable, oversized or corrupt file is a `ResultFileError` naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise ResultFileError(f"cannot read {path} ({exc.strerror or exc})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ResultFileError(
            f"{path} is larger than {MAX_JSON_BYTES >> 20} MB, which no vqlib record is; check the file"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and bad UTF-8; a few thousand nested brackets exhaust
        # the parser's recursion (found by tests/test_fuzz.py) before it sees the error.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:120]
        raise ResultFileError(f"{path} is not valid JSON ({reason}); delete it or write it again") from None


def read_json_or_empty(path: str | os.PathLike) -> dict:
    """A JSON object from `path`, or {} when the file is missing, unreadable or not an object.

    For the grid's records (metrics.json, run.json), where a missing or broken
    file means "not done yet", not an error.
    """
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix of `path`)."""
    path = Path(path)
    kwargs.setdefault("dpi", 120)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path
