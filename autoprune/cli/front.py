"""``autoprune front STUDY``: query the Pareto front."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("front", help="print a study's Pareto front per device")
    p.add_argument("study", help="study directory")
    p.add_argument("--device", help="one device (default: all of the study's devices)")
    p.add_argument("--max-latency-ms", type=float, help="keep members at most this slow")
    p.add_argument("--min-accuracy", type=float, help="keep members at least this accurate")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--measure", action="store_true", help="also time each member and the dense model on the device (this machine's devices only)")
    p.add_argument("--trust-task", action="store_true", help="with --measure: import and run the study's module:function task (only for a study whose source you trust)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.api import load_study

    study = load_study(args.study)
    df = study.front(device=args.device, max_latency_ms=args.max_latency_ms, min_accuracy=args.min_accuracy, measure=args.measure, trust_task=args.trust_task)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    elif args.format == "json":
        print(df.to_json(orient="records", indent=2, double_precision=15))
    else:
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "(no front member meets the constraints)")
    return 0
