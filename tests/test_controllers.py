"""Every registered controller through the conformance suite, plus what is particular to each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprune.core.errors import ConfigError
from autoprune.core.plan import Plan
from autoprune.engine.controllers import CONTROLLERS
from autoprune.engine.controllers.selection import (
    crowding_distances,
    nondominated_ranks,
)
from autoprune.pruning.sampling import uniform_plans, violations
from autoprune.testing.controllers import (
    TOY_DEVICE,
    ControllerTestSuite,
    run_toy,
    toy_objectives,
    toy_space,
)
from tests.conftest import REPO, write_config


@pytest.fixture
def study_config(tmp_path: Path):
    """Writes a tiny study config (mixed channel/unstructured space) for a controller and budget."""

    def make(controller: str, options: dict, trials: int) -> Path:
        return write_config(
            tmp_path,
            controller=controller,
            controller_options=options,
            budget={"trials": trials},
            search_space=str(REPO / "search_spaces" / "cnn_mixed.yaml"),
            finetune={"epochs": 0.1, "batch_size": 64},
        )

    return make


class TestEvolution(ControllerTestSuite):
    controller = "evolution"
    options = {"population_size": 6, "warm_start": 3}


class TestRL(ControllerTestSuite):
    controller = "rl"
    options = {"warm_start": 3, "updates": 8, "hidden": 16}


class TestRandom(ControllerTestSuite):
    controller = "random"


class TestUniform(ControllerTestSuite):
    controller = "uniform"
    stochastic = False


class TestGlobal(ControllerTestSuite):
    controller = "global"
    options = {"steps": 5}
    stochastic = False


class TestNSGA2(ControllerTestSuite):
    controller = "nsga2"
    options = {"population_size": 6}
    exact_resume = False


class TestTPE(ControllerTestSuite):
    controller = "tpe"
    options = {"n_startup_trials": 5}
    exact_resume = False


def test_every_registered_controller_has_a_suite():
    tested = {cls.controller for cls in ControllerTestSuite.__subclasses__()}
    assert set(CONTROLLERS.names()) <= tested


def test_ranks_and_crowding_on_hand_made_points():
    points = np.array([[1, 5], [2, 3], [3, 4], [4, 1], [5, 5], [2, 3]], dtype=float)
    assert nondominated_ranks(points).tolist() == [0, 0, 1, 0, 2, 0]
    crowding = crowding_distances(points, nondominated_ranks(points))
    # front 0 by x (stable): rows 0, 1, 5, 3 over a span of 3; by y: rows 3, 1, 5, 0 over a span of 4
    assert np.isinf(crowding[0]) and np.isinf(crowding[3])
    assert crowding[1] == pytest.approx((2 - 1) / 3 + (3 - 1) / 4)
    assert crowding[5] == pytest.approx((4 - 2) / 3 + (5 - 3) / 4)
    assert np.isinf(crowding[2]) and np.isinf(crowding[4])  # fronts of one member


def test_uniform_sweeps_the_grid_from_dense_to_most_pruned():
    space = toy_space()
    controller = CONTROLLERS.get("uniform")(space, toy_objectives())
    plans = [controller.ask().plan for _ in range(3)]
    grid_units = [u for u, us in space.items() if us.rule.pruning_ratio.step == 0.1 and us.rule.pruning_ratio.high == 0.8]
    assert [plans[i][grid_units[0]].pruning_ratio for i in range(3)] == [0.0, 0.1, 0.2]
    assert all(violations(p, space) == [] for p in uniform_plans(space))


def test_evolution_starts_from_uniform_plans_and_keeps_only_the_latest_population():
    space = toy_space()
    controller = CONTROLLERS.get("evolution")(space, toy_objectives(), population_size=6, warm_start=3)
    records = run_toy(controller, space, 20)
    warm = {p.key for p in uniform_plans(space)}
    assert [r.plan_key in warm for r in records[:3]] == [True, True, True]
    assert [p.key for p in controller.population] == [r.plan_key for r in records[-6:]]
    assert len({r.plan_key for r in records}) == 20, "children should not repeat evaluated plans"


def test_evolution_finds_a_better_front_than_random_on_the_toy_problem():
    from autoprune.core.pareto import hypervolume_2d

    space = toy_space()

    def hv(name: str, seed: int) -> float:
        records = run_toy(CONTROLLERS.get(name)(space, toy_objectives(), seed=seed), space, 60)
        points = np.array([[-r.accuracy, r.latency_ms["toy-device"]] for r in records])
        return hypervolume_2d(points, (-0.5, 1.1))

    assert np.mean([hv("evolution", s) for s in range(3)]) > np.mean([hv("random", s) for s in range(3)])


def test_rl_state_action_and_greedy_policy():
    space = toy_space()
    agent = CONTROLLERS.get("rl")(space, toy_objectives(), warm_start=3, updates=16, hidden=16)
    assert agent.action_dims == 1 + 2 + 2  # ratio, two granularity scores, two criterion scores
    assert agent.state_dims == 13 + 2 * len(space)  # plan so far holds ratio and granularity per unit
    run_toy(agent, space, 10)
    for budget in (0.3, 1.0):
        assert violations(agent.greedy_plan(budget), space) == []


def test_rl_budgets_sweep_the_range_between_the_cheapest_plan_and_dense():
    space = toy_space()
    agent = CONTROLLERS.get("rl")(space, toy_objectives(), warm_start=5, updates=0)
    records = run_toy(agent, space, 5)
    cheapest = min(r.latency_ms["toy-device"] for r in records) / max(r.latency_ms["toy-device"] for r in records)
    budgets = [agent.budget_for(i) for i in range(5, 25)]
    assert all(cheapest - 1e-9 <= b <= 1.0 for b in budgets)
    assert max(budgets) - min(budgets) > 0.7 * (1 - cheapest)


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("evolution", {"population_size": 1}, "population_size"),
        ("evolution", {"crossover_prob": 1.5}, "crossover_prob"),
        ("rl", {"tau": 0.0}, "tau"),
        ("uniform", {"steps": 0}, "steps"),
    ],
)
def test_bad_options_name_the_key_and_the_rule(name, options, key):
    with pytest.raises(ConfigError, match=rf"controller_options\.{key}: must be"):
        CONTROLLERS.get(name)(toy_space(), toy_objectives(), **options)


def test_plan_outside_the_space_is_reported():
    space = toy_space()
    unit = next(iter(space))
    plan = Plan.from_dict({**{u: c.to_dict() for u, c in uniform_plans(space)[0]}, unit: {"granularity": "channel", "pruning_ratio": 0.95}})
    assert any("pruning_ratio" in v for v in violations(plan, space))


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_repeated_plans_from_another_controller_count_once(name):
    space = toy_space()
    records = run_toy(CONTROLLERS.get("uniform")(space, toy_objectives(), steps=3), space, 9)  # three plans, three times each
    controller = CONTROLLERS.get(name)(space, toy_objectives(), **({"population_size": 6} if name == "evolution" else {"updates": 0}))
    controller.resume(records)
    assert (len(controller.population) if name == "evolution" else controller.replay_size) == 3


class TestKnapsack(ControllerTestSuite):
    controller = "knapsack"
    options = {"population_size": 6, "warm_start": 2}


def test_knapsack_ladder_meets_its_targets_on_the_cost_model_and_comes_first():
    from autoprune.engine.controllers.knapsack import allocation_path
    from autoprune.testing.controllers import ToyCostModel

    space = toy_space()
    cost = ToyCostModel(space)
    controller = CONTROLLERS.get("knapsack")(space, toy_objectives(), seed=0, cost_model=cost, ladder=[1.5, 2.0, 2.5])
    ladder = controller.ladder_plans
    assert len(ladder) == 3
    speedups = [1 / controller.predicted_fraction(p) for p in ladder]
    assert all(s >= t for s, t in zip(speedups, [1.5, 2.0, 2.5])), speedups
    assert speedups == sorted(speedups)
    assert all(violations(p, space) == [] for p in ladder)
    records = run_toy(controller, space, 5)
    assert [r.plan_key for r in records[:3]] == [p.key for p in ladder]
    # the walk never gives up importance for nothing: each step saves predicted latency
    path = allocation_path(space, lambda p: 1 / controller.predicted_fraction(p))
    lost = [p.importance_lost for p in path]
    assert lost == sorted(lost) and path[0].importance_lost == 0


def test_knapsack_keeps_the_important_channels_the_uniform_plan_drops():
    """Half of every unit's channels score near zero except in one unit, whose channels all
    matter alike: the 1.5x plan prunes that unit least."""
    from autoprune.engine.controllers.knapsack import allocation_path, ladder
    from autoprune.testing.controllers import ToyCostModel

    space = {n: us for n, us in toy_space().items() if us.rule.pruning_ratio.step is not None and us.rule.pruning_ratio.high > 0.5}
    cost = ToyCostModel(space)
    speedup = lambda p: cost.dense[f"latency_ms.{TOY_DEVICE}"] / cost(p)[f"latency_ms.{TOY_DEVICE}"]  # noqa: E731
    precious = sorted(space)[0]
    flat = {n: np.concatenate([np.full(us.unit.channels // 2, 0.01), np.ones(us.unit.channels - us.unit.channels // 2)]) for n, us in space.items()}
    flat[precious] = np.ones(space[precious].unit.channels)
    (target, point), = ladder(allocation_path(space, speedup, flat), [1.5])
    assert point.speedup >= 1.5
    ratios = dict((n, c.pruning_ratio) for n, c in point.plan)
    assert ratios[precious] <= min(ratios[n] for n in space if n != precious)


def test_knapsack_moves_a_unit_one_saving_step_at_a_time():
    """A unit whose saving grows faster than its importance lost (the shape of a residual
    stream coupling many layers) is not stripped to its last ratio in one move: every move
    goes to the unit's next ratio that saves anything."""
    from autoprune.engine.controllers.knapsack import allocation_path, unit_ratios
    from autoprune.testing.controllers import ToyCostModel

    space = {n: us for n, us in toy_space().items() if us.rule.pruning_ratio.step is not None}
    cost = ToyCostModel(space)
    stream = sorted(space)[0]

    def speedup(plan):
        base = cost.dense[f"latency_ms.{TOY_DEVICE}"] / cost(plan)[f"latency_ms.{TOY_DEVICE}"]
        r = dict((n, c.pruning_ratio) for n, c in plan)[stream]
        return base * (1 + 4 * r**3)  # convex: the last steps of the stream save the most

    path = allocation_path(space, speedup)
    grids = {n: unit_ratios(space[n]) for n in space}
    for before, after in zip(path, path[1:]):
        moved = [(n, c.pruning_ratio, dict(before.plan)[n].pruning_ratio) for n, c in after.plan if c.pruning_ratio != dict(before.plan)[n].pruning_ratio]
        ((name, new, old),) = moved
        assert grids[name].index(new) == grids[name].index(old) + 1, (name, old, new)


