"""Save (atomic) and load (weights_only, validated) checkpoints.

A checkpoint is a plain dict of tensors and Python values, so that
``torch.load(weights_only=True)`` can read it and a pickle that would run code
is refused. It always carries its kind, a format version and the config of its
model, so the model is rebuilt from the file alone.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import CheckpointError
from .files import atomic_path

FORMAT_VERSION = 1
REQUIRED_KEYS = {"kind", "format_version", "model_config", "state_dict"}


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``{kind, format_version, **payload}`` to `path`, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"kind": kind, "format_version": FORMAT_VERSION, **payload}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, kind: Optional[str] = None,
                    expect: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The one way checkpoints are read: weights_only, then kind and key checks.

    `expect` maps model_config fields to the values the caller needs (for
    example the K and D of a grid point); a checkpoint of another
    configuration is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one first or check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses any global it does not know: this is where a pickle
        # that would run code ends, before anything of it runs. torch's own message
        # suggests weights_only=False, which is exactly what must not be done here.
        raise CheckpointError(f"{path} is not a vqlib checkpoint: it holds Python objects that a safe "
                              "(weights-only) load refuses to run") from None
    except Exception as exc:  # noqa: BLE001
        # On bytes that are not a checkpoint, the legacy unpickler fails with whatever
        # its parse hits first (KeyError, IndexError, EOFError, ...): all mean the same.
        raise CheckpointError(f"{path} is not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or not REQUIRED_KEYS <= set(ckpt):
        raise CheckpointError(f"{path} is not a vqlib checkpoint (it lacks the keys {sorted(REQUIRED_KEYS)})")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, "
                              f"this vqlib reads format {FORMAT_VERSION}")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} is a {ckpt['kind']} checkpoint, but a {kind} checkpoint is needed here")
    for key, value in (expect or {}).items():
        found = ckpt["model_config"].get(key)
        if found != value:
            raise CheckpointError(f"{path} was trained with {key}={found}, but {key}={value} is needed here")
    return ckpt


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | os.PathLike, what: str) -> None:
    """Load a checkpoint's state_dict into `model`; a mismatch is a CheckpointError, not a traceback."""
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the {what} its config describes "
                              f"({str(exc).splitlines()[0][:200]})") from None


def load_vqvae(path: str | os.PathLike, *, device: torch.device | str = "cpu",
               expect: Optional[dict[str, Any]] = None):
    """A VQ-VAE in eval mode, rebuilt from its checkpoint alone; returns (model, checkpoint)."""
    from .config import VQVAEConfig, from_dict
    from .models import VQVAE

    ckpt = load_checkpoint(path, kind="vqvae", expect=expect)
    model = VQVAE(from_dict(VQVAEConfig, ckpt["model_config"]))
    load_weights(model, ckpt, path, "VQ-VAE")
    return model.to(device).eval(), ckpt
