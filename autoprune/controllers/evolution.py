"""Regularised (aging) evolution over plans, with multi-objective tournament selection.

Regularised evolution (Real et al., 2019) keeps a population of the most recent complete
trials: every new child is made from parents picked by tournament, and when the
population is full the *oldest* member leaves, whatever its score, so no lucky early plan
rules for ever. Here the tournament ranks plans as NSGA-II does (Deb et al., 2002): by
non-dominated front, then by crowding distance, which spreads the population along the
accuracy-latency front instead of collapsing onto one point.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..plan import Plan, UnitChoice
from ..search_space import UnitSpace
from ..trial import TrialResult
from .base import CONTROLLERS, Controller, Proposal, random_plan
from .encoding import complete_plan, grid_index, ratio_grid, snap_ratio, warm_start_plans
from .selection import crowding_distances, minimised, nondominated_ranks, usable

#: Tries at making a child no trial has evaluated yet before accepting a repeat.
MAX_TRIES = 32


@CONTROLLERS.register("evolution")
class EvolutionController(Controller):
    """Aging evolution with crossover and a few-unit mutation; warm-started with uniform plans.

    Options (``controller_options``):

    - ``population_size`` (16): complete trials kept; the first ``population_size``
      proposals are the warm-start plans, then random plans.
    - ``tournament_size`` (4): members drawn for each parent; the best by (front, crowding) wins.
    - ``crossover_prob`` (0.5): chance a child mixes two parents unit by unit (uniform crossover).
    - ``mutation_units`` (2.0): expected number of units whose choice a mutation changes
      (at least one always changes): the ratio moves one or two grid steps (a fresh draw
      one time in ten), the granularity or criterion switches when the rule offers several.
    - ``shift_prob`` (0.2): chance a mutation instead moves *every* unit's ratio one grid
      step the same way, which walks a good allocation along the latency axis.
    - ``warm_start`` (5): uniform plans (one global ratio, spread over the range) seeded
      into the first population.

    Trial ``i`` draws from a generator seeded with ``(seed, i)``, and the population is
    rebuilt from the study's records, so a resumed run proposes what an uninterrupted one
    would have. Records of other controllers join the population like its own.
    """

    name = "evolution"

    def __init__(
        self,
        *args: Any,
        population_size: int = 16,
        tournament_size: int = 4,
        crossover_prob: float = 0.5,
        mutation_units: float = 2.0,
        shift_prob: float = 0.2,
        warm_start: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check("population_size", population_size, population_size >= 2, ">= 2")
        _check("tournament_size", tournament_size, tournament_size >= 1, ">= 1")
        _check("crossover_prob", crossover_prob, 0 <= crossover_prob <= 1, "in [0, 1]")
        _check("mutation_units", mutation_units, mutation_units > 0, "> 0")
        _check("shift_prob", shift_prob, 0 <= shift_prob <= 1, "in [0, 1]")
        _check("warm_start", warm_start, 0 <= warm_start <= population_size, f"in [0, population_size={population_size}]")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        self.mutation_units = mutation_units
        self.shift_prob = shift_prob
        self._units = list(self.space)
        self._warm = deque(warm_start_plans(self.space, warm_start))
        self._population: deque[tuple[dict[str, UnitChoice], np.ndarray]] = deque(maxlen=population_size)
        self._ranking: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._seen: set[str] = set()
        self._asked = 0
        self._next_id = 0

    # -- the ask/tell interface -------------------------------------------------------
    def ask(self) -> Proposal:
        trial_id = self._next_id
        self._next_id += 1
        rng = np.random.default_rng([self.seed, trial_id])
        plan = self._propose(rng)
        self._asked += 1
        self._seen.add(plan.key)
        return Proposal(trial_id, plan)

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._seen.add(proposal.plan.key)
        self._next_id = max(self._next_id, proposal.trial_id + 1)
        if not usable(result, self.objectives):
            return
        genome = complete_plan(proposal.plan, self.space)
        if all(genome != member for member, _ in self._population):  # a repeated plan is one member
            self._population.append((genome, minimised(result, self.objectives)))
            self._ranking = None

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Rebuild the population (the latest complete records, of any controller) and the counters."""
        for record in records:
            trial_id = record.trial_id if record.controller == self.name and record.trial_id is not None else 0
            self.tell(Proposal(trial_id, Plan.from_dict(record.plan)), record)
        self._asked += len(records)
        self._next_id = max(self._next_id, len(records))

    @property
    def population(self) -> list[Plan]:
        """The current members, oldest first."""
        return [Plan.from_dict(genome) for genome, _ in self._population]

    # -- proposing ---------------------------------------------------------------------
    def _propose(self, rng: np.random.Generator) -> Plan:
        if self._asked < self.population_size or len(self._population) < 2:
            while self._warm:
                plan = self._warm.popleft()
                if plan.key not in self._seen:
                    return plan
            return self._fresh(lambda: random_plan(self.space, rng))
        return self._fresh(lambda: self._child(rng), fallback=lambda: random_plan(self.space, rng))

    def _fresh(self, make, fallback=None) -> Plan:
        """A plan from ``make`` that no trial has evaluated, if one turns up within a few tries."""
        plan = make()
        for _ in range(MAX_TRIES):
            if plan.key not in self._seen:
                return plan
            plan = make()
        if fallback is not None:
            for _ in range(MAX_TRIES):
                plan = fallback()
                if plan.key not in self._seen:
                    return plan
        return plan

    def _child(self, rng: np.random.Generator) -> Plan:
        genome = dict(self._tournament(rng))
        if rng.random() < self.crossover_prob:
            other = self._tournament(rng)
            genome = {u: genome[u] if rng.random() < 0.5 else other[u] for u in self._units}
        return Plan.from_dict(self._mutate(genome, rng))

    def _tournament(self, rng: np.random.Generator) -> dict[str, UnitChoice]:
        if self._ranking is None:
            points = np.stack([values for _, values in self._population])
            ranks = nondominated_ranks(points)
            self._ranking = (ranks, crowding_distances(points, ranks))
        ranks, crowding = self._ranking
        size = min(self.tournament_size, len(self._population))
        drawn = rng.choice(len(self._population), size=size, replace=False)
        best = min(drawn, key=lambda i: (ranks[i], -crowding[i]))
        return self._population[int(best)][0]

    def _mutate(self, genome: dict[str, UnitChoice], rng: np.random.Generator) -> dict[str, UnitChoice]:
        genome = dict(genome)
        if rng.random() < self.shift_prob:
            step = 1 if rng.random() < 0.5 else -1
            return {u: _move_ratio(self.space[u], c, step) for u, c in genome.items()}
        chosen = [u for u in self._units if rng.random() < self.mutation_units / len(self._units)]
        if not chosen:
            chosen = [self._units[rng.integers(len(self._units))]]
        for unit in chosen:
            genome[unit] = _mutate_choice(self.space[unit], genome[unit], rng)
        return genome


