"""Run a study on a Ray cluster: the same trial function, study directory and records as the
local executor (:mod:`autoprune.executor`), with each trial a Ray task.

The driver (this process) owns the study: it asks the controller for plans, keeps up to
``max_concurrent`` trials in flight, and as each finishes appends its record to
``trials.jsonl`` and tells the controller. Workers only run
:func:`autoprune.trial.run_trial` and return the record, so one process writes the study
(SQLite allows no concurrent writers) and every registered controller works unchanged
through ask/tell.

Why Ray tasks driven by this loop rather than Ray Tune: the study's records must stay the
one source of truth across a killed driver, and Tune keeps its own experiment state that a
``kill -9`` can leave behind or ahead of ours; Tune's schedulers are single-objective, so
multi-objective stopping needs the driver's view anyway (:mod:`autoprune.stopping`, here
held by a small actor); and a task that reuses its worker process costs milliseconds where
a Tune trial starts an actor. Ray still does the distributed part: placement by resources,
re-running a trial whose worker process or node died (``max_retries``), and moving the
dense model and data to each worker once through the object store.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional, Sequence

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm.auto import tqdm

from .config import Config, Stopping
from .context import build_context, dense_baseline
from .errors import AutopruneError
from .executor import budget_left, make_controller
from .front import device_front
from .objectives import Objective
from .plan import Plan
from .stopping import DominanceRule, Report, TrialMonitor, append_reports, load_reports
from .study import Study
from .trial import COMPLETE, FAILED, STOPPED, TrialContext, TrialResult, run_trial


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a study runs on Ray."""

    address: Optional[str] = None  # "auto", "HOST:PORT" of an existing cluster; None starts a local one
    max_concurrent: Optional[int] = None  # trials in flight; None: the cluster's CPUs (or GPUs) per trial
    cpus_per_trial: float = 1.0  # also the torch threads of a trial
    gpus_per_trial: float = 0.0  # reserved for the trial (Ray sets CUDA_VISIBLE_DEVICES)
    max_retries: int = 3  # re-runs of a trial whose worker process or node died
    num_cpus: Optional[int] = None  # CPUs of a local cluster started here (None: all)
    runtime_env: Optional[dict[str, Any]] = None  # Ray runtime environment for the workers

    def __post_init__(self) -> None:
        checks = [
            ("max_concurrent", self.max_concurrent is None or self.max_concurrent >= 1, ">= 1"),
            ("cpus_per_trial", self.cpus_per_trial > 0, "> 0"),
            ("gpus_per_trial", self.gpus_per_trial >= 0, ">= 0"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise AutopruneError(f"ray option {name} must be {rule}, but got {name}={getattr(self, name)}")


def connect(options: RayOptions) -> bool:
    """Join the cluster at ``options.address`` or start a local one; True when started here."""
    if ray.is_initialized():
        return False
    common = dict(logging_level=logging.WARNING, log_to_driver=False, runtime_env=options.runtime_env)
    if options.address:
        try:
            ray.init(address=options.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AutopruneError(f"--address {options.address}: cannot connect to a Ray cluster ({err})") from err
        return False
    ray.init(num_cpus=options.num_cpus, include_dashboard=False, **common)
    return True


def concurrency(options: RayOptions) -> int:
    """Trials in flight: as asked, else as many as the cluster's resources fit.

    A trial that no node can hold would wait forever, so that is an error here.
    """
    resources = ray.cluster_resources()
    for name, need in (("CPU", options.cpus_per_trial), ("GPU", options.gpus_per_trial)):
        if need and resources.get(name, 0) < need:
            raise AutopruneError(
                f"--{name.lower()}s-per-trial {need:g}: the Ray cluster has {resources.get(name, 0):g} {name}s in all, so no trial could start"
            )
    if options.max_concurrent is not None:
        return options.max_concurrent
    fits = resources.get("CPU", 1) / options.cpus_per_trial
    if options.gpus_per_trial:
        fits = min(fits, resources.get("GPU", 0) / options.gpus_per_trial)
    return max(1, int(fits))


# -- the worker side ------------------------------------------------------------------
_CONTEXTS: dict[str, TrialContext] = {}


def _context(ref: ray.ObjectRef) -> tuple[TrialContext, float]:
    """The study's context, fetched from the object store once per worker process."""
    key = ref.hex()
    if key in _CONTEXTS:
        return _CONTEXTS[key], 0.0
    start = time.perf_counter()
    _CONTEXTS.clear()
    _CONTEXTS[key] = ray.get(ref)
    return _CONTEXTS[key], time.perf_counter() - start


def _remote_check(rule: "ray.actor.ActorHandle") -> Callable[[Report], bool]:
    def check(report: Report) -> bool:
        try:
            return bool(ray.get(rule.check.remote(report)))
        except ray.exceptions.RayError:  # the rule is advisory: without it a trial runs to the end
            return False

    return check


def trial_task(
    boxed_context: list, plan: dict, number: int, threads: int, boxed_rule: list, rungs: Sequence[float], objectives: Sequence[Objective]
) -> tuple[dict, list[dict]]:
    """One trial on a worker: the record and its rung reports, as plain dicts.

    The context and the rule come boxed in lists so Ray hands over their references and the
    worker can keep the context it already fetched.
    """
    torch.set_num_threads(threads)
    ctx, fetch_s = _context(boxed_context[0])
    monitor = TrialMonitor(rungs, _remote_check(boxed_rule[0]), objectives) if boxed_rule else None
    result = run_trial(ctx, Plan.from_dict(plan), number, monitor)
    if fetch_s:
        result.timings["context_s"] = fetch_s
    return result.to_dict(), [r.to_dict() for r in monitor.reports] if monitor else []


class RuleActor:
    """The study's :class:`~autoprune.stopping.DominanceRule`, shared by every worker."""

    def __init__(self, options: Stopping, reports: Sequence[Report]) -> None:
        self.rule = DominanceRule(options, reports)

    def check(self, report: Report) -> bool:
        return self.rule.check(report)


# -- the driver ------------------------------------------------------------------------
def free_numbers(used: set[int]) -> Iterator[int]:
    """Trial numbers not taken by a record, lowest first (a killed run's unfinished ones come back)."""
    n = 0
    while True:
        if n not in used:
            yield n
        n += 1


def lost_trial(number: int, plan: Plan, err: Exception, retries: int) -> TrialResult:
    """The record of a trial Ray gave up on (its worker or node died more than ``retries`` times)."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    return TrialResult(
        number,
        plan.to_dict(),
        plan.key,
        state=FAILED,
        error=f"{type(err).__name__}: trial lost after {retries} retries: {first_line}",
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run_study_ray(
    config: Config,
    options: RayOptions = RayOptions(),
    progress: bool = True,
    context: Optional[TrialContext] = None,
    on_trial: Optional[Callable[[TrialResult], None]] = None,
) -> Study:
    """Run (or resume) the study ``config`` describes on Ray, until the budget is spent."""
    study = Study(config.study_dir)
    study.initialise(config)
    ctx = context or build_context(config)
    if study.baseline() is None:
        study.save_baseline(dense_baseline(ctx))
    records = study.records()
    controller = make_controller(config, ctx.space, study)
    controller.resume(records)
    evaluated = {r.plan_key: r for r in records if r.state == COMPLETE}
    numbers = free_numbers({r.number for r in records})
    started_here = connect(options)
    rule: list = []
    try:
        width = concurrency(options)
        ctx_ref = ray.put(ctx)
        if config.stopping is not None:
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
            actor = ray.remote(RuleActor).options(num_cpus=0, max_restarts=-1, scheduling_strategy=here)
            rule = [actor.remote(config.stopping, load_reports(study.path, records))]
        rungs = config.stopping.rungs if config.stopping else []
        task = ray.remote(trial_task).options(
            num_cpus=options.cpus_per_trial, num_gpus=options.gpus_per_trial, max_retries=options.max_retries, retry_exceptions=False
        )
        threads = max(1, math.floor(options.cpus_per_trial))
        in_flight: dict[ray.ObjectRef, tuple[Any, int]] = {}
        started = time.monotonic()
        first_device = config.devices[0]

        def finish(proposal: Any, result: TrialResult, reports: Sequence[Report], bar: tqdm) -> None:
            result.trial_id, result.controller = proposal.trial_id, config.controller
            append_reports(study.path, reports)
            study.append(result)
            controller.tell(proposal, result)
            records.append(result)
            if result.state == COMPLETE:
                evaluated.setdefault(result.plan_key, result)
            bar.update(1)
            bar.set_postfix(
                front=len(device_front(records, first_device)),
                failed=sum(r.state == FAILED for r in records),
                stopped=sum(r.state == STOPPED for r in records),
                running=len(in_flight),
            )
            if on_trial is not None:
                on_trial(result)

        with tqdm(total=config.budget.trials, initial=len(records), desc=config.name, unit="trial", disable=not progress) as bar:
            while True:
                while len(in_flight) < width and budget_left(config, len(records) + len(in_flight), started):
                    proposal = controller.ask()
                    number = next(numbers)
                    earlier = evaluated.get(proposal.plan.key)
                    if earlier is not None:
                        cached = dataclasses.replace(earlier, number=number, cached=True, timings={"total_s": 0.0}, plan=proposal.plan.to_dict())
                        finish(proposal, cached, [], bar)
                        continue
                    ref = task.remote([ctx_ref], proposal.plan.to_dict(), number, threads, rule, rungs, controller.objectives)
                    in_flight[ref] = (proposal, number)
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                proposal, number = in_flight.pop(ready[0])
                try:
                    data, reports = ray.get(ready[0])
                    result, reports = TrialResult.from_dict(data), [Report.from_dict(r) for r in reports]
                except ray.exceptions.RayError as err:
                    result, reports = lost_trial(number, proposal.plan, err, options.max_retries), []
                finish(proposal, result, reports, bar)
    finally:
        if started_here:
            ray.shutdown()
        elif ray.is_initialized() and rule:
            ray.kill(rule[0])
    return study
