"""Latency tables that hold on this machine: the calibration's sanity checks, the bands of the
validation report, the timing ratios' intervals, and when ``latency: auto`` measures instead."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from autoprune.latency.backends import LatencyStats
from autoprune.latency.devices import cpu_model, load_device
from autoprune.latency.lut import LUTEstimator, extract_kernels
from autoprune.latency.lut.keys import architecture
from autoprune.latency.lut.measure import ratio_interval
from autoprune.latency.lut.table import (
    CalibrationPoint,
    LatencyTable,
    fit_calibration,
    installed_versions,
)
from autoprune.latency.lut.validate import band_metrics
from autoprune.latency.measured import MeasuredLatency
from autoprune.latency.policy import estimator_for

from .test_lut import make_device


def points_for(measured: list[tuple[float, float]], kernels: int = 20) -> list[CalibrationPoint]:
    return [CalibrationPoint(model="m", kernels=kernels, kernel_sum_ms=s, measured_ms=y) for s, y in measured]


def test_calibration_refuses_a_dominating_constant_the_points_do_not_support():
    # mid-range models only, with noise: a constant fitted to them would be most of the lightest model
    s = np.array([0.02, 0.1, 0.2, 0.3, 0.4])
    measured = list(zip(s, 0.004 + 0.9 * s + np.array([0.012, 0.0, -0.004, 0.004, 0.0])))
    cal = fit_calibration(points_for(measured), overhead_ms=0.004, source="model m")
    assert min(cal.per_kernel_ms, cal.scale, cal.per_mb_ms) >= 0
    if cal.flags:
        assert "lightest model" in cal.flags[0] and ("refitted without it" in cal.flags[0]) == (cal.per_kernel_ms == 0.0)
    # a large constant the points pin down exactly (the most pruned models included) is kept, and flagged
    exact = [(x, 0.004 + 0.05 + 0.4 * x) for x in (0.01, 0.1, 0.2, 0.3, 0.4)]
    kept = fit_calibration(points_for(exact), overhead_ms=0.004, source="model m")
    assert kept.per_kernel_ms * 20 == pytest.approx(0.05) and "kept" in kept.flags[0]
    # a modest constant is kept without a flag, exactly
    modest = [(x, 0.004 + 0.01 + 0.8 * x) for x in (0.05, 0.1, 0.2, 0.3, 0.4)]
    fitted = fit_calibration(points_for(modest), overhead_ms=0.004, source="model m")
    assert (fitted.per_kernel_ms * 20, fitted.scale, fitted.flags) == (pytest.approx(0.01), pytest.approx(0.8), [])


def test_calibration_refuses_a_constant_that_only_noise_supports():
    # the truth has no constant; one noisy light point pulls the fitted constant up
    s = np.array([0.005, 0.2, 0.3, 0.4, 0.25])
    y = s + np.array([0.01, 0.0, 0.0, 0.0, 0.0])
    cal = fit_calibration(points_for(list(zip(s, y))), overhead_ms=0.0, source="model m")
    assert cal.flags and "refitted without it" in cal.flags[0] and cal.per_kernel_ms == 0.0 and cal.scale > 0


def test_calibration_terms_are_never_negative():
    # latency that falls as the kernel sum rises (noise, or a table that does not describe these models)
    measured = [(s, 0.5 - 0.3 * s) for s in (0.1, 0.2, 0.3, 0.4, 0.5)]
    cal = fit_calibration(points_for(measured), overhead_ms=0.0, source="model m")
    assert min(cal.per_kernel_ms, cal.scale, cal.per_mb_ms) >= 0
    assert any("no weight" in f or "lightest" in f for f in cal.flags)


def test_ratio_interval_narrows_with_agreeing_rounds():
    steady = np.log([0.5, 0.5, 0.5, 0.5])
    ratio, ci = ratio_interval(steady)
    assert ratio == pytest.approx(0.5) and ci == pytest.approx(0.0)
    spread = np.log([0.45, 0.55, 0.5, 0.5])
    wide = ratio_interval(spread)[1]
    assert wide > 0 and ratio_interval(np.concatenate([spread] * 4))[1] < wide
    assert ratio_interval(np.log([0.5]))[1] == float("inf")


def test_validation_errors_are_reported_per_band_of_measured_speedup():
    measured = np.array([1.0, 0.8, 0.45, 0.4, 0.3, 0.2])  # speedups 1, 1.25, 2.2, 2.5, 3.3, 5
    predicted = measured * np.array([1.0, 1.05, 1.2, 1.0, 0.5, 1.0])
    rows = pd.DataFrame({"predicted_ratio": predicted, "measured_ratio": measured, "measured_again_ratio": measured})
    rows["measured_speedup"] = 1 / rows.measured_ratio
    bands = band_metrics(rows)
    assert [bands[b]["n"] for b in ("<2x", "2-3x", ">3x")] == [2, 2, 2]
    assert (bands["<2x"]["within_10_pct"], bands["2-3x"]["within_10_pct"], bands[">3x"]["within_10_pct"]) == (100.0, 50.0, 50.0)
    assert bands["2-3x"]["bias_pct"] == pytest.approx(10.0) and bands[">3x"]["noise_within_10_pct"] == 100.0


def test_unrelated_models_of_one_class_are_calibrated_apart():
    x = torch.randn(1, 1, 8, 8)
    a = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    b = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    fam_a = architecture(extract_kernels(a, x), a, x)[1]
    fam_b = architecture(extract_kernels(b, x), b, x)[1]
    assert fam_a != fam_b and fam_a.startswith("Sequential@1x8x8")


@pytest.fixture
def tiny_table(tiny_resnet_task, tmp_path):
    """A local onnxruntime-cpu device whose table has every kernel of the tiny ResNet (rows
    written by hand: these tests are about which estimator is chosen, not about timings)."""
    make_device(tmp_path)
    device = load_device("onnxruntime-cpu", tmp_path)
    table = LatencyTable.new(device, device.path, installed_versions(device.backend), "nchw")
    kernels = extract_kernels(tiny_resnet_task.model, tiny_resnet_task.example_input)
    table.append([(k.key, LatencyStats(0.01, 0.009, 0.011, 10)) for k in {k.key.id: k for k in kernels}.values()])
    table.meta.validation = {"within_10_pct": 95.0, "noise_within_10_pct": 100.0}
    table.save_meta()
    return device, table


def test_auto_uses_a_table_validated_on_this_machine(tiny_table, tiny_resnet_task, caplog):
    device, _ = tiny_table
    with caplog.at_level(logging.INFO, logger="autoprune.latency"):
        estimator = estimator_for(device, "auto", tiny_resnet_task.model, tiny_resnet_task.example_input)
    assert isinstance(estimator, LUTEstimator) and not caplog.records


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"machine": {"cpu": "Another CPU(R) 9000"}}, "measured on 'Another CPU(R) 9000'"),
        ({"validation": {"within_10_pct": 42.0, "noise_within_10_pct": 95.0}}, "validated at 42% within ±10% (noise floor 95%)"),
        ({"validation": {}}, "never validated"),
        ({"versions": {"onnxruntime": "0.0.1"}}, "onnxruntime 0.0.1 (table)"),
    ],
)
def test_auto_measures_when_the_table_does_not_hold_here(tiny_table, tiny_resnet_task, caplog, change, reason):
    device, table = tiny_table
    for key, value in change.items():
        setattr(table.meta, key, value)
    table.save_meta()
    with caplog.at_level(logging.INFO, logger="autoprune.latency"):
        estimator = estimator_for(device, "auto", tiny_resnet_task.model, tiny_resnet_task.example_input)
    assert isinstance(estimator, MeasuredLatency)
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert reason in line and "autoprune profile --device onnxruntime-cpu" in line and "\n" not in line
    assert cpu_model() in line or "machine" not in change


def test_auto_measures_a_model_the_table_cannot_describe(tiny_table, caplog):
    device, _ = tiny_table
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=2, dilation=2), nn.Flatten(), nn.Linear(512, 10)).eval()
    with caplog.at_level(logging.INFO, logger="autoprune.latency"):
        estimator = estimator_for(device, "auto", model, torch.randn(1, 1, 8, 8))
    assert isinstance(estimator, MeasuredLatency)
    assert len(caplog.records) == 1 and "cannot describe the model" in caplog.records[0].getMessage()
    assert "dilated" in caplog.records[0].getMessage()


def test_auto_keeps_a_remote_devices_table_measured_on_its_own_cpu(tiny_resnet_task, tmp_path, caplog):
    make_device(tmp_path, "board", local=False)
    device = load_device("board", tmp_path)
    table = LatencyTable.new(device, device.path, {}, "nchw")
    kernels = extract_kernels(tiny_resnet_task.model, tiny_resnet_task.example_input)
    table.append([(k.key, LatencyStats(0.01, 0.009, 0.011, 10)) for k in {k.key.id: k for k in kernels}.values()])
    table.meta.machine = {"cpu": "Cortex-A76"}  # the board's CPU, not this machine's
    table.save_meta()
    with caplog.at_level(logging.INFO, logger="autoprune.latency"):
        estimator = estimator_for(device, "auto", tiny_resnet_task.model, tiny_resnet_task.example_input)
    assert isinstance(estimator, LUTEstimator) and not caplog.records
