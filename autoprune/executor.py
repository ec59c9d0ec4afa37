"""The local executor: ask the controller, run the trial, record it, tell the controller.

Re-running the same study resumes it: earlier records are kept and told to the
controller, and only the remaining budget is run. A plan evaluated before is not
evaluated again; its record is reused.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from .config import Config, load_config, validate_config
from .errors import ConfigError
from .context import build_context, dense_baseline
from .controllers import CONTROLLERS, Controller
from .cost_model import CostModelFn, cost_model_for
from .front import device_front
from .objectives import build_objectives
from .optuna_study import OptunaMirror, storage_url
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


def optuna_mirror(config: Config, controller: Controller, records: list[TrialResult]) -> Optional[OptunaMirror]:
    """For a controller that does not keep an Optuna study itself, the mirror that writes its
    records into the study's Optuna study (brought up to date with ``records``)."""
    if getattr(controller, "uses_optuna_storage", False):
        return None
    mirror = OptunaMirror(config.name, controller.objectives, controller.space, storage_url(controller.study_dir, config.storage))
    mirror.sync(records)
    return mirror


def search(config: Config | str | Path | dict[str, Any], progress: bool = False, backend: str = "local", **ray_options: Any) -> Study:
    """Run (or resume) a study and return it: the library's entry point (``autoprune search``).

    ``config`` is a :class:`~autoprune.config.Config`, the path of a study config (YAML), or
    its keys as a dict (relative paths then start from the working directory). The study
    directory keeps every trial, so calling again with the same config resumes. ``backend``
    ``"ray"`` runs the trials on Ray Tune, with ``ray_options`` the fields of
    :class:`~autoprune.ray_executor.RayOptions` (``address``, ``max_concurrent``, ...).
    """
    if isinstance(config, dict):
        config = validate_config(config)
    elif not isinstance(config, Config):
        config = load_config(config)
    if backend == "ray":
        from .ray_executor import RayOptions, run_study_ray

        return run_study_ray(config, RayOptions(**ray_options), progress=progress)
    if backend != "local" or ray_options:
        raise ConfigError(f"backend: expected 'local' or 'ray' (Ray options need 'ray'), got {backend!r}")
    return run_study(config, progress=progress)


def run_study(
    config: Config,
    progress: bool = True,
    context: Optional[TrialContext] = None,
    on_trial: Optional[Callable[[TrialResult], None]] = None,
) -> Study:
    """Run (or resume) the study ``config`` describes, locally, until the budget is spent."""
    study, ctx, records, controller = open_study(config, context)
    mirror = optuna_mirror(config, controller, records)
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
            if mirror is not None:
                mirror.add(result)
            records.append(result)
            if result.state == COMPLETE:
                evaluated.setdefault(result.plan_key, result)
            done += 1
            bar.update(1)
            bar.set_postfix(front=len(device_front(records, first_device)), failed=sum(r.state == FAILED for r in records), stopped=sum(r.state == STOPPED for r in records))
            if on_trial is not None:
                on_trial(result)
    return study
