"""`vqlib` commands of the data and the VQ-VAE: data, train-vqvae, infer-vqvae, ablation."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (
    _data_option,
    _device_option,
    _load_data,
    _parse_optional_int,
    _precision_option,
    add_config_options,
    command,
    config_from_args,
)

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
    from ..config import ABLATION_CONFIGS as SEED_GRID_EXTREMES
    from ..config import ABLATION_VARIANTS as VARIANTS

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
