"""``autoprune bench SUBCOMMAND``: benchmarks that write tables and plots to ``bench/results``.

``autoprune bench controllers CONFIG --budget N --seeds K`` runs every search controller
with the same budget and seeds on the config's task, device and latency estimator.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (results as markdown, CSV and plots)")
    group = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    c = group.add_parser("controllers", help="compare search controllers: hypervolume and best accuracy at fixed speedups")
    c.add_argument("config", help="study config (YAML): task, search space, device, latency estimator, fine-tune recipe")
    c.add_argument("--budget", type=int, default=48, help="trials per controller and seed (default 48)")
    c.add_argument("--seeds", type=int, default=2, help="seeds 0..K-1 per controller (default 2)")
    c.add_argument("--controllers", help="comma-separated names (default: uniform,random,evolution,rl,nsga2,tpe)")
    c.add_argument("--options", help='JSON of options per controller, e.g. \'{"evolution": {"population_size": 12}}\'')
    c.add_argument("--device", help="the device whose latency is compared (default: the config's first)")
    c.add_argument("--accuracy-drop", type=float, default=0.10, help="hypervolume reference: this far below dense accuracy (default 0.10)")
    c.add_argument("--reference-latency", type=float, default=1.0, help="hypervolume reference: this times dense latency (default 1.0)")
    c.add_argument("--order", choices=["seed", "controller"], default="seed", help="finish all controllers of a seed first, or all seeds of a controller")
    c.add_argument("--work-dir", default="runs/bench-controllers", help="one study per run plus the shared evaluation cache; rerun to resume")
    c.add_argument("--out", default="bench/results", help="where controllers.md/.csv/.png go")
    c.add_argument("--stem", default="controllers", help="file name stem of the results")
    c.add_argument("--torch-threads", type=int, default=1, help="threads for fine-tuning (default 1)")
    c.add_argument("--no-progress", action="store_true", help="no per-trial lines")
    c.set_defaults(func=run_controllers)


def run_controllers(args: argparse.Namespace) -> int:
    import torch

    from autoprune.core.config import load_config
    from autoprune.core.errors import ConfigError
    from autoprune.engine.compare import (
        DEFAULT_CONTROLLERS,
        Reference,
        compare_controllers,
        verdicts,
        write_results,
    )

    torch.set_num_threads(args.torch_threads)
    config = load_config(args.config)
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()] if args.controllers else list(DEFAULT_CONTROLLERS)
    try:
        options = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"--options: not valid JSON ({err})") from err
    if args.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, but got {args.seeds}")

    def on_trial(controller: str, seed: int, record) -> None:
        if not args.no_progress:
            acc = "failed" if record.accuracy is None else f"acc {record.accuracy:.4f}"
            lat = ", ".join(f"{v:.4f} ms" for v in record.latency_ms.values())
            print(f"{controller} seed {seed} trial {record.number}: {acc}, {lat}{' (cached)' if record.cached else ''}", flush=True)

    def on_run(comparison) -> None:
        paths = write_results(comparison, Path(args.out), args.stem)
        last = comparison.runs[-1]
        print(f"done {last.controller} seed {last.seed}: hypervolume {last.hypervolume:.4f}; results in {paths[0]}", flush=True)

    comparison = compare_controllers(
        config,
        controllers,
        args.budget,
        list(range(args.seeds)),
        Path(args.work_dir),
        device=args.device,
        reference=Reference(args.accuracy_drop, args.reference_latency),
        options=options,
        order=args.order,
        on_run=on_run,
        on_trial=on_trial,
    )
    for line in verdicts(comparison):
        print(line)
    return 0
