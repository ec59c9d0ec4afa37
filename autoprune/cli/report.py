"""``autoprune report STUDY``: Pareto-front plots and an overview."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a Pareto-front plot per device and an overview (markdown)")
    p.add_argument("study", help="study directory")
    p.add_argument("--out", help="output folder (default: STUDY/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.results.report import write_report

    for path in write_report(args.study, args.out):
        print(path)
    return 0
