"""Save (atomic) and load (weights_only, validated) checkpoints.

A checkpoint is a plain dict of tensors and Python values, so that
``torch.load(weights_only=True)`` can read it and a pickle that would run code
is refused. It always carries its kind, a format version and the config of its
model, so the model is rebuilt from the file alone.

Wherever a checkpoint path is taken, ``pretrained:NAME`` names one of the
published study's checkpoints (``checkpoints/pretrained/NAME/best.pt``), so
notebooks and the CLI run on them with no training.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import paths
from .errors import CheckpointError, ConfigError
from .files import atomic_path, read_json

FORMAT_VERSION = 1
REQUIRED_KEYS = {"kind", "format_version", "model_config", "state_dict"}
PRETRAINED_PREFIX = "pretrained:"
BEST_FILE = "best.json"  # the grid's choice: written by notebook 02 beside the run folders


# How a message names each kind of checkpoint.
KIND_NAMES = {"vqvae": "VQ-VAE", "classifier": "classifier", "prior": "prior"}


def pretrained_kind(name: str) -> Optional[str]:
    """'vqvae', 'classifier' or 'prior' for a published checkpoint, read from its config.json (no weights loaded);
    None when the name is not published."""
    folder = paths.pretrained_dir() / name
    if not (folder / "best.pt").is_file():
        return None
    try:
        config = read_json(folder / "config.json")
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict):
        for key, kind in (("classifier", "classifier"), ("prior", "prior"), ("model", "vqvae")):
            if key in config:
                return kind
    kind = load_checkpoint(folder / "best.pt")["kind"]  # a folder without its config.json: ask the file
    return kind


def pretrained_names(kind: Optional[str] = None) -> list[str]:
    """Names of the published checkpoints (``pretrained:NAME``), of one kind ('vqvae', 'classifier') or all, sorted."""
    names = sorted(p.parent.name for p in paths.pretrained_dir().glob("*/best.pt"))
    return names if kind is None else [n for n in names if pretrained_kind(n) == kind]


def paired_pretrained_classifier(vqvae_checkpoint: str | os.PathLike) -> Optional[str]:
    """``pretrained:NAME`` of the published classifier trained on this VQ-VAE, when the VQ-VAE is a
    published one and such a classifier is published; else None. Read from the classifiers' config.json."""
    try:
        found = resolve_checkpoint(vqvae_checkpoint).resolve()
        vqvae_name = found.relative_to(paths.pretrained_dir().resolve()).parts[0]
    except (ValueError, IndexError, CheckpointError):
        return None
    for name in pretrained_names("classifier"):
        try:
            recorded = read_json(paths.pretrained_dir() / name / "config.json").get("vqvae_checkpoint")
        except (OSError, ValueError, AttributeError):
            continue
        if recorded == PRETRAINED_PREFIX + vqvae_name:
            return PRETRAINED_PREFIX + name
    return None


def checkpoint_label(path: str | os.PathLike) -> str:
    """How a message names a checkpoint: ``pretrained:NAME`` for a published one (by name or by its file),
    a path relative to the project inside it, else the path as given: never a machine's absolute path
    where a shorter, portable name exists."""
    text = os.fspath(path)
    if text.startswith(PRETRAINED_PREFIX):
        return text
    file = Path(text).resolve()
    if file.name == "best.pt" and file.parent.parent == paths.pretrained_dir().resolve():
        return PRETRAINED_PREFIX + file.parent.name
    return paths.shown(text)


def resolve_checkpoint(path: str | os.PathLike, *, kind: Optional[str] = None) -> Path:
    """A checkpoint path as given, or ``pretrained:NAME`` resolved to the published file.

    An unknown name is a CheckpointError that lists the published names of `kind`
    (all of them when `kind` is None), so that a user is offered only names that would load.
    """
    text = os.fspath(path)
    if not text.startswith(PRETRAINED_PREFIX):
        return Path(text)
    name = text[len(PRETRAINED_PREFIX) :]
    found = paths.pretrained_dir() / name / "best.pt"
    if not name or "/" in name or not found.is_file():
        names = pretrained_names(kind)
        what = f"{KIND_NAMES.get(kind, kind)} checkpoint" if kind else "checkpoint"
        raise CheckpointError(
            f"there is no pretrained {what} {name!r}; "
            + (
                f"the published ones are {', '.join(PRETRAINED_PREFIX + n for n in names)}"
                if names
                else f"none is published under {paths.shown(paths.pretrained_dir())}"
            )
        )
    return found


