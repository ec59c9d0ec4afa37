"""Latency tables for a space mixing every CNN granularity: channel, unstructured, N:M,
blocks and residual-block removal, profiled and predicted without measuring on demand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.core.plan import Plan, UnitChoice
from autoprune.engine.controllers import random_plan
from autoprune.latency.devices import load_device
from autoprune.latency.lut import LUTEstimator, load_table, profile
from autoprune.latency.lut.plans import calibration_plans
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration
from autoprune.pruning.space import SearchSpace
from autoprune.pruning.structure import search_units
from autoprune.tasks.models import ResNet

from .conftest import REPO
from .test_lut import make_device

SPACE = REPO / "search_spaces" / "cnn_granularities.yaml"


@pytest.fixture(scope="module")
def two_block_resnet():
    """A ResNet with two blocks per stage: its identity-shortcut blocks can be removed."""
    torch.manual_seed(0)
    return ResNet(1, 10, widths=(8, 16), depth=2).eval()


def test_profile_covers_every_granularity_of_the_space(two_block_resnet, tiny_resnet_task, tmp_path):
    model, x = two_block_resnet, tiny_resnet_task.example_input
    space = SearchSpace.load(SPACE)
    units = {u.name: u for u in search_units(model, x, space.protect)}
    bound = space.resolve(list(units.values()))
    units = {n: u for n, u in units.items() if n in bound}
    assert units["blocks"].kind == "depth"
    multiples = {n: us.rule.channel_multiple for n, us in bound.items()}
    data = Calibration(tiny_resnet_task.train, tiny_resnet_task.loss, batches=1)
    make_device(tmp_path)
    device = load_device("onnxruntime-cpu", tmp_path)
    report = profile(device, model, x, units, bound, calibration=4, rounds=1, data=data, time_cap_s=5, self_check=False)
    table = load_table(device)
    # sparse layers are looked up as their dense kernels: no sparse rows, and calibration needed no key beyond the enumeration
    assert table.meta.sparse_keys == "dense" and len(table) == report.keys
    assert all(float(r["sparsity"]) == 0 and not r["pattern"] for r in table.rows.values())
    estimator = LUTEstimator(device, measure_missing=False)  # a missing key would raise

    def predict(choices: dict) -> float:
        return estimator.latency_ms(apply_plan(model, Plan.from_dict(choices), units, x, multiples, calibration=data), x)

    convs = [n for n, u in units.items() if u.kind == "conv"]
    dense = predict({})
    predicted = {g: predict({n: UnitChoice(g, 0.5) for n in convs}) for g in ("channel", "unstructured", "n:4", "block1x4", "block4x4")}
    predicted["layer"] = predict({"blocks": UnitChoice("layer", 0.5, "taylor")})
    # dense shapes, dense kernels: sparse patterns predict exactly the dense latency
    assert predicted["unstructured"] == predicted["n:4"] == predicted["block1x4"] == predicted["block4x4"] == pytest.approx(dense)
    # channel pruning reads other (narrower) rows of the table; compared by key, not by time: under
    # load a small kernel's row may be all per-call overhead, which the network sum leaves out
    keys = lambda choices: {k.key.id for k in estimator.kernels(apply_plan(model, Plan.from_dict(choices), units, x, multiples, calibration=data), x)}  # noqa: E731
    narrow = keys({n: UnitChoice("channel", 0.5) for n in convs})
    assert narrow != keys({}) and narrow <= set(table.rows)
    assert predicted["layer"] < dense
    rng = np.random.default_rng(3)
    for _ in range(6):
        plan = random_plan(bound, rng)
        assert predict(dict(plan)) > 0
    assert estimator.measured_on_demand == 0
    # a second run finds everything in place
    again = profile(device, model, x, units, bound, calibration=4, rounds=1, data=data, time_cap_s=5, self_check=False)
    assert again.measured == 0 and again.calibration_points == report.calibration_points == len(calibration_plans(bound, 4))


def test_sparse_keys_setting_is_the_tables(tiny_resnet_task, tmp_path):
    from autoprune.core.errors import ConfigError
    from autoprune.latency.lut.profiler import open_table

    make_device(tmp_path)
    device = load_device("onnxruntime-cpu", tmp_path)
    table = open_table(device, sparse_keys="measured")
    table.save_meta()
    (device.path / "latency_table.csv").write_text("key,op,cin,h,w,cout,median_ms\n")
    with pytest.raises(ConfigError, match="sparse_keys"):
        open_table(device, sparse_keys="dense")
