"""Baseline controllers: random plans, one ratio for every unit, and one importance threshold across the network."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from autoprune.core.errors import ConfigError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import TrialResult
from autoprune.engine.controllers.base import CONTROLLERS, Controller, Proposal
from autoprune.pruning.sampling import snap_ratio, uniform_plans, uniform_ratios
from autoprune.pruning.space import random_plan

log = logging.getLogger(__name__)


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
        self.steps = steps
        self._plans: Optional[list[Plan]] = None
        self._position = 0
        self._next_id = 0

    def sweep(self) -> list[Plan]:
        """The plans proposed in turn, the sweep starting over when exhausted."""
        if self._plans is None:
            self._plans = uniform_plans(self.space, self.steps)
        return self._plans

    def ask(self) -> Proposal:
        plans = self.sweep()
        plan = plans[self._position % len(plans)]
        self._position += 1
        self._next_id += 1
        return Proposal(self._next_id - 1, plan)

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._next_id = max(self._next_id, proposal.trial_id + 1)

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Go on with the sweep where this controller's own records leave it."""
        self._position = sum(r.controller == self.name for r in records)
        self._next_id = max([self._next_id, len(records)] + [r.trial_id + 1 for r in records if r.trial_id is not None])


def global_ratios(scores: Mapping[str, np.ndarray], ratio: float) -> dict[str, float]:
    """Per-unit ratios from one threshold over the whole network (Torch-Pruning's
    ``global_pruning=True``): each unit's scores are normalised by their mean, every
    channel of every unit is ranked together, and the lowest ``ratio`` of all channels are
    removed; a unit's ratio is the share of its channels among them. Ties go to the unit
    listed first, so the result is reproducible."""
    names = [n for n in scores if len(scores[n])]
    normalised = []
    for name in names:
        s = np.abs(np.asarray(scores[name], dtype=float))
        mean = s.mean()
        normalised.append(s / mean if mean > 0 else s)  # a unit scoring nothing at all ranks lowest
    if not normalised:
        return {}
    flat = np.concatenate(normalised)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(normalised)])
    removed = owner[np.argsort(flat, kind="stable")[: int(round(ratio * len(flat)))]]
    counts = np.bincount(removed, minlength=len(names))
    return {name: float(counts[i] / len(normalised[i])) for i, name in enumerate(names)}


@CONTROLLERS.register("global")
class GlobalController(UniformController):
    """One importance threshold across the whole network at a ladder of overall ratios (the
    one-shot global baseline, as Torch-Pruning's ``global_pruning=True``).

    For each overall ratio of the ladder (``steps`` ratios spread over the space's range,
    as :class:`UniformController` sweeps them) the dense model's channel scores under each
    unit's first criterion are normalised per unit and ranked together; the lowest ranked
    channels go, wherever they are, so units whose channels matter less lose more (see
    :func:`global_ratios`). Each unit's ratio is then snapped into its rule (its range caps
    it, as Torch-Pruning's ``max_pruning_ratio`` does). The scores come from the cost
    model's ``channel_importance`` (the executor provides it); without one every channel
    weighs alike and the plans are uniform (a warning says so). Once the ladder is
    exhausted it is proposed again (the executor reuses those records).
    """

    name = "global"
    uses_importance = True

    def importance(self) -> dict[str, np.ndarray]:
        """The dense model's per-channel scores per unit, or every channel alike without a scorer."""
        scorer = getattr(self.cost_model, "channel_importance", None)
        if scorer is None:
            log.warning("controller 'global': no channel importance available (no cost model); every channel weighs alike, so its plans are uniform")
            return {name: np.ones(us.unit.channels) for name, us in self.space.items()}
        return dict(scorer({name: us.rule.criteria[0] for name, us in self.space.items()}))

    def ladder(self) -> list[Plan]:
        """The distinct plans of the ladder, least pruned first (computed once)."""
        if self._plans is None:
            scores = self.importance()
            plans, seen = [], set()
            for overall in uniform_ratios(self.space, self.steps):
                ratios = global_ratios(scores, overall)
                plan = Plan.from_dict({
                    name: UnitChoice(us.rule.granularities[0], snap_ratio(us.rule, ratios.get(name, overall)), us.rule.criteria[0])
                    for name, us in self.space.items()
                })
                if plan.key not in seen:
                    seen.add(plan.key)
                    plans.append(plan)
            self._plans = plans
        return self._plans

    sweep = ladder
