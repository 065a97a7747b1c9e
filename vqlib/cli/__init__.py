"""`vqlib` commands: thin argument parsing over the package's functions.

Options of the training commands are generated from the config dataclasses,
so `--help` documents every hyperparameter with its default and no option can
drift from the config it sets. A `VqlibError` is printed as one sentence with
exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError, VqlibError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args) -> exit code` as a subcommand; `configure(parser)` adds its options."""

    def register(run):
        COMMANDS[name] = (help, configure, run)
        return run

    return register


def _parse_optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "all") else int(text)


def _parse_optional_float(text: str) -> Optional[float]:
    return None if text.lower() == "none" else float(text)


def add_config_options(
    parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (), profile: bool = False
) -> None:
    """One --option per dataclass field, typed, with the field's help and default.

    With `profile`, an option not given is left out of the parsed arguments, so
    that only the options given on the command line override a profile.
    """
    group = parser.add_argument_group(f"{cls.__name__} options")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        default = f"the profile's, or {f.default} where it sets none" if profile else f.default
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS if profile else f.default,
            "dest": f.name,
            "help": f"{f.metadata.get('help', '')} (default: {default})",
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str):
            kwargs["type"] = kind
        elif kind == Optional[int]:
            kwargs["type"] = _parse_optional_int
        elif kind == Optional[float]:
            kwargs["type"] = _parse_optional_float
        else:  # Optional[str]
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where to compute: auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu or cuda (default: auto)",
    )


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four FashionMNIST IDX .gz files (default: search VQLIB_DATA_DIR, "
        "data/FashionMNIST/raw, the Debian package, then download)",
    )


def _precision_option(parser: argparse.ArgumentParser, what: str) -> None:
    from ..config import PRECISIONS

    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help=f"arithmetic of {what}: 'auto' (bf16 on CUDA and on a CPU with native bfloat16 units, AVX-512 BF16 "
        "or AMX; fp32 elsewhere), 'fp32' or 'bf16' (default: auto; docs/precision.md)",
    )


def _load_data(args: argparse.Namespace):
    from ..data import load_fashion_mnist

    return load_fashion_mnist(getattr(args, "data_dir", None))


# ----------------------------------------------------------------------------- data


def _configure_data(p: argparse.ArgumentParser) -> None:
    _data_option(p)
    p.add_argument("--no-download", action="store_true", help="only check; never download")


@command("data", "find (or download) and verify FashionMNIST; print where it is", _configure_data)
def cmd_data(args: argparse.Namespace) -> int:
    from ..data import find_data_dir, load_fashion_mnist

    folder = find_data_dir(args.data_dir, allow_download=not args.no_download)
    data = load_fashion_mnist(folder)
    print(
        f"FashionMNIST verified in {folder}: {len(data.train_labels)} train, {len(data.val_labels)} validation, "
        f"{len(data.test_labels)} test images"
    )
    return 0


# ----------------------------------------------------------------------------- VQ-VAE


def _configure_train_vqvae(p: argparse.ArgumentParser) -> None:
    from ..config import TrainConfig, VQVAEConfig

    add_config_options(p, VQVAEConfig)
    add_config_options(p, TrainConfig)
    _data_option(p)
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the checkpoint folder")


@command("train-vqvae", "train one VQ-VAE; writes best.pt, last.pt and history.json", _configure_train_vqvae)
def cmd_train_vqvae(args: argparse.Namespace) -> int:
    from ..config import TrainConfig, VQVAEConfig
    from ..train import train_vqvae

    model_config, train_config = config_from_args(VQVAEConfig, args), config_from_args(TrainConfig, args)
    data = _load_data(args)
    run = train_vqvae(model_config, train_config, data, resume=args.resume)
    last = run.history[-1]
    best = min(run.history, key=lambda row: row["val_mse"])
    print(
        f"validation MSE {last['val_mse']:.5f} (best {best['val_mse']:.5f} at epoch {best['epoch']}), "
        f"validation perplexity {last['val_perplexity']:.2f} of {model_config.num_embeddings} codes, "
        f"{last['val_usage']:.0%} of codes used"
    )
    print(f"checkpoints: {run.checkpoint_dir}/best.pt, {run.checkpoint_dir}/last.pt")
    return 0