def test_knapsack_walks_one_curve_over_plain_and_aligned_channel_counts():
    """A rule offering ``channel`` and ``channel:16`` gives each unit one curve over every
    count either leaves, most kept first, so the walk can stop on the aligned counts."""
    from autoprune.engine.controllers.knapsack import unit_steps
    from autoprune.pruning.granularity import granularity_multiple, kept_channels
    from autoprune.pruning.space import Rule, UnitSpace
    from autoprune.pruning.units import Unit

    rule = Rule(match="*", granularities=["channel", "channel:16"], pruning_ratio={"low": 0.0, "high": 0.9, "step": 0.1})
    steps = unit_steps(UnitSpace(Unit("conv", "conv", 64, ("conv",), ()), rule))
    counts = [kept_channels(64, r, granularity_multiple(g)) for g, r, _ in steps]
    assert steps[0][:2] == ("channel", 0.0) and counts == sorted(set(counts), reverse=True)
    assert {16, 32, 48} <= set(counts) and 6 in counts  # aligned counts beside the plain 0.9 (64 * 0.1 = 6.4)
    assert {g for g, _, _ in steps} == {"channel", "channel:16"}
    assert unit_steps(UnitSpace(Unit("conv", "conv", 64, ("conv",), ()), Rule(match="*", granularities=["unstructured"]))) == []


