"""Priors over the code: published as ``pretrained:NAME_prior``, snapshotted while they train, restored."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import paths
from ..checkpoints import PRETRAINED_PREFIX
from ..errors import CheckpointError
from ..files import read_json
from .common import StageResult, _copy, _Writer, inprogress_dir, portable

PRIOR_FILES = ("best.pt", "config.json", "history.json")  # a finished prior, as checkpoints/pretrained/NAME/ holds it
PRIOR_SNAPSHOT_FILES = ("last.pt", "best.pt", "config.json", "history.json")  # an unfinished one: enough to resume


def prior_snapshots_dir() -> Path:
    """Where unfinished priors are snapshotted: ``checkpoints/inprogress/prior/<run name>/``."""
    return inprogress_dir() / "prior"


def published_prior_name(prior_dir: str | os.PathLike) -> str:
    """The name a prior publishes under: ``NAME_prior`` for a prior over ``pretrained:NAME``'s code, and
    ``NAME_prior_background`` for its background model (the names `vqlib.ood` looks for)."""
    from ..checkpoints import load_checkpoint
    from ..ood import BACKGROUND_SUFFIX, PRIOR_SUFFIX
    from ..prior import KIND

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
    from ..checkpoints import load_checkpoint
    from ..prior import KIND

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