def _configure_infer_vqvae(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a VQ-VAE checkpoint (best.pt or last.pt)")
    p.add_argument("--num-images", type=int, default=20, help="test images to reconstruct (default: 20)")
    p.add_argument("--output", default=None, help="PNG to write (default: results/vqvae/<run>/reconstructions.png)")
    _device_option(p)
    _precision_option(p, "the forward pass (the test metrics are computed in fp32 from its output)")
    _data_option(p)


@command("infer-vqvae", "reconstruct test images into a PNG grid and print the test metrics", _configure_infer_vqvae)
def cmd_infer_vqvae(args: argparse.Namespace) -> int:
    from .. import paths
    from ..checkpoints import resolve_checkpoint
    from ..infer import infer_vqvae

    # The run's folder name (K100_D64 for pretrained:K100_D64 or checkpoints/grid/K100_D64/best.pt), not the
    # folder of whatever path was typed: resolved first, so that pretrained:NAME names its run too.
    run = resolve_checkpoint(args.checkpoint, kind="vqvae").resolve().parent.name
    output = args.output or paths.results_dir() / "vqvae" / run / "reconstructions.png"
    metrics = infer_vqvae(
        args.checkpoint,
        output,
        num_images=args.num_images,
        data=_load_data(args),
        device=args.device,
        precision=args.precision,
    )
    print(
        f"test MSE {metrics['mse']:.5f}, PSNR of the mean MSE {metrics['psnr']:.2f} dB "
        f"(mean per-image PSNR {metrics['psnr_mean_per_image']:.2f} dB), perplexity {metrics['perplexity']:.2f}, "
        f"codes used {metrics['codebook_usage']:.0%}, precision {metrics['precision']}"
    )
    print(f"reconstructions: {output}")
    return 0


# ----------------------------------------------------------------------------- codebook ablation


def _parse_config(text: str) -> tuple[int, int]:
    """'25x16' (or 'K25xD16', '25,16') -> (25, 16)."""
    plain = text.lower().replace("k", "").replace("d", "").replace(",", "x")
    try:
        k, d = (int(part) for part in plain.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a codebook configuration; write K x D, such as 25x16"
        ) from None
    return k, d


def _configure_ablation(p: argparse.ArgumentParser) -> None:
    from ..ablation import SEED_GRID_EXTREMES, VARIANTS

    p.add_argument(
        "--configs",
        nargs="+",
        type=_parse_config,
        default=list(SEED_GRID_EXTREMES),
        metavar="KxD",
        help="codebook sizes K x D to compare (default: the original grid's extremes 25x16 100x64)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help=f"quantizer variants (default: all: {', '.join(VARIANTS)})",
    )
    p.add_argument(
        "--restart-thresholds",
        nargs="+",
        type=float,
        default=None,
        metavar="T",
        help="run every variant with restarts once per dead-code threshold T, named variant@T "
        "(default: each variant's own threshold)",
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs of every run: a fixed budget (default: 2)")
    p.add_argument(
        "--train-subset",
        type=_parse_optional_int,
        default=6400,
        help="training images (stratified; 'all' uses 55,000) (default: 6400)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    _device_option(p)
    p.add_argument(
        "--results-dir", default=None, help="where ablation.csv and ablation.png go (default: results/ablation)"
    )
    p.add_argument(
        "--checkpoints-dir", default=None, help="where the runs' checkpoints go (default: checkpoints/ablation)"
    )
    _data_option(p)


@command(
    "ablation",
    "compare the paper's quantizer with EMA, k-means init and dead-code restarts; "
    "writes results/ablation/ablation.csv and ablation.png",
    _configure_ablation,
)
def cmd_ablation(args: argparse.Namespace) -> int:
    from .. import paths
    from ..ablation import codebook_ablation, resolve_variants, with_thresholds

    variants = resolve_variants(args.variants)
    if args.restart_thresholds:
        variants = with_thresholds(variants, args.restart_thresholds)
    table = codebook_ablation(
        args.configs,
        variants,
        epochs=args.epochs,
        train_subset=args.train_subset,
        seed=args.seed,
        data=_load_data(args),
        results_dir=args.results_dir,
        checkpoints_dir=args.checkpoints_dir,
        device=args.device,
    )
    columns = [
        "K",
        "D",
        "variant",
        "val_mse",
        "val_perplexity",
        "val_usage",
        "train_perplexity",
        "codes_restarted",
        "seconds",
    ]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"table and figure: {Path(args.results_dir or paths.results_dir() / 'ablation')}/ablation.csv, ablation.png")
    return 0


# ----------------------------------------------------------------------------- classifier


def _configure_train_cls(p: argparse.ArgumentParser) -> None:
    from ..config import ClassifierConfig

    add_config_options(p, ClassifierConfig)
    _data_option(p)
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the checkpoint folder")


@command(
    "train-cls",
    "train the classification head on a frozen (or fine-tuned) VQ-VAE encoder; "
    "writes checkpoints/classifier/<run>/best.pt, last.pt and history.json",
    _configure_train_cls,
)
def cmd_train_cls(args: argparse.Namespace) -> int:
    from ..classify import train_classifier
    from ..config import ClassifierConfig

    run = train_classifier(config_from_args(ClassifierConfig, args), _load_data(args), resume=args.resume)
    print(
        f"validation accuracy {run.best_val_acc:.4f} (epoch {run.best_epoch} of {len(run.history)}), "
        f"{run.train_images} training images, training {run.train_seconds:.1f} s"
        + (f" + encoding once {run.encode_seconds:.1f} s" if run.encode_seconds else "")
    )
    print(f"checkpoint: {run.best_checkpoint}")
    return 0


def _configure_eval_cls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a classifier checkpoint (best.pt)")
    p.add_argument(
        "--vqvae-checkpoint",
        default=None,
        help="check the classifier against this VQ-VAE checkpoint (refused if it is another configuration or run)",
    )
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to evaluate (default: test)"
    )
    p.add_argument(
        "--results-dir", default=None, help="where the metrics, CSVs and PNG go (default: results/classifier/<run>)"
    )
    _device_option(p)
    _data_option(p)


@command(
    "eval-cls",
    "test accuracy, per-class precision/recall/F1 and confusion matrix (CSV and PNG) of a classifier",
    _configure_eval_cls,
)
def cmd_eval_cls(args: argparse.Namespace) -> int:
    from ..classify import evaluate_classifier, load_classifier
    from ..device import resolve_device

    if args.vqvae_checkpoint:
        load_classifier(args.checkpoint, vqvae_checkpoint=args.vqvae_checkpoint)
    metrics = evaluate_classifier(
        args.checkpoint,
        _load_data(args),
        split=args.split,
        results_dir=args.results_dir,
        device=str(resolve_device(args.device)),
    )
    print(metrics["report"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(
        f"{args.split} accuracy {metrics['accuracy']:.4f} on {metrics['images']} images, macro F1 {metrics['macro_f1']:.4f}"
    )
    print(f"files: {', '.join(str(path) for path in metrics['files'].values())}")
    return 0


def _prior_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prior",
        default=None,
        help="the prior over the VQ-VAE's code for the out-of-distribution score (a best.pt or pretrained:NAME; "
        "default: pretrained:<VQ-VAE>_prior for a published VQ-VAE)",
    )
    parser.add_argument(
        "--background-prior",
        default=None,
        help="the prior's background model, trained with --perturbation (default: beside the prior, in the folder "
        "of the prior's name + _background)",
    )


def _configure_infer_cls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a classifier checkpoint (best.pt)")
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="an IDX images file (.gz or raw) or PNG/JPEG images of any size"
    )
    p.add_argument(
        "--invert",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--invert for dark garments on a light background, --no-invert to never invert "
        "(default: decide from each image's border)",
    )
    p.add_argument(
        "--output",
        default=None,
        help="also write the predictions to this .csv or .json file (default: only beyond 20 images, which are "
        "summarised on the terminal, to results/infer-cls/<first input>_predictions.csv)",
    )
    p.add_argument(
        "--vqvae-checkpoint",
        default=None,
        help="the VQ-VAE the classifier was trained on, for the out-of-distribution score "
        "(default: the path the classifier recorded)",
    )
    _prior_options(p)
    _device_option(p)
    _precision_option(p, "the classifier's forward pass (the OOD score stays fp32)")


@command(
    "infer-cls",
    "predict the class of images (IDX or PNG/JPEG) with a classifier; prints and writes probabilities and whether "
    "each image looks like FashionMNIST",
    _configure_infer_cls,
)
def cmd_infer_cls(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..infer import (
        TABLE_ROWS,
        class_counts,
        default_predictions_path,
        infer_images,
        ood_summary,
        write_predictions,
    )
    from ..paths import shown

    frame = infer_images(
        args.checkpoint,
        args.inputs,
        output=args.output,
        invert=args.invert,
        device=str(resolve_device(args.device)),
        vqvae_checkpoint=args.vqvae_checkpoint,
        prior=args.prior,
        background_prior=args.background_prior,
        precision=args.precision,
        progress=True,
    )
    output = args.output
    if len(frame) <= TABLE_ROWS:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        if output is None:
            output = write_predictions(default_predictions_path(args.inputs), frame)
        print(f"{len(frame)} images, predicted: {class_counts(frame)}")
    print(ood_summary(frame, table=shown(output) if output else None))
    if output:
        print(f"predictions: {shown(output)}")
    return 0


def _configure_ood_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vqvae-checkpoint",
        default=None,
        help="the VQ-VAE whose detector is measured (default: the prior's, when --prior is given; else the grid's "
        "best, else the published one)",
    )
    _prior_options(p)
    p.add_argument("--refit", action="store_true", help="calibrate the detector again even when it is cached")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many images of each set and of the training images the Mahalanobis baseline is fitted "
        "on (a quick check; the published table uses none)",
    )
    p.add_argument(
        "--results-dir",
        default=None,
        help="where ood_eval.csv, ood_photos.csv and ood_eval.json go (default: results/ood)",
    )
    _device_option(p)
    _data_option(p)


