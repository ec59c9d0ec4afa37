"""Exported front members vs the dense model, per built-in CNN and device, and how well the
search's short fine-tune ranks members for the export's longer one. Run:

    python -m bench.export [--trials 24] [--models resnet20 mobilenetv2]

For each model (task ``fashion-mnist``) it runs, or resumes, a study on ``onnxruntime-cpu``
and ``tflite`` (channel pruning to multiples of 8 channels, NSGA-II warm-started with
uniform plans, a short fine-tune per trial) under
``runs/bench-export/MODEL``; then exports every Pareto-front member of each device with
the longer export fine-tune (each plan fine-tuned once, shared by the devices), measures
it on the device beside the dense model (alternating rounds), and reports:

* dense vs the members nearest 1.5x, 2x and 3x predicted speedup: accuracy, file size,
  predicted and measured latency, and the realised/predicted speedup ratio;
* Kendall's tau between the members' short-fine-tune accuracy and their accuracy after
  the export fine-tune, per device and over the union of members;
* with ``--int8`` (after the studies exist): int8 post-training quantization, dynamic and
  static, of the member nearest 2x per device, its accuracy re-measured through the file.

Writes bench/results/export.md, export.csv (every exported member) and export.json (the
studies); rows of models not named in a run are kept, so models can be run separately. The
studies stay in runs/, so a second run only adds the missing trials.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy.stats import kendalltau

from autoprune.core.config import load_config
from autoprune.deploy.export import Exporter, ExportRequest
from autoprune.engine.executor import run_study
from autoprune.results.front import device_front

from .machine import machine_markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEVICES = ["onnxruntime-cpu", "tflite"]
#: Fashion-MNIST as the project's other CNN benchmarks use it (bench/granularity.py): the dense
#: model trained 4 epochs on 12k training images, validated on 2k test images.
TASK_OPTIONS = {"train_size": 12000, "epochs": 4, "val_size": 2000}
#: Channel pruning of every unit but the classifier, kept channels rounded to multiples of 8
#: so that ONNX Runtime keeps its blocked convolution kernels (odd channel counts can make a
#: pruned model slower than the dense one there; see DESIGN.md). The stem is searched too: in
#: ResNet-20 its unit couples the stem with every first-stage block (16 channels at 28x28),
#: and keeping it whole caps the ONNX Runtime speedup near 2x.
SPACE = {
    "rules": [{"match": "*", "granularities": ["channel"], "pruning_ratio": {"low": 0.0, "high": 0.8, "step": 0.1}, "criteria": ["l1"], "channel_multiple": 8}],
    "protect": ["classifier"],
}
TARGETS = [1.5, 2.0, 3.0]


def study_config(model: str, args: argparse.Namespace) -> Path:
    """The study's YAML under the work folder (written once; later runs resume it)."""
    work = Path(args.work) / model
    work.mkdir(parents=True, exist_ok=True)
    space = work / "search_space.yaml"
    space.write_text(json.dumps(SPACE, indent=2))
    config = {
        "name": f"bench-export-{model}",
        "task": args.task,
        "task_options": {"model": model, **(TASK_OPTIONS if args.task == "fashion-mnist" else {})},
        "search_space": str(space),
        "devices": DEVICES,
        "latency": args.latency,
        "controller": "nsga2",
        "controller_options": {"population_size": 8, "warm_start": args.warm_start},
        "budget": {"trials": args.trials},
        "finetune": {"epochs": 1, "max_steps": args.search_steps, "batch_size": 64, "lr": 0.01},
        "export": {"finetune": {"epochs": 1, "max_steps": args.export_steps, "batch_size": 64, "lr": 0.01}},
        "study_dir": str(work / "study"),
        "seed": 0,
    }
    path = work / "config.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


def nearest(members: list[Any], device: str, dense_ms: float, target: float) -> Any:
    """The front member whose predicted speedup is nearest ``target`` (in log ratio)."""
    return min(members, key=lambda m: abs(math.log(dense_ms / m.latency_ms[device] / target)))


def fresh_profiles(args: argparse.Namespace) -> Path:
    """Device profiles of their own under the work folder (the devices' settings, no tables),
    used for the whole run: the tables a lookup-table study predicts from are profiled by
    this bench for its models and space, as a user profiles before searching."""
    root = Path(args.work) / "profiles"
    for device in DEVICES:
        (root / device).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "device_profiles" / device / "device.yaml", root / device / "device.yaml")
    os.environ["AUTOPRUNE_PROFILES"] = str(root)
    return root