def read_best(folder: Optional[str | os.PathLike] = None) -> dict:
    """The grid's best.json (results/grid by default)."""
    path = Path(folder or paths.grid_dir()) / BEST_FILE
    if not path.is_file():
        raise CheckpointError(f"no {path}; run the grid and notebook 02 first (`vqlib run`), or pass a checkpoint")
    try:
        best = read_json(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); rerun notebook 02 (`vqlib run`)") from None
    if not isinstance(best, dict) or not isinstance(best.get("checkpoint"), str):
        raise CheckpointError(
            f"{path} names no VQ-VAE checkpoint (it lacks a 'checkpoint' entry); "
            "rerun the grid or pass a VQ-VAE checkpoint"
        )
    return best


def resolve_vqvae_checkpoint(checkpoint: Optional[str | os.PathLike] = None) -> Path:
    """The VQ-VAE a stage works on: `checkpoint` itself, else the grid's best (results/grid/best.json),
    else the published study's best, so that a fresh clone works without training."""
    if checkpoint:
        return resolve_checkpoint(checkpoint, kind="vqvae")
    for folder in (paths.grid_dir(), paths.published_dir() / "grid"):
        if (folder / BEST_FILE).is_file():
            found = resolve_checkpoint(read_best(folder)["checkpoint"])
            return found if found.is_absolute() else paths.project_root() / found
    raise CheckpointError(
        f"no VQ-VAE checkpoint was given and {paths.grid_dir() / BEST_FILE} does not exist; "
        "run the grid first (`vqlib run`) or pass a VQ-VAE checkpoint (--vqvae-checkpoint)"
    )


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``{kind, format_version, **payload}`` to `path`, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"kind": kind, "format_version": FORMAT_VERSION, **payload}, tmp)
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike, *, kind: Optional[str] = None, expect: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """The one way checkpoints are read: weights_only, then kind and key checks.

    `expect` maps model_config fields to the values the caller needs (for
    example the K and D of a grid point); a checkpoint of another
    configuration is refused.
    """
    path = resolve_checkpoint(path, kind=kind)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one first or check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: this is where a pickle
        # that would run code ends, before anything of it runs. torch's own message
        # suggests weights_only=False, which is exactly what must not be done here.
        # Random bytes end here too ("invalid load key"): only a refused global is code.
        if "global" not in str(exc).lower():
            raise CheckpointError(f"{path} is not a readable checkpoint (its pickle is corrupt)") from None
        raise CheckpointError(
            f"{path} is not a vqlib checkpoint: it holds Python objects that a safe (weights-only) load refuses to run"
        ) from None
    except Exception as exc:  # noqa: BLE001
        # On bytes that are not a checkpoint, the legacy unpickler fails with whatever
        # its parse hits first (KeyError, IndexError, EOFError, ...): all mean the same.
        raise CheckpointError(f"{path} is not a readable checkpoint ({_short(exc, 200)})") from None
    if not isinstance(ckpt, dict) or not REQUIRED_KEYS <= set(ckpt):
        raise CheckpointError(f"{path} is not a vqlib checkpoint (it lacks the keys {sorted(REQUIRED_KEYS)})")
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path} is not a vqlib checkpoint (its model_config or state_dict is not a dict)")
    # Exact types before comparing: a tensor compared with == is a tensor, not a bool (tests/test_fuzz.py).
    if type(ckpt["format_version"]) is not int or ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {_short(ckpt['format_version'])}, this vqlib reads format {FORMAT_VERSION}"
        )
    if not isinstance(ckpt["kind"], str):
        raise CheckpointError(f"{path} is not a vqlib checkpoint (its kind is {_short(ckpt['kind'])}, not a name)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} is a {_short(ckpt['kind'])} checkpoint, but a {kind} checkpoint is needed here")
    for key, value in (expect or {}).items():
        found = ckpt["model_config"].get(key)
        if type(found) is not type(value) or found != value:
            raise CheckpointError(f"{path} was trained with {key}={_short(found)}, but {key}={value} is needed here")
    return ckpt


