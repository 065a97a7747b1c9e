"""Priors as grid points: one prior per VQ-VAE, placed by the grid's executors, collected into a table.

A prior point trains `prior.train_prior` on one VQ-VAE's code with one
`PriorConfig`, in a run folder of its own, ``results/grid/prior/<run>/``
(metrics.json, samples.png, run.json; `prior.train_and_record`), with its
checkpoints in ``checkpoints/grid/prior/<run>/``. The run is named as
`vqlib train-prior` names it (``K100_D64_transformer_uncond``, ``_s1`` for seed 1).

The bookkeeping is the VQ-VAE grid's: a point whose metrics record success
for the same settings and the same VQ-VAE weights is reused; an interrupted
one continues from its last.pt; one that fails is recorded with its error and
the others still run; the local pool and Ray place it (`executors.py`), and
this module does not know which did.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from .checkpoints import load_vqvae, resolve_vqvae_checkpoint
from .config import GridConfig, PriorConfig, changed_fields, with_defaults
from .errors import CheckpointError, ConfigError, VqlibError
from .executors import PRIOR_STAGE
from .files import ensure_dir, read_json, read_json_or_empty, write_csv, write_json
from .grid import RUN_FILE, checkpoint_root, executor_for, grid_dir
from .prior import METRICS_FILE, read_last, run_name, weights_digest

PRIOR_FOLDER = "prior"  # under the grid's folders: results/grid/prior/, checkpoints/grid/prior/
SUMMARY_FILE = "summary.csv"
# Where and on what a point ran, not what it computed: a finished point is reused whatever these were.
# The precision among them, as in the VQ-VAE grid: a finished fp32 point is reused by a run that asks for
# 'auto' on a bf16 machine; its metrics (and the summary's precision column) say what it ran in.
PLACEMENT_FIELDS = ("device", "checkpoint_dir", "precision")


def prior_grid_dir(grid: Optional[GridConfig] = None) -> Path:
    return grid_dir(grid) / PRIOR_FOLDER


def prior_checkpoint_root(grid: Optional[GridConfig] = None) -> Path:
    return checkpoint_root(grid) / PRIOR_FOLDER


def parse_checkpoints(text: str | Sequence[str]) -> list[str]:
    """'pretrained:K25_D64,pretrained:K50_D64' (or a list) -> the checkpoints, in order, duplicates removed."""
    items = text.split(",") if isinstance(text, str) else list(text)
    found = list(dict.fromkeys(item.strip() for item in items if item and item.strip()))
    if not found:
        raise ConfigError("name at least one VQ-VAE checkpoint, such as pretrained:K25_D64,pretrained:K100_D64")
    return found


def point_name(config: PriorConfig, vqvae_path: Path) -> str:
    return run_name(config, vqvae_path) + (f"_s{config.seed}" if config.seed else "")


def prior_parameters(
    vqvae_checkpoint: str, prior: Optional[PriorConfig] = None, grid: Optional[GridConfig] = None
) -> tuple[str, dict[str, Any]]:
    """(run name, PriorConfig fields) of the point that trains `prior` on `vqvae_checkpoint`.

    A published VQ-VAE keeps its name (every node resolves pretrained:NAME); a
    path is made absolute, so the prior records where its VQ-VAE is.
    A VQ-VAE that is not there is a `CheckpointError` before anything runs.
    """
    path = resolve_vqvae_checkpoint(vqvae_checkpoint)
    if not path.is_file():
        raise CheckpointError(f"no VQ-VAE checkpoint at {vqvae_checkpoint}; check the path or use pretrained:NAME")
    config = prior or PriorConfig()
    name = point_name(config, path)
    given = vqvae_checkpoint if vqvae_checkpoint.startswith("pretrained:") else str(path.resolve())
    parameters = {
        **dataclasses.asdict(config),
        "vqvae_checkpoint": given,
        "checkpoint_dir": str((prior_checkpoint_root(grid) / name).resolve()),
    }
    return name, parameters


def vqvae_digest(vqvae_checkpoint: str) -> Optional[str]:
    """The weights digest of a VQ-VAE, None when it does not load (its point then fails and says why)."""
    try:
        model, _ = load_vqvae(resolve_vqvae_checkpoint(vqvae_checkpoint))
    except VqlibError:
        return None
    return weights_digest(model)


def is_complete(folder: str | os.PathLike, parameters: dict[str, Any], digest: Optional[str]) -> bool:
    """True when the run folder's metrics record success for these settings on these VQ-VAE weights,
    and its best.pt exists. Fields added to PriorConfig since the run count at their defaults."""
    try:
        metrics = read_json(Path(folder) / METRICS_FILE)
    except (OSError, ValueError):
        return False
    if not isinstance(metrics, dict) or metrics.get("status") != "success" or digest is None:
        return False
    recorded = metrics.get("prior_config")
    if not isinstance(recorded, dict) or metrics.get("vqvae_digest") != digest:
        return False
    if changed_fields(with_defaults(PriorConfig, recorded), parameters, PLACEMENT_FIELDS):
        return False
    return (Path(parameters["checkpoint_dir"]) / "best.pt").is_file()


def resume_decision(name: str, parameters: dict[str, Any], digest: Optional[str]) -> tuple[bool, str, int]:
    """Whether an unfinished point continues from its last.pt, a line saying what happens, and its epochs done.

    A last.pt of other settings or another VQ-VAE cannot be continued: the point
    is trained afresh, and says so.
    """
    last = Path(parameters["checkpoint_dir"]) / "last.pt"
    if not last.is_file() or digest is None:
        return False, "", 0
    try:
        done = len(read_last(last, PriorConfig(**parameters), digest)["history"])
    except VqlibError as exc:
        return False, f"{name} starts afresh and replaces its checkpoints: {exc}", 0
    return True, f"{name} continues from its last.pt (epoch {done} of {parameters['epochs']} done)", done


def run_prior_grid(
    vqvae_checkpoints: str | Sequence[str],
    prior: Optional[PriorConfig] = None,
    grid: Optional[GridConfig] = None,
    *,
    progress: bool = True,
    executor=None,
) -> pd.DataFrame:
    """Train `prior` on the code of every VQ-VAE in `vqvae_checkpoints`; return (and write) the summary table.

    `prior` gives every setting but the VQ-VAE and the checkpoint folder,
    which each point sets. Of `grid`, the placement fields (executor, jobs,
    threads, Ray's) and the folders count; its K x D values do not.
    """
    from .progress import progress_bar

    grid = grid or GridConfig()
    prior = prior or PriorConfig()
    checkpoints = parse_checkpoints(vqvae_checkpoints)
    points = [prior_parameters(checkpoint, prior, grid) for checkpoint in checkpoints]
    names = [name for name, _ in points]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(
            f"two VQ-VAE checkpoints give the run name {clash[0]} (the name comes from the checkpoint's folder); "
            "train their priors in separate grids (--grid-dir)"
        )
    root = ensure_dir(prior_grid_dir(grid))
    executor = executor or executor_for(grid, len(points), prior.device)
    specs, reused, notes = [], [], []
    for name, parameters in points:
        digest = vqvae_digest(parameters["vqvae_checkpoint"])
        if is_complete(root / name, parameters, digest):
            reused.append(name)
            continue
        resume, note, done = resume_decision(name, parameters, digest)
        if note:
            notes.append(note)
        specs.append(
            {
                "stage": PRIOR_STAGE,
                "epochs_left": max(prior.epochs - done, 0),
                "name": name,
                "folder": str(root / name),
                "parameters": parameters,
                "resume": resume,
                "cell_timeout": grid.cell_timeout,
                "threads": executor.threads,
            }
        )

    def summary() -> pd.DataFrame:
        frame = collect_priors(root, names=names)
        frame.insert(4, "reused", [name in reused for name in frame["name"]])
        write_csv(root / SUMMARY_FILE, frame.drop(columns=["history"], errors="ignore"))
        return frame

    if progress and reused:
        print(f"prior grid: {len(reused)} of {len(names)} priors already complete, reused: {', '.join(reused)}")
    if progress:
        for note in notes:
            print(f"prior grid: {note}")
    bar = progress_bar(
        total=sum(spec["epochs_left"] for spec in specs),
        desc=f"prior grid: 0/{len(specs)} priors done",
        unit="epoch",
        enabled=progress and bool(specs),
        bar_format="{desc}, {n}/{total} epochs [{elapsed} elapsed, {remaining} left] {postfix}",
    )
    by_name = {spec["name"]: spec for spec in specs}
    ended = []
    for spec in specs:
        # A stale success from other settings must not survive a failed rerun.
        (ensure_dir(spec["folder"]) / METRICS_FILE).unlink(missing_ok=True)

    def report(record: dict) -> None:
        spec = by_name[record["name"]]
        folder = Path(spec["folder"])
        metrics = read_json_or_empty(folder / METRICS_FILE)
        if record["status"] == "success" and metrics.get("status") != "success":
            record.update(
                status="failed", error=f"the prior ended without recording success in {folder / METRICS_FILE}"
            )
        write_json(folder / RUN_FILE, record)
        ended.append(record["name"])
        bar.set_description_str(f"prior grid: {len(ended)}/{len(specs)} priors done", refresh=False)
        bar.update(spec["epochs_left"])
        if record["status"] == "success":
            bar.write(
                f"{record['name']}: done in {record['seconds']:.0f} s, validation {metrics['val_bits_per_image']:.1f} "
                f"bits per image (fixed-length code {metrics['uniform_bits_per_image']:.0f})"
            )
        else:
            bar.write(f"{record['name']}: FAILED after {record['seconds']:.0f} s: {record['error']}")
        summary()

    if specs:  # nothing to place: no pool to start, no Ray to join
        if progress:
            print(f"prior grid: {len(specs)} to train, {executor.describe()}")
            bar.set_postfix_str(executor.describe())
        executor.run(specs, report)
    bar.close()
    return summary()


def collect_priors(folder: Optional[str | os.PathLike] = None, *, names: Optional[list[str]] = None) -> pd.DataFrame:
    """One row per prior run folder: status, error, the VQ-VAE, validation bits per image, timing, history."""
    root = Path(folder) if folder else prior_grid_dir()
    if names is None:
        names = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        )
    rows = []
    for name in names:
        record = read_json_or_empty(root / name / RUN_FILE)
        metrics = read_json_or_empty(root / name / METRICS_FILE)
        ok = metrics.get("status") == "success"
        status = "success" if ok else (record.get("status") or "missing")
        if status == "success" and not ok:
            status = "missing"  # the run record said success but the metrics are gone
        config = metrics.get("prior_config") if isinstance(metrics.get("prior_config"), dict) else {}
        history = metrics.get("history") if isinstance(metrics.get("history"), list) else []
        rows.append(
            {
                "name": name,
                "vqvae_checkpoint": str(metrics.get("vqvae_checkpoint") or record.get("vqvae_checkpoint") or ""),
                "num_embeddings": _number(metrics.get("num_embeddings")),
                "embedding_dim": _number(metrics.get("embedding_dim")),
                "status": status,
                "error": "" if ok else str(record.get("error", "no metrics.json yet")),
                "val_bits_per_image": _number(metrics.get("val_bits_per_image")),
                "uniform_bits_per_image": _number(metrics.get("uniform_bits_per_image")),
                "best_epoch": _number(metrics.get("best_epoch")),
                "epochs_run": _number(metrics.get("epochs_run")),
                "epochs": _number(config.get("epochs")),
                "architecture": str(config.get("architecture", "")),
                "class_conditional": config.get("class_conditional"),
                "train_subset": config.get("train_subset"),
                "train_seconds": _number(metrics.get("train_seconds")),
                "run_seconds": _number(record.get("seconds")),
                "sequences_per_s": _number(metrics.get("sequences_per_s")),
                "precision": str(metrics.get("precision", "")),
                "executor": str(record.get("executor", "")),
                "threads": record.get("threads"),
                "code": str(metrics.get("code", "")),
                "checkpoint": str(metrics.get("checkpoint", "")),
                "history": [row for row in history if isinstance(row, dict)],
            }
        )
    columns = [
        "name",
        "vqvae_checkpoint",
        "num_embeddings",
        "embedding_dim",
        "status",
        "error",
        "val_bits_per_image",
        "uniform_bits_per_image",
        "best_epoch",
        "epochs_run",
        "epochs",
        "architecture",
        "class_conditional",
        "train_subset",
        "train_seconds",
        "run_seconds",
        "sequences_per_s",
        "precision",
        "executor",
        "threads",
        "code",
        "checkpoint",
        "history",
    ]
    return pd.DataFrame(rows, columns=columns)


def _number(value: Any) -> float | int:
    """A recorded number as it is; anything else read from a damaged record is NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return value
