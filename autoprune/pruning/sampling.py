"""Moving between plans and the search space: snapping ratios to a rule's grid, completing
foreign plans, checking a plan is inside the space, and the uniform plans every controller
can start from.

Controllers that evolve or learn over plans share these so that a plan one controller
proposes means the same thing to every other (a study may switch controller).
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from autoprune.core.plan import Plan, UnitChoice
from autoprune.pruning.space import Rule, UnitSpace


def ratio_grid(rule: Rule) -> Optional[list[float]]:
    """The ratios ``rule`` allows, or None when its range is continuous."""
    return None if rule.pruning_ratio.step is None else rule.pruning_ratio.grid()


def snap_ratio(rule: Rule, ratio: float) -> float:
    """``ratio`` clipped to the rule's range and moved to its nearest grid value."""
    r = rule.pruning_ratio
    ratio = min(max(float(ratio), r.low), r.high)
    grid = ratio_grid(rule)
    if grid is None:
        return ratio
    return grid[int(np.argmin([abs(g - ratio) for g in grid]))]


def grid_index(rule: Rule, ratio: float) -> int:
    """Position of ``ratio`` (snapped) in the rule's grid."""
    grid = ratio_grid(rule) or [rule.pruning_ratio.low, rule.pruning_ratio.high]
    return int(np.argmin([abs(g - ratio) for g in grid]))


def default_choice(unit_space: UnitSpace) -> UnitChoice:
    """The least pruning the rule allows, with its first granularity and criterion."""
    rule = unit_space.rule
    return UnitChoice(rule.granularities[0], rule.pruning_ratio.low, rule.criteria[0])


def complete_plan(plan: Plan, space: Mapping[str, UnitSpace]) -> dict[str, UnitChoice]:
    """``plan`` as a choice for every unit of ``space``, each moved inside its rule.

    Used to take in plans made elsewhere (other controllers, older records): units the plan
    lacks get :func:`default_choice`, units the space lacks are dropped.
    """
    given = dict(plan.choices)
    out = {}
    for name, us in space.items():
        rule = us.rule
        choice = given.get(name)
        if choice is None:
            out[name] = default_choice(us)
            continue
        granularity = choice.granularity if choice.granularity in rule.granularities else rule.granularities[0]
        criterion = choice.criterion if choice.criterion in rule.criteria else rule.criteria[0]
        out[name] = UnitChoice(granularity, snap_ratio(rule, choice.pruning_ratio), criterion)
    return out


def violations(plan: Plan, space: Mapping[str, UnitSpace]) -> list[str]:
    """Why ``plan`` is not a plan of ``space`` (empty when it is): one line per problem."""
    problems = []
    names = dict(plan.choices)
    missing = [u for u in space if u not in names]
    extra = [u for u in names if u not in space]
    if missing:
        problems.append(f"units missing from the plan: {', '.join(missing)}")
    if extra:
        problems.append(f"units not in the space: {', '.join(extra)}")
    for name, choice in plan:
        if name not in space:
            continue
        rule = space[name].rule
        r = rule.pruning_ratio
        if choice.granularity not in rule.granularities:
            problems.append(f"{name}: granularity {choice.granularity!r} not in {rule.granularities}")
        if choice.criterion not in rule.criteria:
            problems.append(f"{name}: criterion {choice.criterion!r} not in {rule.criteria}")
        if not r.low - 1e-9 <= choice.pruning_ratio <= r.high + 1e-9:
            problems.append(f"{name}: `{r.low} <= pruning_ratio <= {r.high}` must hold, but got {choice.pruning_ratio}")
        elif r.step is not None and abs(snap_ratio(rule, choice.pruning_ratio) - choice.pruning_ratio) > 1e-6:
            problems.append(f"{name}: pruning_ratio {choice.pruning_ratio} is off the grid {ratio_grid(rule)}")
    return problems


def uniform_plan(space: Mapping[str, UnitSpace], ratio: float) -> Plan:
    """One global ratio for every unit, snapped into each unit's rule; first granularity and criterion."""
    return Plan.from_dict(
        {
            name: UnitChoice(us.rule.granularities[0], snap_ratio(us.rule, ratio), us.rule.criteria[0])
            for name, us in space.items()
        }
    )


def uniform_ratios(space: Mapping[str, UnitSpace], steps: Optional[int] = None) -> list[float]:
    """Global ratios evenly spread from the least to the most pruning the space allows.

    ``steps`` None means every value of the finest grid (or 8 values for continuous ranges).
    """
    low = min(us.rule.pruning_ratio.low for us in space.values())
    high = max(us.rule.pruning_ratio.high for us in space.values())
    if steps is None:
        grid_steps = [us.rule.pruning_ratio.step for us in space.values() if us.rule.pruning_ratio.step]
        steps = int(round((high - low) / min(grid_steps))) + 1 if grid_steps and len(grid_steps) == len(space) else 8
    if steps <= 1 or high == low:
        return [float(high)]
    return [float(r) for r in np.linspace(low, high, steps)]


def uniform_plans(space: Mapping[str, UnitSpace], steps: Optional[int] = None) -> list[Plan]:
    """The distinct uniform plans of :func:`uniform_ratios`, least pruned first."""
    plans, seen = [], set()
    for ratio in uniform_ratios(space, steps):
        plan = uniform_plan(space, ratio)
        if plan.key not in seen:
            seen.add(plan.key)
            plans.append(plan)
    return plans


def warm_start_plans(space: Mapping[str, UnitSpace], n: int) -> list[Plan]:
    """``n`` uniform plans evenly spread from the least to the most pruned (all when n exceeds them).

    Controllers seed their first trials with these so the front spans the latency range early.
    """
    plans = uniform_plans(space)
    if n >= len(plans):
        return plans
    if n <= 0:
        return []
    if n == 1:
        return [plans[len(plans) // 2]]
    return [plans[int(round(i * (len(plans) - 1) / (n - 1)))] for i in range(n)]
