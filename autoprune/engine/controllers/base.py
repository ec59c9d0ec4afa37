"""The controller interface: ask for a plan, tell its result.

Controllers only sample; :func:`autoprune.engine.trial.run_trial` does the work. Every
controller can be resumed from a study's records, so a study keeps its trials across
runs and across a change of controller.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from autoprune.core.objectives import Objective
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import TrialResult
from autoprune.core.registry import Registry
from autoprune.pruning.space import UnitSpace


@dataclass(frozen=True)
class Proposal:
    """A plan the controller wants evaluated; ``trial_id`` is the controller's own handle."""

    trial_id: int
    plan: Plan


class Controller(ABC):
    """Proposes plans from a bound search space and learns from their results.

    ``cost_model``, when given, maps a plan to its predicted costs by label
    (``latency_ms.<device>``, ``params``, ``macs``; see :mod:`autoprune.engine.cost_model`) in a
    fraction of a trial's time. Hardware-aware controllers screen candidate plans with
    it; every controller works without one.
    """

    name: str = ""
    #: Whether the controller ranks channels by the dense model's importance (the cost
    #: model's ``channel_importance``): the executor then gives it a cost model even where
    #: no cost objective can be predicted.
    uses_importance: bool = False

    def __init__(
        self,
        space: Mapping[str, UnitSpace],
        objectives: Sequence[Objective],
        seed: int = 0,
        study_dir: Optional[Path] = None,
        study_name: str = "autoprune",
        storage: Optional[str] = None,
        cost_model: Optional[Callable[[Plan], Mapping[str, float]]] = None,
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
        self.cost_model = cost_model
        self._cost_labels = [o.label for o in self.objectives if o.direction == "minimize"]
        self._dense_costs: Optional[dict[str, float]] = None
        self._has_costs: Optional[bool] = None
        self._seen: set[str] = set()
        self._structures: set[tuple[float, ...]] = set()

    @abstractmethod
    def ask(self) -> Proposal:
        """Propose the next plan to evaluate."""

    @abstractmethod
    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        """Report the result of a proposal (complete or failed)."""

    # -- the optional cost model ------------------------------------------------------
    @property
    def has_cost_model(self) -> bool:
        """Whether a cost model predicts at least one of this study's cost objectives."""
        return self.cost_model is not None and self.predicted_fraction(self._least_pruned()) is not None

    def predicted_fraction(self, plan: Plan) -> Optional[float]:
        """The plan's largest predicted cost objective relative to the dense model (None without a cost model).

        The dense model's costs are the model's ``dense`` attribute when it has one, else
        the prediction for the least pruned plan of the space.
        """
        if self.cost_model is None:
            return None
        if self._dense_costs is None:
            dense = getattr(self.cost_model, "dense", None)
            self._dense_costs = dict(dense) if dense is not None else dict(self.cost_model(self._least_pruned()))
        costs = self.cost_model(plan)
        fractions = [costs[k] / self._dense_costs[k] for k in self._cost_labels if k in costs and self._dense_costs.get(k, 0) > 0]
        return max(fractions) if fractions else None

    def predicted(self, plan: Plan, label: str) -> Optional[float]:
        """One predicted cost (``params``, ``macs``, ``latency_ms.<device>``) of the plan, if the cost model has it."""
        if self.cost_model is None:
            return None
        value = self.cost_model(plan).get(label)
        return None if value is None else float(value)

    def structure(self, plan: Plan) -> Optional[tuple[float, ...]]:
        """The plan's predicted costs as a key (None without a cost model).

        Plans with different ratios often prune to the same model (kept channels are
        rounded to the rule's multiple); they share this key, so a controller can tell a
        new network from a new spelling of one it has already had evaluated.
        """
        if self.cost_model is None:
            return None
        return tuple(round(float(v), 9) for _, v in sorted(self.cost_model(plan).items()))

    def _remember(self, plan: Plan) -> None:
        """Note a plan as proposed or evaluated (see :meth:`_is_new`)."""
        self._seen.add(plan.key)
        if self._aware:
            self._structures.add(self.structure(plan))

    def _is_new(self, plan: Plan) -> bool:
        """Neither the plan nor (with a cost model) a plan pruning to the same network was proposed before."""
        return plan.key not in self._seen and not (self._aware and self.structure(plan) in self._structures)

    @property
    def _aware(self) -> bool:
        """Whether a cost model predicts this study's costs (checked once)."""
        if self._has_costs is None:
            self._has_costs = self.has_cost_model
        return self._has_costs

    def _least_pruned(self) -> Plan:
        return Plan.from_dict({name: UnitChoice(us.rule.granularities[0], us.rule.pruning_ratio.low, us.rule.criteria[0]) for name, us in self.space.items()})

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Catch up with a study's earlier trials (by default, tell them in order)."""
        for record in records:
            self.tell(Proposal(record.trial_id if record.trial_id is not None else record.number, Plan.from_dict(record.plan)), record)


CONTROLLERS: Registry[type[Controller]] = Registry("controller", "autoprune.controllers")

#: Constructor arguments the executor passes itself; not options of a config.
_BOUND = {"self", "space", "objectives", "seed", "study_dir", "study_name", "cost_model"}


def option_names(cls: type[Controller]) -> set[str]:
    """The ``controller_options`` keys ``cls`` accepts: the keyword arguments of every
    ``__init__`` along its class chain (and of an Optuna sampler it wraps), so a config can
    be checked before anything runs."""
    import inspect

    names = set(getattr(cls, "sampler_options", ()))
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name not in _BOUND:
                names.add(param.name)
        if klass is Controller:
            break
    return names


