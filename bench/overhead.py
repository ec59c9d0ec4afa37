"""Where a trial's time goes: fine-tune, evaluation, latency, and everything else.

"Everything else" is the search's own cost: applying the plan, counting parameters and
MACs, the controller's ask/tell, writing the records. Run:

    python -m bench.overhead [--config examples/digits_demo.yaml] [--trials 16] [--latency measured]

Writes bench/results/overhead.md and overhead.csv.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from autoprune.core.config import load_config
from autoprune.engine.context import build_context
from autoprune.engine.executor import run_study

from .machine import machine_markdown

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/digits_demo.yaml")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--latency", choices=["auto", "lut", "measured"], help="override the config's latency method")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_markdown()

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"latency": args.latency} if args.latency else {}
        config = load_config(args.config, study_dir=str(Path(tmp) / "study"), budget={"trials": args.trials}, **overrides)
        t = time.perf_counter()
        ctx = build_context(config)
        setup_s = time.perf_counter() - t
        methods = ", ".join(f"{d}: {est.method}" for d, est in ctx.estimators.items())
        stamps = []
        t0 = time.perf_counter()
        study = run_study(config, progress=False, context=ctx, on_trial=lambda r: stamps.append(time.perf_counter()))
        # the first trial's wall time includes the dense baseline; measure from the first record on
        walls = [b - a for a, b in zip(stamps, stamps[1:])]
        records = study.records()[1:]

    rows = []
    for r, wall in zip(records, walls):
        row = {"trial": r.number, "wall_s": wall, "cached": r.cached}
        for part in ("finetune_s", "eval_s", "latency_s"):
            row[part] = r.timings.get(part, 0.0)
        row["other_s"] = wall - row["finetune_s"] - row["eval_s"] - row["latency_s"]
        rows.append(row)
    df = pd.DataFrame(rows)
    evaluated = df[~df.cached]
    total = evaluated.wall_s.sum()
    shares = {part: evaluated[part].sum() / total for part in ("finetune_s", "eval_s", "latency_s", "other_s")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "overhead.csv", index=False)
    summary = pd.DataFrame(
        {
            "part": ["fine-tune", "evaluation", "latency", "everything else"],
            "mean_s_per_trial": [evaluated[p].mean() for p in ("finetune_s", "eval_s", "latency_s", "other_s")],
            "share": [shares[p] for p in ("finetune_s", "eval_s", "latency_s", "other_s")],
        }
    )
    lines = [
        "# Time per trial",
        "",
        f"Config `{args.config}`, {len(evaluated)} evaluated trials after the first ({len(df) - len(evaluated)} repeated plans reused),"
        f" controller `{config.controller}`, latency `{methods}`. One-time set-up (task, dependency graph, estimators): {setup_s:.2f} s.",
        "",
        summary.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Everything else: **{shares['other_s']:.1%}** of a trial's wall time (goal: under 10%).",
        "",
        "## Machine",
        "",
        machine,
        "",
    ]
    (RESULTS / "overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
