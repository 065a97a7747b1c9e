"""The `vqlib` command registry and the option helpers its command modules share."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Optional, Sequence

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