def profile_model(model: str, config_path: Path, args: argparse.Namespace, log) -> None:
    """Profile every device's table for ``model``'s kernels and calibration (only what is missing)."""
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut.profiler import bind_task, profile

    config = load_config(config_path)
    target = bind_task(config.task, str(config.search_space_path()), config.task_options)
    for device in DEVICES:
        report = profile(load_device(device), target.task.model, target.task.example_input, target.units, target.space)
        log(f"{model}: {report.summary()}")


def bench_model(model: str, args: argparse.Namespace, log) -> tuple[list[dict], dict]:
    path = study_config(model, args)
    if args.latency != "measured":
        profile_model(model, path, args, log)
    config = load_config(path)
    begun = t = time.perf_counter()
    study = run_study(config, progress=False)
    search_s = time.perf_counter() - t
    records = study.records()
    baseline = study.baseline()
    log(f"{model}: study of {len(records)} trials ready ({search_s:.0f} s this run); dense accuracy {baseline['accuracy']:.4f}")
    exporter = Exporter(study)
    out_root = Path(args.work) / model / "exports"
    rows = []
    for device in DEVICES:
        members = device_front(records, device)
        dense_ms = baseline["latency_ms"][device]
        chosen = {m.number: [] for m in members}
        for target in TARGETS:
            chosen[nearest(members, device, dense_ms, target).number].append(target)
        for member in members:
            t = time.perf_counter()
            card = exporter.export(ExportRequest(device, max_latency_ms=member.latency_ms[device]), out_root / device / f"trial{member.number}")
            assert card["trial"] == member.number, (card["trial"], member.number)
            rows.append(
                {
                    "model": model,
                    "device": device,
                    "trial": member.number,
                    "targets": "/".join(f"{x:g}x" for x in chosen[member.number]),
                    "accuracy_dense": baseline["accuracy"],
                    "accuracy_search": card["accuracy_search"],
                    "accuracy_export": card["accuracy"],
                    "size_bytes": card["size_bytes"],
                    "size_bytes_dense": card["size_bytes_dense"],
                    "latency_ms_predicted": card["latency_ms_predicted"],
                    "latency_ms_measured": card["latency_ms_measured"],
                    "latency_ms_dense_predicted": card["latency_ms_dense"],
                    "latency_ms_dense_measured": card["latency_ms_dense_measured"],
                    "speedup_predicted": card["speedup_predicted"],
                    "speedup_measured": card["speedup_measured"],
                    "realised_over_predicted": card["speedup_realised_over_predicted"],
                    "parity_max_abs_diff": card["parity"]["max_abs_diff"],
                    "parity_top1": card["parity"]["top1_agreement"],
                    "params": card["params"],
                    "macs": card["macs"],
                    "latency_method": baseline.get("latency_method", {}).get(device, ""),
                }
            )
            log(f"  {device} trial {member.number}: predicted {card['speedup_predicted']:.2f}x, measured {card['speedup_measured']:.2f}x, "
                f"accuracy {card['accuracy_search']:.4f} -> {card['accuracy']:.4f} ({time.perf_counter() - t:.0f} s)")
    meta = {"trials": len(records), "search_s_this_run": search_s, "wall_s": time.perf_counter() - begun, "dense_accuracy": baseline["accuracy"], "latency_method": baseline.get("latency_method")}
    return rows, meta


def bench_int8(model: str, args: argparse.Namespace, log) -> list[dict]:
    """Int8 post-training quantization of the member nearest 2x predicted speedup per device,
    both modes, on a study :func:`bench_model` ran (no new trials)."""
    study = run_study(load_config(study_config(model, args)), progress=False)
    records, baseline = study.records(), study.baseline()
    exporter = Exporter(study)
    rows = []
    for device in DEVICES:
        member = nearest(device_front(records, device), device, baseline["latency_ms"][device], 2.0)
        for mode in ("dynamic", "static"):
            t = time.perf_counter()
            out = Path(args.work) / model / "exports-int8" / device / mode
            card = exporter.export(ExportRequest(device, max_latency_ms=member.latency_ms[device], quantize=mode), out)
            q = card["quantized"]
            rows.append(
                {
                    "model": model, "device": device, "trial": member.number, "mode": mode, "method": q["method"],
                    "accuracy_float": card["accuracy"], "accuracy_int8": q["accuracy"],
                    "top1_agreement_vs_float": q["parity_vs_float"]["top1_agreement"],
                    "size_bytes_float": card["size_bytes"], "size_bytes_int8": q["size_bytes"],
                    "latency_ms_float": card["latency_ms_measured"], "latency_ms_int8": q["latency_ms_measured"],
                    "speedup_int8_over_float": q["speedup_over_float_measured"],
                    "speedup_int8_over_dense": card["latency_ms_dense_measured"] / q["latency_ms_measured"],
                    "input_dtype": q["input_dtype"],
                }
            )
            log(f"  int8 {mode} {device} trial {member.number}: accuracy {card['accuracy']:.4f} -> {q['accuracy']:.4f}, "
                f"{card['size_bytes']} -> {q['size_bytes']} bytes, {q['speedup_over_float_measured']:.2f}x over float ({time.perf_counter() - t:.0f} s)")
    return rows


