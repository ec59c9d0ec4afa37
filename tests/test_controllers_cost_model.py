"""The cost model controllers screen plans with: real predictions on a real model, and the
hardware-aware controllers using it (and working without it)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from autoprune.core.config import load_config
from autoprune.core.objectives import build_objectives
from autoprune.core.plan import Plan
from autoprune.core.records import TrialResult
from autoprune.engine.context import build_context
from autoprune.engine.controllers import CONTROLLERS
from autoprune.engine.cost_model import CostModel, cost_model_for
from autoprune.engine.executor import make_controller
from autoprune.engine.trial import run_trial
from autoprune.pruning.sampling import uniform_plans, violations
from autoprune.results.study import Study
from autoprune.testing.controllers import (
    TOY_DEVICE,
    ToyCostModel,
    run_toy,
    toy_objectives,
    toy_space,
)
from tests.conftest import REPO, write_config


def speedups(records, device: str, dense_ms: float) -> np.ndarray:
    return np.array([dense_ms / r.latency_ms[device] for r in records])


@pytest.fixture(scope="module")
def lut_context(tmp_path_factory: pytest.TempPathFactory):
    """The tiny digits ResNet under search_spaces/cnn_channel.yaml, latency from an
    onnxruntime-cpu table profiled for it here (in a profiles folder of the test's own)."""
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import profile

    tmp = tmp_path_factory.mktemp("lut")
    (tmp / "profiles" / "onnxruntime-cpu").mkdir(parents=True)
    shutil.copy(REPO / "device_profiles" / "onnxruntime-cpu" / "device.yaml", tmp / "profiles" / "onnxruntime-cpu" / "device.yaml")
    patch = pytest.MonkeyPatch()
    patch.setenv("AUTOPRUNE_PROFILES", str(tmp / "profiles"))
    measured = build_context(load_config(write_config(tmp, latency="measured")))
    profile(load_device("onnxruntime-cpu"), measured.task.model, measured.task.example_input, measured.units, measured.space, calibration=6, rounds=1, time_cap_s=5, self_check=False)
    config = load_config(write_config(tmp, latency="lut", finetune={"epochs": 0.05, "batch_size": 64}))
    ctx = build_context(config)
    yield config, ctx
    patch.undo()


def test_cost_model_predicts_what_the_trial_records(lut_context):
    config, ctx = lut_context
    model = cost_model_for(ctx, build_objectives(config.objectives, config.devices))
    assert isinstance(model, CostModel) and model.labels == ["latency_ms.onnxruntime-cpu", "params", "macs"]
    plan = uniform_plans(ctx.space)[4]
    predicted = model(plan)
    record = run_trial(ctx, plan, 0)
    assert predicted["latency_ms.onnxruntime-cpu"] == pytest.approx(record.latency_ms["onnxruntime-cpu"])
    assert predicted["params"] == record.params and predicted["macs"] == record.macs
    assert predicted["params"] < model.dense["params"]
    assert model(Plan.from_dict(plan.to_dict())) == predicted and model.hits == 1


def test_executor_gives_the_controller_a_cost_model(lut_context, tmp_path: Path):
    config, ctx = lut_context
    controller = make_controller(config.model_copy(update={"controller": "evolution", "controller_options": {}}), ctx.space, Study(tmp_path / "s"), ctx)
    assert isinstance(controller.cost_model, CostModel) and controller.has_cost_model
    assert 0 < controller.predicted_fraction(uniform_plans(ctx.space)[-1]) < 10


def test_a_measured_device_is_screened_by_its_table(lut_context, tmp_path: Path):
    from autoprune.engine.trial import prune
    from autoprune.latency.lut import LUTEstimator

    config = load_config(write_config(tmp_path, latency="measured"))
    ctx = build_context(config)
    assert ctx.estimators["onnxruntime-cpu"].method == "measured"
    model = cost_model_for(ctx, build_objectives(config.objectives, config.devices))
    assert model.screens == {"onnxruntime-cpu": "table"} and model.labels == ["latency_ms.onnxruntime-cpu", "params", "macs"]
    plan = uniform_plans(ctx.space)[4]
    table = LUTEstimator(ctx.estimators["onnxruntime-cpu"].device)
    assert model(plan)["latency_ms.onnxruntime-cpu"] == pytest.approx(table.latency_ms(prune(ctx, plan), ctx.task.example_input))
    controller = make_controller(config, ctx.space, Study(tmp_path / "s"), ctx)
    assert controller.has_cost_model and controller.predicted_fraction(uniform_plans(ctx.space)[-1]) < 1


def test_a_measured_device_without_a_table_is_screened_by_macs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "profiles" / "onnxruntime-cpu").mkdir(parents=True)
    shutil.copy(REPO / "device_profiles" / "onnxruntime-cpu" / "device.yaml", tmp_path / "profiles" / "onnxruntime-cpu" / "device.yaml")
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "profiles"))
    config = load_config(write_config(tmp_path, latency="auto"))
    ctx = build_context(config)
    model = cost_model_for(ctx, build_objectives(config.objectives, config.devices))
    assert ctx.estimators["onnxruntime-cpu"].method == "measured" and model.screens == {"onnxruntime-cpu": "macs"}
    costs = model(uniform_plans(ctx.space)[-1])
    assert costs["latency_ms.onnxruntime-cpu"] == pytest.approx(costs["macs"] / 1e6) and costs["macs"] < model.dense["macs"]