def test_knapsack_resumes_past_the_ladder_plans_already_evaluated(tmp_path: Path):
    from autoprune.testing.controllers import ToyCostModel

    space = toy_space()
    make = lambda: CONTROLLERS.get("knapsack")(space, toy_objectives(), seed=2, cost_model=ToyCostModel(space), ladder=[1.5, 2.0, 2.5], population_size=6)  # noqa: E731
    first = make()
    records = run_toy(first, space, 2)
    resumed = make()
    resumed.resume(records)
    assert resumed.ask().plan.key == first.ladder_plans[2].key
    assert [r.plan_key for r in run_toy(make(), space, 9)] == [r.plan_key for r in run_toy(make(), space, 9)]


def test_global_ratios_from_one_threshold_on_hand_made_scores():
    from autoprune.engine.controllers.baselines import global_ratios

    scores = {"a": np.array([1.0, 1.0, 1.0, 5.0]), "b": np.array([4.0, 4.0, 4.0, 4.0])}  # normalised: a 0.5,0.5,0.5,2.5; b 1,1,1,1
    assert global_ratios(scores, 0.0) == {"a": 0.0, "b": 0.0}
    assert global_ratios(scores, 0.375) == {"a": 0.75, "b": 0.0}  # the 3 lowest of 8 are all in a
    assert global_ratios(scores, 0.75) == {"a": 0.75, "b": 0.75}
    assert global_ratios({"a": np.zeros(2), "b": np.array([1.0, 3.0])}, 0.5) == {"a": 1.0, "b": 0.0}  # a unit scoring nothing ranks lowest


def test_global_controller_on_a_real_model_gives_valid_reproducible_plans_that_differ_per_unit(tmp_path):
    """Through the executor's own construction, with the dense model's L1 scores: each plan is a
    plan of the space, two controllers propose the same ladder, the overall pruning grows along
    it, and the units' ratios differ (unlike uniform's)."""
    from autoprune.core.config import load_config
    from autoprune.engine.context import build_context
    from autoprune.engine.executor import make_controller
    from autoprune.results.study import Study

    config = load_config(write_config(tmp_path, controller="global", controller_options={"steps": 5}))
    ctx = build_context(config)
    make = lambda: make_controller(config, ctx.space, Study(tmp_path / "study"), ctx)  # noqa: E731
    first, again = make(), make()
    assert first.cost_model is not None  # given for the importance though the measured latency has no cost model
    plans = [first.ask().plan for _ in range(len(first.ladder()))]
    assert [p.key for p in plans] == [again.ask().plan.key for _ in plans]
    assert all(violations(p, ctx.space) == [] for p in plans)
    channels = {u: us.unit.channels for u, us in ctx.space.items()}
    removed = [sum(channels[u] * c.pruning_ratio for u, c in p) / sum(channels.values()) for p in plans]
    assert removed == sorted(removed) and removed[-1] > removed[0]
    assert any(len({c.pruning_ratio for _, c in p}) > 1 for p in plans), "every plan is uniform"
