"""The plans a latency table is calibrated and validated on: the uniform sweep, the space's corners and random plans."""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np

from autoprune.core.plan import Plan, UnitChoice
from autoprune.pruning.criteria import GRADIENT_CRITERIA
from autoprune.pruning.sampling import uniform_plans
from autoprune.pruning.space import UnitSpace, random_plan

#: Whole models (calibration, validation): ratios to the dense model within 1.5%.
MODEL_CI_PCT = 1.5


def corner_plans(space: Mapping[str, UnitSpace]) -> list[tuple[str, Plan]]:
    """The space's mixed corners: the first half of the units at their highest ratio and the
    rest at their lowest, and the other way round (the uniform plans hold the pure corners)."""
    names = list(space)
    half = len(names) // 2
    if half == 0:
        return []

    def corner(high: set[str]) -> Plan:
        return Plan.from_dict({
            n: UnitChoice(us.rule.granularities[0], us.rule.pruning_ratio.high if n in high else us.rule.pruning_ratio.low, us.rule.criteria[0])
            for n, us in space.items()
        })

    return [("corner-front", corner(set(names[:half]))), ("corner-back", corner(set(names[half:])))]


def range_plans(space: Mapping[str, UnitSpace], n: int, seed: int) -> list[tuple[str, Plan]]:
    """Labelled plans over the whole pruning range: the uniform plan at every ratio of the
    space (the dense model and the most pruned one included), the mixed corners, and ``n``
    random plans drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    uniform = [(f"uniform-{p.mean_ratio():.2f}", p) for p in uniform_plans(space)]
    return uniform + corner_plans(space) + [(f"random-{i}", random_plan(space, rng)) for i in range(n)]


def calibration_plans(space: Mapping[str, UnitSpace], n: int, seed: int = 0) -> list[tuple[str, Plan]]:
    """The plans a table is calibrated on (:func:`range_plans`, random ones apart from validation's).

    A fit on random plans alone sees mid-range models only (random per-unit ratios average
    out near the middle of the range); extrapolated to heavily pruned models its constant
    dominated and hid most of what they save (a MobileNetV2-style model predicted 1.6x where
    it measured 2.8x). Fitted in ratios to the dense model timed in the same rounds, the
    extremes no longer carry the load noise that made them unreliable.
    """
    return range_plans(space, n, seed + 1_000_003)


def without_gradients(plan: Plan) -> Plan:
    """``plan`` with criteria that need gradients replaced by ``l1``: for latency only, when no
    training data is at hand (which channels go changes little of how long the model takes)."""
    return Plan.from_dict({name: replace(c, criterion="l1") if c.criterion in GRADIENT_CRITERIA else c for name, c in plan})
