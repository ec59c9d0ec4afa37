"""Latency lookup tables: keys, enumeration, table round trip, profiling with resume,
prediction against a real measurement, missing keys, and the CLI."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from autoprune.core.errors import ConfigError, MissingLatencyKeyError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.engine.controllers import random_plan
from autoprune.latency.devices import load_device
from autoprune.latency.lut import (
    LatencyTableWarning,
    LUTEstimator,
    extract_kernels,
    has_table,
    load_table,
    profile,
)
from autoprune.latency.lut.enumeration import enumerate_keys
from autoprune.latency.lut.kernel_key import KernelKey
from autoprune.latency.lut.kernel_timing import measure_keys
from autoprune.latency.lut.plans import calibration_plans
from autoprune.latency.lut.table import CalibrationPoint, LatencyTable
from autoprune.latency.measured import MeasuredLatency
from autoprune.latency.policy import estimator_for
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.space import SearchSpace
from autoprune.pruning.units import prunable_units

from .conftest import REPO

SPACE = {
    "rules": [{"match": "*", "granularities": ["channel", "unstructured", "n:4"], "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.25}}],
    "protect": ["stem", "classifier"],
}


def make_device(root: Path, name: str = "onnxruntime-cpu", backend: str = "onnxruntime-cpu", local: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"name": name, "backend": backend, "threads": 1, "batch_size": 1, "warmup": 3, "repeats": 15, "local": local}
    (folder / "device.yaml").write_text(yaml.safe_dump(settings))
    return folder


def bind(task, tmp_path: Path, space: dict = SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    loaded = SearchSpace.load(path)
    units = prunable_units(task.model, task.example_input, loaded.protect)
    bound = loaded.resolve(units)
    return {u.name: u for u in units if u.name in bound}, bound, path


def test_kernels_fuse_bn_activation_and_residual_add(tiny_resnet_task):
    kernels = extract_kernels(tiny_resnet_task.model, tiny_resnet_task.example_input)
    ops = [k.key.op for k in kernels]
    # stem, block 0 (conv1, conv2, add), block 1 (conv1, conv2, shortcut, add), pool, flatten, classifier
    assert ops == ["conv", "conv", "conv", "add", "conv", "conv", "conv", "add", "gpool", "reshape", "linear"]
    assert kernels[0].key.act == "relu" and kernels[2].key.act == "none" and kernels[3].key.act == "relu"
    assert kernels[1].layer == "blocks.0.conv1.0"
    assert kernels[0].key.id == "conv:1x8x8>8:k3s1p1g1:relu"


def test_masked_weights_get_a_sparse_key(tiny_resnet_task):
    task = tiny_resnet_task
    units = {u.name: u for u in prunable_units(task.model, task.example_input, ("stem", "classifier"))}
    name = next(iter(units))
    pruned = apply_plan(task.model, Plan.from_dict({name: UnitChoice("unstructured", 0.5)}), units, task.example_input)
    keys = {k.layer: k.key for k in extract_kernels(pruned, task.example_input) if k.layer}
    assert (keys[name].sparsity, keys[name].pattern) == (0.5, "unstructured")
    assert all(keys[layer].sparsity == 0.0 for layer in keys if layer not in units[name].layers)
    nm = apply_plan(task.model, Plan.from_dict({name: UnitChoice("n:4", 0.5)}), units, task.example_input)
    nm_key = {k.layer: k.key for k in extract_kernels(nm, task.example_input)}[name]
    assert (nm_key.sparsity, nm_key.pattern) == (0.5, "2:4") and nm_key.id.endswith(":sp0.5/2:4")
    assert nm_key.dense() == keys[name].dense() and nm_key != keys[name]


def test_enumeration_covers_every_plan_of_the_space(tiny_mobilenet_task, tmp_path):
    task = tiny_mobilenet_task
    units, bound, _ = bind(task, tmp_path)
    keys = set(enumerate_keys(task.model, task.example_input, units, bound))
    rng = np.random.default_rng(0)
    for _ in range(12):
        pruned = apply_plan(task.model, random_plan(bound, rng), units, task.example_input)
        missing = [k.key.id for k in extract_kernels(pruned, task.example_input) if k.key not in keys]
        assert missing == []
    assert any(k.sparsity == 0.5 for k in keys) and any(k.pattern == "2:4" for k in keys) and any(k.op == "dwconv" for k in keys)


def test_table_round_trip_and_version_warning(tmp_path):
    make_device(tmp_path)
    device = load_device("onnxruntime-cpu", tmp_path)
    table = LatencyTable.new(device, device.path, {"onnxruntime": "0.0.1"}, "nchw")
    from autoprune.latency.backends import LatencyStats

    key = KernelKey("conv", 8, 8, 8, 16, 3, 1, 1, 1, "relu", 0.3)
    table.append([(key, LatencyStats(0.012, 0.011, 0.015, 60)), (KernelKey("gpool", 16, 8, 8, 16), LatencyStats(0.002, 0.002, 0.003, 60))])
    table.meta.calibration.append(CalibrationPoint(model="m", family="f", kernels=2, kernel_sum_ms=0.014, measured_ms=0.02))
    table.save_meta()
    assert has_table(device)
    with pytest.warns(LatencyTableWarning, match="onnxruntime 0.0.1"):
        again = load_table(device)
    assert again.rows[key.id]["median_ms"] == pytest.approx(0.012)
    assert KernelKey.from_dict(again.rows[key.id]) == key
    assert again.meta.calibration == table.meta.calibration
    assert again.meta.machine["cores"] >= 1 and again.meta.versions == {"onnxruntime": "0.0.1"}
    # a table profiled on another CPU warns that it describes that CPU, not this one
    again.meta.machine["cpu"] = "Some Other CPU @ 1.0GHz"
    again.save_meta()
    with pytest.warns(LatencyTableWarning, match="CPU 'Some Other CPU @ 1.0GHz' \\(table\\) vs"):
        load_table(device)
    # a table measured with other settings than device.yaml says is refused
    (device.path / "device.yaml").write_text(yaml.safe_dump({"name": "onnxruntime-cpu", "backend": "onnxruntime-cpu", "threads": 2}))
    with pytest.raises(ConfigError, match="threads"):
        load_table(load_device("onnxruntime-cpu", tmp_path))


def test_profile_resumes_after_interruption(tiny_resnet_task, tmp_path):
    task = tiny_resnet_task
    units, bound, _ = bind(task, tmp_path)
    make_device(tmp_path / "profiles")
    device = load_device("onnxruntime-cpu", tmp_path / "profiles")
    expected = enumerate_keys(task.model, task.example_input, units, bound)

    class Stop(Exception):
        pass

    def stop_after_first_chunk(done: int, total: int) -> None:
        if done >= 8:
            raise Stop

    with pytest.raises(Stop):  # sparse layers get keys of their own, to measure whether sparsity pays off
        profile(device, task.model, task.example_input, units, bound, calibration=3, rounds=1, chunk=8, progress=stop_after_first_chunk, sparse_keys="measured", time_cap_s=5)
    with open(device.path / "latency_table.csv") as f:
        first = [row["key"] for row in csv.DictReader(f)]
    assert len(first) == 8
    report = profile(device, task.model, task.example_input, units, bound, calibration=3, rounds=1, chunk=8, time_cap_s=5)
    assert (report.keys, report.reused, report.measured) == (len(expected), 8, len(expected) - 8)
    table = load_table(device)
    assert set(table.rows) == {k.id for k in expected}
    with open(device.path / "latency_table.csv") as f:
        assert len(list(csv.DictReader(f))) == len(expected)  # nothing measured twice
    assert report.calibration_points == len(calibration_plans(bound, 3)) and report.calibration.source.startswith("model")
    # sparse kernels have rows of their own, measured (not copied from the dense ones)
    sparse = [k for k in expected if k.sparsity > 0]
    assert sparse and all(table.rows[k.id]["repeats"] > 0 for k in sparse)
    again = profile(device, task.model, task.example_input, units, bound, calibration=3, rounds=1, self_check=False)
    assert again.measured == 0 and len(load_table(device).meta.calibration) == report.calibration_points  # nothing re-measured, not even calibration


def test_prediction_is_close_to_a_real_measurement(tiny_resnet_task, tmp_path):
    task = tiny_resnet_task
    units, bound, _ = bind(task, tmp_path, {"rules": [{"match": "*", "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.5}}]})
    make_device(tmp_path)
    device = load_device("onnxruntime-cpu", tmp_path)
    profile(device, task.model, task.example_input, units, bound, calibration=4, rounds=2, time_cap_s=5, self_check=False)
    estimator = estimator_for(device, "lut")
    assert isinstance(estimator, LUTEstimator)
    pruned = apply_plan(task.model, Plan.uniform(list(units), 0.5), units, task.example_input)
    predicted = estimator.latency_ms(pruned, task.example_input)
    measured = MeasuredLatency(device).latency_ms(pruned, task.example_input)
    assert predicted == pytest.approx(measured, rel=0.5)
    assert estimator.measured_on_demand == 0


def test_missing_key_is_an_error_on_a_remote_device_and_measured_on_a_local_one(tiny_resnet_task, tmp_path):
    task = tiny_resnet_task
    key = extract_kernels(task.model, task.example_input)[0].key
    for name, local in (("far", False), ("near", True)):
        make_device(tmp_path, name, local=local)
        device = load_device(name, tmp_path)
        table = LatencyTable.new(device, device.path, {}, "nchw")
        table.append(measure_keys(device, [key], table, rounds=1))
        estimator = LUTEstimator(device)
        if not local:
            with pytest.raises(MissingLatencyKeyError, match=r"latency table .*far.* has no row for kernel conv:8x8x8>8"):
                estimator.latency_ms(task.model, task.example_input)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LatencyTableWarning)  # no calibration for this model: the default is used
            assert estimator.latency_ms(task.model, task.example_input) > 0
        assert estimator.measured_on_demand == len({k.key for k in extract_kernels(task.model, task.example_input)}) - 1
        assert len(load_table(device)) == estimator.measured_on_demand + 1


@pytest.mark.tflite
def test_tflite_kernels_from_templates_match_direct_conversion(tmp_path):
    from autoprune.latency.backends import get_backend
    from autoprune.latency.lut.kernels import kernel_model
    from autoprune.latency.lut.measure import export
    from autoprune.latency.lut.tflite_kernels import TFLiteKernelWriter

    backend = get_backend("tflite")
    ok, why = backend.available()
    if not ok:
        pytest.skip(why)
    from ai_edge_litert import schema_py_generated as schema

    def graph(path: Path) -> list:
        model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
        g = model.subgraphs[0]
        return [
            (model.operatorCodes[op.opcodeIndex].builtinCode, [tuple(g.tensors[i].shape) for i in op.inputs if i >= 0],
             [tuple(g.tensors[i].shape) for i in op.outputs], vars(op.builtinOptions) if op.builtinOptions else None)
            for op in g.operators
        ]

    writer = TFLiteKernelWriter(backend)
    keys = [KernelKey("conv", 5, 8, 8, 7, 3, 2, 1, 1), KernelKey("dwconv", 12, 8, 8, 12, 3, 1, 1, 12, "relu", 0.5)]
    for i, key in enumerate(keys):
        patched, x = writer.write(key, tmp_path / f"p{i}.tflite")
        model, x_direct = kernel_model(key, "tflite")
        direct = export(backend, model, x_direct, tmp_path / f"d{i}.tflite")
        assert [(a[0], [tuple(map(int, s)) for s in a[1]], [tuple(map(int, s)) for s in a[2]], a[3]) for a in graph(patched)] == [
            (a[0], [tuple(map(int, s)) for s in a[1]], [tuple(map(int, s)) for s in a[2]], a[3]) for a in graph(direct)
        ]
        assert backend.load(patched)(x).shape == backend.load(direct)(x_direct.numpy()).shape
    weights = np.frombuffer(bytes(bytearray(schema.ModelT.InitFromPackedBuf(bytearray((tmp_path / "p1.tflite").read_bytes()), 0).buffers[2].data)), np.float32)
    assert writer.conversions == len(keys) and weights.size == 12 * 9 and np.mean(weights == 0) == pytest.approx(0.5, abs=0.01)


def test_cli_profile_then_validate(tmp_path, monkeypatch):
    from autoprune.cli.main import main

    make_device(tmp_path / "profiles")
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "profiles"))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"rules": [{"match": "*", "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.5}}]}))
    common = ["--device", "onnxruntime-cpu", "--space", str(space), "--task", "digits", "--task-option", "model=resnet-tiny", "--task-option", "epochs=3"]
    assert main(["profile", *common, "--calibration", "3", "--rounds", "1", "--time-cap", "4", "--no-progress"]) == 0
    stored = yaml.safe_load(load_device("onnxruntime-cpu").path.joinpath("latency_table.yaml").read_text())["validation"]
    assert stored["n"] == 4 + 2 + 2 and 0 <= stored["within_10_pct"] <= 100 and "noise_within_10_pct" in stored  # the closing check is kept
    assert main(["lut", "validate", *common, "--n", "4", "--rounds", "1", "--time-cap", "4", "--out", str(tmp_path / "val")]) == 0
    report = yaml.safe_load((tmp_path / "val" / "validation.json").read_text())
    assert report["metrics"]["n"] == 4 + 2 + 2 and 0 <= report["metrics"]["mape_pct"] < 100  # random, uniform 0 and 0.5, two corners
    assert set(report["noise_floor"]) >= {"mape_pct", "within_10_pct", "kendall_tau"}
    assert (tmp_path / "val" / "validation.png").stat().st_size > 0
    assert main(["lut", "show", "--device", "onnxruntime-cpu"]) == 0
    assert main(["profile", "--space", str(space), "--task", "digits"]) == 2  # no device given


def test_onnxruntime_network_sum_folds_adds_and_charges_reorders_between_layouts():
    from autoprune.latency.lut.kernel_key import Kernel
    from autoprune.latency.lut.ort_layout import network_sum

    def row(ms, lin="nchw", lout="nchw", ri=0.0, ro=0.0):
        return {"median_ms": ms, "layout_in": lin, "layout_out": lout, "reorder_in_ms": ri, "reorder_out_ms": ro}

    stem = KernelKey("conv", 1, 8, 8, 16, 3, 1, 1, 1, "relu")
    blocked = KernelKey("conv", 16, 8, 8, 16, 3, 1, 1, 1)
    plain = KernelKey("conv", 16, 8, 8, 13, 3, 1, 1, 1, "relu")
    add = KernelKey("add", 16, 8, 8, 16, act="relu")
    rows = {
        stem.id: row(1.0, "nchw", "nchwc", ro=0.1),
        blocked.id: row(2.0, "nchwc", "nchwc", ri=0.2, ro=0.3),
        plain.id: row(3.0),
        add.id: row(0.5),
    }
    # stem -> blocked conv -> add(with stem): the add folds into the blocked conv (both operands blocked)
    chain = [Kernel(stem, inputs=(-1,)), Kernel(blocked, inputs=(0,)), Kernel(add, inputs=(1, 0)), Kernel(plain, inputs=(2,))]
    # each kernel without its own reorders, the folded add free; where the folded add's blocked
    # output meets the plain conv a reorder is due, priced from the add's row (none measured)
    expected = (1.0 - 0.1) + (2.0 - 0.2 - 0.3) + 0.0 + 3.0
    assert network_sum(chain, rows) == pytest.approx(expected)
    # the same add fed by a plain producer on its other operand stays a plain add: the blocked conv pays its reorder out
    mixed = [Kernel(plain, inputs=(-1,)), Kernel(stem, inputs=(-1,)), Kernel(blocked, inputs=(1,)), Kernel(add, inputs=(2, 0))]
    expected = 3.0 + 0.9 + 1.5 + 0.5 + 0.3
    assert network_sum(mixed, rows) == pytest.approx(expected)


def test_calibration_recovers_intercept_scale_and_weight_cost():
    from autoprune.latency.lut.table import fit_calibration

    points = [
        CalibrationPoint(model="m", kernels=30, kernel_sum_ms=s, weight_mb=w, measured_ms=0.004 + 0.05 + 0.8 * s + 0.04 * w)
        for s, w in [(0.1, 0.5), (0.2, 1.5), (0.15, 2.5), (0.3, 1.0), (0.25, 3.0), (0.12, 2.0)]
    ]
    cal = fit_calibration(points, overhead_ms=0.004, source="model m")
    assert (cal.scale, cal.per_mb_ms, cal.per_kernel_ms * 30) == pytest.approx((0.8, 0.04, 0.05))
    assert cal.predict(30, 0.2, 1.0) == pytest.approx(0.004 + 0.05 + 0.16 + 0.04)
    # weights that seem to make networks faster are not believed: that term is dropped
    faster = [p.model_copy(update={"measured_ms": 0.004 + 0.05 + 0.8 * p.kernel_sum_ms - 0.04 * p.weight_mb}) for p in points]
    assert fit_calibration(faster, 0.004, "model m").per_mb_ms == 0.0


def test_calibration_over_depth_variants_keeps_a_positive_scale():
    from autoprune.latency.lut.table import fit_calibration

    # transformer-like variants: 2 kernels per layer, the kernel sum grows with the layers
    layers = [2, 3, 4, 5, 6, 4, 5, 3]
    sums = [0.9 * n + 0.3 + 0.05 * (-1) ** i for i, n in enumerate(layers)]
    points = [CalibrationPoint(model=f"m{n}", family="f", kernels=1 + 2 * n, kernel_sum_ms=s, measured_ms=0.004 + 1.2 * s) for n, s in zip(layers, sums)]
    cal = fit_calibration(points, overhead_ms=0.004, source="family f")
    assert cal.predict(9, 2.0) == pytest.approx(0.004 + 2.4, rel=1e-6)
    # points where a larger kernel sum looks faster (noise) never give a negative scale
    noisy = [p.model_copy(update={"measured_ms": 5.0 - p.kernel_sum_ms}) for p in points]
    assert fit_calibration(noisy, 0.004, "family f").scale > 0


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "onnxruntime-cuda"])
def test_profile_and_predict_on_a_gpu_backend(backend, request, tmp_path):
    from autoprune.latency.backends import get_backend

    ok, why = get_backend(backend).available()
    if not ok:
        pytest.skip(why)
    task = request.getfixturevalue("tiny_resnet_task")
    units, bound, _ = bind(task, tmp_path, {"rules": [{"match": "*", "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.5}}]})
    make_device(tmp_path, "gpu", backend=backend)
    device = load_device("gpu", tmp_path)
    report = profile(device, task.model, task.example_input, units, bound, calibration=3, rounds=1, time_cap_s=5, self_check=False)
    assert report.measured == report.keys > 0 and load_table(device).meta.context == "sum"
    assert LUTEstimator(device).latency_ms(task.model, task.example_input) > 0
