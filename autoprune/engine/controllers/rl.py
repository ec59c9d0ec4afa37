"""An AMC-style reinforcement-learning controller: a DDPG agent walks the prunable units one by
one and picks each unit's pruning ratio (and granularity and criterion where the rule offers
several), conditioned on a resource budget that changes from episode to episode so that one
agent covers the whole accuracy-latency front.

AMC (He et al., 2018) trains a DDPG agent (Lillicrap et al., 2016) whose episode is one pass
over the layers and whose reward is the accuracy of the compressed network under a resource
constraint. One episode here is one trial.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from autoprune.core.errors import ConfigError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import TrialResult
from autoprune.engine.controllers.base import CONTROLLERS, Controller, Proposal
from autoprune.engine.controllers.evolution import MAX_TRIES
from autoprune.engine.controllers.selection import usable
from autoprune.pruning.sampling import complete_plan, snap_ratio, warm_start_plans
from autoprune.pruning.space import UnitSpace

GOLDEN = (math.sqrt(5) - 1) / 2
#: Noisier fitted rollouts tried when a fitted plan repeats an earlier one, before plain ones.
FIT_TRIES = 3

#: Columns of the per-unit state before the plan-so-far block.
STATIC = ("position", "is_linear", "channels", "layers", "consumers", "ratio_low", "ratio_high", "options")
DYNAMIC = ("reduced", "rest", "previous_ratio", "budget", "anchor")
BUDGET = len(STATIC) + DYNAMIC.index("budget")
ANCHOR = len(STATIC) + DYNAMIC.index("anchor")
#: Where the anchor curve (cost fraction against mean normalised ratio) is tabulated.
ANCHOR_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class Episode:
    """One evaluated plan as the agent saw it: states, executed actions, outcome, target budget.

    ``budget`` is None for plans the agent did not choose (warm start, other controllers):
    their own cost fraction is then their target (hindsight), so they teach the critic
    without a penalty.
    """

    states: torch.Tensor  # (units, features), budget and anchor columns left at 0
    actions: torch.Tensor  # (units, action dims), ratio entry filled in per budget when replayed
    ratios: torch.Tensor  # (units,) each unit's ratio, normalised to its rule's range
    quality: float
    costs: np.ndarray
    budget: Optional[float]


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


@CONTROLLERS.register("rl")
class RLController(Controller):
    """AMC-style DDPG agent over the units of the search space.

    **Episode.** One pass over the units in model order; one episode is one trial.

    **State** of unit ``t`` (all scaled to about [0, 1]): its position ``t/(T-1)``; whether it
    is a linear layer; its channels, coupled layers and consumer layers (each over the
    model's largest); its rule's ratio range and number of granularity options; the share
    of the model's channel-weight already removed by the earlier units (``reduced``, with
    weights ``channels x (layers + consumers)``) and the share still to decide (``rest``);
    the previous unit's ratio; the episode's budget ``b`` and its anchor ``m(b)`` (below);
    and the plan so far (the ratio, and granularity where there are several, of every
    earlier unit, zeros after), which makes the state Markov.

    **Action** in ``[0, 1]^d``. The first entry is the unit's ratio as a deviation from
    the budget's *anchor*: the unit's position in its ratio range is
    ``m(b) + (a - 0.5) * 2 * spread`` (clipped to the range, snapped to the grid), where
    ``m(b)`` is the mean normalised ratio that a plan needs to reach cost fraction ``b``,
    read off a quadratic fit of cost fraction against mean ratio over every evaluated plan.
    So an untrained agent already proposes plans near the budget (uniform pruning plus
    noise) and learning decides which units give up more or fewer channels; this plays the
    part of AMC's action clipping, which keeps every episode within the constraint, without
    needing a cost model of each layer. With a cost model (:mod:`autoprune.engine.cost_model`,
    passed by the executor when a device has a lookup table) the anchor is instead
    bisected per episode (``fit_steps`` halvings, about a tenth of a second of prediction
    each) to the least pruning whose plan is predicted within the budget, so every episode
    meets its budget as in AMC and none prunes more than it needs to; and a plan that
    prunes to the same network as an earlier one (same predicted costs) counts as a repeat. Where a rule offers several granularities (or
    criteria), one score per option follows and the highest wins. Exploration adds truncated
    Gaussian noise of scale ``noise``, multiplied by ``noise_decay`` every episode after
    the warm start (AMC: 0.5 and 0.95). The executed (snapped) action is what the agent
    learns from.

    **Reward**, given once at the end of the episode (discount 1, as in AMC): the budget
    ``b`` is a fraction of every cost objective (latency per device, and params or MACs if
    searched), relative to the largest cost seen so far (about the dense model). With
    accuracy ``a`` and costs ``c_k``::

        R = -log(1 - a) - penalty * sum_k max(0, c_k / (b * ref_k) - 1)

    AMC's resource-constrained reward with a soft constraint: any plan within budget scores
    its accuracy (on a log-error scale, so one point at 93% counts more than one point at
    50%), and a plan over budget loses ``penalty`` per unit of relative excess. Episode
    ``i`` targets ``b_i = b_min + (1 - b_min) * frac(u0 + 0.618 i)``, a low-discrepancy sweep
    between the cheapest plan seen and the dense model: the budget is part of the state, so
    one agent learns the whole front (an epsilon-constraint scalarisation, which reaches
    non-convex parts of a front a weighted sum cannot). Because the budget does not change
    what a plan is, every stored episode is also replayed with other budgets (``relabel``,
    as hindsight experience replay does), so each trial teaches every budget.

    **Learning.** DDPG: actor ``mu(s)`` and critic ``Q(s, a)`` (two hidden layers of
    ``hidden`` units), target networks updated softly with ``tau``, critic target
    ``R`` at the last unit and ``Q'(s', mu'(s'))`` before it; ``updates`` Adam steps on
    batches of ``batch_size`` transitions after every trial. Rewards are centred on the mean
    accuracy term of the buffer (AMC subtracts a moving average).

    **Warm start.** The first ``warm_start`` trials are uniform plans spread over the ratio
    range; they and any records of other controllers fill the replay buffer.

    **Options** (``controller_options``, defaults in brackets): ``warm_start`` (5),
    ``hidden`` (64), ``actor_lr`` (1e-3), ``critic_lr`` (1e-3), ``tau`` (0.05),
    ``batch_size`` (64), ``updates`` (64 per trial), ``noise`` (0.5), ``noise_decay``
    (0.95), ``penalty`` (4.0), ``relabel`` (0.5, the share of replayed transitions given
    another budget), ``spread`` (0.5, how far from the anchor an action reaches, as a
    fraction of the ratio range). AMC used 300 hidden units, learning rates 1e-4 / 1e-3,
    tau 0.01 and 100 random warm-up episodes out of 400; a search of tens of trials needs
    the smaller, faster-moving networks above. ``fit_steps`` (6) applies only with a
    cost model.

    Trial ``i`` draws its noise from a generator seeded with ``(seed, i)`` and training is
    seeded by the number of episodes, so a resumed run (which replays the records in order)
    proposes what an uninterrupted one would have.
    """

    name = "rl"

    def __init__(
        self,
        *args: Any,
        warm_start: int = 5,
        hidden: int = 64,
        actor_lr: float = 1e-3,
        critic_lr: float = 1e-3,
        tau: float = 0.05,
        batch_size: int = 64,
        updates: int = 64,
        noise: float = 0.5,
        noise_decay: float = 0.95,
        penalty: float = 4.0,
        relabel: float = 0.5,
        spread: float = 0.5,
        fit_steps: int = 6,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for key, value, ok, rule in (
            ("warm_start", warm_start, warm_start >= 0, ">= 0"),
            ("hidden", hidden, hidden >= 1, ">= 1"),
            ("actor_lr", actor_lr, actor_lr > 0, "> 0"),
            ("critic_lr", critic_lr, critic_lr > 0, "> 0"),
            ("tau", tau, 0 < tau <= 1, "in (0, 1]"),
            ("batch_size", batch_size, batch_size >= 1, ">= 1"),
            ("updates", updates, updates >= 0, ">= 0"),
            ("noise", noise, noise >= 0, ">= 0"),
            ("noise_decay", noise_decay, 0 < noise_decay <= 1, "in (0, 1]"),
            ("penalty", penalty, penalty >= 0, ">= 0"),
            ("relabel", relabel, 0 <= relabel <= 1, "in [0, 1]"),
            ("spread", spread, 0 < spread <= 1, "in (0, 1]"),
            ("fit_steps", fit_steps, fit_steps >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"controller_options.{key}: must be {rule}, but got {key}={value!r}")
        if not any(o.direction == "maximize" for o in self.objectives):
            raise ConfigError("objectives: the rl controller needs one maximised objective (accuracy)")
        self.warm_start, self.noise, self.noise_decay = warm_start, noise, noise_decay
        self.tau, self.batch_size, self.updates = tau, batch_size, updates
        self.penalty, self.relabel, self.spread, self.fit_steps = penalty, relabel, spread, fit_steps
        self._quality = next(o for o in self.objectives if o.direction == "maximize")
        self._costs = [o for o in self.objectives if o.direction == "minimize"]
        self._units = list(self.space)
        self._static = _static_features(self.space)
        self._granularities = max(len(us.rule.granularities) for us in self.space.values())
        self._criteria = max(len(us.rule.criteria) for us in self.space.values())
        self.action_dims = 1 + (self._granularities if self._granularities > 1 else 0) + (self._criteria if self._criteria > 1 else 0)
        self.state_dims = len(STATIC) + len(DYNAMIC) + len(self._units) * (2 if self._granularities > 1 else 1)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.actor = nn.Sequential(_mlp(self.state_dims, hidden, self.action_dims), nn.Sigmoid())
            self.critic = _mlp(self.state_dims + self.action_dims, hidden, 1)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optimiser = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optimiser = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self._warm = warm_start_plans(self.space, warm_start)
        self._warm_keys = {p.key for p in self._warm}
        self._offset = float(np.random.default_rng([self.seed, 7]).random())
        self._episodes: list[Episode] = []
        self._budgets: dict[int, float] = {}
        self._episode_keys: set[str] = set()
        self._next_id = 0
        self._resuming = False

    # -- the ask/tell interface -------------------------------------------------------
    def ask(self) -> Proposal:
        trial_id = self._next_id
        self._next_id += 1
        while self._warm:
            plan = self._warm.pop(0)
            if self._is_new(plan):
                self._remember(plan)
                return Proposal(trial_id, plan)
        rng = np.random.default_rng([self.seed, trial_id])
        budget = self.budget_for(trial_id)
        sigma = self.noise * self.noise_decay ** max(0, trial_id - self.warm_start)
        fit = self._aware
        plan = self._fitted(budget, sigma, rng) if fit else self._rollout(budget, sigma, rng)
        for attempt in range(MAX_TRIES):
            if self._is_new(plan):
                break
            sigma = max(2 * sigma, 0.05)
            if fit and attempt < FIT_TRIES:
                plan = self._fitted(budget, min(sigma, 1.0), rng)
            else:
                plan = self._rollout(budget, min(sigma, 1.0), rng)
        self._budgets[trial_id] = budget
        self._remember(plan)
        return Proposal(trial_id, plan)

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        self._remember(proposal.plan)
        self._next_id = max(self._next_id, proposal.trial_id + 1)
        budget = self._budgets.pop(proposal.trial_id, None)
        if budget is None and self._resuming and result.controller == self.name and not self._is_warm(proposal):
            budget = self.budget_for(proposal.trial_id)
        if not usable(result, self.objectives) or proposal.plan.key in self._episode_keys:
            return
        self._episode_keys.add(proposal.plan.key)
        choices = complete_plan(proposal.plan, self.space)
        states, actions, ratios = self._encode(choices)
        quality = float(self._quality.value(result))
        costs = np.array([o.value(result) for o in self._costs], dtype=float)
        self._episodes.append(Episode(states, actions, ratios, quality, costs, budget))
        self._train()

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Replay the study's records in order: the buffer and the networks end as they were."""
        self._resuming = True
        try:
            for record in records:
                trial_id = record.trial_id if record.controller == self.name and record.trial_id is not None else -1
                self.tell(Proposal(trial_id, Plan.from_dict(record.plan)), record)
        finally:
            self._resuming = False
        self._next_id = max(self._next_id, len(records))

    @property
    def replay_size(self) -> int:
        """Distinct evaluated plans in the replay buffer."""
        return len(self._episodes)

    # -- the policy ------------------------------------------------------------------
    def budget_for(self, trial_id: int) -> float:
        """The cost fraction episode ``trial_id`` targets (see the class docstring)."""
        low = self._budget_floor()
        return low + (1.0 - low) * ((self._offset + GOLDEN * trial_id) % 1.0)

    def anchor(self, budget: float) -> float:
        """The mean normalised ratio a plan needs to reach cost fraction ``budget`` (see the class docstring)."""
        curve = self._anchor_curve()
        return float(_lookup(torch.as_tensor(curve), torch.tensor([budget], dtype=torch.float64))[0])

    def greedy_plan(self, budget: float) -> Plan:
        """The plan the actor picks, without noise, for a cost fraction ``budget`` of the dense model."""
        return self._rollout(budget, 0.0, np.random.default_rng(0))

    def _fitted(self, budget: float, sigma: float, rng: np.random.Generator) -> Plan:
        """The episode's plan with its anchor moved until the cost model predicts it within ``budget``.

        AMC clips each action so that the episode can still meet its resource budget; here
        the anchor (the mean ratio every action is a deviation from) is bisected instead:
        the least pruning whose plan, with this episode's noise, is predicted within budget
        (the most pruning when none is). Each step replays the same noise stream.
        """
        state = rng.bit_generator.state
        tried: dict[float, Plan] = {}

        def rollout(anchor: float) -> Plan:
            rng.bit_generator.state = state
            tried[anchor] = self._rollout(budget, sigma, rng, anchor)
            return tried[anchor]

        low, high = 0.0, 1.0
        start = self.anchor(budget)
        if self.predicted_fraction(rollout(start)) <= budget:
            high = start
        else:
            low = start
            if self.predicted_fraction(rollout(high)) > budget:
                return tried[high]
        for _ in range(self.fit_steps):
            middle = (low + high) / 2
            if self.predicted_fraction(rollout(middle)) <= budget:
                high = middle
            else:
                low = middle
        return tried[high]

    def _rollout(self, budget: float, sigma: float, rng: np.random.Generator, anchor: Optional[float] = None) -> Plan:
        choices: dict[str, UnitChoice] = {}
        anchor = self.anchor(budget) if anchor is None else anchor
        walk = _Walk(self._static, self._units, self._granularities > 1)
        for t, name in enumerate(self._units):
            us = self.space[name]
            state = torch.as_tensor(walk.state(t, budget, anchor), dtype=torch.float32)
            with torch.no_grad():
                mean = self.actor(state[None])[0].numpy().astype(float)
            action = _truncated_normal(mean, sigma, rng) if sigma > 0 else mean
            choice = self._decode(us, action, anchor)
            choices[name] = choice
            walk.step(t, _normalised(us, choice), self._granularity_code(us, choice))
        return Plan.from_dict(choices)

    def _decode(self, us: UnitSpace, action: np.ndarray, anchor: float) -> UnitChoice:
        rule = us.rule
        r = rule.pruning_ratio
        position = min(max(anchor + (float(action[0]) - 0.5) * 2 * self.spread, 0.0), 1.0)
        ratio = snap_ratio(rule, r.low + position * (r.high - r.low))
        at = 1
        granularity = rule.granularities[0]
        if self._granularities > 1:
            granularity = rule.granularities[int(np.argmax(action[at : at + len(rule.granularities)]))]
            at += self._granularities
        criterion = rule.criteria[0]
        if self._criteria > 1:
            criterion = rule.criteria[int(np.argmax(action[at : at + len(rule.criteria)]))]
        return UnitChoice(granularity, ratio, criterion)

    def _options(self, us: UnitSpace, choice: UnitChoice) -> np.ndarray:
        """The option scores that yield ``choice`` exactly (one-hot); the ratio entry is left at 0."""
        action = np.zeros(self.action_dims)
        at = 1
        if self._granularities > 1:
            action[at + us.rule.granularities.index(choice.granularity)] = 1.0
            at += self._granularities
        if self._criteria > 1:
            action[at + us.rule.criteria.index(choice.criterion)] = 1.0
        return action

    def _granularity_code(self, us: UnitSpace, choice: UnitChoice) -> float:
        options = us.rule.granularities
        return options.index(choice.granularity) / max(len(options) - 1, 1)

    def _encode(self, choices: dict[str, UnitChoice]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        walk = _Walk(self._static, self._units, self._granularities > 1)
        states, actions, ratios = [], [], []
        for t, name in enumerate(self._units):
            us, choice = self.space[name], choices[name]
            states.append(walk.state(t, 0.0, 0.0))
            actions.append(self._options(us, choice))
            ratios.append(_normalised(us, choice))
            walk.step(t, ratios[-1], self._granularity_code(us, choice))
        as_tensor = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
        return as_tensor(states), as_tensor(actions), as_tensor(ratios)

    def _is_warm(self, proposal: Proposal) -> bool:
        return proposal.trial_id < self.warm_start and proposal.plan.key in self._warm_keys

    # -- learning --------------------------------------------------------------------
    def _references(self) -> np.ndarray:
        """Per cost objective, the largest value seen (about the dense model's)."""
        costs = np.stack([e.costs for e in self._episodes]) if self._episodes else np.ones((1, len(self._costs)))
        return np.maximum(costs.max(axis=0), 1e-12)

    def _fractions(self) -> np.ndarray:
        """Each episode's cost fraction: its largest cost relative to the references."""
        if not self._costs:
            return np.ones(len(self._episodes))
        return (np.stack([e.costs for e in self._episodes]) / self._references()).max(axis=1)

    def _budget_floor(self) -> float:
        """The smallest cost fraction any evaluated plan reached (0.25 before any)."""
        if not self._episodes or not self._costs:
            return 0.25
        return float(min(self._fractions().min(), 0.99))

    def _anchor_curve(self) -> np.ndarray:
        """Predicted cost fraction at each mean normalised ratio of :data:`ANCHOR_GRID`.

        A least-squares quadratic of cost fraction against each evaluated plan's mean
        normalised ratio (weighted by channel-weight), made non-increasing; before two
        plans are known, a straight line from 1 (dense) to the budget floor.
        """
        floor = self._budget_floor()
        if len(self._episodes) < 2 or not self._costs:
            return 1.0 - (1.0 - floor) * ANCHOR_GRID
        weights = self._static[:, -1] / self._static[:, -1].sum()
        means = np.array([float(e.ratios.numpy() @ weights) for e in self._episodes])
        degree = min(2, len(np.unique(np.round(means, 6))) - 1)
        if degree < 1:
            return 1.0 - (1.0 - floor) * ANCHOR_GRID
        coefficients = np.polyfit(means, self._fractions(), degree)
        return np.minimum.accumulate(np.polyval(coefficients, ANCHOR_GRID))

    def _train(self) -> None:
        if self.updates == 0 or len(self._episodes) < 2:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + len(self._episodes))
        states = torch.stack([e.states for e in self._episodes])
        actions = torch.stack([e.actions for e in self._episodes])
        ratios = torch.stack([e.ratios for e in self._episodes])
        refs = self._references()
        costs = torch.as_tensor(np.stack([e.costs for e in self._episodes]) / refs, dtype=torch.float32)
        quality = torch.as_tensor([-math.log(max(1.0 - e.quality, 1e-3)) for e in self._episodes], dtype=torch.float32)
        baseline = quality.mean()
        achieved = torch.as_tensor(self._fractions(), dtype=torch.float32)
        own = torch.tensor([e.budget if e.budget is not None else float("nan") for e in self._episodes])
        own = torch.where(torch.isnan(own), achieved, own)
        curve = torch.as_tensor(self._anchor_curve())
        floor = self._budget_floor()
        n_episodes, n_units = states.shape[:2]
        for _ in range(self.updates):
            flat = torch.randint(0, n_episodes * n_units, (self.batch_size,), generator=generator)
            episode, unit = flat // n_units, flat % n_units
            relabelled = torch.rand(self.batch_size, generator=generator) < self.relabel
            drawn = floor + (1.0 - floor) * torch.rand(self.batch_size, generator=generator)
            budget = torch.where(relabelled, drawn, own[episode])
            anchor = _lookup(curve, budget.double()).float()
            following_unit = torch.clamp(unit + 1, max=n_units - 1)
            state, following = states[episode, unit].clone(), states[episode, following_unit].clone()
            for s in (state, following):
                s[:, BUDGET], s[:, ANCHOR] = budget, anchor
            action = actions[episode, unit].clone()
            action[:, 0] = torch.clamp(0.5 + (ratios[episode, unit] - anchor) / (2 * self.spread), 0.0, 1.0)
            last = unit == n_units - 1
            excess = torch.clamp(costs[episode] / budget[:, None] - 1.0, min=0.0).sum(dim=1)
            reward = quality[episode] - baseline - self.penalty * excess
            with torch.no_grad():
                bootstrap = self.critic_target(torch.cat([following, self.actor_target(following)], dim=1))[:, 0]
                target = torch.where(last, reward, bootstrap)
            critic_loss = nn.functional.mse_loss(self.critic(torch.cat([state, action], dim=1))[:, 0], target)
            self.critic_optimiser.zero_grad()
            critic_loss.backward()
            self.critic_optimiser.step()
            actor_loss = -self.critic(torch.cat([state, self.actor(state)], dim=1)).mean()
            self.actor_optimiser.zero_grad()
            actor_loss.backward()
            self.actor_optimiser.step()
            _soft_update(self.actor_target, self.actor, self.tau)
            _soft_update(self.critic_target, self.critic, self.tau)


