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

from .errors import VqlibError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args) -> exit code` as a subcommand; `configure(parser)` adds its options."""
    def register(run):
        COMMANDS[name] = (help, configure, run)
        return run
    return register


def _parse_optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "all") else int(text)


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = ()) -> None:
    """One --option per dataclass field, typed, with the field's help and default."""
    group = parser.add_argument_group(f"{cls.__name__} options")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        kwargs: dict[str, Any] = {"default": f.default, "dest": f.name,
                                  "help": f"{f.metadata.get('help', '')} (default: {f.default})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str):
            kwargs["type"] = kind
        elif kind == Optional[int]:
            kwargs["type"] = _parse_optional_int
        else:  # Optional[str]
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="folder with the four FashionMNIST IDX .gz files (default: search VQLIB_DATA_DIR, "
                             "data/FashionMNIST/raw, the Debian package, then download)")


def _load_data(args: argparse.Namespace):
    from .data import load_fashion_mnist
    return load_fashion_mnist(getattr(args, "data_dir", None))


# ----------------------------------------------------------------------------- data

def _configure_data(p: argparse.ArgumentParser) -> None:
    _data_option(p)
    p.add_argument("--no-download", action="store_true", help="only check; never download")


@command("data", "find (or download) and verify FashionMNIST; print where it is", _configure_data)
def cmd_data(args: argparse.Namespace) -> int:
    from .data import find_data_dir, load_fashion_mnist
    folder = find_data_dir(args.data_dir, allow_download=not args.no_download)
    data = load_fashion_mnist(folder)
    print(f"FashionMNIST verified in {folder}: {len(data.train_labels)} train, {len(data.val_labels)} validation, "
          f"{len(data.test_labels)} test images")
    return 0


# ----------------------------------------------------------------------------- VQ-VAE

def _configure_train_vqvae(p: argparse.ArgumentParser) -> None:
    from .config import TrainConfig, VQVAEConfig
    add_config_options(p, VQVAEConfig)
    add_config_options(p, TrainConfig)
    _data_option(p)
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the checkpoint folder")


@command("train-vqvae", "train one VQ-VAE; writes best.pt, last.pt and history.json", _configure_train_vqvae)
def cmd_train_vqvae(args: argparse.Namespace) -> int:
    from .config import TrainConfig, VQVAEConfig
    from .train import train_vqvae
    model_config, train_config = config_from_args(VQVAEConfig, args), config_from_args(TrainConfig, args)
    data = _load_data(args)
    run = train_vqvae(model_config, train_config, data, resume=args.resume)
    last = run.history[-1]
    best = min(run.history, key=lambda row: row["val_mse"])
    print(f"validation MSE {last['val_mse']:.5f} (best {best['val_mse']:.5f} at epoch {best['epoch']}), "
          f"validation perplexity {last['val_perplexity']:.2f} of {model_config.num_embeddings} codes, "
          f"{last['val_usage']:.0%} of codes used")
    print(f"checkpoints: {run.checkpoint_dir}/best.pt, {run.checkpoint_dir}/last.pt")
    return 0


def _configure_infer_vqvae(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a VQ-VAE checkpoint (best.pt or last.pt)")
    p.add_argument("--num-images", type=int, default=20, help="test images to reconstruct (default: 20)")
    p.add_argument("--output", default=None,
                   help="PNG to write (default: results/vqvae/<run>/reconstructions.png)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _data_option(p)


@command("infer-vqvae", "reconstruct test images into a PNG grid and print the test metrics", _configure_infer_vqvae)
def cmd_infer_vqvae(args: argparse.Namespace) -> int:
    from . import paths
    from .infer import infer_vqvae
    output = args.output or paths.results_dir() / "vqvae" / Path(args.checkpoint).resolve().parent.name / "reconstructions.png"
    metrics = infer_vqvae(args.checkpoint, output, num_images=args.num_images, data=_load_data(args), device=args.device)
    print(f"test MSE {metrics['mse']:.5f}, PSNR {metrics['psnr']:.2f} dB, perplexity {metrics['perplexity']:.2f}, "
          f"codes used {metrics['codebook_usage']:.0%}")
    print(f"reconstructions: {output}")
    return 0


# ----------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqlib", description="vqlib: a VQ-VAE that learns a discrete code for FashionMNIST, and a classifier that reads it.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
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
        print(f"vqlib {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqlib {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
