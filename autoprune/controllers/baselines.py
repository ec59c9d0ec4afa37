"""Baseline controllers: random plans, and one global ratio for every unit."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..plan import Plan, UnitChoice
from ..trial import TrialResult
from .base import CONTROLLERS, Controller, Proposal, random_plan


@CONTROLLERS.register("random")
class RandomController(Controller):
    """Each unit's choice drawn independently and uniformly from its rule."""

    name = "random"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = np.random.default_rng(self.seed)
        self._asked = 0

    def ask(self) -> Proposal:
        self._asked += 1
        return Proposal(self._asked - 1, random_plan(self.space, self._rng))

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._asked = max(self._asked, proposal.trial_id + 1)


@CONTROLLERS.register("uniform")
class UniformController(Controller):
    """One pruning ratio for all units, swept evenly from low to high (the classic baseline).

    Each unit uses its rule's first granularity and criterion; ratios are clipped to
    each rule's range.
    """

    name = "uniform"

    def __init__(self, *args: Any, steps: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        low = min(us.rule.pruning_ratio.low for us in self.space.values())
        high = max(us.rule.pruning_ratio.high for us in self.space.values())
        self._ratios = list(np.linspace(low, high, steps))
        self._asked = 0

    def ask(self) -> Proposal:
        ratio = float(self._ratios[self._asked % len(self._ratios)])
        self._asked += 1
        choices = {}
        for name, us in self.space.items():
            r = min(max(ratio, us.rule.pruning_ratio.low), us.rule.pruning_ratio.high)
            choices[name] = UnitChoice(us.rule.granularities[0], r, us.rule.criteria[0])
        return Proposal(self._asked - 1, Plan.from_dict(choices))

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._asked = max(self._asked, proposal.trial_id + 1)
