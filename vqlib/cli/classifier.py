"""`vqlib` commands of the classifier: train-cls, eval-cls, infer-cls, ood-eval, label-efficiency."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import ConfigError
from .options import (
    _data_option,
    _device_option,
    _load_data,
    _precision_option,
    add_config_options,
    command,
    config_from_args,
)


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
