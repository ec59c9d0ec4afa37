"""Every granularity side by side: accuracy after the standard short fine-tune, size, and
measured latency on ONNX Runtime (CPU) and LiteRT (XNNPACK), dense alongside.

Part 1, CNN: the ResNet-20 Fashion-MNIST task (``fashion-mnist``, ``resnet20``); every
convolution unit (stem and classifier protected) pruned at ``pruning_ratio`` 0.5 by each
granularity, or half of the removable residual blocks for ``layer``; criteria compared on
channel pruning; distillation from the dense model as a variant.
Part 2, transformer: all-MiniLM-L6-v2 (``minilm`` task): heads 50%, FFN neurons 50%,
2 of 6 layers removed, and all three; embedding cosine to the dense model.

Latency: every exported model is timed in ``--rounds`` interleaved rounds (one thread, batch
1, ``--repeats`` calls per round after warm-up); the table gives the median of round
medians and the spread of round medians (noise). Size: the exported file, and the same
file gzip-compressed (masks leave zeros that only compression, or a sparse format, turns
into bytes saved).

Part 3 (``--parts minilm-lut``): MiniLM latency predicted from a device latency table
profiled over ``search_spaces/transformer_minilm.yaml``, against measurement.

Run: ``python -m bench.granularity [--quick] [--parts cnn|minilm|minilm-lut]``; results go to
``bench/results/granularity.{md,csv}`` (``granularity_PART.*`` for one part), rows written as they come.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.recipes import Distillation, FinetuneRecipe
from autoprune.latency.backends import get_backend
from autoprune.latency.measured import deployable
from autoprune.latency.timing import time_runner
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.pruning.structure import search_units
from autoprune.tasks.base import load_task
from autoprune.training.distill import training_loss
from autoprune.training.loop import finetune

from .machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
#: The CNN task: ResNet-20 trained by the task on a 12k-image subset of the training split
#: (4 epochs), validated on 2k test images; small enough to train on a shared 2-core machine.
CNN_TASK = {"train_size": 12000, "epochs": 4, "val_size": 2000}
TEXT_TASK = {"train_size": 1000, "val_size": 500}
DEVICES = ("onnxruntime-cpu", "tflite")


@dataclass
class Row:
    model: str
    variant: str
    granularity: str
    criterion: str
    pruning_ratio: float
    metric: str
    metric_before_finetune: Optional[float] = None
    metric_after_finetune: Optional[float] = None
    nonzero_params: int = 0
    macs: int = 0
    size_bytes: dict[str, int] = field(default_factory=dict)
    gzip_bytes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_noise_pct: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)
    prune_s: float = 0.0
    finetune_s: float = 0.0
    error: str = ""


def flat(row: Row) -> dict[str, Any]:
    out = {k: v for k, v in asdict(row).items() if not isinstance(v, dict)}
    for key in ("size_bytes", "gzip_bytes", "latency_ms", "latency_noise_pct", "speedup"):
        for device, value in getattr(row, key).items():
            out[f"{key}.{device}"] = value
    return out


def export_all(model: torch.nn.Module, x: torch.Tensor, folder: Path, name: str) -> dict[str, Path]:
    final = deployable(model, x)
    paths = {}
    for device in DEVICES:
        backend = get_backend(device)
        ok, _ = backend.available()
        if ok:
            paths[device] = backend.export(final, x, folder / f"{name}{backend.suffix}")
    return paths


def time_interleaved(
    files: dict[str, dict[str, Path]], x: torch.Tensor, rounds: int, repeats: int, inputs: Optional[dict[str, torch.Tensor]] = None
) -> dict[str, dict[str, tuple[float, float]]]:
    """variant -> device -> (median of round medians in ms, spread of round medians in %); ``inputs`` overrides ``x`` per variant."""
    runners = {v: {d: get_backend(d).load(p, 1) for d, p in by_device.items()} for v, by_device in files.items()}
    samples: dict[str, dict[str, list[float]]] = {v: {d: [] for d in r} for v, r in runners.items()}
    arrays = {v: (inputs or {}).get(v, x).numpy() for v in runners}
    for _ in range(rounds):
        for variant, by_device in runners.items():
            for device, run in by_device.items():
                samples[variant][device].append(time_runner(run, arrays[variant], warmup=10, repeats=repeats).median_ms)
    result = {}
    for variant, by_device in samples.items():
        result[variant] = {}
        for device, values in by_device.items():
            med = statistics.median(values)
            result[variant][device] = (med, 100 * (max(values) - min(values)) / med)
    return result


def write(rows: list[Row], info: dict[str, str], notes: list[str], recipes: dict[str, str], stem: str = "granularity") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = [flat(r) for r in rows]
    keys = list(dict.fromkeys(k for r in records for k in r))
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(records)
    lines = ["# Granularities side by side", "", "Generated by `python -m bench.granularity`.", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Recipes", ""] + [f"- {k}: {v}" for k, v in recipes.items()]
    for model in dict.fromkeys(r.model for r in rows):
        part = [r for r in rows if r.model == model]
        metric = part[0].metric
        lines += ["", f"## {model}", ""]
        header = ["variant", "granularity", "criterion", "ratio", f"{metric} before FT", f"{metric} after FT", "nonzero params", "MACs (M)"]
        for d in DEVICES:
            header += [f"{d} ms", f"{d} noise %", f"{d} speedup", f"{d} file KiB", f"{d} gzip KiB"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in part:
            cells = [
                r.variant, r.granularity, r.criterion, f"{r.pruning_ratio:g}",
                _fmt(r.metric_before_finetune), _fmt(r.metric_after_finetune), f"{r.nonzero_params:,}", f"{r.macs / 1e6:.1f}",
            ]
            for d in DEVICES:
                cells += [
                    _fmt(r.latency_ms.get(d), 3), _fmt(r.latency_noise_pct.get(d), 0), _fmt(r.speedup.get(d), 2) + ("x" if d in r.speedup else ""),
                    _fmt(r.size_bytes[d] / 1024 if d in r.size_bytes else None, 0), _fmt(r.gzip_bytes[d] / 1024 if d in r.gzip_bytes else None, 0),
                ]
            if r.error:
                cells[0] += f" (failed: {r.error})"
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def run_variants(
    model_name: str,
    task: Any,
    variants: list[tuple[str, str, str, float, Callable[[dict], dict], Optional[Distillation]]],
    recipe: FinetuneRecipe,
    args: argparse.Namespace,
    rows: list[Row],
    on_row: Callable[[], None],
) -> None:
    """Prune, fine-tune and export each variant, then time all exports interleaved."""
    x = task.example_input
    units = {u.name: u for u in search_units(task.model, x, args.protect[model_name])}
    calibration = Calibration(task.train, task.loss)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-granularity-{model_name}-"))
    files: dict[str, dict[str, Path]] = {}
    own: list[Row] = []
    for variant, granularity, criterion, ratio, choose, distill in variants:
        row = Row(model_name, variant, granularity, criterion, ratio, task.metric_name)
        try:
            t = time.perf_counter()
            plan = Plan.from_dict(choose(units))
            model = apply_plan(task.model, plan, units, x, calibration=calibration)
            row.prune_s = time.perf_counter() - t
            row.metric_before_finetune = float(task.metric(model, task.val))
            if plan.choices:
                t = time.perf_counter()
                torch.manual_seed(0)
                finetune(model, task.train, recipe, training_loss(task, distill), seed=0)
                row.finetune_s = time.perf_counter() - t
            row.metric_after_finetune = float(task.metric(model, task.val))
            final = deployable(model, x)
            row.nonzero_params, row.macs = nonzero_params(final), macs(final, x)
            files[variant] = export_all(final, x, folder, variant.replace(" ", "_").replace(":", "-"))
            for device, path in files[variant].items():
                row.size_bytes[device] = path.stat().st_size
                row.gzip_bytes[device] = len(gzip.compress(path.read_bytes(), 6))
        except Exception as err:  # a failed variant is a row, the bench goes on
            row.error = f"{type(err).__name__}: {err}"[:200]
        rows.append(row)
        own.append(row)
        on_row()
    timings = time_interleaved(files, x, args.rounds, args.repeats)
    dense = timings.get("dense", {})
    for row in own:
        for device, (median, noise) in timings.get(row.variant, {}).items():
            row.latency_ms[device] = median
            row.latency_noise_pct[device] = noise
            if device in dense:
                row.speedup[device] = dense[device][0] / median
    on_row()


def cnn_variants(quick: bool) -> list:
    def conv(granularity: str, ratio: float = 0.5, criterion: str = "l1"):
        return lambda units: {n: UnitChoice(granularity, ratio, criterion) for n, u in units.items() if u.kind == "conv"}

    def depth(ratio: float = 0.5, criterion: str = "l2"):
        return lambda units: {n: UnitChoice("layer", ratio, criterion) for n, u in units.items() if u.kind == "depth"}

    kd = Distillation(weight=0.5, temperature=4.0)
    variants = [
        ("dense", "none", "", 0.0, lambda units: {}, None),
        ("channel", "channel", "l1", 0.5, conv("channel"), None),
        ("unstructured", "unstructured", "l1", 0.5, conv("unstructured"), None),
        ("2:4 (n:4)", "n:4", "l1", 0.5, conv("n:4"), None),
        ("block1x4", "block1x4", "l1", 0.5, conv("block1x4"), None),
        ("block4x4", "block4x4", "l1", 0.5, conv("block4x4"), None),
        ("layer", "layer", "l2", 0.5, depth(), None),
    ]
    if not quick:
        variants += [
            ("channel l2", "channel", "l2", 0.5, conv("channel", criterion="l2"), None),
            ("channel taylor", "channel", "taylor", 0.5, conv("channel", criterion="taylor"), None),
            ("channel bn-scale", "channel", "bn-scale", 0.5, conv("channel", criterion="bn-scale"), None),
            ("channel random", "channel", "random", 0.5, conv("channel", criterion="random"), None),
            ("channel + KD", "channel", "l1", 0.5, conv("channel"), kd),
            ("layer + KD", "layer", "l2", 0.5, depth(), kd),
        ]
    return variants


def minilm_variants(quick: bool) -> list:
    def pick(kind_or_suffix: str, granularity: str, ratio: float, criterion: str = "l1"):
        def choose(units):
            return {
                n: UnitChoice(granularity, ratio, criterion)
                for n, u in units.items()
                if u.kind == kind_or_suffix or (kind_or_suffix.startswith(".") and n.endswith(kind_or_suffix))
            }

        return choose

    def combined(units):
        return {**pick("heads", "head", 0.5)(units), **pick(".intermediate.dense", "neuron", 0.5)(units), **pick("depth", "layer", 2 / 6, "l2")(units)}

    variants = [
        ("dense", "none", "", 0.0, lambda units: {}, None),
        ("heads 50%", "head", "l1", 0.5, pick("heads", "head", 0.5), None),
        ("FFN 50%", "neuron", "l1", 0.5, pick(".intermediate.dense", "neuron", 0.5), None),
        ("2 layers removed", "layer", "l2", 2 / 6, pick("depth", "layer", 2 / 6, "l2"), None),
    ]
    if not quick:
        variants += [
            ("heads 50% taylor", "head", "taylor", 0.5, pick("heads", "head", 0.5, "taylor"), None),
            ("FFN 50% taylor", "neuron", "taylor", 0.5, pick(".intermediate.dense", "neuron", 0.5, "taylor"), None),
            ("heads+FFN 50%, 2 layers", "head+neuron+layer", "l1/l2", 0.5, combined, None),
        ]
    return variants


def transformer_table_check(args: argparse.Namespace, info: dict[str, str]) -> None:
    """Predicted (the device's latency table) vs measured latency of pruned MiniLM encoders.

    For each device a fresh table is profiled with :func:`autoprune.latency.lut.profile` over
    ``search_spaces/transformer_minilm.yaml``, in a temporary copy of the device's profile
    folder (the same path as ``autoprune profile``: embed, attention and FFN kernels timed in
    the same interleaved rounds as ``--calibration`` random plans of the space). The bench's
    variants and ``--random-plans`` other random plans are then predicted by the
    :class:`~autoprune.latency.lut.LUTEstimator` and measured in two separate interleaved passes
    (the second pass gives the noise floor). Fine-tuning does not change latency: none is run.
    """
    import shutil

    import numpy as np
    from scipy.stats import kendalltau

    from autoprune.engine.controllers import random_plan
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import LUTEstimator, profile
    from autoprune.latency.lut.measure import measure_models_passes
    from autoprune.latency.measured import batched
    from autoprune.pruning.space import SearchSpace

    task = load_task("minilm", train_size=32, val_size=32)
    x = task.example_input
    space_path = Path(__file__).resolve().parent.parent / "search_spaces" / "transformer_minilm.yaml"
    all_units = {u.name: u for u in search_units(task.model, x, ())}
    space = SearchSpace.load(space_path).resolve(list(all_units.values()))
    units = {n: u for n, u in all_units.items() if n in space}
    data = Calibration(task.train, task.loss)
    plans = {name: Plan.from_dict(choose(all_units)) for name, _, _, _, choose, _ in minilm_variants(quick=False)}
    rng = np.random.default_rng(12345)
    plans.update({f"random {i}": random_plan(space, rng) for i in range(args.random_plans)})
    models = {name: deployable(apply_plan(task.model, plan, units, x, calibration=data), x) for name, plan in plans.items()}
    root = Path(tempfile.mkdtemp(prefix="bench-minilm-table-"))
    lines = ["# MiniLM latency from the device latency tables", "", "Generated by `python -m bench.granularity --parts minilm-lut`.", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        "",
        f"Per device, a fresh table profiled with `autoprune.latency.lut.profile` over search_spaces/transformer_minilm.yaml at sequence length {x.shape[1]} "
        f"(embed, attention and FFN kernel keys, timed in the same {args.rounds} interleaved rounds as {args.calibration} calibration models: random plans of the space), "
        f"then the variants below and {args.random_plans} other random plans predicted from the table and measured in two separate interleaved passes of {args.rounds} rounds; "
        "noise % = |pass 2 - pass 1| / pass 1; error % = (predicted - pass 1) / pass 1.",
        "",
    ]
    rows = []
    for device_name in DEVICES:
        if not get_backend(device_name).available()[0]:
            continue
        (root / device_name).mkdir(parents=True)
        shutil.copy(Path(__file__).resolve().parent.parent / "device_profiles" / device_name / "device.yaml", root / device_name / "device.yaml")
        device = load_device(device_name, root)
        load_before = os.getloadavg()[0]
        report = profile(device, task.model, x, units, space, calibration=args.calibration, rounds=args.rounds, data=data)
        estimator = LUTEstimator(device, measure_missing=False)
        predicted = {name: estimator.latency_ms(m, x) for name, m in models.items()}
        xb = batched(x, device.batch_size)
        first, second = measure_models_passes(device, [lambda m=m: (m, xb) for m in models.values()], passes=2, rounds=args.rounds)
        load_after = os.getloadavg()[0]
        errors, noise = [], []
        for (name, _), a, b in zip(models.items(), first, second):
            real = a.median_ms
            errors.append(abs(predicted[name] - real) / real)
            noise.append(abs(b.median_ms - real) / real)
            rows.append({"device": device_name, "plan": name, "predicted_ms": predicted[name], "measured_ms": real, "measured_again_ms": b.median_ms,
                         "noise_pct": 100 * noise[-1], "error_pct": 100 * (predicted[name] - real) / real})
        mine = [r for r in rows if r["device"] == device_name]
        tau = kendalltau([r["predicted_ms"] for r in mine], [r["measured_ms"] for r in mine]).statistic
        cal = report.calibration
        lines.append(
            f"- {device_name}: MAPE {100 * statistics.mean(errors):.1f}% (noise floor between passes {100 * statistics.mean(noise):.1f}%), "
            f"within 10%: {100 * sum(e <= 0.10 for e in errors) / len(errors):.0f}% of {len(errors)} models, Kendall tau {tau:.2f}; "
            f"{report.keys} kernel keys, profiled in {report.wall_s:.0f} s; calibration ({cal.source}, {cal.points} points): "
            f"{cal.overhead_ms:.3f} ms {cal.per_kernel_ms:+.3f} ms x kernels + {cal.scale:.3f} x kernel sum + {cal.per_mb_ms:.4f} ms x weight MB; "
            f"load average {load_before:.1f} before profiling, {load_after:.1f} after measuring"
        )
        shutil.copy(device.path / "latency_table.csv", RESULTS / f"granularity_minilm_table_{device_name}.csv")
    lines += ["", "| device | plan | predicted ms | measured ms | measured again ms | noise % | error % |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['plan']} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | {r['measured_again_ms']:.2f} | {r['noise_pct']:.0f} | {r['error_pct']:+.1f} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "granularity_minilm-lut.md").write_text("\n".join(lines) + "\n")
    with open(RESULTS / "granularity_minilm-lut.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer variants, small data subsets, fewer timing rounds")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per round")
    parser.add_argument("--parts", default="cnn,minilm", help="comma-separated: cnn, minilm, minilm-lut (run separately, in parallel, they write granularity_PART.*)")
    parser.add_argument("--random-plans", type=int, default=10, help="random MiniLM plans checked against the latency table (minilm-lut)")
    parser.add_argument("--calibration", type=int, default=12, help="random MiniLM plans measured to calibrate the latency table (minilm-lut)")
    args = parser.parse_args(argv)
    args.stem = "granularity" if "," in args.parts else f"granularity_{args.parts}"
    if args.quick:
        args.rounds, args.repeats = min(args.rounds, 3), min(args.repeats, 30)
    args.protect = {"resnet20": ("stem", "classifier"), "minilm": ()}
    torch.set_num_threads(1)
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    info = machine_info()
    rows: list[Row] = []
    started = time.perf_counter()
    cnn_recipe = FinetuneRecipe(max_steps=30 if args.quick else None)  # the study default: 1 epoch, SGD lr 0.01, cosine
    text_recipe = FinetuneRecipe(epochs=1, batch_size=32, lr=0.02, max_steps=5 if args.quick else None)
    recipes = {
        "resnet20": f"fashion-mnist {CNN_TASK} (dense trained by the task); fine-tune {cnn_recipe.model_dump(exclude_none=True)} (the study default: one epoch of the training split)",
        "minilm": f"all-MiniLM-L6-v2, generated sentences {TEXT_TASK if not args.quick else 'train 256, val 128'}, 32 tokens; fine-tune {text_recipe.model_dump(exclude_none=True)} on 1 - cosine to the dense embeddings",
        "distillation": "KD rows: weight 0.5, temperature 4 (KL on logits) from the dense model",
        "timing": f"{args.rounds} interleaved rounds x {args.repeats} calls, batch 1, 1 thread; median of round medians; noise = (max - min) / median of round medians",
    }
    notes = [
        "Sparse granularities (unstructured, n:4, blocks) keep dense shapes: ONNX Runtime and LiteRT run them with dense kernels, so their latency equals the dense model's within noise; only gzip (or a sparse storage format) turns their zeros into smaller files.",
        "XNNPACK's sparse inference covers only 1x1 convolutions with >= 2/3 zeros and is off by default and on x86 with AVX; 2:4 needs sparse tensor cores (GPU compute capability 8.0+).",
        "Structural granularities (channel, layer; head, neuron, layer for MiniLM) shrink tensors and are the ones that speed these CPU runtimes up.",
    ]

    def on_row() -> None:
        info["elapsed_s"] = f"{time.perf_counter() - started:.0f}"
        write(rows, info, notes, recipes, args.stem)

    parts = args.parts.split(",")
    if "cnn" in parts:
        task = load_task("fashion-mnist", model="resnet20", **CNN_TASK)
        run_variants("resnet20", task, cnn_variants(args.quick), cnn_recipe, args, rows, on_row)
    if "minilm" in parts:
        task = load_task("minilm", **({"train_size": 256, "val_size": 128} if args.quick else TEXT_TASK))
        run_variants("minilm", task, minilm_variants(args.quick), text_recipe, args, rows, on_row)
    if "minilm-lut" in parts:
        transformer_table_check(args, info)
    if rows:
        on_row()


if __name__ == "__main__":
    main()
