"""Optuna samplers as controllers: NSGA-II (the default) and multi-objective TPE.

The Optuna study lives in the study directory (SQLite by default, any Optuna storage URL
otherwise), so ``optuna-dashboard`` opens it (see :mod:`autoprune.engine.optuna_study`). The study's trial records stay the source of
truth: on resume, trials a killed run left RUNNING are settled from the records (or
failed and re-enqueued), and records from other controllers are added as finished trials.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from autoprune.core.errors import ConfigError
from autoprune.core.objectives import values
from autoprune.core.plan import Plan
from autoprune.core.records import COMPLETE, TrialResult
from autoprune.engine.controllers.base import CONTROLLERS, Controller, Proposal
from autoprune.engine.optuna_study import (
    add_record,
    create_optuna_study,
    distributions,
    optuna_state,
    params_to_plan,
    plan_to_params,
    record_attrs,
    recorded_numbers,
    storage_url,
)
from autoprune.pruning.sampling import warm_start_plans

__all__ = ["NSGA2Controller", "OptunaController", "TPEController", "distributions", "params_to_plan", "plan_to_params"]


class OptunaController(Controller):
    """Base of controllers backed by an Optuna sampler and study storage.

    ``warm_start`` (0): a new study's first trials are that many uniform plans spread over
    the ratio range, enqueued before the sampler takes over.
    """

    uses_optuna_storage = True

    def __init__(self, *args: Any, warm_start: int = 0, **kwargs: Any) -> None:
        sampler_options = {k: kwargs.pop(k) for k in list(kwargs) if k in self.sampler_options}
        super().__init__(*args, **kwargs)
        if warm_start < 0:
            raise ConfigError(f"controller_options.warm_start: must be >= 0, but got {warm_start}")
        storage = storage_url(self.study_dir, self.storage)
        self.study = create_optuna_study(self.study_name, self.objectives, storage, self.make_sampler(self.seed, **sampler_options))
        earlier = len(self.study.get_trials(deepcopy=False))
        if earlier:
            # a sampler seeded as in the first run would draw that run's plans again
            self.study.sampler = self.make_sampler(resume_seed(self.seed, earlier), **sampler_options)
        self._dists = distributions(self.space)
        self._pending: dict[int, optuna.Trial] = {}
        if warm_start and not self.study.trials:
            for plan in warm_start_plans(self.space, warm_start):
                self.study.enqueue_trial(plan_to_params(plan, self.space))

    sampler_options: tuple[str, ...] = ()

    def make_sampler(self, seed: int, **options: Any) -> optuna.samplers.BaseSampler:
        raise NotImplementedError(f"{type(self).__name__} must define make_sampler()")

    def ask(self) -> Proposal:
        trial = self.study.ask(self._dists)
        self._pending[trial.number] = trial
        return Proposal(trial.number, params_to_plan(trial.params, self.space))

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        trial = self._pending.pop(proposal.trial_id, proposal.trial_id)
        if isinstance(trial, optuna.Trial):
            for key, value in record_attrs(result).items():
                trial.set_user_attr(key, value)
        state = optuna_state(result)
        if state == TrialState.COMPLETE:
            self.study.tell(trial, values(result, self.objectives))
        else:
            self.study.tell(trial, state=state)

    def resume(self, records: Sequence[TrialResult]) -> None:
        """Settle trials a killed run left RUNNING and import records made by other controllers."""
        mine = {r.trial_id: r for r in records if _optuna_family(r.controller) and r.trial_id is not None}
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for number, t in trials.items():
            if t.state != TrialState.RUNNING:
                continue
            record = mine.get(number)
            if record is not None:
                self.tell(Proposal(number, Plan.from_dict(record.plan)), record)
            else:
                self.study.tell(number, state=TrialState.FAIL)
                self.study.enqueue_trial(dict(t.params), skip_if_exists=False)
        present = recorded_numbers(self.study)
        for record in records:
            if (record.trial_id in trials and _optuna_family(record.controller)) or record.number in present:
                continue
            if record.state == COMPLETE and set(Plan.from_dict(record.plan).to_dict()) == set(self.space):
                add_record(self.study, record, self.objectives, self.space)


def resume_seed(seed: int, trials: int) -> int:
    """The sampler seed of a run resuming a study that has ``trials`` trials: reproducible,
    and different for every point a study is resumed at."""
    return int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def _optuna_family(controller: str | None) -> bool:
    from autoprune.engine.controllers.base import CONTROLLERS

    return controller in CONTROLLERS and getattr(CONTROLLERS.get(controller), "uses_optuna_storage", False)


@CONTROLLERS.register("nsga2")
class NSGA2Controller(OptunaController):
    """Optuna's NSGA-II: non-dominated sorting with crowding distance (Deb et al., 2002)."""

    name = "nsga2"
    sampler_options = ("population_size", "mutation_prob", "crossover_prob", "swapping_prob")

    def make_sampler(self, seed: int, **options: Any) -> optuna.samplers.BaseSampler:
        options.setdefault("population_size", 16)
        return optuna.samplers.NSGAIISampler(seed=seed, **options)


@CONTROLLERS.register("tpe")
class TPEController(OptunaController):
    """Optuna's multi-objective TPE (MOTPE)."""

    name = "tpe"
    sampler_options = ("n_startup_trials", "n_ei_candidates", "multivariate")

    def make_sampler(self, seed: int, **options: Any) -> optuna.samplers.BaseSampler:
        options.setdefault("n_startup_trials", 10)
        return optuna.samplers.TPESampler(seed=seed, **options)
