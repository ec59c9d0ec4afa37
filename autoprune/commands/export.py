"""``autoprune export STUDY --device D``: deploy the best front member for a device."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="rebuild, fine-tune, export and verify the best front member for a device")
    p.add_argument("study", help="study directory")
    p.add_argument("--device", required=True, help="one of the study's devices")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--max-latency-ms", type=float, help="most accurate member at most this slow")
    group.add_argument("--min-accuracy", type=float, help="fastest member at least this accurate")
    p.add_argument("--epochs", type=float, help="override the export fine-tune's epochs")
    p.add_argument("--out", help="output folder (default: STUDY/exports/DEVICE)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_member
    from ..study import Study

    recipe = None
    if args.epochs is not None:
        recipe = Study(args.study).require().config().export.finetune.model_copy(update={"epochs": args.epochs})
    card = export_member(args.study, args.device, args.max_latency_ms, args.min_accuracy, recipe, args.out)
    keys = ["device", "trial", "accuracy", "accuracy_search", "latency_ms_predicted", "latency_ms_measured", "speedup_measured", "size_bytes", "parity", "file"]
    print(json.dumps({k: card[k] for k in keys}, indent=2))
    return 0