def test_evolution_with_a_real_cost_model_aims_at_the_target(lut_context):
    """Plans scored by their real predicted latency (accuracy a closed form of the kept
    parameters): with the cost model more children meet the target speedup than without.
    The target is the speedup one random plan in five reaches under the current table (on
    this tiny model many pruned plans are slower than dense on ONNX Runtime)."""
    from autoprune.pruning.space import random_plan

    config, ctx = lut_context
    objectives = build_objectives(config.objectives, config.devices)
    model = cost_model_for(ctx, objectives)
    dense_ms = model.dense["latency_ms.onnxruntime-cpu"]
    rng = np.random.default_rng(0)
    drawn = [dense_ms / model(random_plan(ctx.space, rng))["latency_ms.onnxruntime-cpu"] for _ in range(30)]
    target = float(np.quantile(drawn, 0.8))  # what one random plan in five reaches, whatever the table
    if target <= 1.0:
        pytest.skip("no pruned plan of this space is predicted faster than dense with this table")

    def run(cost_model) -> list[TrialResult]:
        controller = CONTROLLERS.get("evolution")(
            ctx.space, objectives, seed=0, cost_model=cost_model,
            population_size=6, warm_start=3, targets=[target], target_prob=1.0, candidates=16, band=0.3,
        )
        records = []
        for number in range(18):
            proposal = controller.ask()
            costs = model(proposal.plan)
            result = TrialResult(number, proposal.plan.to_dict(), proposal.plan.key,
                                 accuracy=0.5 + 0.4 * costs["params"] / model.dense["params"],
                                 latency_ms={"onnxruntime-cpu": costs["latency_ms.onnxruntime-cpu"]})
            controller.tell(proposal, result)
            records.append(result)
        return records

    aware, blind = run(model), run(None)
    assert all(violations(Plan.from_dict(r.plan), ctx.space) == [] for r in aware + blind)
    meeting = lambda rs: int(np.sum(speedups(rs[6:], "onnxruntime-cpu", dense_ms) >= target))  # noqa: E731
    assert meeting(aware) >= 4 and meeting(aware) > meeting(blind)
    networks = {tuple(sorted(model(Plan.from_dict(r.plan)).items())) for r in aware}  # what the controller tells networks apart by
    assert len(networks) == len(aware), "one network, one trial"


def test_evolution_aims_children_at_the_target_band_on_the_toy_problem():
    space = toy_space()
    dense = ToyCostModel(space).dense[f"latency_ms.{TOY_DEVICE}"]

    def share_in_band(cost_model) -> float:
        controller = CONTROLLERS.get("evolution")(space, toy_objectives(), seed=1, cost_model=cost_model,
                                                  population_size=8, warm_start=3, targets=[2.0], target_prob=1.0)
        s = speedups(run_toy(controller, space, 40)[8:], TOY_DEVICE, dense)
        return float(np.mean((s >= 2.0) & (s <= 2.2)))

    assert share_in_band(ToyCostModel(space)) >= 0.6
    assert share_in_band(ToyCostModel(space)) > share_in_band(None) + 0.3


