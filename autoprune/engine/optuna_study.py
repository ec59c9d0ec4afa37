"""The study's Optuna study: every trial record as an Optuna trial, whatever the controller.

The records (``trials.jsonl``) stay the source of truth; the Optuna study in the study's
storage (``optuna.db`` in the study directory, or ``storage:``) mirrors them so that
``optuna-dashboard`` and ``optuna.load_study`` show a readable study: objective names
(``accuracy``, ``latency_ms.DEVICE``, ...) and, per trial, the plan, its key, params, MACs,
the latency source per device, the record's state and its error. Optuna's samplers (nsga2,
tpe) ask and tell in that study themselves; the other controllers' records are added to it
as finished trials (:class:`OptunaMirror`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState

from autoprune.core.objectives import Objective, values
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import COMPLETE, STOPPED, TrialResult
from autoprune.pruning.space import UnitSpace
from autoprune.results.study import open_optuna_storage

#: The user attribute holding a trial's record number (the link between the two).
RECORD_ATTR = "record"


def distributions(space: Mapping[str, UnitSpace]) -> dict[str, BaseDistribution]:
    """One Optuna distribution per searched dimension: ``UNIT:ratio``, ``UNIT:granularity``, ``UNIT:criterion``."""
    dists: dict[str, BaseDistribution] = {}
    for name, us in space.items():
        r = us.rule.pruning_ratio
        dists[f"{name}:ratio"] = FloatDistribution(r.low, r.high, step=r.step) if r.high > r.low else CategoricalDistribution([r.low])
        if len(us.rule.granularities) > 1:
            dists[f"{name}:granularity"] = CategoricalDistribution(us.rule.granularities)
        if len(us.rule.criteria) > 1:
            dists[f"{name}:criterion"] = CategoricalDistribution(us.rule.criteria)
    return dists


def params_to_plan(params: Mapping[str, Any], space: Mapping[str, UnitSpace]) -> Plan:
    choices = {}
    for name, us in space.items():
        choices[name] = UnitChoice(
            params.get(f"{name}:granularity", us.rule.granularities[0]),
            float(params[f"{name}:ratio"]),
            params.get(f"{name}:criterion", us.rule.criteria[0]),
        )
    return Plan.from_dict(choices)


def plan_to_params(plan: Plan, space: Mapping[str, UnitSpace]) -> dict[str, Any]:
    dists = distributions(space)
    params: dict[str, Any] = {}
    for name, us in space.items():
        choice = plan[name] if name in dict(plan.choices) else UnitChoice(us.rule.granularities[0], us.rule.pruning_ratio.low)
        params[f"{name}:ratio"] = choice.pruning_ratio
        if f"{name}:granularity" in dists:
            params[f"{name}:granularity"] = choice.granularity
        if f"{name}:criterion" in dists:
            params[f"{name}:criterion"] = choice.criterion
    return params


def storage_url(study_dir: Optional[Path], storage: Optional[str]) -> Optional[str]:
    """The study's Optuna storage: ``storage`` as given, else ``optuna.db`` in the study directory."""
    if storage is not None or study_dir is None:
        return storage
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(study_dir).resolve() / 'optuna.db'}"


def create_optuna_study(
    name: str,
    objectives: Sequence[Objective],
    storage: Optional[str],
    sampler: Optional[optuna.samplers.BaseSampler] = None,
) -> optuna.Study:
    """Create (or load) the Optuna study ``name`` with one direction and one metric name per objective."""
    study = optuna.create_study(
        study_name=name,
        storage=open_optuna_storage(storage) if storage is not None else None,
        directions=[o.direction for o in objectives],
        sampler=sampler,
        load_if_exists=True,
    )
    labels = [o.label for o in objectives]
    if study.metric_names != labels:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(labels)
    return study


def record_attrs(record: TrialResult) -> dict[str, Any]:
    """The user attributes of a record's Optuna trial (JSON values, shown by optuna-dashboard)."""
    attrs: dict[str, Any] = {
        RECORD_ATTR: record.number,
        "state": record.state,
        "plan_key": record.plan_key,
        "plan": record.plan,
        "params": record.params,
        "macs": record.macs,
        "latency_source": record.latency_source,
        "controller": record.controller,
        "cached": record.cached,
    }
    if record.error:
        attrs["error"] = record.error
        attrs["traceback"] = record.traceback
    return attrs


def optuna_state(record: TrialResult) -> TrialState:
    """COMPLETE, PRUNED for a stopped trial (Optuna's word for it), FAIL otherwise."""
    return TrialState.COMPLETE if record.state == COMPLETE else TrialState.PRUNED if record.state == STOPPED else TrialState.FAIL


def recorded_numbers(study: optuna.Study) -> set[int]:
    """Record numbers the Optuna study already holds a trial for."""
    return {t.user_attrs[RECORD_ATTR] for t in study.get_trials(deepcopy=False) if RECORD_ATTR in t.user_attrs}


def add_record(study: optuna.Study, record: TrialResult, objectives: Sequence[Objective], space: Mapping[str, UnitSpace]) -> None:
    """Add a record as a finished trial; a plan outside the space's distributions is added without params."""
    state = optuna_state(record)
    trial_values = values(record, objectives) if state == TrialState.COMPLETE else None
    plan = Plan.from_dict(record.plan)
    params, dists = {}, {}
    if set(plan.to_dict()) == set(space):
        params, dists = plan_to_params(plan, space), distributions(space)
    try:
        trial = optuna.trial.create_trial(state=state, values=trial_values, params=params, distributions=dists, user_attrs=record_attrs(record))
    except ValueError:  # a value off the distribution's grid (a controller's own ratios)
        trial = optuna.trial.create_trial(state=state, values=trial_values, user_attrs=record_attrs(record))
    study.add_trial(trial)


class OptunaMirror:
    """Writes the records of a controller that does not use Optuna into the study's Optuna study."""

    def __init__(self, name: str, objectives: Sequence[Objective], space: Mapping[str, UnitSpace], storage: Optional[str]) -> None:
        self.study = create_optuna_study(name, objectives, storage)
        self.objectives = list(objectives)
        self.space = dict(space)
        self._numbers = recorded_numbers(self.study)

    def add(self, record: TrialResult) -> None:
        """Add the record unless the Optuna study has it already."""
        if record.number in self._numbers:
            return
        add_record(self.study, record, self.objectives, self.space)
        self._numbers.add(record.number)

    def sync(self, records: Sequence[TrialResult]) -> None:
        """Add the records the Optuna study lacks (those of a run killed between the two writes)."""
        for record in records:
            self.add(record)
