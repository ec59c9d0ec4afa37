"""``autoprune sensitivity CONFIG``: prune one unit at a time over its ratio range; curves as CSV and PNG."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="prune one unit at a time over its ratio range and score each (sensitivity.csv, sensitivity.png)")
    p.add_argument("config", help="study config (YAML): task, search space (each unit's ratio range), devices")
    p.add_argument("--out", help="output folder (default: the config's study_dir)")
    p.add_argument("--ratios", type=int, default=5, help="ratios per unit, spread over its range from 0 (default 5)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune steps before scoring (default 0: BatchNorm recalibration only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.core.config import load_config
    from autoprune.core.errors import AutopruneError

    if args.ratios < 2:
        raise AutopruneError(f"--ratios must be at least 2 (0 and one more), got {args.ratios}")
    if args.finetune_steps < 0:
        raise AutopruneError(f"--finetune-steps must be 0 or more, got {args.finetune_steps}")
    config = load_config(args.config)
    from autoprune.engine.context import build_context
    from autoprune.engine.sensitivity import sensitivity
    from autoprune.results.report import plot_sensitivity

    ctx = build_context(config)
    out = Path(args.out) if args.out else Path(config.study_dir)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="sensitivity", unit="point", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        table = sensitivity(ctx, args.ratios, args.finetune_steps, on_point=progress)
    finally:
        if bar is not None:
            bar.close()
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "sensitivity.csv"
    table.to_csv(csv, index=False)
    scoring = f"{args.finetune_steps} fine-tune steps" if args.finetune_steps else "BatchNorm recalibration"
    png = plot_sensitivity(table, out / "sensitivity.png", f"{config.name}: one unit pruned at a time ({scoring})")
    print(csv)
    print(png)
    return 0
