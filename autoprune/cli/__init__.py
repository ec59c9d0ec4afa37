"""The ``autoprune`` command line: one module per command group, each exposing ``register(subparsers)``."""
from autoprune.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
