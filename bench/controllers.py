"""Search controllers compared: uniform, random, evolution, rl, nsga2 and tpe with the same
budget and seeds on ResNet-20 / Fashion-MNIST, ONNX Runtime on this CPU.

The latency objective comes from the device's lookup table. When the shipped profile
``device_profiles/onnxruntime-cpu`` has no table yet, one is profiled first into a private
copy of the profile under the work folder (``autoprune profile``, a few minutes), so every
trial's latency is a prediction and not a measurement disturbed by whatever else runs on
the machine; ``--measured`` times every plan instead. The results say which was used.

Runs go in order of what the comparison needs most: uniform, random, evolution and rl for
every seed, then nsga2 and tpe. Every finished run rewrites ``bench/results/controllers.*``;
a killed bench resumes where it stopped (each run is a study, evaluations are cached).

Run: ``python -m bench.controllers [--budget 48] [--seeds 2] [--smoke]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from autoprune.core.config import load_config
from autoprune.engine.compare import (
    EvaluationCache,
    Reference,
    compare_controllers,
    rescore,
    reseed,
    verdicts,
    write_results,
)
from autoprune.engine.context import build_context

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONFIG = ROOT / "examples" / "fashion_mnist_controllers.yaml"
FIRST = ["uniform", "random", "evolution", "rl"]
THEN = ["nsga2", "tpe"]
#: Extra fine-tune seeds for the best plans at 2x of uniform, evolution and rl.
RESEEDS = 4

NOTES = """
- Budget: every run asks for the same number of trials; repeated plans are answered from
  the cache and still count as trials (uniform has only 9 distinct plans on this grid, so
  it cycles through them).
- The evaluation of a plan is shared by every run that proposes it (fine-tune seed taken
  from the plan), so differences between controllers come from what they propose.
- Accuracy is on a fixed 1,000-image subset of the test split after a 40-step fine-tune:
  its sampling error is about 0.9 points at 90%, and the best of many plans is biased up
  by that noise (controllers that evaluate more distinct plans near a speedup get more
  draws). Compare controllers by the hypervolume over the whole front first.
- Speedups are relative to the dense model's latency from the same estimator.
- Hardware-aware controllers: `evolution` and `rl` get a cost model
  (`autoprune/cost_model.py`): the plan's latency predicted from the same lookup table,
  plus its parameters and MACs, in about 0.1 s (prune 0.02 s, kernel look-up 0.07-0.15 s,
  counts 0.01 s on this CPU) against 4-20 s for a trial here; cached by plan key; its time
  is part of `controller_s`. Evolution aims three children in four at 1.5x or 2x (3x is
  beyond every plan of this space and is skipped): it screens 16 candidate children of
  parents that already meet the target and proposes the one in [t, 1.1 t] that keeps the
  most parameters. RL moves its anchor until the episode's plan is predicted within its
  budget (AMC's action clipping). Both treat plans that prune to the same network (same
  predicted costs; kept channels are rounded to multiples of 8, so many ratio settings
  coincide) as repeats. nsga2, tpe, random and uniform do not use it, and their runs are
  those of the previous comparison (same cache, same recipe).
- Before the cost model (same recipe, same cache), best accuracy at 2x was evolution
  84.25% and rl 84.85% against uniform's 86.30%, with hypervolumes 0.0434 and 0.0434.
  A first version of the targeted evolution, without the same-network check, spent 11 of
  its 48 trials on one network at 2.02x spelled with different ratios.
- Why the 2x check still fails (if it does, above): the margin asked for is about the
  size of the fine-tune noise of one evaluation. That network at 2.02x, fine-tuned 11
  times with different seeds, scored 85.7% +- 0.65 (84.2-86.5%) on the 1k subset; the
  uniform 0.5 plan (2.15x) is one draw of the same kind. With kept channels rounded to
  multiples of 8 no plan is predicted much faster than 2.4x, so at 2x every unit keeps
  about half its channels and the plans differ little; the re-seeded table below shows
  how the best plans at 2x compare when each is fine-tuned again with other seeds.
- What the cost model changed in the run of 2026-11-24: at 2x, evolution went from 84.25%
  to 86.45% and rl from 84.85% to 86.25% (uniform 86.30%), hypervolumes stayed above
  random's (0.0433 and 0.0439 against 0.0395). Re-scored on the whole test split the best
  plans at 2x are now above uniform's (evolution 84.71%, rl 84.77%, uniform 84.28%; before
  83.26% and 83.73%), and fine-tuned with four other seeds they average about half a point
  above it (evolution 85.74%, rl 85.70%, uniform 85.25%): better plans, but not by the
  point the issue asks for, and not by more than one evaluation's noise.
