"""`vqlib` commands of the prior over the code: train-prior, sample, prior-grid, rate-distortion."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import _data_option, _load_data, _parse_optional_int, add_config_options, command, config_from_args
from .study import RUN_GRID_OPTIONS


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
    p.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="classifier-free guidance towards --class: logits c + w (c - u) of the prior given the class (c) and "
        "given none (u); 0 samples the prior itself (default: 0)",
    )
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
    if args.guidance:
        if args.complete:
            raise ConfigError("--guidance applies to samples drawn from nothing, not to --complete")
        settings["guidance"] = args.guidance
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
            prior,
            vqvae,
            args.num,
            classes=class_id,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
            guidance=args.guidance,
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