def checkpoint_precision(ckpt: dict[str, Any], path: str | os.PathLike) -> str:
    """The precision ('fp32' or 'bf16') a checkpoint's model was trained in.

    A checkpoint written before precision was recorded (the published ones among
    them) counts as fp32: amp was off on the CPUs that trained them.
    """
    from .device import RESOLVED_PRECISIONS

    precision = ckpt.get("precision", "fp32")
    if not isinstance(precision, str) or precision not in RESOLVED_PRECISIONS:
        raise CheckpointError(f"{path} records the precision {_short(precision)}, not one of fp32 or bf16")
    return precision


def _short(value: Any, limit: int = 60) -> str:
    """A value for a one-sentence message: one line, at most `limit` characters, never empty."""
    text = value if isinstance(value, str) else (str(value) if isinstance(value, BaseException) else repr(value))
    text = " ".join(text.split()) or type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_from_checkpoint(cls: type, values: Any, path: str | os.PathLike, what: str = "model"):
    """A config dataclass from a checkpoint's dict; wrong names, types or values are a CheckpointError naming the file."""
    from .config import from_dict

    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is not a vqlib checkpoint (its {what} config is not a dict)")
    # Configs are saved as plain values (dataclasses.asdict): a tensor or a list in one is not a vqlib config.
    odd = [
        k for k, v in values.items() if not isinstance(k, str) or not isinstance(v, (type(None), bool, int, float, str))
    ]
    if odd:
        raise CheckpointError(f"{path} holds an impossible {what} config ({_short(odd[0])} is not a plain value)")
    try:
        return from_dict(cls, values)
    except (ConfigError, TypeError) as exc:
        # TypeError: a value of the wrong type compared in __post_init__ (a string for beta, say).
        raise CheckpointError(f"{path} holds an impossible {what} config ({str(exc).splitlines()[0][:200]})") from None


def build_checked(build: Callable[[], torch.nn.Module], ckpt: dict[str, Any], path: str | os.PathLike, what: str):
    """`build()` once on the meta device (no memory), compared with the checkpoint's tensors, then for real.

    A config is a claim like an IDX header: num_embeddings=65536 with embedding_dim=10^7 would
    allocate terabytes. The state_dict's tensors were read from the file, so their sizes are
    confirmed; the model is built only when its shapes and dtypes are those tensors'.
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except (RuntimeError, ValueError, OverflowError) as exc:  # sizes whose product overflows, even without memory
        raise CheckpointError(f"{path} holds an impossible {what} config ({str(exc).splitlines()[0][:200]})") from None
    expected, found = skeleton.state_dict(), ckpt["state_dict"]
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the {what} its config describes (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    weights = {name for name, _ in skeleton.named_parameters()}
    for name, want in expected.items():
        have = found[name]
        if not isinstance(have, torch.Tensor) or have.shape != want.shape:
            shape = tuple(have.shape) if isinstance(have, torch.Tensor) else type(have).__name__
            raise CheckpointError(
                f"{path} does not match the {what} its config describes ({name} is {shape}, expected {tuple(want.shape)})"
            )
        if have.dtype.is_floating_point != want.dtype.is_floating_point or have.dtype.is_complex:
            raise CheckpointError(f"{path} holds {name} as {have.dtype}, but the {what} needs {want.dtype}")
        # Weights and the codebook must be finite; some buffers are NaN by design (the quantizer's
        # usage_count before its first measurement).
        if (name in weights or name.endswith("codebook")) and not bool(torch.isfinite(have).all()):
            raise CheckpointError(f"{path} holds NaN or infinite values in {name}; the {what} is corrupt")
    model = build()
    load_weights(model, ckpt, path, what)
    return model


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | os.PathLike, what: str) -> None:
    """Load a checkpoint's state_dict into `model`; a mismatch is a CheckpointError, not a traceback."""
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError) as exc:  # TypeError: a state_dict that is not a mapping of tensors
        raise CheckpointError(
            f"{path} does not match the {what} its config describes ({str(exc).splitlines()[0][:200]})"
        ) from None


def load_vqvae(path: str | os.PathLike, *, device: torch.device | str = "cpu", expect: Optional[dict[str, Any]] = None):
    """A VQ-VAE in eval mode, rebuilt from its checkpoint alone; returns (model, checkpoint)."""
    from .config import VQVAEConfig
    from .models import VQVAE

    ckpt = load_checkpoint(path, kind="vqvae", expect=expect)
    config = config_from_checkpoint(VQVAEConfig, ckpt["model_config"], path, "VQ-VAE")
    model = build_checked(lambda: VQVAE(config), ckpt, path, "VQ-VAE")
    return model.to(device).eval(), ckpt
