"""torchvision's classification zoo end to end: units, plans, export with parity, and fresh latency tables.

For each model (random weights, input 3x``--size``x``--size``, batch 1, one thread): the
prunable units and parameters, a random channel plan applied and run, the pruned model
exported to ONNX and .tflite with the largest output difference against PyTorch, then per
runtime a latency table profiled from scratch (``autoprune profile``'s functions, ratios
0-0.5 in steps of 0.25) and validated on ``--n`` plans across the pruning range, each
measured twice beside the dense model: the table's MAPE and share within ±10% beside the
same share between the two measurements (the noise floor). Run:

    python -m bench.zoo [--quick] [--models resnet18,mobilenet_v3_small] [--devices onnxruntime-cpu,tflite]

Writes bench/results/zoo.md and zoo.csv after every model. ``--quick`` uses narrow members
of each family where the builders allow (as the tests do), caps profiling rounds at 20 s,
validates on 10 plans, and leaves LiteRT out unless ``--devices`` names it.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from autoprune.core.plan import Plan, UnitChoice
from autoprune.latency.backends import get_backend
from autoprune.latency.devices import load_device
from autoprune.latency.lut.keys import extract_kernels
from autoprune.latency.lut.profiler import profile
from autoprune.latency.lut.validate import validate
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.space import SearchSpace
from autoprune.pruning.units import prunable_units
from autoprune.tasks.zoo import import_torchvision, torchvision_model

from .machine import machine_markdown

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
COLUMNS = [
    "model", "units", "export_onnx", "export_tflite", "parity", "mape_ort", "within10_ort", "noise_within10_ort",
    "mape_tflite", "within10_tflite", "noise_within10_tflite",
]
DETAIL = ["params", "kernels", "table_keys_ort", "table_keys_tflite", "seconds", "load_start", "load_end", "error"]
SPACE = {"rules": [{"match": "*", "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.25}}], "protect": ["stem", "classifier"]}
#: Families ``--quick`` builds narrow and shallow (as the tests do) instead of the builder's default.
TINY = ("densenet121", "mobilenet_v2", "mobilenet_v3_small", "convnext_tiny", "vit_b_16")
#: One member per family.
FULL = [
    "resnet18", "wide_resnet50_2", "resnext50_32x4d", "vgg11_bn", "densenet121", "mobilenet_v2", "mobilenet_v3_small",
    "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_1", "regnet_x_400mf", "convnext_tiny", "googlenet",
    "vit_b_16", "swin_t",
]


def _tiny_builders() -> dict[str, Callable[[], nn.Module]]:
    """Narrow, shallow members of the families in :data:`TINY`."""
    models = import_torchvision().models
    from torchvision.models.convnext import CNBlockConfig

    return {
        "densenet121": lambda: models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10),
        "mobilenet_v2": lambda: torchvision_model("mobilenet_v2", 10, width_mult=0.25),
        "mobilenet_v3_small": lambda: torchvision_model("mobilenet_v3_small", 10, width_mult=0.25),
        "convnext_tiny": lambda: models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10),
        "vit_b_16": lambda: models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10),
    }


def build(name: str, quick: bool) -> nn.Module:
    tiny = _tiny_builders()
    if quick and name in tiny:
        return tiny[name]()
    if name == "vit_b_16":
        return torchvision_model(name, 10, image_size=64)
    if name == "googlenet":
        return torchvision_model(name, 10, aux_logits=False, init_weights=False)
    return torchvision_model(name, 10)


def fresh_device(backend: str, label: str, root: Path) -> Any:
    """An empty profile with the shipped device's settings."""
    name = f"{backend}-{label}"
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = yaml.safe_load((REPO / "device_profiles" / backend / "device.yaml").read_text())
    settings["name"] = name
    (folder / "device.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return load_device(name, root)


def exported_diff(backend_name: str, model: nn.Module, x: torch.Tensor, folder: Path) -> float:
    """Largest absolute output difference of the exported model against PyTorch."""
    backend = get_backend(backend_name)
    path = backend.export(model, x, folder / f"model{backend.suffix}")
    with torch.no_grad():
        expected = model(x).numpy()
    return float(np.abs(backend.load(path)(x.numpy()) - expected).max())


def run_model(name: str, args: argparse.Namespace, root: Path, space_path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "load_start": os.getloadavg()[0]}
    start = time.perf_counter()
    stage = "build"
    try:
        torch.manual_seed(0)
        model = build(name, args.quick).eval()
        x = torch.randn(1, 3, args.size, args.size)
        row["params"] = sum(p.numel() for p in model.parameters())
        stage = "units"
        units = {u.name: u for u in prunable_units(model, x, ("stem", "classifier"))}
        row["units"] = len(units)
        stage = "plan"
        rng = np.random.default_rng(0)
        plan = Plan.from_dict({n: UnitChoice("channel", float(rng.choice([0.25, 0.5]))) for n in units if units[n].channels >= 4})
        pruned = apply_plan(model, plan, units, x)
        with torch.no_grad():
            assert torch.isfinite(pruned(x)).all()
        stage = "kernels"
        row["kernels"] = len(extract_kernels(pruned, x))
        diffs = []
        for backend, column in (("onnxruntime-cpu", "export_onnx"), ("tflite", "export_tflite")):
            if backend not in args.devices:
                row[column] = "not run"
                continue
            stage = f"export {backend}"
            diff = exported_diff(backend, pruned, x, root / name)
            diffs.append(diff)
            row[column] = "ok"
        row["parity"] = max(diffs) if diffs else math.nan
        loaded = SearchSpace.load(space_path)
        bound = loaded.resolve(list(units.values()))
        units_bound = {n: u for n, u in units.items() if n in bound}
        for backend in args.devices:
            suffix = "ort" if backend == "onnxruntime-cpu" else "tflite"
            stage = f"table {backend}"
            device = fresh_device(backend, name, root)
            report = profile(device, model, x, units_bound, bound, calibration=4 if args.quick else 12, time_cap_s=args.cap, self_check=False)
            row[f"table_keys_{suffix}"] = report.keys
            result = validate(device, model, x, units_bound, bound, n=args.n, seed=12345, time_cap_s=2 * args.cap)
            row[f"mape_{suffix}"] = result.metrics["mape_pct"]
            row[f"within10_{suffix}"] = result.metrics["within_10_pct"]
            row[f"noise_within10_{suffix}"] = result.noise["within_10_pct"]
    except Exception as err:  # noqa: BLE001  (a model that fails is a result: where and why)
        row["error"] = f"{stage}: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        traceback.print_exc()
    row["seconds"] = time.perf_counter() - start
    row["load_end"] = os.getloadavg()[0]
    return row


def write(rows: list[dict], machine: str, args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    for col in COLUMNS + DETAIL:
        if col not in df:
            df[col] = math.nan
    df[COLUMNS].to_csv(RESULTS / f"{args.name}.csv", index=False)
    narrow = ", ".join(f"`{m}`" for m in TINY if m in set(df.model))
    mode = (
        f"QUICK mode (narrow members of the families where the builders allow: {narrow or 'none'} are built narrow and "
        f"shallow, as in the tests; profiling rounds capped at {args.cap:g} s, {args.n} validation plans): a smoke run, "
        "not the goal's measurement. Narrow models' latency is mostly per-call overhead, which tables predict easily"
        if args.quick else f"full mode (profiling rounds capped at {args.cap:g} s, {args.n} validation plans)"
    )
    lines = [
        "# torchvision's zoo end to end",
        "",
        f"{mode}. Input 3x{args.size}x{args.size}, batch 1, one thread, random weights; runtimes: {', '.join(args.devices)}. "
        "`units`: prunable channel groups (stem and classifier protected); `export_*`: the pruned model (a random plan of "
        "ratios 0.25/0.5) exported; `parity`: the largest absolute output difference of the exports against PyTorch; "
        "`mape_*`, `within10_*`: the fresh table's error on the latency ratio to the dense model over the validation plans; "
        "`noise_within10_*`: the same share between two measurements of the same plans (no table can beat it at this load). "
        "Empty cells were not reached; `error` says where a model stopped.",
        "",
        df[COLUMNS].to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Details",
        "",
        "`kernels`: latency-table kernels of the pruned model; `table_keys_*`: keys the profile enumerated for the space; "
        "`load_*`: the 1-minute load average before and after the model (the machine is shared).",
        "",
        df[["model", *DETAIL]].to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Machine",
        "",
        machine,
        "",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FULL))
    parser.add_argument("--devices", default=None, help="runtimes (default onnxruntime-cpu,tflite; onnxruntime-cpu with --quick)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=None, help="validation plans (default 30, 10 with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="zoo")
    args = parser.parse_args()
    args.devices = (args.devices or ("onnxruntime-cpu" if args.quick else "onnxruntime-cpu,tflite")).split(",")
    args.n = args.n if args.n is not None else (10 if args.quick else 30)
    args.cap = 20.0 if args.quick else 120.0
    torch.set_num_threads(1)
    machine = machine_markdown()
    root = Path(tempfile.mkdtemp(prefix="autoprune-zoo-"))
    space_path = root / "space.yaml"
    space_path.write_text(yaml.safe_dump(SPACE))
    rows: list[dict] = []
    try:
        for name in args.models.split(","):
            rows.append(run_model(name, args, root, space_path))
            write(rows, machine, args)
            print(f"{name}: {rows[-1]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
