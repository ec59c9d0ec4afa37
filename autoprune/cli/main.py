"""The ``autoprune`` command line: parses arguments and calls library functions.

Each command lives in a module of :mod:`autoprune.cli` exposing
``register(subparsers)``; errors of autoprune become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from autoprune.core.errors import AutopruneError

#: Modules of autoprune.cli, each adding its subcommands.
COMMAND_MODULES = ["search", "front", "export", "report", "serve", "sensitivity", "bench", "profile", "lut"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Hardware-aware automated pruning search.")
    parser.add_argument("--version", action="version", version=f"autoprune {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines on stderr (-v: progress notes, -vv: failed trials' tracebacks)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"autoprune.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from autoprune import __version__

    return __version__


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (a test may replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("autoprune: %(levelname)s: %(message)s"))


def configure_logging(verbose: int) -> None:
    """Show the library's log on stderr (warnings, such as failed trials; more with ``-v``),
    and keep Optuna to its warnings: its line per trial repeats what the progress bar says."""
    logger = logging.getLogger("autoprune")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    logger.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (AutopruneError, FileNotFoundError) as err:
        print(f"autoprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted; completed trials are saved, run the same command to resume", file=sys.stderr)
        return 130