@command(
    "ood-eval",
    "AUROC and share flagged of the out-of-distribution detector and its baselines on real and synthetic sets it "
    "never saw, against the FashionMNIST test set, and the verdict on whole sample photos; writes results/ood/",
    _configure_ood_eval,
)
def cmd_ood_eval(args: argparse.Namespace) -> int:
    from .. import ood, ood_eval, paths
    from ..device import resolve_device
    from ..files import utc_timestamp, write_csv, write_json

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of images, not {args.limit}")
    data = _load_data(args)
    detector = ood.detector_for(
        args.vqvae_checkpoint,
        args.prior,
        args.background_prior,
        data=data,
        device=resolve_device(args.device),
        refit=args.refit,
    )
    table = ood_eval.evaluate_detector(detector, data, limit=args.limit, progress=True)
    photos = ood_eval.photo_table(detector)
    folder = Path(args.results_dir) if args.results_dir else paths.results_dir() / "ood"
    write_csv(folder / "ood_eval.csv", table)
    write_csv(folder / "ood_photos.csv", photos)
    write_json(
        folder / "ood_eval.json",
        {"detector": detector.info, "limit": args.limit, "code": paths.code_version(), "written": utc_timestamp()},
    )
    names = detector.models.names
    print(
        f"detector: likelihood ratio of {names['prior']} against {names['background']} on the code of "
        f"{names['vqvae']}; calibration {paths.shown(detector.path) if detector.path else '(not cached)'}"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    print(
        f"flagged = share above the validation {detector.threshold_percentile:g}th percentile, or a photo that "
        "fails a premise of its preparation (on the FashionMNIST rows: the false-positive rate)"
    )
    print(photos.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"tables: {paths.shown(folder / 'ood_eval.csv')}, {paths.shown(folder / 'ood_photos.csv')}")
    return 0


def _configure_label_efficiency(p: argparse.ArgumentParser) -> None:
    from ..config import ClassifierConfig, LabelEfficiencyConfig

    add_config_options(p, LabelEfficiencyConfig)
    # The head's sizes and budget; the names LabelEfficiencyConfig shares are set above.
    add_config_options(
        p,
        ClassifierConfig,
        skip=(
            "vqvae_checkpoint",
            "labels_per_class",
            "finetune",
            "cache_codes",
            "seed",
            "device",
            "checkpoint_dir",
            "results_dir",
        ),
    )
    _data_option(p)


@command(
    "label-efficiency",
    "test accuracy against labels per class: frozen-VQ head, linear probes on the quantized and the continuous "
    "latents, a ConvNet on pixels, pixel logistic regression, all selected on the same labels (--selection); "
    "writes label_efficiency.csv and .png",
    _configure_label_efficiency,
)
def cmd_label_efficiency(args: argparse.Namespace) -> int:
    from ..config import ClassifierConfig, LabelEfficiencyConfig
    from ..label_efficiency import label_efficiency, label_efficiency_summary

    config = config_from_args(LabelEfficiencyConfig, args)
    classifier = ClassifierConfig(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(ClassifierConfig)
            if hasattr(args, f.name) and f.name not in ("vqvae_checkpoint", "results_dir")
        }
    )
    frame = label_efficiency(config, _load_data(args), classifier=classifier)
    print(label_efficiency_summary(frame).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


# ----------------------------------------------------------------------------- grid, study, reports


def _configure_grid(p: argparse.ArgumentParser) -> None:
    from ..config import GridConfig, TrainConfig, VQVAEConfig
    from ..study import PROFILES

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
    from ..study import get_profile

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
    from ..study import PROFILES

    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="quick",
        help="quick: about 19 minutes on a 2-core CPU before notebook 06 (the study about 1,100 s, plus set-up), "
        "which adds about 570 CPU seconds; full: the original study's protocol, hours on a CPU (default: quick)",
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
    from ..study import PROFILES

    p.add_argument("--with-code", action="store_true", help="keep the code cells in the HTML reports")
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=None,
        help="the profile the study ran with, described on the index (default: none named)",
    )


