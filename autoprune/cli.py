"""The ``autoprune`` command line: parses arguments and calls library functions.

Each command lives in a module of :mod:`autoprune.commands` exposing
``register(subparsers)``; errors of autoprune become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .errors import AutopruneError

#: Modules of autoprune.commands, each adding its subcommands.
COMMAND_MODULES = ["search", "front", "export", "report", "bench", "profile", "lut"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Hardware-aware automated pruning search.")
    parser.add_argument("--version", action="version", version=f"autoprune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"autoprune.commands.{name}").register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (AutopruneError, FileNotFoundError) as err:
        print(f"autoprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted; completed trials are saved, run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
