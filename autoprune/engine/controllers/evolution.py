"""Regularised (aging) evolution over plans, with multi-objective tournament selection.

Regularised evolution (Real et al., 2019) keeps a population of the most recent complete
trials: every new child is made from parents picked by tournament, and when the
population is full the *oldest* member leaves, whatever its score, so no lucky early plan
rules for ever. Here the tournament ranks plans as NSGA-II does (Deb et al., 2002): by
non-dominated front, then by crowding distance, which spreads the population along the
accuracy-latency front instead of collapsing onto one point.

With a cost model (:mod:`autoprune.engine.cost_model`) the controller is hardware-aware: most
children aim at a target speedup. Several candidate children are made from parents that
already meet the target, their costs are predicted (a fraction of a trial's time), and the
one inside the target band that keeps the most parameters is proposed, following the
observation that at equal latency the plan that removes less tends to be more accurate.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Optional, Sequence

import numpy as np

from autoprune.core.errors import ConfigError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import TrialResult
from autoprune.engine.controllers.base import CONTROLLERS, Controller, Proposal
from autoprune.engine.controllers.selection import (
    crowding_distances,
    minimised,
    nondominated_ranks,
    usable,
)
from autoprune.pruning.sampling import (
    complete_plan,
    grid_index,
    ratio_grid,
    snap_ratio,
    uniform_plans,
    warm_start_plans,
)
from autoprune.pruning.space import UnitSpace, random_plan

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

    Used only when the executor passes a cost model (otherwise ignored):

    - ``targets`` ([1.5, 2.0, 3.0]): speedups over the dense model (1 / predicted cost
      fraction) that children aim at; targets faster than any plan predicted so far are
      skipped.
    - ``target_prob`` (0.75): chance a proposal aims at a target (drawn uniformly among the
      reachable ones); the others are ordinary children.
    - ``candidates`` (16): candidate children screened with the cost model per targeted
      proposal (children of members that meet the target; while fewer than two do, half
      are random plans).
    - ``band`` (0.1): a candidate fills target ``t`` when its predicted speedup is in
      ``[t, t * (1 + band)]``; among those the one with the most parameters left wins
      (the least pruning). When none fills it, the slowest candidate that still meets the
      target, else the fastest one.

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
        targets: Sequence[float] = (1.5, 2.0, 3.0),
        target_prob: float = 0.75,
        candidates: int = 16,
        band: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check("population_size", population_size, population_size >= 2, ">= 2")
        _check("tournament_size", tournament_size, tournament_size >= 1, ">= 1")
        _check("crossover_prob", crossover_prob, 0 <= crossover_prob <= 1, "in [0, 1]")
        _check("mutation_units", mutation_units, mutation_units > 0, "> 0")
        _check("shift_prob", shift_prob, 0 <= shift_prob <= 1, "in [0, 1]")
        _check("warm_start", warm_start, 0 <= warm_start <= population_size, f"in [0, population_size={population_size}]")
        targets = [float(t) for t in ([targets] if isinstance(targets, (int, float)) else targets)]
        _check("targets", targets, all(t > 1 for t in targets), "speedups above 1")
        _check("target_prob", target_prob, 0 <= target_prob <= 1, "in [0, 1]")
        _check("candidates", candidates, candidates >= 1, ">= 1")
        _check("band", band, band > 0, "> 0")
        self.targets, self.target_prob, self.candidates, self.band = sorted(targets), target_prob, candidates, band
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        self.mutation_units = mutation_units
        self.shift_prob = shift_prob
        self._units = list(self.space)
        self._quality = next((i for i, o in enumerate(self.objectives) if o.direction == "maximize"), 0)
        self._warm = deque(warm_start_plans(self.space, warm_start))
        self._population: deque[tuple[dict[str, UnitChoice], np.ndarray]] = deque(maxlen=population_size)
        self._ranking: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._asked = 0
        self._next_id = 0

    # -- the ask/tell interface -------------------------------------------------------
    def ask(self) -> Proposal:
        trial_id = self._next_id
        self._next_id += 1
        rng = np.random.default_rng([self.seed, trial_id])
        plan = self._propose(rng)
        self._asked += 1
        self._remember(plan)
        return Proposal(trial_id, plan)

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._remember(proposal.plan)
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
        initial = self._asked < self.population_size or len(self._population) < 2
        if initial:
            while self._warm:
                plan = self._warm.popleft()
                if self._is_new(plan):
                    return plan
        target = self._target(rng)
        if target is not None:
            return self._targeted(target, rng, initial)
        if initial:
            return self._fresh(lambda: random_plan(self.space, rng))
        return self._fresh(lambda: self._child(rng), fallback=lambda: random_plan(self.space, rng))

    # -- aiming at a speedup with the cost model ------------------------------------------
    def _target(self, rng: np.random.Generator) -> Optional[float]:
        """The speedup this proposal aims at, or None (no cost model, or an ordinary child)."""
        if self.cost_model is None or not self.targets or rng.random() >= self.target_prob or not self._aware:
            return None
        fastest = max(self._speedup(p) for p in uniform_plans(self.space))
        fastest = max([fastest] + [self._speedup(Plan.from_dict(g)) for g, _ in self._population])
        reachable = [t for t in self.targets if t <= fastest]
        return reachable[rng.integers(len(reachable))] if reachable else None

    def _speedup(self, plan: Plan) -> float:
        fraction = self.predicted_fraction(plan)
        return 1.0 / fraction if fraction else 1.0

    def _targeted(self, target: float, rng: np.random.Generator, initial: bool) -> Plan:
        """The candidate that best fills the band above ``target`` (see the class docstring)."""
        feasible = [i for i, (g, _) in enumerate(self._population) if self._speedup(Plan.from_dict(g)) >= target]
        fresh = lambda: random_plan(self.space, rng)  # noqa: E731
        if initial:
            make = fresh
        elif len(feasible) >= 2:
            make = lambda: self._child(rng, feasible)  # noqa: E731
        else:  # hardly any member meets the target yet: half the candidates are random plans
            make = lambda: self._child(rng) if rng.random() < 0.5 else fresh()  # noqa: E731
        pool: dict[str, Plan] = {}
        for _ in range(self.candidates * 4):
            plan = make()
            if self._is_new(plan):
                pool.setdefault(plan.key, plan)
            if len(pool) >= self.candidates:
                break
        if not pool:
            return self._fresh(make, fallback=fresh)
        scored = [(self._speedup(p), self.predicted(p, "params") or 0.0, p) for p in pool.values()]
        inside = [c for c in scored if target <= c[0] <= target * (1 + self.band)]
        if inside:
            return max(inside, key=lambda c: c[1])[2]
        meeting = [c for c in scored if c[0] >= target]
        if meeting:
            return min(meeting, key=lambda c: c[0])[2]
        return max(scored, key=lambda c: c[0])[2]

    def _fresh(self, make, fallback=None) -> Plan:
        """A plan from ``make`` that no trial has evaluated, if one turns up within a few tries."""
        plan = make()
        for _ in range(MAX_TRIES):
            if self._is_new(plan):
                return plan
            plan = make()
        if fallback is not None:
            for _ in range(MAX_TRIES):
                plan = fallback()
                if self._is_new(plan):
                    return plan
        return plan

    def _child(self, rng: np.random.Generator, among: Optional[Sequence[int]] = None) -> Plan:
        genome = dict(self._tournament(rng, among))
        if rng.random() < self.crossover_prob:
            other = self._tournament(rng, among)
            genome = {u: genome[u] if rng.random() < 0.5 else other[u] for u in self._units}
        return Plan.from_dict(self._mutate(genome, rng))

    def _tournament(self, rng: np.random.Generator, among: Optional[Sequence[int]] = None) -> dict[str, UnitChoice]:
        """A parent by tournament; restricted to the members ``among`` (when two or more), it is
        the drawn member best on the maximised objective (accuracy), as those all meet the target."""
        if among is not None and len(among) >= 2:
            size = min(self.tournament_size, len(among))
            drawn = rng.choice(np.asarray(among), size=size, replace=False)
            best = min(drawn, key=lambda i: self._population[int(i)][1][self._quality])
            return self._population[int(best)][0]
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
