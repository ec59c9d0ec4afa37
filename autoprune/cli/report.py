"""``autoprune report STUDY [--html]``: Pareto-front plots and an overview, and the front explorer page."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a Pareto-front plot per device and an overview (markdown)")
    p.add_argument("study", help="study directory")
    p.add_argument("--out", help="output folder (default: STUDY/report)")
    p.add_argument("--html", action="store_true", help="also write explorer.html: the interactive front explorer, one self-contained page (works offline)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.results.report import write_report

    for path in write_report(args.study, args.out, html=args.html):
        print(path)
    return 0
