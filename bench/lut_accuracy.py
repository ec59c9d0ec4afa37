"""How well latency lookup tables predict real latency, and what profiling them costs.

For each built-in CNN (ResNet-20 and MobileNetV2-style on Fashion-MNIST, 28x28) and each
CPU device (ONNX Runtime and LiteRT, one thread, batch 1): profile a fresh table for the
search space, then predict and measure 100 random candidates. Reports MAPE, the share
within ±10% and ±5%, Kendall's tau, and the noise floor (the same candidates measured
twice), with the profiling cost (kernel keys, wall time) and the machine's load. Run:

    python -m bench.lut_accuracy [--n 100] [--models resnet20,mobilenetv2] [--devices onnxruntime-cpu,tflite]

Writes bench/results/lut_accuracy.md and lut_accuracy.csv after every model and device,
and each validation's per-candidate CSV and plot under bench/results/lut_accuracy/.
Latency does not depend on the trained weights, so the dense models are trained briefly
(``--epochs``, ``--train-size``) to keep the benchmark's cost in the timing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from autoprune.latency.devices import load_device
from autoprune.latency.lut.profiler import bind_task, profile
from autoprune.latency.lut.validate import validate

from .machine import machine_markdown

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def load() -> float:
    return os.getloadavg()[0]


def device_copy(device: str, model: str, root: Path) -> str:
    """A profile ``DEVICE-MODEL`` with the shipped device's settings and an empty table."""
    name = f"{device}-{model}"
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load((REPO / "device_profiles" / device / "device.yaml").read_text())
    settings["name"] = name
    (folder / "device.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return name


def write(rows: list[dict], machine: str, args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(RESULTS / "lut_accuracy.csv", index=False)
    table = df[[
        "model", "device", "n", "mape_pct", "within_10_pct", "within_5_pct", "kendall_tau", "bias_pct",
        "noise_mape_pct", "noise_within_10_pct", "noise_kendall_tau", "median_measured_ms",
    ]]
    cost = df[["model", "device", "kernel_keys", "kernel_measurements", "profile_s", "kernel_s", "calibration_s", "calibration_models", "validate_s", "load_start", "load_end"]]
    passed = df[(df.within_10_pct >= 90) & (df.mape_pct < 6)]
    lines = [
        "# Latency lookup tables: prediction accuracy and profiling cost",
        "",
        f"Search space `{args.space}`, Fashion-MNIST 28x28, batch 1, one thread. For each model and device a fresh table is "
        f"profiled (every kernel key the space can produce, plus {args.calibration} whole models measured to calibrate the kernel sum), "
        f"then {args.n} random candidates (seed {args.seed}, none of them used for calibration) are predicted from it and measured "
        "twice on the device, interleaved. Errors are (predicted - measured) / measured.",
        "",
        "The noise floor compares the two measurements of the same candidates: it bounds what any predictor can reach on this machine at this load.",
        "",
        "## Accuracy",
        "",
        table.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"Goal (at least 90% within ±10% and MAPE under 6%): met by {len(passed)} of {len(df)} model/device pairs.",
        "",
        "## Profiling cost",
        "",
        "`kernel_keys`: distinct kernel configurations the space produces for the model; `kernel_measurements`: kernel models timed "
        "(each with the device's warm-up and repeats, interleaved over 3 rounds); times in seconds; `load_*`: 1-minute load average of the "
        "machine, which other jobs shared, at the start and end of the pair.",
        "",
        cost.to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Machine",
        "",
        machine,
        "",
    ]
    (RESULTS / "lut_accuracy.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--devices", default="onnxruntime-cpu,tflite")
    parser.add_argument("--space", default="search_spaces/cnn_channel.yaml")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--calibration", type=int, default=12)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--profiles", help="keep the profiled tables in this folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_markdown()
    root = Path(args.profiles) if args.profiles else Path(tempfile.mkdtemp(prefix="autoprune-lut-bench-"))
    os.environ["AUTOPRUNE_PROFILES"] = str(root)
    details = RESULTS / "lut_accuracy"
    details.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for model in args.models.split(","):
            target = bind_task("fashion-mnist", str(REPO / args.space), {"model": model, "epochs": args.epochs, "train_size": args.train_size})
            for device_name in args.devices.split(","):
                load_start = load()
                device = load_device(device_copy(device_name, model, root), root)
                t = time.perf_counter()
                report = profile(device, target.task.model, target.task.example_input, target.units, target.space, calibration=args.calibration)
                profile_s = time.perf_counter() - t
                t = time.perf_counter()
                result = validate(device, target.task.model, target.task.example_input, target.units, target.space, n=args.n, seed=args.seed)
                validate_s = time.perf_counter() - t
                result.rows.to_csv(details / f"{model}-{device_name}.csv", index=False)
                from autoprune.latency.lut.validate import plot

                plot(result, details / f"{model}-{device_name}.png")
                m, z = result.metrics, result.noise
                rows.append({
                    "model": model, "device": device_name, "n": m["n"],
                    "mape_pct": m["mape_pct"], "within_10_pct": m["within_10_pct"], "within_5_pct": m["within_5_pct"],
                    "kendall_tau": m["kendall_tau"], "bias_pct": m["bias_pct"], "max_abs_error_pct": m["max_abs_error_pct"],
                    "noise_mape_pct": z["mape_pct"], "noise_within_10_pct": z["within_10_pct"], "noise_kendall_tau": z["kendall_tau"],
                    "median_measured_ms": float(result.rows.measured_ms.median()),
                    "kernel_keys": report.keys, "kernel_measurements": report.measured, "profile_s": profile_s,
                    "kernel_s": report.kernel_s, "calibration_s": report.calibration_s, "calibration_models": report.calibration_points,
                    "validate_s": validate_s, "load_start": load_start, "load_end": load(),
                })
                write(rows, machine, args)
                print(f"{model} / {device_name}: {result.summary()}", flush=True)
                print(f"  {report.summary()}", flush=True)
    finally:
        if not args.profiles:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
