"""``autoprune search CONFIG``: run or resume a study."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run (or resume) a pruning search from a YAML config")
    p.add_argument("config", help="study config (YAML)")
    p.add_argument("--trials", type=int, help="override budget.trials (total, including earlier runs)")
    p.add_argument("--timeout-s", type=float, help="override budget.timeout_s")
    p.add_argument("--study-dir", help="override study_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--storage", help="Optuna storage URL for the study (e.g. postgresql://host/db); default SQLite in study_dir")
    p.add_argument("--resume", action="store_true", help="continue the study in study_dir (an error if there is none)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="run trials in this process (default) or as Ray Tune trials on a Ray cluster")
    ray = p.add_argument_group("Ray (with --backend ray)")
    ray.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start a local one)")
    ray.add_argument("--max-concurrent", type=int, help="trials in flight (default: as many as the cluster's CPUs fit)")
    ray.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial, also its torch threads (default 1)")
    ray.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs reserved per trial (default 0)")
    ray.add_argument("--max-retries", type=int, default=3, help="re-runs of a trial whose worker or node died (default 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.core.config import load_config
    from autoprune.core.errors import AutopruneError
    from autoprune.core.records import COMPLETE, FAILED
    from autoprune.engine.executor import run_study
    from autoprune.results.front import front

    overrides: dict = {}
    if args.study_dir:
        overrides["study_dir"] = args.study_dir
    if args.trials is not None or args.timeout_s is not None:
        overrides["budget"] = {"trials": args.trials, "timeout_s": args.timeout_s}
    if args.storage:
        overrides["storage"] = args.storage
    config = load_config(args.config, **overrides)
    if args.resume:
        from autoprune.results.study import Study

        Study(config.study_dir).require()
    if args.backend == "ray":
        from autoprune.engine.ray_executor import RayOptions, run_study_ray

        options = RayOptions(args.address, args.max_concurrent, args.cpus_per_trial, args.gpus_per_trial, args.max_retries)
        study = run_study_ray(config, options, progress=not args.no_progress)
    else:
        given = [f for f in ("address", "max_concurrent") if getattr(args, f) is not None]
        given += [f for f, default in (("cpus_per_trial", 1.0), ("gpus_per_trial", 0.0), ("max_retries", 3)) if getattr(args, f) != default]
        if given:
            raise AutopruneError(f"--{given[0].replace('_', '-')} needs --backend ray")
        study = run_study(config, progress=not args.no_progress)
    records = study.records()
    table = front(study)
    print(f"Pareto front of {config.name} ({len(records)} trials, study in {study.path}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else "(empty: no complete trial is faster than the dense model and above the accuracy floor)")
    if records and not any(r.state == COMPLETE for r in records):
        failed = [r for r in records if r.state == FAILED]
        reason = f"; the first error: {failed[0].error.splitlines()[-1]}" if failed and failed[0].error else ""
        print(f"autoprune search: error: no trial of {len(records)} completed{reason}", file=sys.stderr)
        return 1
    return 0
