"""Baseline controllers: random plans, and one global ratio for every unit."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from autoprune.core.errors import ConfigError
from autoprune.core.records import TrialResult
from autoprune.engine.controllers.base import CONTROLLERS, Controller, Proposal
from autoprune.pruning.sampling import uniform_plans
from autoprune.pruning.space import random_plan


@CONTROLLERS.register("random")
class RandomController(Controller):
    """Each unit's choice drawn independently and uniformly from its rule.

    Trial ``i`` draws from a generator seeded with ``(seed, i)``, so a resumed study goes
    on with new plans instead of repeating its first ones.
    """

    name = "random"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asked = 0

    def ask(self) -> Proposal:
        self._asked += 1
        rng = np.random.default_rng([self.seed, self._asked - 1])
        return Proposal(self._asked - 1, random_plan(self.space, rng))

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._asked = max(self._asked, proposal.trial_id + 1)

    def resume(self, records: Sequence[TrialResult]) -> None:
        super().resume(records)
        self._asked = max(self._asked, len(records))


@CONTROLLERS.register("uniform")
class UniformController(Controller):
    """One pruning ratio for all units, swept from the least to the most pruning (the classic baseline).

    ``steps`` global ratios are spread evenly over the space's range (default: every value
    of the ratio grid), snapped to each unit's rule, and proposed in turn, least pruned
    first; each unit uses its rule's first granularity and criterion. Once every ratio has
    been proposed the sweep starts again (the executor reuses those records).
    """

    name = "uniform"

    def __init__(self, *args: Any, steps: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if steps is not None and steps < 1:
            raise ConfigError(f"controller_options.steps: must be >= 1, but got steps={steps}")
        self._plans = uniform_plans(self.space, steps)
        self._position = 0
        self._next_id = 0

    def ask(self) -> Proposal:
        plan = self._plans[self._position % len(self._plans)]
        self._position += 1
        self._next_id += 1
        return Proposal(self._next_id - 1, plan)

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._next_id = max(self._next_id, proposal.trial_id + 1)

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Go on with the sweep where this controller's own records leave it."""
        self._position = sum(r.controller == self.name for r in records)
        self._next_id = max([self._next_id, len(records)] + [r.trial_id + 1 for r in records if r.trial_id is not None])
