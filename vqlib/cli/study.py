"""`vqlib` commands of the grid, the study and its reports: grid, run, report, publish, figures."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import add_config_options, command


def _configure_grid(p: argparse.ArgumentParser) -> None:
    from ..config import GridConfig, TrainConfig, VQVAEConfig
    from ..profiles import PROFILES

    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="quick",
        help="settings to start from; the options below override them (default: quick)",
    )
    # Only options given on the command line override the profile.
    add_config_options(p, GridConfig, profile=True)
    add_config_options(p, VQVAEConfig, skip=("num_embeddings", "embedding_dim"), profile=True)
    add_config_options(p, TrainConfig, skip=("checkpoint_dir", "results_dir"), profile=True)


def _profile_overrides(args: argparse.Namespace, profile: dict) -> dict:
    from ..config import GridConfig, TrainConfig, VQVAEConfig

    for stage, cls in (("grid", GridConfig), ("vqvae", VQVAEConfig), ("train", TrainConfig)):
        profile[stage].update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    return profile


@command(
    "grid",
    "train every K x D configuration through notebooks/01_train_vqvae.ipynb (papermill); "
    "writes results/grid/K{K}_D{D}/ and results/grid/summary.csv",
    _configure_grid,
)
def cmd_grid(args: argparse.Namespace) -> int:
    from ..config import GridConfig, TrainConfig, VQVAEConfig, from_dict
    from ..grid import SUMMARY_FILE, grid_dir, run_grid
    from ..profiles import get_profile

    prof = _profile_overrides(args, get_profile(args.profile))
    grid = from_dict(GridConfig, prof["grid"])
    frame = run_grid(grid, from_dict(VQVAEConfig, prof["vqvae"]), from_dict(TrainConfig, prof["train"]))
    columns = ["name", "status", "reused", "val_mse", "val_perplexity", "val_usage", "run_seconds"]
    print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"summary: {grid_dir(grid) / SUMMARY_FILE}")
    failed = frame[frame["status"] != "success"]
    for row in failed.itertuples():
        print(f"{row.name} failed: {row.error}", file=sys.stderr)
    return 1 if len(failed) else 0


# The grid options `vqlib run` takes: where and how its configurations run, and the seeds.
RUN_GRID_OPTIONS = (
    "seeds",
    "jobs",
    "threads_per_config",
    "executor",
    "ray_address",
    "cpus_per_config",
    "gpus_per_config",
    "ray_worker_root",
)


def _configure_run(p: argparse.ArgumentParser) -> None:
    from ..config import GridConfig
    from ..profiles import PROFILES

    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="quick",
        help=f"quick: {PROFILES['quick']['description']}; full: the original study's protocol, hours on a CPU "
        "(default: quick)",
    )
    p.add_argument("--with-code", action="store_true", help="keep the code cells in the HTML reports")
    add_config_options(
        p,
        GridConfig,
        profile=True,
        skip=[f.name for f in dataclasses.fields(GridConfig) if f.name not in RUN_GRID_OPTIONS],
    )


@command(
    "run", "the whole study: grid, notebooks 02-04 and 06, HTML reports -> results/reports/index.html", _configure_run
)
def cmd_run(args: argparse.Namespace) -> int:
    import time

    from ..study import run_study

    started = time.perf_counter()
    overrides = {name: getattr(args, name) for name in RUN_GRID_OPTIONS if hasattr(args, name)}
    result = run_study(args.profile, with_code=args.with_code, grid_overrides=overrides)
    print(
        f"study finished in {time.perf_counter() - started:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items() if k != 'total')})"
    )
    for failure in result.failures:
        print(f"problem: {failure}", file=sys.stderr)
    print(result.index)
    return 1 if result.failures else 0


def _configure_report(p: argparse.ArgumentParser) -> None:
    from ..profiles import PROFILES

    p.add_argument("--with-code", action="store_true", help="keep the code cells in the HTML reports")
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=None,
        help="the profile the study ran with, described on the index (default: none named)",
    )


@command("report", "export the executed notebooks again to results/reports/*.html and index.html", _configure_report)
def cmd_report(args: argparse.Namespace) -> int:
    from ..profiles import get_profile
    from ..reports import write_reports

    description = get_profile(args.profile)["description"] if args.profile else ""
    print(write_reports(with_code=args.with_code, profile_description=description))
    return 0


def _configure_publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid-dir", default=None, help="the grid's run folders (default: results/grid)")
    p.add_argument("--checkpoint-root", default=None, help="the grid's checkpoints (default: checkpoints/grid)")
    p.add_argument(
        "--restore",
        action="store_true",
        help="the other way: copy the published runs into the grid's folders, where it has no finished run",
    )
    p.add_argument(
        "--seed-spread",
        default=None,
        metavar="GRID_DIR",
        help="instead: publish the summary.csv of a grid trained with several seeds (vqlib grid --seeds 0,1,2 "
        "--grid-dir GRID_DIR) as results/published/seed_spread/summary.csv",
    )
    p.add_argument(
        "--protocol-seeds",
        default=None,
        metavar="GRID_DIR",
        help="instead: the runs of a grid trained at the protocol with other seeds (vqlib grid --profile full "
        "--seeds 1,2 --grid-dir GRID_DIR --checkpoint-root CKPT): finished ones as pretrained:NAME and in "
        "results/published/protocol_seeds/, unfinished ones snapshotted; with --restore, back into GRID_DIR and CKPT",
    )
    p.add_argument(
        "--lr-schedule",
        default=None,
        metavar="GRID_DIR",
        help="instead: the runs of a grid trained at the protocol with the cosine learning rate (vqlib grid --profile "
        "full --lr-schedule cosine --grid-dir GRID_DIR --checkpoint-root CKPT): finished ones in "
        "results/published/lr_schedule/ and as pretrained:NAME_cosine, unfinished ones snapshotted in "
        "checkpoints/inprogress/lr_schedule/, and their comparison with the published constant-rate runs of the same "
        "seeds; with --restore, back into GRID_DIR and CKPT",
    )
    p.add_argument(
        "--prior",
        action="append",
        default=None,
        metavar="PRIOR_DIR",
        help="instead: a prior's checkpoint folder (vqlib train-prior on pretrained:NAME; repeatable): finished, as "
        "pretrained:NAME_prior (its background model as NAME_prior_background); unfinished, snapshotted in "
        "checkpoints/inprogress/prior/ (vqlib publish --restore puts them back into checkpoints/prior/, where "
        "train-prior --resume continues them)",
    )


@command(
    "publish",
    "copy every finished grid run into the tracked published study (checkpoints/pretrained/, results/published/) "
    "and snapshot unfinished ones and unfinished label-efficiency rows (checkpoints/inprogress/); then the grid summary's figures, the chosen "
    "classifier, the analysis and the reports, each once all its outputs exist",
    _configure_publish,
)
def cmd_publish(args: argparse.Namespace) -> int:
    from ..checkpoints import BEST_FILE
    from ..grid import checkpoint_root, grid_dir
    from ..paths import shown
    from ..publish import (
        PUBLISHED_LIMIT_BYTES,
        finished_runs,
        publish_runs,
        publish_seed_spread,
        publish_stages,
        published_bytes,
        restore_label_efficiency,
        restore_priors,
        restore_runs,
        snapshot_label_efficiency,
        snapshot_unfinished,
    )

    if args.seed_spread:
        print(publish_seed_spread(args.seed_spread).line())
        return 0
    if args.prior and not args.restore:
        from ..publish import publish_prior

        for prior_dir in args.prior:
            print(publish_prior(prior_dir).line())
        return 0
    if args.protocol_seeds:
        return _publish_protocol_seeds(args)
    if args.lr_schedule:
        return _publish_lr_schedule(args)

    folder = Path(args.grid_dir) if args.grid_dir else grid_dir()
    checkpoints = Path(args.checkpoint_root) if args.checkpoint_root else checkpoint_root()
    if args.restore:
        names = restore_runs(folder, checkpoints)
        print(f"restored {len(names)} run(s) into {folder}: {', '.join(names) or 'none needed'}")
        for name in restore_label_efficiency():
            print(f"restored the label-efficiency study of {name}: notebook 03 continues from its finished rows")
        for name in restore_priors():
            print(
                f"restored the unfinished prior {name} into checkpoints/prior/{name}: train-prior --resume continues it"
            )
        return 0
    names = publish_runs(folder, checkpoints)
    snapshots = snapshot_unfinished(folder, checkpoints)
    if not names and not snapshots and not finished_runs(folder) and not (folder / BEST_FILE).is_file():
        # A fresh clone: the published study is all there is, and there is nothing of this checkout's to add.
        rows = snapshot_label_efficiency()
        if not rows:
            print(
                f"nothing new to publish: {shown(folder)} holds no finished grid run (train one with `vqlib run` "
                f"or `vqlib grid`); the published study ({published_bytes() / 1e6:.1f} MB) is unchanged"
            )
            return 0
    print(f"published {len(names)} new or updated run(s): {', '.join(names) or 'all up to date'}")
    for name, epochs in snapshots.items():
        print(f"snapshot of {name}, still training: {epochs} epochs done (checkpoints/inprogress/{name})")
    for stage in publish_stages(folder, checkpoints):
        print(stage.line())
    # After the stages: a classifier published just now needs no snapshot of its rows.
    for name, taken in snapshot_label_efficiency().items():
        under_way = f", {len(taken.unfinished)} under way ({', '.join(taken.unfinished)})" if taken.unfinished else ""
        print(
            f"snapshot of {name}'s label efficiency, unfinished: {taken.rows} rows done{under_way} "
            f"(checkpoints/inprogress/label_efficiency/{name})"
        )
    size = published_bytes()
    print(
        f"the published study holds {size / 1e6:.1f} MB"
        + (f", more than the {PUBLISHED_LIMIT_BYTES / 1e6:.0f} MB it may" if size > PUBLISHED_LIMIT_BYTES else "")
    )
    return 0


def _publish_protocol_seeds(args: argparse.Namespace) -> int:
    from ..publish import (
        publish_protocol_seeds,
        published_protocol_seeds_dir,
        restore_runs,
        snapshot_unfinished,
    )

    if not args.checkpoint_root:
        raise ConfigError("--protocol-seeds needs --checkpoint-root: the folder the seeds' grid trains into")
    folder, checkpoints = Path(args.protocol_seeds), Path(args.checkpoint_root)
    if args.restore:
        names = restore_runs(folder, checkpoints, published=published_protocol_seeds_dir())
        print(f"restored {len(names)} run(s) into {folder}: {', '.join(names) or 'none needed'}")
        return 0
    print(publish_protocol_seeds(folder, checkpoints).line())
    for name, epochs in snapshot_unfinished(folder, checkpoints).items():
        print(f"snapshot of {name}, still training: {epochs} epochs done (checkpoints/inprogress/{name})")
    return 0


def _publish_lr_schedule(args: argparse.Namespace) -> int:
    from ..paths import shown
    from ..publish import (
        LR_SCHEDULE_SUFFIX,
        finished_runs,
        lr_schedule_snapshots_dir,
        publish_lr_schedule,
        publish_lr_schedule_comparison,
        restore_lr_schedule,
        snapshot_lr_schedule,
    )

    if not args.checkpoint_root:
        raise ConfigError("--lr-schedule needs --checkpoint-root: the folder the cosine grid trains into")
    folder, checkpoints = Path(args.lr_schedule), Path(args.checkpoint_root)
    if args.restore:
        names = restore_lr_schedule(folder, checkpoints)
        print(f"restored {len(names)} run(s) into {folder}: {', '.join(names) or 'none needed'}")
        return 0
    names = publish_lr_schedule(folder, checkpoints)
    if names:
        done = ", ".join(f"{name} as pretrained:{name}{LR_SCHEDULE_SUFFIX}" for name in names)
    else:
        done = "all up to date" if finished_runs(folder) else f"none finished in {shown(folder)} yet"
    print(f"published {len(names)} new or updated cosine run(s): {done}")
    print(publish_lr_schedule_comparison().line())
    for name, epochs in snapshot_lr_schedule(folder, checkpoints).items():
        print(f"snapshot of {name}, still training: {epochs} epochs done ({shown(lr_schedule_snapshots_dir() / name)})")
    return 0


def _configure_figures(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="folder of the figures (default: docs/figures)")


@command(
    "figures",
    "draw the README's figures from the published study alone (results/published/, checkpoints/pretrained/) "
    "into docs/figures/: no training, no data, no GPU",
    _configure_figures,
)
def cmd_figures(args: argparse.Namespace) -> int:
    from ..figures import write_figures
    from ..paths import shown

    result = write_figures(args.out)
    print(
        f"{len(result.written)} figure(s) in {shown(result.folder)} ({len(result.changed)} changed): "
        + ", ".join(path.name for path in result.written)
    )
    for line in result.skipped:
        print(f"skipped {line}")
    return 0
