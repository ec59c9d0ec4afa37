"""How far the default search space reaches: measured speedup of its corner plans.

For ResNet-20 and the MobileNetV2-style model (Fashion-MNIST input, 1x28x28), uniform plans
of the default space (``cnn_channel_full``: every channel unit at one ratio with one of its
channel granularities, ``channel`` or ``channel:16``, the depth unit removing a share of its
residual blocks) are exported for ``onnxruntime-cpu`` and ``tflite``
(batch 1, one thread) and timed in rounds interleaved with the dense model. Weights do not
change latency, so the models are untrained. This says which speedups a search with the
defaults can reach at all, whatever its controller: the most pruned corner bounds the front.

Run: ``python -m bench.reach [--rounds N]``; results go to ``bench/results/reach.md`` and
``reach.csv`` (``model, granularity, channel_ratio, depth_ratio, device, speedup, latency_ms, dense_ms``).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch

from autoprune.core.config import Config, resolve_file
from autoprune.core.plan import Plan, UnitChoice
from autoprune.pruning import apply_plan, search_units
from autoprune.pruning.space import SearchSpace
from autoprune.tasks.models import MODELS

from .machine import machine_markdown
from .versus import DEVICES, Timer

RESULTS = Path(__file__).resolve().parent / "results"
CHANNEL_RATIOS = (0.0, 0.5, 0.7, 0.8, 0.9)
DEPTH_RATIOS = (0.0, 0.5, 0.9)


def corner_plan(space: dict, channel: float, depth: float, granularity: str) -> Plan:
    """Every channel unit at ``channel`` with ``granularity`` (one of its rule's), every depth
    unit at ``depth`` (within each rule's range)."""
    choices = {}
    for name, us in space.items():
        chosen = "layer" if us.unit.kind == "depth" else granularity
        if chosen not in us.rule.granularities:
            continue
        ratio = min(depth if chosen == "layer" else channel, us.rule.pruning_ratio.high)
        if ratio > 0:
            choices[name] = UnitChoice(chosen, ratio, us.rule.criteria[0])
    return Plan.from_dict(choices)


def reach(model_name: str, rounds: int, work: Path) -> list[dict]:
    torch.manual_seed(0)
    model = MODELS.get(model_name)(in_channels=1, num_classes=10).eval()
    x = torch.randn(1, 1, 28, 28)
    space_file = SearchSpace.load(resolve_file(Config().search_space, Path.cwd(), "search_spaces"))
    units = search_units(model, x, space_file.protect)
    space = space_file.resolve(units)
    by_name = {u.name: u for u in units}
    timer = Timer(model, x, work / model_name, rounds)
    channel_granularities = sorted({g for us in space.values() if us.unit.kind != "depth" for g in us.rule.granularities})
    rows = []
    for granularity in channel_granularities:
        for depth in DEPTH_RATIOS:
            for channel in CHANNEL_RATIOS:
                pruned = apply_plan(model, corner_plan(space, channel, depth, granularity), by_name, x)
                for device in DEVICES:
                    path = timer.export(pruned, device, work / model_name / f"{granularity}-c{channel:g}-d{depth:g}".replace(":", "") / device)
                    speedup, ms, dense_ms = timer.speedup(path, device)
                    rows.append({"model": model_name, "granularity": granularity, "channel_ratio": channel, "depth_ratio": depth,
                                 "device": device, "speedup": speedup, "latency_ms": ms, "dense_ms": dense_ms})
                    print(f"{model_name} {granularity} {channel:g} depth {depth:g} {device}: {speedup:.2f}x", flush=True)
    return rows


def write(df: pd.DataFrame, rounds: int) -> None:
    df.to_csv(RESULTS / "reach.csv", index=False)
    lines = ["# How far the default search space reaches", "",
             "Measured speedup over the dense model of uniform corner plans of `cnn_channel_full` (every channel unit at "
             "one ratio; the depth unit removing that share of its removable residual blocks, at least one kept). "
             f"Batch 1, one thread, {rounds} rounds interleaved with the dense model, median of the rounds' medians. "
             "Rerun: `python -m bench.reach`.", "", "## Machine", "", machine_markdown(), ""]
    for (model, device), part in df.groupby(["model", "device"], sort=False):
        table = part.pivot_table(index=["granularity", "depth_ratio"], columns="channel_ratio", values="speedup")
        lines += [f"## {model} on {device} (dense {part.dense_ms.median():.4f} ms)", "",
                  "| channel granularity | depth ratio | " + " | ".join(f"channel {c:g}" for c in table.columns) + " |",
                  "|---" * (len(table.columns) + 2) + "|"]
        lines += [f"| `{g}` | {d:g} | " + " | ".join(f"{v:.2f}x" for v in row) + " |" for (g, d), row in table.iterrows()]
        best = part.loc[part.speedup.idxmax()]
        lines += ["", f"Fastest corner: {best.speedup:.2f}x (`{best.granularity}` {best.channel_ratio:g}, depth {best.depth_ratio:g}).", ""]
    (RESULTS / "reach.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for m in args.models for r in reach(m, args.rounds, Path(tmp))]
    write(pd.DataFrame(rows), args.rounds)
    print(f"wrote {RESULTS / 'reach.md'}")


if __name__ == "__main__":
    main()
