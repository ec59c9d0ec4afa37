"""The same study with the local executor and on Ray Tune (1 and 2 trials in flight): wall
time, trials per hour, and what going through Ray Tune costs per trial.

Every run evaluates the same plans (the ``random`` controller with one seed proposes them
whatever the results), from one prebuilt context, in a fresh study directory. Runs are
interleaved (each mode ``--repeats`` times, order reversed every round) because other work
on the machine shifts timings. The Ray cluster is started once, locally, and its start-up
is reported on its own. Run:

    python -m bench.cluster [--config examples/digits_demo.yaml] [--trials 16] [--repeats 2]

Writes bench/results/cluster.md and cluster.csv.
"""
from __future__ import annotations

import argparse
import os
import statistics
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
GOAL = 0.15


def timed_run(mode: str, config, ctx) -> dict:
    """One study. Wall time from the call; steady rate from the first to the last record; the
    executor's own cost per trial as the gap between consecutive records minus the later
    trial's time inside ``run_trial`` (only meaningful with one trial in flight)."""
    from autoprune.engine.ray_executor import RayOptions, run_study_ray

    done: list[tuple[float, object]] = []
    on_trial = lambda r: done.append((time.perf_counter(), r))  # noqa: E731
    start = time.perf_counter()
    if mode == "local":
        run_study(config, progress=False, context=ctx, on_trial=on_trial)
    else:
        width = int(mode.split("x")[1])
        run_study_ray(config, RayOptions(max_concurrent=width), progress=False, context=ctx, on_trial=on_trial)
    wall = time.perf_counter() - start
    stamps = [t for t, _ in done]
    records = [r for _, r in done if not r.cached]
    gaps = [(b - a) - r.timings["total_s"] for (a, _), (b, r) in zip(done, done[1:]) if not r.cached]
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {
        "mode": mode,
        "trials": len(done),
        "evaluated": len(records),
        "wall_s": wall,
        "first_record_s": stamps[0] - start,
        "wall_per_trial_s": steady,
        "trials_per_hour": 3600 / steady,
        "trial_s": statistics.mean(r.timings["total_s"] for r in records),
        "executor_s_per_trial": statistics.median(gaps) if mode in ("local", "rayx1") else float("nan"),
        "context_fetches": sum("context_s" in r.timings for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/digits_demo.yaml")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback cluster of this process only
    machine = machine_markdown()
    import ray

    from autoprune.engine.ray_executor import RayOptions, connect

    modes = ["local", "ray x1", "ray x2"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(args.config, controller="random", controller_options={}, budget={"trials": args.trials})
        t = time.perf_counter()
        ctx = build_context(base)
        setup_s = time.perf_counter() - t
        t = time.perf_counter()
        connect(RayOptions(num_cpus=2))
        cluster_s = time.perf_counter() - t
        try:
            for round_ in range(args.repeats):
                for mode in modes if round_ % 2 == 0 else modes[::-1]:
                    config = load_config(args.config, controller="random", controller_options={}, budget={"trials": args.trials},
                                         study_dir=str(Path(tmp) / f"{mode.replace(' ', '')}-{round_}"))
                    row = timed_run(mode.replace(" ", ""), config, ctx)
                    row["round"] = round_
                    rows.append(row)
                    print(f"{mode:7s} round {round_}: {row['wall_s']:.1f} s, {row['wall_per_trial_s']:.3f} s/trial", flush=True)
        finally:
            ray.shutdown()

    df = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "cluster.csv", index=False)
    summary = df.groupby("mode", sort=False).agg(
        runs=("round", "size"),
        wall_s=("wall_s", "median"),
        first_record_s=("first_record_s", "median"),
        wall_per_trial_s=("wall_per_trial_s", "median"),
        trials_per_hour=("trials_per_hour", "median"),
        trial_s=("trial_s", "median"),
        executor_s_per_trial=("executor_s_per_trial", "median"),
        context_fetches=("context_fetches", "max"),
    ).reset_index()
    by_mode = summary.set_index("mode")
    summary["speedup_vs_local"] = by_mode.loc["local"].wall_per_trial_s / summary.wall_per_trial_s
    local, ray1 = by_mode.loc["local"], by_mode.loc["rayx1"]
    overhead_s = ray1.executor_s_per_trial - local.executor_s_per_trial
    overhead = overhead_s / local.trial_s
    paired = []
    for r in range(args.repeats):
        pair = df[df["round"] == r].set_index("mode")
        paired.append((pair.loc["rayx1"].executor_s_per_trial - pair.loc["local"].executor_s_per_trial) / pair.loc["local"].trial_s)
    lines = [
        "# The search on Ray Tune next to the local executor",
        "",
        f"Config `{args.config}` with the `random` controller (the same {args.trials} plans in every run), one prebuilt context,"
        f" {args.repeats} interleaved rounds; medians over rounds. A local Ray cluster of 2 CPUs on this machine, one CPU"
        " (and one torch thread) per trial.",
        "",
        summary.to_markdown(index=False, floatfmt=".3f"),
        "",
        "- `wall_s`: the whole run, including the dense baseline and, on Ray, starting the Tune experiment and the workers' first import of torch;"
        " `first_record_s`: until the first trial was recorded.",
        "- `wall_per_trial_s`, `trials_per_hour`: steady state, first to last record.",
        "- `trial_s`: time inside `run_trial` (prune, latency, fine-tune, evaluation).",
        "- `context_fetches`: trials that fetched the dense model and data from the object store (once per worker process;"
        " Tune reuses a trial's actor for the next trial).",
        "",
        "- `executor_s_per_trial`: the executor's own time per trial (median over trials): the gap between two records"
        " minus the later trial's `trial_s` (asking and telling the controller, writing the record; on Ray also Tune's own"
        " work: starting the trial on a reused actor, processing and logging its result, saving the experiment state). Taken trial by trial, it does not move with the trials' own noise.",
        "",
        f"Ray Tune's overhead per trial (1 in flight, `executor_s_per_trial` of Ray minus that of the local executor):"
        f" **{overhead_s * 1000:.0f} ms = {overhead:.1%}** of a trial's {local.trial_s:.2f} s"
        f" (goal: at most {GOAL:.0%}; per round: {', '.join(f'{p:.1%}' for p in paired)}).",
        f"Steady wall time per trial, Ray (1 in flight) against local: {ray1.wall_per_trial_s / local.wall_per_trial_s - 1:+.1%},"
        f" of which the trials' own time inside `run_trial`: {ray1.trial_s / local.trial_s - 1:+.1%}"
        " (the same plans: a difference there is the machine's load at the time, or the driver's and Ray's processes"
        " taking CPU from the trial on this 2-core machine).",
        f"One-time costs: building the context {setup_s:.2f} s; starting the local Ray cluster {cluster_s:.1f} s.",
        "",
        "Two trials in flight on 2 cores share them with everything else running on the machine (see the load below),"
        " so `speedup_vs_local` of `rayx2` shows what the spare core gave at the time, not Ray's scaling.",
        "",
        "## Machine",
        "",
        machine,
        "",
    ]
    (RESULTS / "cluster.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
