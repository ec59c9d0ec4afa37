"""``autoprune search CONFIG``: run or resume a study."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run (or resume) a pruning search from a YAML config")
    p.add_argument("config", help="study config (YAML)")
    p.add_argument("--trials", type=int, help="override budget.trials (total, including earlier runs)")
    p.add_argument("--timeout-s", type=float, help="override budget.timeout_s")
    p.add_argument("--study-dir", help="override study_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..executor import run_study
    from ..front import front

    overrides: dict = {}
    if args.study_dir:
        overrides["study_dir"] = args.study_dir
    if args.trials is not None or args.timeout_s is not None:
        overrides["budget"] = {"trials": args.trials, "timeout_s": args.timeout_s}
    config = load_config(args.config, **overrides)
    study = run_study(config, progress=not args.no_progress)
    table = front(study)
    print(f"Pareto front of {config.name} ({len(study.records())} trials, study in {study.path}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else "(empty: no complete trial)")
    return 0
