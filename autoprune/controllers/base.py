"""The controller interface: ask for a plan, tell its result.

Controllers only sample; :func:`autoprune.trial.run_trial` does the work. Every
controller can be resumed from a study's records, so a study keeps its trials across
runs and across a change of controller.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..objectives import Objective
from ..plan import Plan, UnitChoice
from ..registry import Registry
from ..search_space import UnitSpace
from ..trial import TrialResult


@dataclass(frozen=True)
class Proposal:
    """A plan the controller wants evaluated; ``trial_id`` is the controller's own handle."""

    trial_id: int
    plan: Plan


class Controller(ABC):
    """Proposes plans from a bound search space and learns from their results."""

    name: str = ""

    def __init__(
        self,
        space: Mapping[str, UnitSpace],
        objectives: Sequence[Objective],
        seed: int = 0,
        study_dir: Optional[Path] = None,
        study_name: str = "autoprune",
        storage: Optional[str] = None,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(f"controller {self.name!r} got unknown options: {', '.join(sorted(options))}")
        self.space = dict(space)
        self.objectives = list(objectives)
        self.seed = seed
        self.study_dir = study_dir
        self.study_name = study_name
        self.storage = storage

    @abstractmethod
    def ask(self) -> Proposal:
        """Propose the next plan to evaluate."""

    @abstractmethod
    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        """Report the result of a proposal (complete or failed)."""

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Catch up with a study's earlier trials (by default, tell them in order)."""
        for record in records:
            self.tell(Proposal(record.trial_id if record.trial_id is not None else record.number, Plan.from_dict(record.plan)), record)


CONTROLLERS: Registry[type[Controller]] = Registry("controller")


def random_choice(unit_space: UnitSpace, rng: np.random.Generator) -> UnitChoice:
    """A uniformly random choice for one unit within its rule."""
    rule = unit_space.rule
    granularity = rule.granularities[rng.integers(len(rule.granularities))]
    criterion = rule.criteria[rng.integers(len(rule.criteria))]
    if rule.pruning_ratio.step is None:
        ratio = float(rng.uniform(rule.pruning_ratio.low, rule.pruning_ratio.high))
    else:
        grid = rule.pruning_ratio.grid()
        ratio = grid[rng.integers(len(grid))]
    return UnitChoice(granularity, ratio, criterion)


def random_plan(space: Mapping[str, UnitSpace], rng: np.random.Generator) -> Plan:
    """A plan drawn uniformly from the space, unit by unit."""
    return Plan.from_dict({name: random_choice(us, rng) for name, us in space.items()})