def test_evolution_prefers_the_least_pruned_plan_in_the_band():
    """Among children in the band the one with the most parameters left is proposed."""
    space = toy_space()
    dense = ToyCostModel(space).dense

    def mean_params(candidates: int) -> float:
        controller = CONTROLLERS.get("evolution")(space, toy_objectives(), seed=2, cost_model=ToyCostModel(space),
                                                  population_size=8, warm_start=3, targets=[2.0], target_prob=1.0,
                                                  candidates=candidates, band=0.1)
        records = run_toy(controller, space, 36)[8:]
        s = speedups(records, TOY_DEVICE, dense[f"latency_ms.{TOY_DEVICE}"])
        chosen = [r.params for r, x in zip(records, s) if 2.0 <= x <= 2.2]
        return float(np.mean(chosen)) if chosen else 0.0

    assert mean_params(16) >= mean_params(1)


def test_rl_with_a_cost_model_meets_each_episode_budget():
    """AMC's constraint: the anchor is moved until the plan is predicted within the budget
    (on a channel-only space, where every budget down to the cheapest plan is reachable)."""
    import torch

    from autoprune.pruning.space import Rule, SearchSpace
    from autoprune.pruning.units import prunable_units
    from autoprune.tasks.models import MODELS

    net = MODELS.get("mobilenetv2-tiny")(in_channels=1, num_classes=10)
    units = prunable_units(net, torch.zeros(1, 1, 8, 8), ("stem", "classifier"))
    space = SearchSpace(rules=[Rule(match="*", pruning_ratio={"low": 0.0, "high": 0.8, "step": 0.1})]).resolve(units)
    model = ToyCostModel(space)
    dense = model.dense[f"latency_ms.{TOY_DEVICE}"]

    def misses(cost_model) -> tuple[float, float]:
        agent = CONTROLLERS.get("rl")(space, toy_objectives(), seed=0, warm_start=3, updates=4, hidden=16, cost_model=cost_model)
        run_toy(agent, space, 3)
        over, error = [], []
        for i in range(12):
            budget = agent.budget_for(3 + i)
            fraction = run_toy(agent, space, 1)[-1].latency_ms[TOY_DEVICE] / dense
            over.append(max(0.0, fraction - budget))
            error.append(abs(fraction - budget))
        return float(np.mean(over)), float(np.mean(error))

    (over, error), (_, blind_error) = misses(model), misses(None)
    assert over < 0.01 and error < 0.03
    assert error < blind_error / 2


def test_knapsack_ladder_on_a_real_lookup_table(lut_context):
    """Importance from the dense model's L1 scores, savings from the table: every ladder plan
    is a plan of the space and reaches its target in the cost model's own prediction."""
    config, ctx = lut_context
    model = cost_model_for(ctx, build_objectives(config.objectives, config.devices))
    scores = model.channel_importance({n: us.rule.criteria[0] for n, us in ctx.space.items()})
    assert set(scores) == set(ctx.space) and all(len(s) == ctx.units[n].channels for n, s in scores.items())
    dense_ms = model.dense["latency_ms.onnxruntime-cpu"]
    most_pruned = dense_ms / model(uniform_plans(ctx.space)[-1])["latency_ms.onnxruntime-cpu"]
    assert most_pruned > 1
    targets = [1 + 0.25 * (most_pruned - 1), 1 + 0.5 * (most_pruned - 1)]  # the path ends at the most pruned plan
    controller = CONTROLLERS.get("knapsack")(ctx.space, build_objectives(config.objectives, config.devices), cost_model=model, ladder=targets)
    plans = controller.ladder_plans
    assert plans and all(violations(p, ctx.space) == [] for p in plans)
    reached = [dense_ms / model(p)["latency_ms.onnxruntime-cpu"] for p in plans]
    assert all(s >= t for s, t in zip(reached, targets)), reached
    assert [p.key for p in plans] == [p.key for p in CONTROLLERS.get("knapsack")(ctx.space, controller.objectives, cost_model=model, ladder=targets).ladder_plans]
