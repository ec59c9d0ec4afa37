"""The local executor: ask the controller, run the trial, record it, tell the controller.

Re-running the same study resumes it: earlier records are kept and told to the
controller, and only the remaining budget is run. A plan evaluated before is not
evaluated again; its record is reused.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

from tqdm.auto import tqdm

from .config import Config
from .context import build_context, dense_baseline
from .controllers import CONTROLLERS, Controller
from .cost_model import CostModelFn, cost_model_for
from .front import device_front
from .objectives import build_objectives
from .search_space import UnitSpace
from .stopping import DominanceRule, TrialMonitor, append_reports, load_reports
from .study import Study
from .trial import COMPLETE, FAILED, STOPPED, TrialContext, TrialResult, run_trial


def make_controller(
    config: Config,
    space: dict[str, UnitSpace],
    study: Study,
    context: Optional[TrialContext] = None,
    cost_model: Optional[CostModelFn] = None,
) -> Controller:
    """The config's controller, bound to the study's storage and objectives.

    With a trial ``context`` the controller also gets a cost model of it (predicted
    latency per lookup-table device, params, MACs; see :mod:`autoprune.cost_model`),
    unless ``cost_model`` is given.
    """
    options = dict(config.controller_options)
    if config.storage is not None:
        options.setdefault("storage", config.storage)
    objectives = build_objectives(config.objectives, config.devices)
    if cost_model is None and context is not None:
        cost_model = cost_model_for(context, objectives)
    return CONTROLLERS.get(config.controller)(
        space,
        objectives,
        seed=config.seed,
        study_dir=study.path,
        study_name=config.name,
        cost_model=cost_model,
        **options,
    )


def budget_left(config: Config, done: int, started: float) -> bool:
    trials, timeout = config.budget.trials, config.budget.timeout_s
    return (trials is None or done < trials) and (timeout is None or time.monotonic() - started < timeout)


def open_study(config: Config, context: Optional[TrialContext] = None) -> tuple[Study, TrialContext, list[TrialResult], Controller]:
    """What every executor starts from: the study directory (created, or checked against the
    config), the trial context, the dense baseline, the records so far, and the controller
    caught up with them."""
    study = Study(config.study_dir)
    study.initialise(config)
    ctx = context or build_context(config)
    if study.baseline() is None:
        study.save_baseline(dense_baseline(ctx))
    records = study.records()
    controller = make_controller(config, ctx.space, study, ctx)
    controller.resume(records)
    return study, ctx, records, controller


def run_study(
    config: Config,
    progress: bool = True,
    context: Optional[TrialContext] = None,
    on_trial: Optional[Callable[[TrialResult], None]] = None,
) -> Study:
    """Run (or resume) the study ``config`` describes, locally, until the budget is spent."""
    study, ctx, records, controller = open_study(config, context)
    evaluated = {r.plan_key: r for r in records if r.state == COMPLETE}
    rule = DominanceRule(config.stopping, load_reports(study.path, records)) if config.stopping else None
    started = time.monotonic()
    done = len(records)
    first_device = config.devices[0]
    with tqdm(total=config.budget.trials, initial=done, desc=config.name, unit="trial", disable=not progress) as bar:
        while budget_left(config, done, started):
            proposal = controller.ask()
            earlier = evaluated.get(proposal.plan.key)
            if earlier is not None:
                result = dataclasses.replace(earlier, number=done, cached=True, timings={"total_s": 0.0}, plan=proposal.plan.to_dict())
            else:
                monitor = TrialMonitor(config.stopping.rungs, rule.check, controller.objectives) if rule else None
                result = run_trial(ctx, proposal.plan, done, monitor)
                append_reports(study.path, monitor.reports if monitor else [])
            result.trial_id, result.controller = proposal.trial_id, config.controller
            study.append(result)
            controller.tell(proposal, result)
            records.append(result)
            if result.state == COMPLETE:
                evaluated.setdefault(result.plan_key, result)
            done += 1
            bar.update(1)
            bar.set_postfix(front=len(device_front(records, first_device)), failed=sum(r.state == FAILED for r in records), stopped=sum(r.state == STOPPED for r in records))
            if on_trial is not None:
                on_trial(result)
    return study
