"""Multi-fidelity stopping: the dominance rule on hand-made reports, and real studies that use it."""
import json

import optuna
import pytest

from autoprune.core.config import Stopping, load_config
from autoprune.core.errors import ConfigError
from autoprune.core.objectives import build_objectives
from autoprune.core.plan import Plan
from autoprune.core.records import COMPLETE, STOPPED, TrialResult
from autoprune.engine.context import build_context
from autoprune.engine.executor import run_study
from autoprune.engine.stopping import (
    REPORTS_FILE,
    DominanceRule,
    Report,
    TrialMonitor,
    dominates,
    load_reports,
    rung_steps,
)
from autoprune.engine.trial import run_trial
from autoprune.results.study import Study
from tests.conftest import write_config

DEVICE = "latency_ms.onnxruntime-cpu"


def report(number, accuracy, latency, rung=0, params=100):
    return Report(number, f"k{number}", rung, 10 * (rung + 1), accuracy, {DEVICE: latency, "params": params})


def test_dominance_needs_the_accuracy_margin_and_no_worse_cost():
    base = report(0, 0.80, 1.0)
    assert dominates(report(1, 0.83, 1.0), base, accuracy_margin=0.02)
    assert not dominates(report(1, 0.815, 0.5), base, accuracy_margin=0.02)  # more accurate, but not by the margin
    assert not dominates(report(1, 0.95, 1.01), base, accuracy_margin=0.02)  # slower: base may belong on the front
    assert not dominates(report(1, 0.95, 0.5, params=101), base, accuracy_margin=0.02)  # more params
    assert dominates(report(1, 0.83, 0.9), base, accuracy_margin=0.02, latency_margin=0.1)
    assert not dominates(report(1, 0.83, 0.91), base, accuracy_margin=0.02, latency_margin=0.1)


def test_rule_compares_only_reports_at_the_same_rung():
    rule = DominanceRule(Stopping(accuracy_margin=0.02))
    # a fast, less accurate trial is kept: it is not dominated
    assert [rule.check(r) for r in (report(0, 0.9, 2.0), report(1, 0.7, 1.0), report(2, 0.85, 2.5))] == [False, False, True]
    assert rule.dominator(report(2, 0.85, 2.5)).number == 0
    assert not rule.check(report(3, 0.5, 3.0, rung=1))  # nothing else at rung 1 yet
    assert rule.check(report(4, 0.6, 3.0, rung=1)) is False and rule.check(report(5, 0.55, 3.5, rung=1)) is True
    # a retried trial reporting the same rung again replaces its report instead of dominating itself
    assert not rule.check(report(0, 0.88, 2.0))
    assert sorted((r.rung, r.number) for r in rule.reports()) == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]


def test_rung_steps_fall_strictly_inside_the_fine_tune():
    assert rung_steps(100, [0.25, 0.5]) == {25: 0, 50: 1}
    assert rung_steps(5, [0.25, 0.5]) == {1: 0, 2: 1}
    assert rung_steps(1, [0.5]) == {}
    assert rung_steps(3, [0.1, 0.2]) == {1: 0}


@pytest.mark.parametrize("rungs", [[0.0, 0.5], [0.5, 0.25], [1.0], []])
def test_bad_rungs_are_config_errors(tmp_path, rungs):
    with pytest.raises(ConfigError, match="rungs"):
        load_config(write_config(tmp_path, stopping={"rungs": rungs}))


def test_a_trial_that_is_not_stopped_ends_as_without_stopping(tmp_path):
    config = load_config(write_config(tmp_path, finetune={"epochs": 0.5, "batch_size": 64}))
    ctx = build_context(config)
    plan = Plan.uniform(list(ctx.space), 0.3)
    plain = run_trial(ctx, plan, 7)
    monitor = TrialMonitor([0.25, 0.5], lambda r: False, build_objectives(config.objectives, config.devices))
    watched = run_trial(ctx, plan, 7, monitor)
    assert watched.state == plain.state == COMPLETE
    assert watched.finetune_steps == plain.finetune_steps == ctx.recipe.steps(len(ctx.task.train))
    assert watched.accuracy == plain.accuracy
    assert [(r.step, r.rung) for r in monitor.reports] == sorted(rung_steps(plain.finetune_steps, [0.25, 0.5]).items())
    assert all(r.costs == {DEVICE: watched.latency_ms["onnxruntime-cpu"]} and 0 <= r.accuracy <= 1 for r in monitor.reports)


def seed_strong_trial(config):
    """A recorded trial (with its rung reports) that every real candidate loses to."""
    ctx = build_context(config)
    study = Study(config.study_dir)
    study.initialise(config)
    plan = Plan.uniform(list(ctx.space), 0.0)
    steps = ctx.recipe.steps(len(ctx.task.train))
    study.append(TrialResult(0, plan.to_dict(), plan.key, accuracy=1.0, latency_ms={"onnxruntime-cpu": 1e-6}, params=1, macs=1, finetune_steps=steps))
    reports = [Report(0, plan.key, rung, step, 1.0, {DEVICE: 1e-6}) for step, rung in rung_steps(steps, config.stopping.rungs).items()]
    (study.path / REPORTS_FILE).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in reports))
    return ctx


def test_dominated_trials_are_stopped_at_the_first_rung_and_recorded_as_such(tmp_path):
    config = load_config(write_config(tmp_path, budget={"trials": 4}, finetune={"epochs": 0.5, "batch_size": 64}, stopping={"rungs": [0.25, 0.5]}))
    ctx = seed_strong_trial(config)
    assert rung_steps(ctx.recipe.steps(len(ctx.task.train)), [0.25, 0.5]) == {3: 0, 6: 1}
    records = run_study(config, progress=False, context=ctx).records()
    assert [r.state for r in records] == [COMPLETE, STOPPED, STOPPED, STOPPED]
    assert all(r.finetune_steps == 3 and r.accuracy is not None and r.latency_ms for r in records[1:])
    reports = load_reports(config.study_dir, records)
    assert sorted((r.number, r.rung, r.step) for r in reports) == [(0, 0, 3), (0, 1, 6), (1, 0, 3), (2, 0, 3), (3, 0, 3)]
    trials = optuna.load_study(study_name="tiny", storage=Study(config.study_dir).optuna_storage).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]


def test_stopping_decisions_agree_with_the_recorded_reports(tmp_path):
    """Whatever the search proposes, a stopped trial had a dominator at its last rung, and a
    complete one ran the whole fine-tune."""
    space = tmp_path / "space.yaml"
    space.write_text("rules:\n  - match: '*'\n    granularities: [channel, unstructured]\n    pruning_ratio: {low: 0.0, high: 0.8, step: 0.4}\nprotect: [stem, classifier]\n")
    config = load_config(
        write_config(
            tmp_path, search_space=str(space), controller="random", controller_options={}, budget={"trials": 6},
            finetune={"epochs": 0.5, "batch_size": 64}, stopping={"rungs": [0.3], "accuracy_margin": 0.01},
        )
    )
    ctx = build_context(config)
    records = run_study(config, progress=False, context=ctx).records()
    reports = load_reports(config.study_dir, records)
    full = ctx.recipe.steps(len(ctx.task.train))
    for r in records:
        if r.cached:
            continue
        mine = [p for p in reports if p.key == (r.number, r.plan_key)]
        assert len(mine) == 1 and mine[0].step == rung_steps(full, [0.3]).popitem()[0]
        dominated = any(dominates(p, mine[0], 0.01) for p in reports if p.number < r.number)
        assert r.state == (STOPPED if dominated else COMPLETE)
        assert r.finetune_steps == (mine[0].step if dominated else full)