"""


def profiles_with_table(work: Path, device: str, measured: bool) -> tuple[Path, str]:
    """The profiles folder the bench uses and how its latency is obtained."""
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import has_table

    shipped = ROOT / "device_profiles"
    if measured:
        return shipped, "measured (--measured)"
    private = work / "profiles"
    if (private / device / "device.yaml").exists() and has_table(load_device(device, private)):
        return private, f"lookup table profiled for this bench in {private}"
    if has_table(load_device(device, shipped)):
        return shipped, f"lookup table shipped in device_profiles/{device}"
    if not (private / device / "device.yaml").exists():
        (private / device).mkdir(parents=True, exist_ok=True)
        shutil.copy(shipped / device / "device.yaml", private / device / "device.yaml")
    env = {**os.environ, "AUTOPRUNE_PROFILES": str(private)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "profile", "--config", str(CONFIG), "--device", device, "--no-progress"],
        env=env, check=True,
    )
    return private, f"lookup table profiled for this bench into {private} ({time.perf_counter() - started:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="6 trials, 1 seed, results under runs/ only")
    parser.add_argument("--measured", action="store_true", help="time every plan instead of using a lookup table")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench-controllers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget, seeds = (6, [0]) if args.smoke else (args.budget, list(range(args.seeds)))
    work = args.work_dir.with_name(args.work_dir.name + "-smoke") if args.smoke else args.work_dir
    out, stem = (work, "controllers") if args.smoke else (RESULTS, "controllers")
    config = load_config(CONFIG)
    if args.measured:
        config = config.model_copy(update={"latency": "measured"})
    profiles, latency_note = profiles_with_table(work, config.devices[0], args.measured)
    os.environ["AUTOPRUNE_PROFILES"] = str(profiles)
    notes = f"- Latency: {latency_note}.\n" + NOTES
    print(f"latency: {latency_note}", flush=True)

    def on_run(comparison) -> None:
        write_results(comparison, out, stem, notes)
        last = comparison.runs[-1]
        print(f"{time.strftime('%H:%M:%S')} {last.controller} seed {last.seed}: hypervolume {last.hypervolume:.4f}, "
              f"{comparison.evaluations} plans evaluated, {comparison.wall_s / 60:.1f} min", flush=True)

    def on_trial(controller: str, seed: int, record) -> None:
        if not record.cached:
            print(f"  {controller} seed {seed} #{record.number}: acc {record.accuracy}, "
                  f"{record.timings.get('total_s', 0):.1f} s", flush=True)

    ctx = build_context(config)
    common = dict(budget=budget, seeds=seeds, work_dir=work, reference=Reference(), order="seed", on_run=on_run,
                  on_trial=on_trial, context=ctx)
    comparison = compare_controllers(config, FIRST, **common)
    comparison = compare_controllers(config, FIRST + THEN, **common)
    if not args.smoke:
        rows = rescore(config, comparison, 2.0, {"val_size": None}, EvaluationCache(work / "rescored_full_test.jsonl"))
        notes += rescored_notes(rows)
        again = reseed(ctx, comparison, 2.0, RESEEDS, ["uniform", "evolution", "rl"], work / "reseeded_2x.jsonl")
        notes += reseeded_notes(again)
        write_results(comparison, out, stem, notes)
    for line in verdicts(comparison):
        print(line)


def rescored_notes(rows: list[dict]) -> str:
    """A markdown section: the best plans at 2x scored again on the whole test split."""
    lines = [
        "",
        "### Best plan at 2x, scored again on the whole test split (10,000 images)",
        "",
        "Same plan, same fine-tune (same seed and data); only the scoring set changes. The "
        "1,000-image validation subset is part of the test split.",
        "",
        "| controller | seed | speedup | accuracy (search, 1k) | accuracy (10k) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['controller']} | {r['seed']} | {r['speedup']:.2f} | {100 * r['accuracy_search']:.2f} | {100 * r['accuracy_rescored']:.2f} |")
    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(r["controller"], []).append(r["accuracy_rescored"])
    lines += ["", "Mean over seeds (10k): " + ", ".join(f"{c} {100 * sum(v) / len(v):.2f}%" for c, v in means.items()) + "."]
    return "\n".join(lines) + "\n"


def reseeded_notes(rows: list[dict]) -> str:
    """A markdown section: the best plans at 2x fine-tuned again with other seeds."""
    import numpy as np

    lines = [
        "",
        f"### Best plan at 2x, fine-tuned again with {RESEEDS} other seeds (1k subset)",
        "",
        "Same plan and data, other fine-tune seeds; the search's own score is one draw of these.",
        "",
        "| controller | seed | accuracy (search) | mean of other seeds | std | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        runs.setdefault((r["controller"], r["seed"]), []).append(r)
    means: dict[str, list[float]] = {}
    for (controller, seed), rs in runs.items():
        acc = np.array([r["accuracy"] for r in rs], dtype=float)
        means.setdefault(controller, []).append(float(acc.mean()))
        lines.append(f"| {controller} | {seed} | {100 * rs[0]['accuracy_search']:.2f} | {100 * acc.mean():.2f} | "
                     f"{100 * acc.std(ddof=1):.2f} | {100 * acc.min():.2f} | {100 * acc.max():.2f} |")
    lines += ["", "Mean over runs (other seeds): " + ", ".join(f"{c} {100 * sum(v) / len(v):.2f}%" for c, v in means.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