def tau(df: pd.DataFrame) -> tuple[float, float, int]:
    if len(df) < 3:
        return float("nan"), float("nan"), len(df)
    result = kendalltau(df.accuracy_search, df.accuracy_export)
    return float(result.statistic), float(result.pvalue), len(df)


def write_report(df: pd.DataFrame, metas: dict, args: argparse.Namespace, machine: str, wall_s: float) -> None:
    df.to_csv(RESULTS / "export.csv", index=False)
    f = lambda v, d=4: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}g}"  # noqa: E731
    lines = [
        "# Exported front members per device",
        "",
        f"Recipe: task {args.task}"
        + (f" {TASK_OPTIONS} (dense model trained by the task, 12k training images, 2k validation images)" if args.task == "fashion-mnist" else "")
        + ", channel pruning of every unit but the classifier at ratios 0..0.8 with kept channels rounded to multiples of 8, "
        f"NSGA-II (population 8, the first {args.warm_start} trials uniform plans spread over the ratios), {args.trials} trials per model on devices {', '.join(DEVICES)} (batch 1, one thread); "
        f"trial fine-tune {args.search_steps} SGD steps of batch 64, export fine-tune {args.export_steps} steps; latency `{args.latency}`. "
        f"Every front member of each device was exported; measured latencies come from the device backend, alternating 3 rounds with the dense model exported the same way. "
        "Wall times per model are under Studies (the machine is shared: see its load below).",
        "",
        "Command: `python -m bench.export "
        + " ".join(f"--{k.replace('_', '-')} {' '.join(df.model.unique()) if k == 'models' else v}" for k, v in vars(args).items() if k not in ("work", "int8"))
        + "` (models may also run as separate processes, one `--models M` each), then the same command with `--int8`.",
        "",
        "## Machine",
        "",
        machine,
        "",
        "## Dense vs members near 1.5x / 2x / 3x predicted speedup",
        "",
        "| model | device | member | accuracy (search → export) | size KiB | latency ms predicted | latency ms measured | speedup predicted | speedup measured | realised / predicted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, device), part in df.groupby(["model", "device"], sort=False):
        first = part.iloc[0]
        lines.append(
            f"| {model} | {device} | dense | {f(first.accuracy_dense)} | {f(first.size_bytes_dense / 1024)} | {f(first.latency_ms_dense_predicted)} | "
            f"{f(part.latency_ms_dense_measured.median())} (median over exports) | 1 | 1 | |"
        )
        for _, r in part[part.targets != ""].iterrows():
            lines.append(
                f"| {model} | {device} | trial {int(r.trial)} (≈{r.targets}) | {f(r.accuracy_search)} → {f(r.accuracy_export)} | {f(r.size_bytes / 1024)} | "
                f"{f(r.latency_ms_predicted)} | {f(r.latency_ms_measured)} | {f(r.speedup_predicted, 3)}x | {f(r.speedup_measured, 3)}x | {f(r.realised_over_predicted, 3)} |"
            )
    lines += [
        "",
        (
            "Predicted latency is the search's own measurement of each member (latency `measured`), so realised/predicted shows "
            "run-to-run noise of re-exporting and re-timing; with a latency table (`--latency lut`) it would test the table's prediction."
            if args.latency == "measured"
            else f"Predicted latency comes from the latency `{args.latency}` estimator of the study, from lookup tables this run profiled for each model"
            " and device (kernel keys of the search space plus 12 calibration models) under the work folder's `profiles/`; measured is the exported file on the device."
        ),
        "",
        "## Does the short fine-tune rank members like the export fine-tune? (Kendall's tau)",
        "",
        "| model | members | tau | p-value |",
        "|---|---|---|---|",
    ]
    for model, part in df.groupby("model", sort=False):
        for device, dpart in part.groupby("device", sort=False):
            t, p, n = tau(dpart)
            lines.append(f"| {model} / {device} front | {n} | {f(t, 3)} | {f(p, 2)} |")
        t, p, n = tau(part.drop_duplicates("trial"))
        lines.append(f"| {model} / union of fronts | {n} | {f(t, 3)} | {f(p, 2)} |")
    int8_csv = RESULTS / "export_int8.csv"
    if int8_csv.exists():
        q = pd.read_csv(int8_csv)
        lines += [
            "",
            "## Int8 post-training quantization of the member nearest 2x (accuracy re-measured through the file)",
            "",
            "| model | device | member | mode | accuracy float → int8 | top-1 agreement with float | size KiB float → int8 | latency ms float → int8 | int8 speedup over float | over dense |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in q.iterrows():
            lines.append(
                f"| {r.model} | {r.device} | trial {int(r.trial)} | {r['mode']} | {f(r.accuracy_float)} → {f(r.accuracy_int8)} | {f(r.top1_agreement_vs_float, 3)} | "
                f"{f(r.size_bytes_float / 1024)} → {f(r.size_bytes_int8 / 1024)} | {f(r.latency_ms_float)} → {f(r.latency_ms_int8)} | "
                f"{f(r.speedup_int8_over_float, 3)}x | {f(r.speedup_int8_over_dense, 3)}x |"
            )
        lines += ["", "Methods: " + "; ".join(f"{m}" for m in q.method.unique()) + "."]
    lines += [
        "",
        "## Studies",
        "",
        *[f"- {model}: {m['trials']} trials, dense accuracy {m['dense_accuracy']:.4f}, latency method {m['latency_method']}, search time {m['search_s_this_run'] / 60:.1f} min and total {m['wall_s'] / 60:.1f} min in its last run" for model, m in metas.items()],
        "",
        "Every exported member passed parity (max |ONNX/LiteRT - PyTorch| "
        f"≤ {f(df.parity_max_abs_diff.max(), 2)}, top-1 agreement ≥ {f(df.parity_top1.min(), 3)}). All members: export.csv.",
    ]
    (RESULTS / "export.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--warm-start", type=int, default=6, help="uniform plans the search starts from (NSGA-II warm_start)")
    parser.add_argument("--search-steps", type=int, default=100, help="fine-tune steps per trial")
    parser.add_argument("--export-steps", type=int, default=400, help="fine-tune steps per exported member")
    parser.add_argument("--latency", choices=["auto", "lut", "measured"], default="measured", help="the studies' latency estimator")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-export"))
    parser.add_argument("--int8", action="store_true", help="only quantize the ≈2x members of studies already run (export_int8.csv)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_markdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = lambda msg: print(f"[{(time.perf_counter() - started) / 60:6.1f} min] {msg}", flush=True)  # noqa: E731
    if args.latency != "measured":
        log(f"device profiles (lookup tables) of this run: {fresh_profiles(args)}")
    if args.int8:
        rows = pd.concat([pd.DataFrame(bench_int8(model, args, log)) for model in args.models], ignore_index=True)
        rows.to_csv(RESULTS / "export_int8.csv", index=False)
        done, metas = previous([])
        write_report(done, metas, args, machine, time.perf_counter() - started)
        log(f"wrote {RESULTS / 'export_int8.csv'} and {RESULTS / 'export.md'}")
        return
    for model in args.models:
        model_rows, meta = bench_model(model, args, log)
        rows, metas = previous([model])  # read now: another run may have written other models meanwhile
        rows = pd.concat([rows, pd.DataFrame(model_rows)], ignore_index=True)
        metas[model] = meta
        (RESULTS / "export.json").write_text(json.dumps(metas, indent=2))
        write_report(rows, metas, args, machine, time.perf_counter() - started)
        log(f"wrote {RESULTS / 'export.md'}")


def previous(models: list[str]) -> tuple[pd.DataFrame, dict]:
    """Rows and study notes already in bench/results of models other than ``models``."""
    csv, notes = RESULTS / "export.csv", RESULTS / "export.json"
    rows = pd.read_csv(csv, keep_default_na=False, na_values=[""]) if csv.exists() else pd.DataFrame(columns=["model"])
    rows = rows[~rows.model.isin(models)]
    rows["targets"] = rows["targets"].fillna("") if "targets" in rows else ""
    metas = json.loads(notes.read_text()) if notes.exists() else {}
    return rows, {k: v for k, v in metas.items() if k in set(rows.model)}


if __name__ == "__main__":
    main()
