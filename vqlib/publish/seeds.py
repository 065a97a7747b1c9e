"""Beside the study: the seed spread of a quick grid, the protocol's extra seeds, and the cosine-schedule runs
with their comparison to the constant rate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import paths
from ..checkpoints import PRETRAINED_PREFIX
from ..errors import ConfigError, OutputError, ResultFileError
from ..files import read_json_or_empty
from ..grid import SUMMARY_FILE, with_seed_statistics
from ..train import METRICS_FILE
from .common import StageResult, _Writer, inprogress_dir, published_grid_dir, published_seed_spread_dir
from .runs import finished_runs, publish_runs, restore_runs, snapshot_unfinished

if TYPE_CHECKING:
    import pandas as pd


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

    from ..grid import collect_grid

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
    from ..config import TrainConfig, with_defaults

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

    from ..grid import collect_grid

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

    from ..grid import paired_comparison

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
