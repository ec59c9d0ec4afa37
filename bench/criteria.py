"""Every importance criterion at the same predicted speedup: accuracy after the same
fine-tune, and what scoring the channels cost.

For ResNet-20 and the MobileNetV2-style model on Fashion-MNIST, every convolution unit (stem
and classifier protected) loses the same share of channels: the smallest uniform
``pruning_ratio`` (in steps of 0.05) whose latency on ``onnxruntime-cpu`` is at least
``--speedup`` times faster than the dense model's: predicted from the device's lookup table
(``--latency lut``, the default; the table must cover these models: profile a private copy
with ``AUTOPRUNE_PROFILES=... autoprune profile`` first, the shipped one only covers the
digits models), or measured on this machine (``--latency measured``, the default with
``--quick``).
Channel counts depend only on the ratio, so every criterion prunes to the same network
shape and the same latency; only which channels go differs. Each pruned model is
then fine-tuned with the same recipe and seed (common random numbers) and scored on the
same validation images. Gradient and activation criteria read the same calibration batches.

Cost is the wall time of scoring and pruning (``prune_s``) and the passes the criterion
makes over the calibration data, as its docstring states.

``--quick`` uses a 4k-image training subset, a dense model trained five epochs, 1k
validation images and a 40-step fine-tune: a smoke run of the whole comparison, whose accuracy
differences are within the fine-tune's noise (about +-0.65 points on 1k images at these
sizes, see the controller bench).

Run: ``python -m bench.criteria [--quick]``; results go to ``bench/results/criteria.{md,csv}``.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from autoprune.core.plan import Plan
from autoprune.core.recipes import FinetuneRecipe
from autoprune.latency.devices import load_device
from autoprune.latency.lut import LUTEstimator
from autoprune.latency.measured import LatencyEstimator, MeasuredLatency
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import CRITERIA, Calibration
from autoprune.pruning.structure import search_units
from autoprune.tasks.base import load_task
from autoprune.training.loop import finetune

from .machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet20", "mobilenetv2")
ORDER = ["l1", "l2", "bn-scale", "random", "taylor", "snip", "fisher", "grasp", "activation", "apoz"]
DEVICE = "onnxruntime-cpu"
FULL = {"task": {"train_size": 12000, "epochs": 4, "val_size": 2000}, "finetune": {"epochs": 1, "lr": 0.005, "batch_size": 64}}
QUICK = {"task": {"train_size": 4000, "epochs": 5, "val_size": 1000}, "finetune": {"max_steps": 40, "lr": 0.005, "batch_size": 64}}


@dataclass
class Row:
    model: str
    criterion: str
    pruning_ratio: float
    speedup: float
    latency: str
    accuracy_dense: float
    accuracy_before_finetune: Optional[float] = None
    accuracy: Optional[float] = None
    prune_s: Optional[float] = None
    finetune_s: Optional[float] = None
    passes: str = ""
    error: str = ""


def passes(criterion: str, calibration: Calibration) -> str:
    """The calibration passes ``criterion`` makes, from its docstring's cost rule."""
    b, n = calibration.batches, calibration.batches * calibration.batch_size
    return {
        "taylor": f"{b} fwd+bwd (batches)",
        "snip": f"{b} fwd+bwd (batches)",
        "fisher": f"{n} fwd+bwd (one sample each)",
        "grasp": f"{b} fwd+bwd, then {b} fwd + double bwd",
        "activation": f"{b} fwd, again after each unit",
        "apoz": f"{b} fwd, again after each unit",
    }.get(criterion, "none (weights only)")


def estimator(latency: str) -> LatencyEstimator:
    device = load_device(DEVICE)
    if latency == "lut":
        return LUTEstimator(device, measure_missing=False)  # a profile's table is never written by the bench
    return MeasuredLatency(device)


def ratio_for_speedup(task: Any, units: dict, target: float, latency: str, rounds: int = 3) -> tuple[float, float]:
    """The smallest uniform channel ratio (0.05 steps) at least ``target`` times faster, and its speedup.

    Measured latency is taken in ``rounds`` rounds alternating the dense and the pruned
    model (ratio of medians), so load on a shared machine hits both alike.
    """
    estimator_ = estimator(latency)
    x = task.example_input
    repeat = rounds if latency == "measured" else 1
    best = (0.0, 1.0)
    for step in range(1, 19):
        ratio = round(0.05 * step, 2)
        pruned = apply_plan(task.model, Plan.uniform(list(units), ratio, "channel", "l1"), units, x)
        dense_ms, pruned_ms = [], []
        for _ in range(repeat):
            dense_ms.append(estimator_.latency_ms(task.model, x))
            pruned_ms.append(estimator_.latency_ms(pruned, x))
        speedup = statistics.median(dense_ms) / statistics.median(pruned_ms)
        best = (ratio, speedup)
        if speedup >= target:
            break
    return best