class _Walk:
    """The state of the walk over the units as ratios are decided one by one."""

    def __init__(self, static: np.ndarray, units: list[str], with_granularity: bool) -> None:
        self.static = static
        self.weights = static[:, -1]
        self.total = float(self.weights.sum()) or 1.0
        n = len(units)
        self.ratios = np.zeros(n)
        self.granularity = np.zeros(n) if with_granularity else None
        self.previous = 0.0
        self.reduced = 0.0

    def state(self, t: int, budget: float, anchor: float) -> np.ndarray:
        rest = float(self.weights[t + 1 :].sum()) / self.total
        dynamic = [self.reduced / self.total, rest, self.previous, budget, anchor]
        parts = [self.static[t, : len(STATIC)], dynamic, self.ratios]
        if self.granularity is not None:
            parts.append(self.granularity)
        return np.concatenate(parts)

    def step(self, t: int, ratio: float, granularity_code: float) -> None:
        self.ratios[t] = ratio
        if self.granularity is not None:
            self.granularity[t] = granularity_code
        self.reduced += self.weights[t] * ratio
        self.previous = ratio


def _static_features(space: dict[str, UnitSpace]) -> np.ndarray:
    """Per unit: the :data:`STATIC` columns, then its channel-weight (for ``reduced``/``rest``)."""
    units = [us.unit for us in space.values()]
    n = len(units)
    max_channels = max(u.channels for u in units)
    max_layers = max(len(u.layers) for u in units)
    max_consumers = max(max(len(u.consumers) for u in units), 1)
    max_options = max(len(us.rule.granularities) for us in space.values())
    rows = []
    for t, us in enumerate(space.values()):
        u, r = us.unit, us.rule.pruning_ratio
        rows.append(
            [
                t / max(n - 1, 1),
                float(u.kind == "linear"),
                u.channels / max_channels,
                len(u.layers) / max_layers,
                len(u.consumers) / max_consumers,
                r.low,
                r.high,
                len(us.rule.granularities) / max_options,
                float(u.channels * (len(u.layers) + len(u.consumers))),
            ]
        )
    return np.array(rows, dtype=float)


def _normalised(us: UnitSpace, choice: UnitChoice) -> float:
    """The choice's ratio as a position in its rule's range (0 = least, 1 = most pruning)."""
    r = us.rule.pruning_ratio
    return 0.0 if r.high == r.low else (choice.pruning_ratio - r.low) / (r.high - r.low)


def _lookup(curve: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """For each budget, the first grid position whose predicted cost fraction is within it."""
    grid = torch.as_tensor(ANCHOR_GRID, dtype=torch.float64)
    within = curve[None, :] <= budget[:, None]
    first = torch.where(within.any(dim=1), within.double().argmax(dim=1), torch.full_like(budget, len(grid) - 1, dtype=torch.long))
    return grid[first]


def _truncated_normal(mean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Draws from N(mean, sigma) restricted to [0, 1] (by rejection, then clipping)."""
    sample = mean + sigma * rng.standard_normal(mean.shape)
    for _ in range(16):
        outside = (sample < 0) | (sample > 1)
        if not outside.any():
            break
        sample[outside] = mean[outside] + sigma * rng.standard_normal(int(outside.sum()))
    return np.clip(sample, 0.0, 1.0)


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.mul_(1 - tau).add_(s, alpha=tau)
