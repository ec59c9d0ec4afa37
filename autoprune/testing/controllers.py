"""A conformance suite every controller runs through, in the spirit of Optuna's
``optuna/testing/pytest_samplers.py``.

Subclass :class:`ControllerTestSuite` in a test module, set ``controller`` (a registered
name) and the flags, and provide a ``study_config`` fixture: a function
``(controller, options, trials) -> path`` that writes a small study config (the same study
directory on every call)::

    class TestMyController(ControllerTestSuite):
        controller = "my-controller"
        options = {"population_size": 4}

Most tests drive the controller with :func:`toy_result`, a closed-form stand-in for a
trial (accuracy falls and latency drops as units are pruned), so hundreds of ask/tell
rounds take milliseconds; :class:`ToyCostModel` predicts its costs, as a lookup table
would, for the runs with a cost model; one test runs a real study on a real model through
the local executor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from autoprune.core.config import load_config
from autoprune.core.objectives import Objective, build_objectives
from autoprune.core.plan import Plan
from autoprune.core.records import COMPLETE, FAILED, TrialResult
from autoprune.engine.controllers import CONTROLLERS, Controller
from autoprune.pruning.sampling import violations
from autoprune.pruning.space import Rule, SearchSpace, UnitSpace
from autoprune.pruning.units import prunable_units
from autoprune.results.study import Study
from autoprune.tasks.models import MODELS

TOY_DEVICE = "toy-device"


def toy_space() -> dict[str, UnitSpace]:
    """A space over a tiny MobileNetV2's units that exercises every kind of rule: a continuous
    ratio range, a fixed ratio, and a grid with two granularities and two criteria."""
    model = MODELS.get("mobilenetv2-tiny")(in_channels=1, num_classes=10)
    units = prunable_units(model, torch.zeros(1, 1, 8, 8), ("stem", "classifier"))
    space = SearchSpace(
        rules=[
            Rule(match="blocks.0.*", pruning_ratio={"low": 0.1, "high": 0.6, "step": None}),
            Rule(match="head.0", pruning_ratio={"low": 0.3, "high": 0.3, "step": 0.1}),
            Rule(match="*", granularities=["channel", "unstructured"], criteria=["l1", "l2"], pruning_ratio={"low": 0.0, "high": 0.8, "step": 0.1}),
        ]
    )
    return space.resolve(units)


def toy_objectives() -> list[Objective]:
    """Accuracy up, latency on :data:`TOY_DEVICE` down."""
    return build_objectives(["accuracy", "latency_ms"], [TOY_DEVICE])


def toy_result(plan: Plan, space: dict[str, UnitSpace], number: int) -> TrialResult:
    """A deterministic trial result: each unit has its own sensitivity and latency share.

    Channel pruning cuts a unit's latency share in proportion and costs accuracy as the
    square of the ratio; unstructured pruning keeps the latency and costs a third as much.
    """
    names = sorted(space)
    channels = sum(space[n].unit.channels for n in names)
    latency, loss = 0.05, 0.0
    for i, name in enumerate(names):
        choice = plan[name] if name in dict(plan.choices) else None
        ratio = choice.pruning_ratio if choice is not None and choice.active else 0.0
        share = space[name].unit.channels / channels
        sensitivity = 0.05 + 0.4 * ((i * 7919) % 13) / 13
        if choice is not None and choice.granularity == "unstructured":
            latency += share
            loss += sensitivity * ratio**2 / 3
        else:
            latency += share * (1 - ratio)
            loss += sensitivity * ratio**2 * (0.9 if choice is not None and choice.criterion == "l2" else 1.0)
    return TrialResult(
        number=number,
        plan=plan.to_dict(),
        plan_key=plan.key,
        accuracy=max(0.1, 0.95 - loss / len(names)),
        latency_ms={TOY_DEVICE: latency},
        params=int(1000 * latency),
        macs=int(10000 * latency),
    )


class ToyCostModel:
    """The costs :func:`toy_result` will report, predicted without its accuracy: what a
    cost model from a lookup table gives a controller. ``calls`` counts the predictions."""

    def __init__(self, space: dict[str, UnitSpace]) -> None:
        self.space = space
        self.calls = 0
        dense = toy_result(Plan.from_dict({}), space, 0)
        self.dense = {f"latency_ms.{TOY_DEVICE}": dense.latency_ms[TOY_DEVICE], "params": float(dense.params)}

    def __call__(self, plan: Plan) -> dict[str, float]:
        self.calls += 1
        result = toy_result(plan, self.space, 0)
        return {f"latency_ms.{TOY_DEVICE}": result.latency_ms[TOY_DEVICE], "params": float(result.params)}


def run_toy(
    controller: Controller,
    space: dict[str, UnitSpace],
    trials: int,
    records: Optional[list[TrialResult]] = None,
    fail: Callable[[int], bool] = lambda number: False,
    study: Optional[Study] = None,
) -> list[TrialResult]:
    """Ask and tell ``trials`` times as the local executor does; returns all records.

    ``fail(number)`` marks trials as failed; ``study`` also receives every record.
    """
    records = list(records or [])
    for _ in range(trials):
        number = len(records)
        proposal = controller.ask()
        result = toy_result(proposal.plan, space, number)
        if fail(number):
            result.state, result.accuracy, result.error = FAILED, None, "RuntimeError: toy failure"
        result.trial_id, result.controller = proposal.trial_id, controller.name
        controller.tell(proposal, result)
        records.append(result)
        if study is not None:
            study.append(result)
    return records


class ControllerTestSuite:
    """The contract of a controller. Flags a subclass may change:

    - ``options``: controller options used throughout (keep populations small).
    - ``stochastic``: different seeds give different proposals.
    - ``exact_resume``: a controller resumed from a study's records proposes exactly what the
      uninterrupted one would have (controllers whose state lives outside the records,
      such as an Optuna sampler's random generator, cannot promise this).
    """

    controller: str = ""
    options: dict[str, Any] = {}
    stochastic: bool = True
    exact_resume: bool = True

    @pytest.fixture
    def space(self) -> dict[str, UnitSpace]:
        return toy_space()

    def make(self, space: dict[str, UnitSpace], seed: int = 0, study_dir: Optional[Path] = None, **options: Any) -> Controller:
        return CONTROLLERS.get(self.controller)(
            space, toy_objectives(), seed=seed, study_dir=study_dir, study_name="conformance", **{**self.options, **options}
        )

    def test_is_registered_under_its_name(self, space: dict[str, UnitSpace]) -> None:
        assert self.controller in CONTROLLERS
        assert self.make(space).name == self.controller

    def test_proposes_valid_plans_within_the_space(self, space: dict[str, UnitSpace]) -> None:
        records = run_toy(self.make(space), space, 24)
        for record in records:
            assert violations(Plan.from_dict(record.plan), space) == [], record.plan
        assert len({r.trial_id for r in records}) == len(records)

    def test_same_seed_same_plans(self, space: dict[str, UnitSpace]) -> None:
        first = [r.plan_key for r in run_toy(self.make(space, seed=3), space, 20)]
        again = [r.plan_key for r in run_toy(self.make(space, seed=3), space, 20)]
        assert first == again
        if self.stochastic:
            other = [r.plan_key for r in run_toy(self.make(space, seed=4), space, 20)]
            assert other != first

    def test_rejects_unknown_options(self, space: dict[str, UnitSpace]) -> None:
        with pytest.raises(TypeError, match="no_such_option"):
            self.make(space, no_such_option=1)

    def test_goes_on_after_failed_trials(self, space: dict[str, UnitSpace]) -> None:
        records = run_toy(self.make(space), space, 24, fail=lambda n: n % 3 == 1)
        assert sum(r.state == FAILED for r in records) == 8
        assert all(violations(Plan.from_dict(r.plan), space) == [] for r in records)

    def test_asks_ahead_of_results(self, space: dict[str, UnitSpace]) -> None:
        """As a parallel executor does: several proposals out at once, results in any order."""
        controller = self.make(space)
        run_toy(controller, space, 6)
        out = [controller.ask() for _ in range(5)]
        assert len({p.trial_id for p in out}) == 5
        for i, proposal in enumerate(reversed(out)):
            result = toy_result(proposal.plan, space, 6 + i)
            result.trial_id, result.controller = proposal.trial_id, controller.name
            controller.tell(proposal, result)
        more = [controller.ask() for _ in range(5)]
        assert all(violations(p.plan, space) == [] for p in out + more)

    def test_resumes_from_a_stored_study(self, space: dict[str, UnitSpace], tmp_path: Path) -> None:
        study = Study(tmp_path / "study")
        controller = self.make(space, study_dir=study.path)
        records = run_toy(controller, space, 10, study=study, fail=lambda n: n == 5)
        resumed = self.make(space, study_dir=study.path)
        stored = study.records()
        assert [r.to_dict() for r in stored] == [r.to_dict() for r in records]
        resumed.resume(stored)
        after = [resumed.ask() for _ in range(4)]
        assert all(p.trial_id >= len(stored) for p in after), "trial handles must not restart after a resume"
        assert all(violations(p.plan, space) == [] for p in after)
        if self.exact_resume:
            expected = [controller.ask() for _ in range(4)]
            assert [p.plan.key for p in after] == [p.plan.key for p in expected]
            assert [p.trial_id for p in after] == [p.trial_id for p in expected]

    def test_takes_over_the_trials_of_another_controller(self, space: dict[str, UnitSpace], tmp_path: Path) -> None:
        other = "uniform" if self.controller == "random" else "random"
        records = run_toy(CONTROLLERS.get(other)(space, toy_objectives(), seed=1), space, 8)
        controller = self.make(space, study_dir=tmp_path / "study")
        controller.resume(records)
        more = run_toy(controller, space, 6, records=records)
        assert all(violations(Plan.from_dict(r.plan), space) == [] for r in more)
        assert all(r.trial_id >= 8 for r in more[8:])

    def test_works_with_a_cost_model(self, space: dict[str, UnitSpace], tmp_path: Path) -> None:
        """Valid, reproducible plans and an exact resume when the executor passes a cost model too."""
        make = lambda **kw: self.make(space, cost_model=ToyCostModel(space), **kw)  # noqa: E731
        records = run_toy(make(seed=3), space, 20)
        assert all(violations(Plan.from_dict(r.plan), space) == [] for r in records)
        assert [r.plan_key for r in run_toy(make(seed=3), space, 20)] == [r.plan_key for r in records]
        study = Study(tmp_path / "study")
        controller = make(study_dir=study.path)
        run_toy(controller, space, 10, study=study)
        resumed = make(study_dir=study.path)
        resumed.resume(study.records())
        after = [resumed.ask() for _ in range(3)]
        assert all(p.trial_id >= 10 and violations(p.plan, space) == [] for p in after)
        if self.exact_resume:
            assert [p.plan.key for p in after] == [controller.ask().plan.key for _ in range(3)]

    def test_runs_a_real_study_within_its_budget(self, study_config: Callable[..., Path]) -> None:
        """Through the local executor on a real model: exactly the budget, then a resume to a larger one."""
        from autoprune.engine.executor import run_study

        config = load_config(study_config(self.controller, self.options, 3))
        study = run_study(config, progress=False)
        first = study.records()
        assert len(first) == 3 and {r.controller for r in first} == {self.controller}
        assert all(r.state == COMPLETE for r in first), [r.error for r in first]
        space = resolved_space(study.config_file)
        assert all(violations(Plan.from_dict(r.plan), space) == [] for r in first)
        study = run_study(load_config(study_config(self.controller, self.options, 5)), progress=False)
        records = study.records()
        assert len(records) == 5
        assert [r.to_dict() for r in records[:3]] == [r.to_dict() for r in first]


def resolved_space(config_path: Path) -> dict[str, UnitSpace]:
    """The search space of a study config, bound to its task's model."""
    from autoprune.engine.context import build_context

    return build_context(load_config(config_path)).space


__all__ = ["ControllerTestSuite", "TOY_DEVICE", "ToyCostModel", "resolved_space", "run_toy", "toy_objectives", "toy_result", "toy_space"]
