"""Tables profiled from scratch with `autoprune profile`'s defaults: do they hold on this machine?

For each model (ResNet-20, MobileNetV2-style; Fashion-MNIST 28x28) and CPU runtime (ONNX
Runtime, LiteRT; one thread, batch 1), three tables are profiled from scratch, one after
the other, each into an empty profile folder, and each is validated: the uniform plan at
every ratio of the space, its corners and ``--n`` random plans, predicted from the table
and measured twice beside the dense model. Errors compare ratios to the dense model timed
in the same rounds; the noise floor (the same candidates measured twice) stands beside
every figure. Run:

    python -m bench.lut_fresh [--quick] [--models resnet20,mobilenetv2] [--devices onnxruntime-cpu,tflite]

Writes bench/results/lut_fresh.md and lut_fresh.csv after every profile, and each
validation's per-candidate rows under bench/results/lut_fresh/. ``--quick`` caps the
profile's rounds at 30 s (the default cap is 120 s) and validates on fewer random plans.
Latency does not depend on the trained weights, so the dense models are trained briefly.
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
from autoprune.latency.lut.validate import band_metrics, validate

from .machine import machine_markdown

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
COLUMNS = [
    "model", "device", "profile", "within10", "mape", "bias", "tau", "noise_within10",
    "uniform_max_speedup_predicted", "uniform_max_speedup_measured",
]
DETAIL = ["self_check_within10", "self_check_noise_within10", "calibration_flags", "profile_s", "validate_s", "load_start", "load_end"]


def fresh_device(device: str, label: str, root: Path) -> str:
    """An empty profile ``DEVICE-LABEL`` with the shipped device's settings."""
    name = f"{device}-{label}"
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = yaml.safe_load((REPO / "device_profiles" / device / "device.yaml").read_text())
    settings["name"] = name
    (folder / "device.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return name


def bands_and_sweeps(model: str, device: str, profile: int, rows: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """The per-band errors and the uniform sweep of one validation's per-candidate rows."""
    bands, sweeps = [], []
    for label, b in band_metrics(rows).items():
        bands.append({
            "model": model, "device": device, "profile": profile, "band": label, "n": b["n"],
            "within10": b["within_10_pct"], "mape": b["mape_pct"], "bias": b["bias_pct"], "noise_within10": b["noise_within_10_pct"],
        })
    for u in rows[rows.label.str.startswith("uniform-")].itertuples():
        sweeps.append({
            "model": model, "device": device, "profile": profile, "ratio": u.mean_ratio, "predicted": u.predicted_speedup,
            "measured": u.measured_speedup, "error_pct": (u.predicted_speedup - u.measured_speedup) / u.measured_speedup * 100.0,
        })
    return bands, sweeps


def profiles_from_markdown(path: Path) -> pd.DataFrame:
    """The "Profiles" table of a results markdown file (runs that wrote no ``_profiles.csv``)."""
    lines = path.read_text().split("## Profiles", 1)[1].split("## Machine", 1)[0].splitlines()
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    df = pd.DataFrame(table[2:], columns=table[0])
    for col in df.columns:
        if col not in ("model", "device", "calibration_flags"):
            df[col] = pd.to_numeric(df[col])
    return df


def merge(names: list[str], machine: str, args: argparse.Namespace) -> None:
    """Rebuild ``lut_fresh.md``/``.csv`` from runs written under other names (models run side by side)."""
    rows: list[dict] = []
    bands: list[dict] = []
    sweeps: list[dict] = []
    for name in names:
        main_csv = pd.read_csv(RESULTS / f"{name}.csv")
        extra = RESULTS / f"{name}_profiles.csv"
        detail = pd.read_csv(extra) if extra.exists() else profiles_from_markdown(RESULTS / f"{name}.md")
        merged = main_csv.merge(detail, on=COLUMNS[:3], how="left")
        for row in merged.to_dict("records"):
            rows.append(row)
            per = pd.read_csv(RESULTS / "lut_fresh" / f"{row['model']}-{row['device']}-{row['profile']}.csv")
            b, w = bands_and_sweeps(row["model"], row["device"], row["profile"], per)
            bands += b
            sweeps += w
    args.name = "lut_fresh"
    write(rows, bands, sweeps, machine, args)


def write(rows: list[dict], bands: list[dict], sweeps: list[dict], machine: str, args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    for col in DETAIL:
        if col not in df:
            df[col] = float("nan")
    df[COLUMNS].to_csv(RESULTS / f"{args.name}.csv", index=False)
    df[[*COLUMNS[:3], *DETAIL]].to_csv(RESULTS / f"{args.name}_profiles.csv", index=False)
    detail = df[[*COLUMNS[:3], *DETAIL]]
    passed = df[(df.within10 >= 90)]
    mode = "quick (rounds capped at 30 s per stage)" if args.quick else "default settings (rounds capped at 120 s)"
    lines = [
        "# Fresh latency tables on this machine",
        "",
        f"Search space `{args.space}`, Fashion-MNIST 28x28, batch 1, one thread; `autoprune profile` with its defaults, {mode}. "
        f"Each row is a table profiled from scratch, then validated on the uniform plan at every ratio, the space's two mixed corners "
        f"and {args.n} random plans (seed {args.seed}), each measured twice beside the dense model. Errors are those of the predicted "
        "ratio to the dense model against the measured one, in percent; `within10` is the share of plans within ±10%; `noise_within10` "
        "the same share between the two measurements (the noise floor: no table can beat it at this load); `tau` Kendall's rank "
        "correlation; `uniform_max_speedup_*` the speedup of the most pruned uniform plan.",
        "",
        "## Accuracy",
        "",
        df[COLUMNS].to_markdown(index=False, floatfmt=".3g"),
        "",
        f"At least 90% within ±10%: {len(passed)} of {len(df)} tables. A row whose `noise_within10` is below 90 ran on a machine "
        "noisier than the goal allows.",
        "",
        "## Error per band of measured speedup",
        "",
        pd.DataFrame(bands).to_markdown(index=False, floatfmt=".3g") if bands else "(none)",
        "",
        "## Uniform sweep: predicted against measured speedup",
        "",
        pd.DataFrame(sweeps).to_markdown(index=False, floatfmt=".3g") if sweeps else "(none)",
        "",
        "## Profiles",
        "",
        "`self_check_*`: the figure `autoprune profile` printed and stored after validating its own table on a handful of plans; "
        "`calibration_flags`: what the fit refused; times in seconds; `load_*`: the 1-minute load average at the start and end "
        "of the profile (the machine was shared with other jobs).",
        "",
        detail.to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Machine",
        "",
        machine,
        "",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--devices", default="onnxruntime-cpu,tflite")
    parser.add_argument("--space", default="examples/fashion_mnist_controllers_space.yaml")
    parser.add_argument("--profiles", type=int, default=3, help="tables profiled from scratch per model and device")
    parser.add_argument("--first", type=int, default=1, help="number of the first profile (to add profiles to an earlier run)")
    parser.add_argument("--n", type=int, default=None, help="random validation plans (default 40, 8 with --quick)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--quick", action="store_true", help="30 s caps and 8 random validation plans")
    parser.add_argument("--name", default="lut_fresh", help="results file name (to run models side by side, then --merge)")
    parser.add_argument("--merge", nargs="+", metavar="NAME", help="only rebuild lut_fresh.md/.csv from runs written under these names")
    args = parser.parse_args()
    args.n = args.n if args.n is not None else (8 if args.quick else 40)
    cap = 30.0 if args.quick else 120.0
    torch.set_num_threads(1)
    machine = machine_markdown()
    if args.merge:
        merge(args.merge, machine, args)
        return
    root = Path(tempfile.mkdtemp(prefix="autoprune-lut-fresh-"))
    details = RESULTS / "lut_fresh"
    details.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bands: list[dict] = []
    sweeps: list[dict] = []
    try:
        for model in args.models.split(","):
            target = bind_task("fashion-mnist", str(REPO / args.space), {"model": model, "epochs": 1, "train_size": 2000})
            for device_name in args.devices.split(","):
                for i in range(args.first, args.first + args.profiles):
                    load_start = os.getloadavg()[0]
                    device = load_device(fresh_device(device_name, f"{model}-{i}", root), root)
                    t = time.perf_counter()
                    report = profile(
                        device, target.task.model, target.task.example_input, target.units, target.space, time_cap_s=cap, seed=i - 1,
                    )
                    profile_s = time.perf_counter() - t
                    t = time.perf_counter()
                    result = validate(
                        device, target.task.model, target.task.example_input, target.units, target.space, n=args.n, seed=args.seed, time_cap_s=2 * cap,
                    )
                    validate_s = time.perf_counter() - t
                    result.rows.to_csv(details / f"{model}-{device_name}-{i}.csv", index=False)
                    m, z = result.metrics, result.noise
                    uniform = result.info["uniform"]
                    rows.append({
                        "model": model, "device": device_name, "profile": i,
                        "within10": m["within_10_pct"], "mape": m["mape_pct"], "bias": m["bias_pct"], "tau": m["kendall_tau"],
                        "noise_within10": z["within_10_pct"],
                        "uniform_max_speedup_predicted": uniform[-1]["predicted_speedup"], "uniform_max_speedup_measured": uniform[-1]["measured_speedup"],
                        "self_check_within10": report.validation.metrics["within_10_pct"] if report.validation else float("nan"),
                        "self_check_noise_within10": report.validation.noise["within_10_pct"] if report.validation else float("nan"),
                        "calibration_flags": "; ".join(report.calibration.flags) or "-",
                        "profile_s": profile_s, "validate_s": validate_s, "load_start": load_start, "load_end": os.getloadavg()[0],
                    })
                    b, w = bands_and_sweeps(model, device_name, i, result.rows)
                    bands += b
                    sweeps += w
                    write(rows, bands, sweeps, machine, args)
                    print(f"{model} / {device_name} / profile {i}: {result.summary()}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