def _check(key: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"controller_options.{key}: must be {rule}, but got {key}={value!r}")


def _move_ratio(us: UnitSpace, choice: UnitChoice, steps: int) -> UnitChoice:
    """The choice with its ratio moved ``steps`` grid steps (a tenth of the range when continuous)."""
    rule = us.rule
    grid = ratio_grid(rule)
    if grid is None:
        r = rule.pruning_ratio
        ratio = snap_ratio(rule, choice.pruning_ratio + steps * 0.1 * (r.high - r.low))
    else:
        ratio = grid[min(max(grid_index(rule, choice.pruning_ratio) + steps, 0), len(grid) - 1)]
    return UnitChoice(choice.granularity, ratio, choice.criterion)


def _mutate_choice(us: UnitSpace, choice: UnitChoice, rng: np.random.Generator) -> UnitChoice:
    """Change one aspect of a unit's choice: granularity, criterion, or (most often) ratio."""
    rule = us.rule
    if len(rule.granularities) > 1 and rng.random() < 1 / 3:
        options = [g for g in rule.granularities if g != choice.granularity]
        return UnitChoice(options[rng.integers(len(options))], choice.pruning_ratio, choice.criterion)
    if len(rule.criteria) > 1 and rng.random() < 1 / 6:
        options = [c for c in rule.criteria if c != choice.criterion]
        return UnitChoice(choice.granularity, choice.pruning_ratio, options[rng.integers(len(options))])
    r = rule.pruning_ratio
    if r.high == r.low:
        return choice
    u = rng.random()
    if u < 0.1:
        ratio = snap_ratio(rule, rng.uniform(r.low, r.high))
        return UnitChoice(choice.granularity, ratio, choice.criterion)
    size = 2 if u > 0.8 else 1
    step = size if rng.random() < 0.5 else -size
    moved = _move_ratio(us, choice, step)
    if moved.pruning_ratio == choice.pruning_ratio:  # at the edge of the range: go the other way
        moved = _move_ratio(us, choice, -step)
    return moved
