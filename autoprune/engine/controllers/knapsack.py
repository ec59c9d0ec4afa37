"""Latency-constrained allocation: keep the channels with the most importance per millisecond.

In the spirit of HALP (Shen et al., 2022), pruning to a latency budget is a knapsack over
channel groups: every unit's channels have an importance (the criterion's scores, the
lowest removed first) and removing them saves latency (read off the device's lookup table
through the cost model, with the rule's channel alignment applied, so a step that leaves
ONNX Runtime's blocked kernels shows up as a step that saves nothing or costs time).

:func:`allocation_path` walks from the dense plan to the most pruned one, each step moving
the one unit whose next ratio buys the most predicted saving per unit of importance lost
(a greedy knapsack over each unit's ratio grid: a unit's move is to its next ratio that
saves anything, jumping over ratios that save nothing, which alignment makes common, but
never past one that does, so a unit whose savings grow faster than its loss is still
pruned a step at a time and stays comparable with the others; when no move saves on its own, the least damaging
step is taken, so the path always ends at the most pruned plan). Every plan on the path is
then priced with the real cost model, which sees how units interact, and :func:`ladder`
keeps for each target speedup the path plan that reaches it with the least importance
removed.

:class:`KnapsackController` proposes those plans first and then goes on as
:class:`~autoprune.engine.controllers.evolution.EvolutionController`, so the ladder is the warm
start of an evolution that refines it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from autoprune.core.plan import Plan, UnitChoice
from autoprune.engine.controllers.base import CONTROLLERS
from autoprune.engine.controllers.evolution import EvolutionController, _check
from autoprune.pruning.granularity import GRANULARITIES, ORDER_CHANNELS, granularity_multiple, kept_channels
from autoprune.pruning.sampling import default_choice, ratio_grid, snap_ratio
from autoprune.pruning.space import UnitSpace

log = logging.getLogger(__name__)

#: Granularities that remove channels, which are what a latency budget buys.
STRUCTURAL = ("channel", "neuron")
#: Ratios tried per unit when its rule's range is continuous.
CONTINUOUS_STEPS = 10
DEFAULT_LADDER = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)


@dataclass(frozen=True)
class PathPoint:
    """One plan on the allocation path: its importance removed (summed over units, each
    unit weighing :func:`unit_weight`) and its predicted speedup over the dense model."""

    plan: Plan
    importance_lost: float
    speedup: float


def unit_ratios(us: UnitSpace) -> list[float]:
    """The ratios a unit may take, least pruned first (a grid over continuous ranges)."""
    grid = ratio_grid(us.rule)
    if grid is None:
        r = us.rule.pruning_ratio
        grid = [snap_ratio(us.rule, v) for v in np.linspace(r.low, r.high, CONTINUOUS_STEPS)]
    return sorted(set(grid))


def unit_steps(us: UnitSpace) -> list[tuple[str, float, int]]:
    """A unit's channel-removing choices as (granularity, ratio, channel multiple), most
    channels kept first, one per kept count: a rule offering ``channel`` and ``channel:16``
    gives one curve over every count either can leave, so the walk can stop on the counts a
    runtime runs fast. The least pruning (the rule's default choice) comes first."""
    first = us.rule.granularities[0]
    by_count: dict[int, tuple[str, float, int]] = {}
    for granularity in us.rule.granularities:
        if granularity not in STRUCTURAL and not _removes_channels(granularity):
            continue
        multiple = granularity_multiple(granularity, us.rule.channel_multiple)
        for ratio in unit_ratios(us):
            by_count.setdefault(kept_channels(us.unit.channels, ratio, multiple), (granularity, ratio, multiple))
    if not by_count:
        return []
    low = us.rule.pruning_ratio.low
    start = (first, low, granularity_multiple(first, us.rule.channel_multiple)) if first in STRUCTURAL or _removes_channels(first) else None
    steps = [by_count[c] for c in sorted(by_count, reverse=True)]
    if start is not None and steps[0][1] != low:
        steps.insert(0, start)
    return steps


def _removes_channels(granularity: str) -> bool:
    g = GRANULARITIES.get(granularity)
    return g.structural and g.order == ORDER_CHANNELS


def unit_weight(us: UnitSpace) -> float:
    """How much a whole unit weighs against the others: the layers its channels touch (the
    layers it shrinks and those whose inputs follow). A residual stage's coupled unit spans
    many layers; weighing it like a single convolution let the walk strip it first."""
    return float(max(1, len(us.unit.layers) + len(us.unit.consumers)))


def importance_lost(scores: Optional[np.ndarray], channels: int, ratio: float, multiple: int, weight: float = 1.0) -> float:
    """Importance removed from a unit at ``ratio``: the lowest scores first, as a share of
    the unit's total (every channel alike without scores) times the unit's ``weight``."""
    removed = channels - kept_channels(channels, ratio, multiple)
    if removed <= 0:
        return 0.0
    if scores is None or len(scores) != channels:
        return weight * removed / channels
    ordered = np.sort(np.abs(np.asarray(scores, dtype=float)))
    total = ordered.sum()
    return weight * (float(ordered[:removed].sum() / total) if total > 0 else removed / channels)


def allocation_path(
    space: Mapping[str, UnitSpace],
    speedup: Callable[[Plan], float],
    importance: Optional[Mapping[str, np.ndarray]] = None,
) -> list[PathPoint]:
    """Plans from dense to most pruned, one unit moved per step, best saving per importance first.

    ``speedup(plan)`` is the predicted speedup over dense. Each unit's saving at each ratio
    is measured with only that unit pruned (one prediction per unit and ratio); the walk
    uses those separable savings, and every plan on it is then priced as a whole. The path
    ends at every unit's most pruned ratio.
    Units whose rule offers no channel-removing granularity stay at their least pruning.
    """
    base = {name: default_choice(us) for name, us in space.items()}
    base_speedup = speedup(Plan.from_dict(base))
    options: dict[str, list[tuple[UnitChoice, float, float]]] = {}
    for name, us in space.items():
        steps = unit_steps(us)
        if not steps:
            continue
        criterion = us.rule.criteria[0]
        scores = (importance or {}).get(name)
        curve = []
        for granularity, ratio, multiple in steps:
            choice = UnitChoice(granularity, ratio, criterion)
            alone = Plan.from_dict({**base, name: choice})
            saving = 1.0 / base_speedup - 1.0 / speedup(alone)  # latency saved, as a fraction of dense
            curve.append((choice, importance_lost(scores, us.unit.channels, ratio, multiple, unit_weight(us)), saving))
        options[name] = curve
    position = {name: 0 for name in options}
    current = dict(base)
    path = [PathPoint(Plan.from_dict(current), 0.0, base_speedup)]
    lost = 0.0
    while True:
        best: Optional[tuple[float, str, int]] = None
        cheapest: Optional[tuple[float, str, int]] = None
        for name, curve in options.items():
            here = curve[position[name]]
            if position[name] + 1 < len(curve):
                d_loss = curve[position[name] + 1][1] - here[1]
                if cheapest is None or d_loss < cheapest[0]:
                    cheapest = (d_loss, name, position[name] + 1)
            for j in range(position[name] + 1, len(curve)):  # the unit's next ratio that saves anything
                d_loss, d_save = curve[j][1] - here[1], curve[j][2] - here[2]
                if d_save <= 1e-9:
                    continue
                efficiency = d_save / max(d_loss, 1e-6)
                if best is None or efficiency > best[0]:
                    best = (efficiency, name, j)
                break
        if best is None:  # no move saves on its own (units interact): the least damaging step goes on
            if cheapest is None:
                break
            best = cheapest
        _, name, j = best
        lost += options[name][j][1] - options[name][position[name]][1]
        position[name] = j
        current[name] = options[name][j][0]
        plan = Plan.from_dict(current)
        path.append(PathPoint(plan, lost, speedup(plan)))
    return path


def ladder(path: Sequence[PathPoint], targets: Sequence[float]) -> list[tuple[float, PathPoint]]:
    """For each target speedup, the path plan reaching it with the least importance removed
    (targets no plan reaches are left out; a plan serving several targets is listed once)."""
    out, keys = [], set()
    for target in sorted(targets):
        reaching = [p for p in path if p.speedup >= target]
        if not reaching:
            continue
        point = min(reaching, key=lambda p: (p.importance_lost, -p.speedup))
        if point.plan.key not in keys:
            keys.add(point.plan.key)
            out.append((target, point))
    return out


@CONTROLLERS.register("knapsack")
class KnapsackController(EvolutionController):
    """Importance-per-millisecond allocations at a ladder of speedups, then evolution from them.

    Options (``controller_options``), besides those of ``evolution``:

    - ``ladder`` (1.25 ... 5.0): predicted speedups the first proposals are allocated for,
      one knapsack plan each (see :func:`ladder`).

    The ladder needs a cost model (a lookup-table device, or a ``params``/``macs``
    objective); importance comes from the cost model's ``channel_importance`` when it has
    one (the dense model's scores under each rule's first criterion), else every channel
    weighs the same. Without a cost model the controller is plain evolution. Defaults
    differ from evolution's: 3 uniform warm-start plans and targets 1.5x/2x/3x/4x.
    Allocations are deterministic, so a resumed study proposes the ladder plans it has
    not yet evaluated and then what an uninterrupted run would.
    """

    name = "knapsack"

    def __init__(
        self,
        *args: Any,
        ladder: Sequence[float] = DEFAULT_LADDER,
        warm_start: int = 3,
        targets: Sequence[float] = (1.5, 2.0, 3.0, 4.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, warm_start=warm_start, targets=targets, **kwargs)
        steps = [float(t) for t in ([ladder] if isinstance(ladder, (int, float)) else ladder)]
        _check("ladder", steps, all(t > 1 for t in steps), "speedups above 1")
        self.ladder_targets = sorted(steps)
        self._ladder: Optional[list[Plan]] = None

    @property
    def ladder_plans(self) -> list[Plan]:
        """The knapsack plans of the ladder, least pruned first (empty without a cost model)."""
        if self._ladder is None:
            self._ladder = []
            if self.cost_model is not None and self.ladder_targets and self._aware:
                scorer = getattr(self.cost_model, "channel_importance", None)
                importance = scorer({n: us.rule.criteria[0] for n, us in self.space.items()}) if scorer is not None else None
                path = allocation_path(self.space, self._speedup, importance)
                chosen = ladder(path, self.ladder_targets)
                self._ladder = [point.plan for _, point in chosen]
                log.info(
                    "knapsack ladder: %s",
                    ", ".join(f"{t:g}x -> {p.speedup:.2f}x (importance lost {p.importance_lost:.2f})" for t, p in chosen),
                )
        return self._ladder

    def _propose(self, rng: np.random.Generator) -> Plan:
        for plan in self.ladder_plans:
            if self._is_new(plan):
                return plan
        return super()._propose(rng)
