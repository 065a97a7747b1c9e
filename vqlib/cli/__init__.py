"""`vqlib` commands: thin argument parsing over the package's functions.

Options of the training commands are generated from the config dataclasses,
so `--help` documents every hyperparameter with its default and no option can
drift from the config it sets. A `VqlibError` is printed as one sentence with
exit code 2; `--debug` shows the traceback instead.

The commands live by concern in `vqvae` (data, VQ-VAE, ablation), `classifier`,
`study` (grid, run, report, publish, figures) and `prior`; `options` holds the
`command` registry and the options they share.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import VqlibError
from .options import COMMANDS, add_config_options, command, config_from_args

# The command modules register their commands as they are imported, so this order is the order of
# `vqlib --help`: not isort's.
# isort: off
from . import vqvae, classifier, study, prior  # noqa: F401
# isort: on

__all__ = ["COMMANDS", "add_config_options", "build_parser", "command", "config_from_args", "main"]


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


def build_parser(only: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser of every command; with `only`, the other commands are listed but get no options.

    A command's options may need heavy imports (torch, for a default read from a module), so `main`
    configures only the command it runs: `vqlib --help` and a mistyped command answer at once.
    """
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
        if only is None or name in only:
            configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=[w for w in words if w in COMMANDS][:1])
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