def run_model(model_name: str, setup: dict, target: float, criteria: list[str], latency: str) -> list[Row]:
    task = load_task("fashion-mnist", model=model_name, **setup["task"])
    x = task.example_input
    units = {u.name: u for u in search_units(task.model, x, ("stem", "classifier")) if u.kind == "conv"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ratio, speedup = ratio_for_speedup(task, units, target, latency)
    recipe = FinetuneRecipe(**setup["finetune"])
    calibration = Calibration(task.train, task.loss)
    dense_accuracy = float(task.metric(task.model, task.val))
    rows = []
    for criterion in criteria:
        row = Row(model_name, criterion, ratio, speedup, latency, dense_accuracy, passes=passes(criterion, calibration))
        try:
            torch.manual_seed(0)
            t = time.perf_counter()
            model = apply_plan(task.model, Plan.uniform(list(units), ratio, "channel", criterion), units, x, calibration=calibration)
            row.prune_s = time.perf_counter() - t
            row.accuracy_before_finetune = float(task.metric(model, task.val))
            t = time.perf_counter()
            finetune(model, task.train, recipe, task.loss, seed=0)
            row.finetune_s = time.perf_counter() - t
            row.accuracy = float(task.metric(model, task.val))
        except Exception as err:  # a failed criterion is a row; the bench goes on
            row.error = f"{type(err).__name__}: {err}"[:200]
        rows.append(row)
        print(f"{model_name} {criterion}: ratio {ratio} ({speedup:.2f}x {latency}), accuracy {row.accuracy}, prune {row.prune_s}", flush=True)
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def write(rows: list[Row], info: dict[str, str], setup: dict, quick: bool, target: float, latency: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "criteria.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(asdict(rows[0])) + ["mode"])
        writer.writeheader()
        writer.writerows({**asdict(r), "mode": "quick" if quick else "full"} for r in rows)
    mode = "QUICK MODE (smoke run: small data, 40-step fine-tune; differences are within noise)" if quick else "full mode"
    how = "predicted from its lookup table" if latency == "lut" else "measured on this machine (3 rounds alternating dense and pruned, ratio of medians)"
    lines = [
        f"# Criteria at {target:g}x {'predicted' if latency == 'lut' else 'measured'} speedup — {mode}",
        "",
        f"Generated by `python -m bench.criteria{' --quick' if quick else ''} --latency {latency}`. Channel pruning, the same uniform "
        f"ratio for every criterion (the smallest at {target:g}x on `{DEVICE}`, {how}), the same fine-tune and seed.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Recipe", "", f"- task (Fashion-MNIST): {setup['task']}", f"- fine-tune: {setup['finetune']}", "- calibration: 4 batches of 32 training images (seed 0)"]
    for model in dict.fromkeys(r.model for r in rows):
        part = [r for r in rows if r.model == model]
        first = part[0]
        lines += [
            "",
            f"## {model}: ratio {first.pruning_ratio:g}, {first.speedup:.2f}x {first.latency}, dense accuracy {first.accuracy_dense:.4f}",
            "",
            "| criterion | accuracy before FT | accuracy after FT | prune s | fine-tune s | calibration passes |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(part, key=lambda r: -(r.accuracy or -1)):
            cells = [r.criterion + (f" (failed: {r.error})" if r.error else ""), _fmt(r.accuracy_before_finetune, ".4f"), _fmt(r.accuracy, ".4f"),
                     _fmt(r.prune_s, ".2f"), _fmt(r.finetune_s, ".1f"), r.passes]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Notes",
        "",
        "- Times are wall-clock on a shared machine (load at start above) and include building the dependency graph; compare them within a model, not across runs.",
        "- One fine-tune seed per criterion: a single accuracy difference smaller than about one point is not evidence of a better criterion.",
    ]
    if latency == "measured":
        lines.append(
            "- The ratio was chosen by measured speedup on a shared machine: under load the chosen ratio moves between runs "
            "(on a quiet machine uniform ratio 0.5 measured 2.13x for ResNet-20 on ONNX Runtime); "
            "every criterion still prunes to the same shape, so the comparison within a model holds."
        )
    (RESULTS / "criteria.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data and a 40-step fine-tune (a smoke run)")
    parser.add_argument("--speedup", type=float, default=2.0, help="predicted speedup the ratio must reach (default 2)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--criteria", nargs="+", default=ORDER, choices=CRITERIA.names())
    parser.add_argument("--latency", choices=["lut", "measured"], help="how the ratio's speedup is known (default: lut; measured with --quick)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else FULL
    latency = args.latency or ("measured" if args.quick else "lut")
    info = machine_info()
    rows: list[Row] = []
    for model in args.models:
        rows += run_model(model, setup, args.speedup, args.criteria, latency)
        write(rows, info, setup, args.quick, args.speedup, latency)


if __name__ == "__main__":
    main()