@command("report", "export the executed notebooks again to results/reports/*.html and index.html", _configure_report)
def cmd_report(args: argparse.Namespace) -> int:
    from ..reports import write_reports
    from ..study import get_profile

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
            print(f"restored the finished label-efficiency rows of {name}: notebook 03 continues from them")
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
    for name, rows in snapshot_label_efficiency().items():
        print(
            f"snapshot of {name}'s label efficiency, unfinished: {rows} rows done (checkpoints/inprogress/label_efficiency/{name})"
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


# ----------------------------------------------------------------------------- prior over the code


def _configure_train_prior(p: argparse.ArgumentParser) -> None:
    from ..config import PriorConfig

    add_config_options(p, PriorConfig)
    _data_option(p)
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the checkpoint folder")


@command(
    "train-prior",
    "train the autoregressive prior over a frozen VQ-VAE's code; writes checkpoints/prior/<run>/best.pt, last.pt",
    _configure_train_prior,
)
def cmd_train_prior(args: argparse.Namespace) -> int:
    from ..config import PriorConfig
    from ..prior import train_prior

    run = train_prior(config_from_args(PriorConfig, args), _load_data(args), resume=args.resume)
    best = run.history[run.best_epoch - 1]
    print(
        f"validation {best['val_bits_per_image']:.1f} bits per image ({best['val_bits_per_code']:.3f} bits per code) "
        f"at epoch {run.best_epoch} of {len(run.history)}"
    )
    print(f"checkpoint: {run.best_checkpoint}")
    return 0


def _configure_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", required=True, help="a prior checkpoint (best.pt) or pretrained:NAME")
    p.add_argument(
        "--vqvae-checkpoint",
        default=None,
        help="the VQ-VAE that decodes the codes (default: the one the prior was trained on; another is refused)",
    )
    p.add_argument("--num", type=int, default=64, help="samples to draw (default: 64)")
    p.add_argument("--class", dest="class_name", default=None, help="class to sample (name or 0-9; default: none)")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest codes only (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    p.add_argument(
        "--complete",
        default=None,
        metavar="IMAGE",
        help="complete this image (a PNG/JPEG path, or test:INDEX for a test image) instead of sampling from nothing",
    )
    p.add_argument("--keep-rows", type=int, default=6, help="code rows of IMAGE kept by --complete (default: 6)")
    p.add_argument(
        "--output",
        default=None,
        help="PNG grid to write; the codes go beside it as .pt (default: results/prior/<prior run>/samples.png)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("auto", "cpu", "cuda"),
        help="where to sample: cpu, auto (a CUDA GPU when PyTorch sees one, else the CPU) or cuda (default: cpu)",
    )
    _data_option(p)


def _image_to_complete(text: str, args: argparse.Namespace):
    from ..errors import ConfigError

    if text.lower().startswith("test:"):
        data = _load_data(args)
        try:
            index = int(text[5:])
        except ValueError:
            index = -1
        if not 0 <= index < len(data.test_images):
            raise ConfigError(f"{text!r} names no test image; write test:INDEX with INDEX from 0 to 9999")
        return data.test_images[index]
    from ..photos import load_images

    images, _ = load_images([text])
    return images[0]


@command(
    "sample",
    "draw codes from a prior, decode them into a PNG grid (codes beside it as .pt); --complete fills in an image",
    _configure_sample,
)
def cmd_sample(args: argparse.Namespace) -> int:
    import time

    import torch

    from .. import paths
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..files import atomic_path, save_figure
    from ..plots import image_grid
    from ..prior import class_index, complete, load_pair, sample_images, sampling_record

    class_id = None if args.class_name is None else class_index(args.class_name)
    if args.num < 1:
        raise ConfigError(f"--num must be a positive integer, not {args.num}")
    prior, vqvae, ckpt = load_pair(args.prior, args.vqvae_checkpoint, device=resolve_device(args.device))
    settings = dict(num=args.num, temperature=args.temperature, top_k=args.top_k, seed=args.seed, class_id=class_id)
    started = time.perf_counter()
    if args.complete:
        image = _image_to_complete(args.complete, args)
        images, codes = complete(
            prior,
            vqvae,
            image,
            args.keep_rows,
            num=args.num,
            classes=class_id,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
        )
        settings.update(complete=args.complete, keep_rows=args.keep_rows)
    else:
        images, codes = sample_images(
            prior, vqvae, args.num, classes=class_id, temperature=args.temperature, top_k=args.top_k, seed=args.seed
        )
    seconds = time.perf_counter() - started
    output = Path(args.output or paths.results_dir() / "prior" / str(ckpt.get("run_name") or "prior") / "samples.png")
    per_row = 8 if len(images) > 8 else len(images)
    rows = [images[i : i + per_row] for i in range(0, len(images), per_row)]
    if args.complete:
        from ..data import to_float

        # First row: the image and its reconstruction from its whole code, what the completions are read against.
        with torch.inference_mode():
            x = to_float(image.reshape(1, 28, 28), next(vqvae.parameters()).device)
            rows = [torch.cat([x, vqvae(x).reconstruction.clamp(0, 1)]).cpu(), *rows]
    save_figure(image_grid(rows, scale=0.8), output)
    codes_path = output.with_suffix(".pt")
    with atomic_path(codes_path) as tmp:
        torch.save({"codes": codes, **sampling_record(ckpt, **settings)}, tmp)
    print(f"{len(codes)} samples in {seconds:.2f} s: {output} (codes: {codes_path})")
    return 0


# The grid options `vqlib prior-grid` takes: where and how its priors run, and where their folders are.
PRIOR_GRID_OPTIONS = (*(name for name in RUN_GRID_OPTIONS if name != "seeds"), "grid_dir", "checkpoint_root")


def _configure_prior_grid(p: argparse.ArgumentParser) -> None:
    from ..config import GridConfig, PriorConfig

    p.add_argument(
        "--vqvae-checkpoints",
        required=True,
        metavar="CKPTS",
        help="the VQ-VAEs whose code gets a prior, comma-separated: pretrained:NAME or best.pt paths "
        "(such as pretrained:K25_D64,pretrained:K50_D64,pretrained:K100_D64)",
    )
    add_config_options(
        p, GridConfig, skip=[f.name for f in dataclasses.fields(GridConfig) if f.name not in PRIOR_GRID_OPTIONS]
    )
    add_config_options(p, PriorConfig, skip=("vqvae_checkpoint", "checkpoint_dir"))


@command(
    "prior-grid",
    "train a prior over the code of each VQ-VAE as grid points (local pool or Ray); writes "
    "results/grid/prior/<run>/ and results/grid/prior/summary.csv, checkpoints in checkpoints/grid/prior/<run>/",
    _configure_prior_grid,
)
def cmd_prior_grid(args: argparse.Namespace) -> int:
    from ..config import GridConfig, PriorConfig
    from ..prior_grid import SUMMARY_FILE, prior_grid_dir, run_prior_grid

    grid = config_from_args(GridConfig, args)
    frame = run_prior_grid(args.vqvae_checkpoints, config_from_args(PriorConfig, args), grid)
    columns = ["name", "status", "reused", "val_bits_per_image", "uniform_bits_per_image", "run_seconds"]
    print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"summary: {prior_grid_dir(grid) / SUMMARY_FILE}")
    failed = frame[frame["status"] != "success"]
    for row in failed.itertuples():
        print(f"{row.name} failed: {row.error}", file=sys.stderr)
    return 1 if len(failed) else 0


def _parse_qualities(text: str) -> list[int]:
    from ..config import parse_int_list

    try:
        return parse_int_list("--qualities", text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configure_rate_distortion(p: argparse.ArgumentParser) -> None:
    from ..codec import FORMATS, QUALITIES

    p.add_argument(
        "--prior",
        action="append",
        required=True,
        metavar="PRIOR",
        help="a prior checkpoint (best.pt) or pretrained:NAME; give --prior once per VQ-VAE to compare",
    )
    p.add_argument(
        "--test-subset",
        type=_parse_optional_int,
        default=None,
        help="compare on this many test images (stratified) instead of all 10,000 (default: all)",
    )
    p.add_argument(
        "--qualities",
        type=_parse_qualities,
        default=list(QUALITIES),
        help=f"JPEG and WebP qualities, comma-separated, 0-100 (default: {','.join(map(str, QUALITIES))})",
    )
    p.add_argument(
        "--formats",
        type=lambda text: [f.strip().upper() for f in text.split(",") if f.strip()],
        default=list(FORMATS),
        help=f"Pillow formats beside the priors, comma-separated (default: {','.join(FORMATS)})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset (default: 0)")
    p.add_argument("--results-dir", default=None, help="where rate_distortion.csv and .png go (default: results/codec)")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("auto", "cpu", "cuda"),
        help="where the priors and VQ-VAEs run: cpu, auto (a CUDA GPU when PyTorch sees one) or cuda (default: cpu)",
    )
    _data_option(p)


@command(
    "rate-distortion",
    "the code as a lossy codec: bits per image from each prior (its unconditional NLL) and test PSNR, beside "
    "JPEG and WebP at a sweep of qualities (bytes with and without headers); writes results/codec/rate_distortion.csv "
    "and .png",
    _configure_rate_distortion,
)
def cmd_rate_distortion(args: argparse.Namespace) -> int:
    from .. import paths
    from ..codec import check_formats, check_qualities, rate_distortion, write_rate_distortion

    qualities, formats = check_qualities(args.qualities), check_formats(args.formats)
    frame = rate_distortion(
        args.prior,
        _load_data(args),
        test_subset=args.test_subset,
        qualities=qualities,
        formats=formats,
        seed=args.seed,
        device=args.device,
    )
    table, figure = write_rate_distortion(frame, args.results_dir or paths.results_dir() / "codec")
    columns = ["codec", "setting", "bits_per_image", "payload_bits_per_image", "psnr"]
    print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"table: {table}; figure: {figure}")
    return 0


# ----------------------------------------------------------------------------- entry point


def _one_line(text: str) -> str:
    """A message on one line: a file name or option value may itself hold a newline."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one sentence like every other vqlib error (still exit code 2).

    argparse prints the whole usage block before the error; for a command with
    forty options that buries the one line that matters. `--help` shows the usage.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vqlib",
        description="vqlib: a VQ-VAE that learns a discrete code for FashionMNIST, and a classifier that reads it.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"vqlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except VqlibError as exc:
        if args.debug:
            raise
        print(f"vqlib {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqlib {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
