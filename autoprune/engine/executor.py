"""The local executor: ask the controller, run the trial, record it, tell the controller.

Re-running the same study resumes it: earlier records are kept and told to the
controller, and only the remaining budget is run. A plan evaluated before is not
evaluated again: the controller is told its earlier result, and the repeat does not
count against the budget.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator, Optional

from tqdm.auto import tqdm

from autoprune.core.config import Config
from autoprune.core.errors import ConfigError
from autoprune.core.objectives import build_objectives
from autoprune.core.records import FAILED, STOPPED, TrialResult
from autoprune.engine.context import build_context, dense_baseline
from autoprune.engine.controllers import CONTROLLERS, Controller, Proposal
from autoprune.engine.controllers.base import option_names
from autoprune.engine.cost_model import CostModel, CostModelFn, cost_model_for
from autoprune.engine.loop import TrialBook, run_loop
from autoprune.engine.optuna_study import OptunaMirror, storage_url
from autoprune.engine.stopping import (
    DominanceRule,
    TrialMonitor,
    load_reports,
)
from autoprune.engine.trial import TrialContext, run_trial
from autoprune.pruning.space import UnitSpace
from autoprune.results.front import device_front
from autoprune.results.study import Study, study_lock

log = logging.getLogger(__name__)



def check_controller(config: Config) -> None:
    """The config names a registered controller, with options it takes (checked before anything is written)."""
    if config.controller not in CONTROLLERS:
        raise ConfigError(f"controller: unknown controller {config.controller!r}; known: {', '.join(CONTROLLERS.names())}")
    known = option_names(CONTROLLERS.get(config.controller))
    unknown = sorted(set(config.controller_options) - known)
    if unknown:
        raise ConfigError(
            f"controller_options: unknown option {unknown[0]!r} for controller {config.controller!r}; known: {', '.join(sorted(known)) or 'none'}"
        )


def make_controller(
    config: Config,
    space: dict[str, UnitSpace],
    study: Study,
    context: Optional[TrialContext] = None,
    cost_model: Optional[CostModelFn] = None,
) -> Controller:
    """The config's controller, bound to the study's storage and objectives.

    With a trial ``context`` the controller also gets a cost model of it (predicted
    latency per lookup-table device, params, MACs; see :mod:`autoprune.engine.cost_model`),
    unless ``cost_model`` is given.
    """
    check_controller(config)
    options = dict(config.controller_options)
    if config.storage is not None:
        options.setdefault("storage", config.storage)
    objectives = build_objectives(config.objectives, config.devices)
    cls = CONTROLLERS.get(config.controller)
    if cost_model is None and context is not None:
        cost_model = cost_model_for(context, objectives)
        if cost_model is None and cls.uses_importance:
            cost_model = CostModel(context, devices=[])  # params and MACs only: it is there for the channel importance
    try:
        return cls(
            space,
            objectives,
            seed=config.seed,
            study_dir=study.path,
            study_name=config.name,
            cost_model=cost_model,
            **options,
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"controller_options: {config.controller!r} refused {config.controller_options}: {err}") from None


def budget_left(config: Config, done: int, started: float) -> bool:
    trials, timeout = config.budget.trials, config.budget.timeout_s
    return (trials is None or done < trials) and (timeout is None or time.monotonic() - started < timeout)


@contextlib.contextmanager
def open_study(config: Config, context: Optional[TrialContext] = None) -> Iterator[tuple[Study, TrialContext, list[TrialResult], Controller]]:
    """What every executor starts from, held for one writer while the block runs: the
    study directory (created, or checked against the config), the trial context, the dense
    baseline, the records so far, and the controller caught up with them.

    Everything that can be checked is checked before the study's files are written, so a
    config error leaves nothing that would block the corrected command: controller options
    and study-wide settings first, then (under the lock, see :func:`~autoprune.results.study.study_lock`)
    the task, devices and tables, and the search space against the model's units.
    """
    check_controller(config)
    study = Study(config.study_dir)
    with study_lock(study.path):
        if study.started():
            study.check(config)
        ctx = context or build_context(config)
        study.initialise(config)
        if study.baseline() is None:
            study.save_baseline(dense_baseline(ctx))
        records = study.records()
        controller = make_controller(config, ctx.space, study, ctx)
        controller.resume(records)
        yield study, ctx, records, controller


def optuna_mirror(config: Config, controller: Controller, records: list[TrialResult]) -> Optional[OptunaMirror]:
    """For a controller that does not keep an Optuna study itself, the mirror that writes its
    records into the study's Optuna study (brought up to date with ``records``)."""
    if getattr(controller, "uses_optuna_storage", False):
        return None
    mirror = OptunaMirror(config.name, controller.objectives, controller.space, storage_url(controller.study_dir, config.storage))
    mirror.sync(records)
    return mirror


def run_study(
    config: Config,
    progress: bool = True,
    context: Optional[TrialContext] = None,
    on_trial: Optional[Callable[[TrialResult], None]] = None,
) -> Study:
    """Run (or resume) the study ``config`` describes, locally, until the budget is spent."""
    with open_study(config, context) as (study, ctx, records, controller):
        rule = DominanceRule(config.stopping, load_reports(study.path, records)) if config.stopping else None
        started = time.monotonic()
        first_device = config.devices[0]
        with tqdm(total=config.budget.trials, initial=len(records), desc=config.name, unit="trial", disable=not progress) as bar:

            def show(result: TrialResult) -> None:
                bar.update(1)
                bar.set_postfix(front=len(device_front(records, first_device)), failed=sum(r.state == FAILED for r in records), stopped=sum(r.state == STOPPED for r in records))
                if on_trial is not None:
                    on_trial(result)

            def evaluate(proposal: Proposal, number: int) -> tuple[TrialResult, list]:
                monitor = TrialMonitor(config.stopping.rungs, rule.check, controller.objectives) if rule else None
                return run_trial(ctx, proposal.plan, number, monitor), (monitor.reports if monitor else [])

            book = TrialBook(study, config.controller, records, optuna_mirror(config, controller, records), show)
            run_loop(book, controller, evaluate, lambda done: budget_left(config, done, started))
    return study
