"""Per-unit sensitivity curves of ResNet-20 and the MobileNetV2-style model on Fashion-MNIST.

Each unit of the search space of ``examples/fashion_mnist_controllers.yaml`` (channel
pruning, ratios 0..0.8, kept channels in multiples of 8, only the classifier protected)
is pruned alone at 5 ratios, scored after BatchNorm recalibration (no fine-tune: the raw
damage of removing those channels) and timed on ``onnxruntime-cpu`` (its table where it
describes the model, else measured): what ``autoprune sensitivity`` writes, for both models.

``--quick``: a 4k-image training subset and a dense model trained three epochs.

Run: ``python -m bench.sensitivity [--quick]``; results go to
``bench/results/sensitivity.md`` and ``sensitivity_MODEL.{csv,png}``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from autoprune.core.config import validate_config
from autoprune.engine.context import build_context
from autoprune.engine.sensitivity import sensitivity
from autoprune.results.report import plot_sensitivity

from .machine import machine_markdown

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = ("resnet20", "mobilenetv2")
DEVICE = "onnxruntime-cpu"
FULL = {"train_size": 12000, "epochs": 4, "val_size": 1000}
QUICK = {"train_size": 4000, "epochs": 3, "val_size": 1000}


def run_model(model: str, task_options: dict, ratios: int) -> tuple[pd.DataFrame, dict, float]:
    """The sensitivity table of one model, its context's latency methods and the seconds it took."""
    config = validate_config({
        "name": f"sensitivity-{model}",
        "task": "fashion-mnist",
        "task_options": {"model": model, **task_options},
        "search_space": str(EXAMPLES / "fashion_mnist_controllers_space.yaml"),
        "devices": [DEVICE],
        "latency": "auto",
        "finetune": {"epochs": 1, "batch_size": 64},
        "study_dir": str(RESULTS / "unused"),
    })
    ctx = build_context(config)
    started = time.perf_counter()
    table = sensitivity(ctx, ratios_per_unit=ratios)
    return table, {d: est.method for d, est in ctx.estimators.items()}, time.perf_counter() - started


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per unit: accuracy at each ratio and the latency saved at the highest."""
    wide = table.pivot(index="unit", columns="ratio", values="accuracy")
    wide.columns = [f"acc@{c:g}" for c in wide.columns]
    top = table.loc[table.groupby("unit")["ratio"].idxmax()].set_index("unit")
    wide[f"saved_ms@max ({DEVICE})"] = top[f"latency_saved_ms.{DEVICE}"]
    return wide.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller training subset and dense training")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--ratios", type=int, default=5)
    args = parser.parse_args()
    options = QUICK if args.quick else FULL
    RESULTS.mkdir(exist_ok=True)
    lines = [
        "# Per-unit sensitivity (`autoprune sensitivity`)",
        "",
        f"Fashion-MNIST, task options {options}; each unit pruned alone at {args.ratios} ratios of its range "
        "(search space of `examples/fashion_mnist_controllers.yaml`), the rest dense; scored after BatchNorm "
        f"recalibration (no fine-tune) on the validation subset; latency on `{DEVICE}`. "
        + ("Quick mode." if args.quick else ""),
        "",
        machine_markdown(),
        "",
    ]
    for model in args.models:
        table, methods, seconds = run_model(model, options, args.ratios)
        table.to_csv(RESULTS / f"sensitivity_{model}.csv", index=False)
        plot_sensitivity(table, RESULTS / f"sensitivity_{model}.png", f"{model}: one unit pruned at a time (BatchNorm recalibration)")
        dense = table[table.ratio == 0].accuracy.iloc[0]
        lines += [
            f"## {model}",
            "",
            f"Dense accuracy {dense:.4f}; latency {methods[DEVICE]}; {len(table)} points in {seconds:.0f} s.",
            "",
            f"![sensitivity](sensitivity_{model}.png)",
            "",
            summary(table).to_markdown(index=False, floatfmt=".3f"),
            "",
        ]
        (RESULTS / "sensitivity.md").write_text("\n".join(lines))  # after each model, so a run cut short keeps what it did
    print(RESULTS / "sensitivity.md")


if __name__ == "__main__":
    main()
