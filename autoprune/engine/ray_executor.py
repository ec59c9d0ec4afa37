"""Run a study on a Ray cluster through Ray Tune: the same trial function, study directory
and records as the local executor (:mod:`autoprune.engine.executor`), each trial a Tune trial.

The driver (this process) runs the Tune experiment and owns the study. The search
algorithm is the study's controller behind :class:`StudySearcher`, a
:class:`~autoprune.engine.tune_searcher.ControllerSearcher` that also keeps the study: as each
trial finishes it appends the record to ``trials.jsonl`` and tells the controller, so one
process writes the study (SQLite allows no concurrent writers) and the records stay the
source of truth. Workers only run :func:`autoprune.engine.trial.run_trial` (through
:func:`autoprune.engine.tune_searcher.trainable`) and report the record.

Ray Tune does the distributed part: placing trials by resources, retrying a trial whose
worker process or node died (``FailureConfig(max_failures)``), moving the dense model and
data to the workers once (``tune.with_parameters``), and stopping trials on the
:class:`DominanceScheduler`'s word (multi-objective stopping, :mod:`autoprune.engine.stopping`).
A killed driver is resumed from the records: a fresh Tune experiment runs the remaining
budget with the controller rebuilt from them.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from tqdm.auto import tqdm

from autoprune.core.config import Config
from autoprune.core.errors import AutopruneError
from autoprune.core.objectives import build_objectives
from autoprune.core.plan import Plan
from autoprune.core.records import FAILED, STOPPED, TrialResult
from autoprune.engine.controllers import Controller
from autoprune.engine.executor import budget_left, open_study, optuna_mirror
from autoprune.engine.loop import Tell, TrialBook
from autoprune.engine.optuna_study import OptunaMirror
from autoprune.engine.stopping import (
    DominanceRule,
    Report,
    load_reports,
)
from autoprune.engine.trial import TrialContext
from autoprune.engine.tune_searcher import (
    RECORD,
    RUNG,
    ControllerSearcher,
    lost_trial,
    record_from_result,
    trainable,
)
from autoprune.results.front import device_front
from autoprune.results.study import Study

#: Tune's experiment folders of a study, one per run of the driver (the records stay the truth).
TUNE_DIR = "tune"

log = logging.getLogger(__name__)


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


# -- the driver ------------------------------------------------------------------------
def free_numbers(used: set[int]) -> Iterator[int]:
    """Trial numbers not taken by a record, lowest first (a killed run's unfinished ones come back)."""
    n = 0
    while True:
        if n not in used:
            yield n
        n += 1


class DominanceScheduler(FIFOScheduler):
    """Multi-objective stopping as a Tune scheduler: a trial reporting a rung is stopped when
    another trial dominates it there by the margins (:class:`~autoprune.engine.stopping.DominanceRule`).

    Tune's own schedulers (ASHA, median stopping) rank trials on one metric and would stop
    fast but less accurate candidates that belong on the front. The reports of each running
    trial are kept here until the study records the trial.
    """

    def __init__(self, rule: DominanceRule) -> None:
        super().__init__()
        self.rule = rule
        self.stopped: set[str] = set()  # trials this scheduler stopped, until recorded
        self._reports: dict[str, dict[int, Report]] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not result.get(RUNG):
            return TrialScheduler.CONTINUE
        report = Report.from_dict(json.loads(result[RUNG]))
        kept = self._reports.setdefault(trial.trial_id, {})
        for rung in [r for r in kept if r >= report.rung]:  # a retried trial reports its rungs again
            del kept[rung]
        kept[report.rung] = report
        if not self.rule.check(report):
            return TrialScheduler.CONTINUE
        self.stopped.add(trial.trial_id)
        return TrialScheduler.STOP

    def pop_reports(self, trial_id: str) -> list[Report]:
        """The reports of a finished trial, by rung (forgotten here once the study has them)."""
        self.stopped.discard(trial_id)
        return [r for _, r in sorted(self._reports.pop(trial_id, {}).items())]


class StudySearcher(Searcher):
    """The search algorithm of a study on Tune: wraps the controller's
    :class:`~autoprune.engine.tune_searcher.ControllerSearcher` (for every controller: the Optuna
    samplers ask and tell in the study's Optuna study themselves) and keeps the study. It
    numbers trials, reuses the record of a plan evaluated before, spends the config's budget,
    and writes each record (with its rung reports) to the study directory as the trial
    finishes, before telling the controller; ``mirror`` adds the records of a controller
    without an Optuna study of its own to the study's Optuna study.
    """

    def __init__(
        self,
        inner: ControllerSearcher,
        config: Config,
        study: Study,
        records: list[TrialResult],
        scheduler: Optional[DominanceScheduler] = None,
        on_trial: Optional[Callable[[TrialResult], None]] = None,
        progress: Optional[tqdm] = None,
        retries: int = 0,
        mirror: Optional[OptunaMirror] = None,
    ) -> None:
        """``retries`` is only for the message of a lost trial."""
        super().__init__()
        self.inner = inner
        self.retries = retries
        self.config = config
        self.study = study
        self.records = records
        self.scheduler = scheduler
        self.on_trial = on_trial
        self.progress = progress
        self.started = time.monotonic()
        self.objectives = build_objectives(config.objectives, config.devices)
        self.book = TrialBook(study, config.controller, records, mirror, self._show)
        self._numbers = free_numbers({r.number for r in records})
        self._live: dict[str, tuple[str, Plan, int, int]] = {}
        self._asked = 0
        self.finished = False  # the budget is spent (Tune ends the experiment when the last trial is in)
        self.cut_short = 0  # trials that ended unfinished, without a record

    def _propose(self, key: str, suggestion: dict) -> tuple[Plan, int]:
        """The plan of the controller's proposal, and the handle its records keep (``trial_id``)."""
        return Plan.from_dict(suggestion["plan"]), self.inner.proposal(key).trial_id

    def _tell(self, key: str) -> Tell:
        """How the controller behind Tune's key ``key`` is told a record."""
        return lambda record: self.inner.on_trial_complete(key, {RECORD: json.dumps(record.to_dict())})

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def suggest(self, trial_id: str) -> Optional[dict]:
        while budget_left(self.config, len(self.records) + self.in_flight, self.started):
            key = f"{trial_id}.{self._asked}"  # a cached plan asks again under a new key
            self._asked += 1
            suggestion = self.inner.suggest(key)
            if suggestion is None or suggestion == Searcher.FINISHED:
                return suggestion
            plan, handle = self._propose(key, suggestion)
            earlier = self.book.earlier(plan)
            if earlier is None:
                self.book.repeats = 0
                number = next(self._numbers)
                self._live[trial_id] = (key, plan, number, handle)
                return {"plan": plan.to_dict(), "number": number}
            if not self.book.repeat(earlier, handle, self._tell(key)):  # not a trial: neither recorded nor counted
                break
        self.finished = True
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        key, plan, number, handle = live
        stopped = self.scheduler is not None and trial_id in self.scheduler.stopped
        reports = self.scheduler.pop_reports(trial_id) if self.scheduler is not None else []
        record = record_from_result(result, stopped)
        if record is None and not error:
            self.cut_short += 1  # ended by the experiment's end (Ctrl-C): no record, a resumed run runs it again
            return
        if record is None:
            record = lost_trial(number, plan, f"trial lost after {self.retries} retries: its worker or node died")
        self._finish(key, handle, record, reports)

    def _finish(self, key: str, handle: int, record: TrialResult, reports: list[Report]) -> None:
        self.book.record(record, handle, self._tell(key), reports)

    def _show(self, record: TrialResult) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(
                front=len(device_front(self.records, self.config.devices[0])),
                failed=sum(r.state == FAILED for r in self.records),
                stopped=sum(r.state == STOPPED for r in self.records),
                running=self.in_flight,
            )
        if self.on_trial is not None:
            self.on_trial(record)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study's records are the state, and a resumed run starts from them."""
        with open(checkpoint_path, "w") as f:
            json.dump({"study_dir": str(self.study.path), "records": len(self.records)}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: ``autoprune search --resume`` rebuilds the search from the records."""

    def __getstate__(self) -> dict:
        # Tune pickles the experiment's settings; the live controller, storage and files stay here
        return {"_metric": None, "_mode": None}


def run_study_ray(
    config: Config,
    options: RayOptions = RayOptions(),
    progress: bool = True,
    context: Optional[TrialContext] = None,
    on_trial: Optional[Callable[[TrialResult], None]] = None,
) -> Study:
    """Run (or resume) the study ``config`` describes on Ray Tune, until the budget is spent."""
    with open_study(config, context) as (study, ctx, records, controller):
        _run_tune(config, options, progress, on_trial, study, ctx, records, controller)
    return study


def _run_tune(
    config: Config,
    options: RayOptions,
    progress: bool,
    on_trial: Optional[Callable[[TrialResult], None]],
    study: Study,
    ctx: TrialContext,
    records: list[TrialResult],
    controller: Controller,
) -> None:
    """Run the remaining budget as one Tune experiment (the driver holds the study's lock)."""
    started_here = connect(options)
    try:
        width = concurrency(options)
        scheduler = DominanceScheduler(DominanceRule(config.stopping, load_reports(study.path, records))) if config.stopping else None
        trial_fn = tune.with_parameters(
            trainable,
            context=[ray.put(ctx)],
            threads=max(1, math.floor(options.cpus_per_trial)),
            rungs=list(config.stopping.rungs) if config.stopping else [],
            objectives=controller.objectives,
        )
        resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
        with tqdm(total=config.budget.trials, initial=len(records), desc=config.name, unit="trial", disable=not progress) as bar:
            inner = ControllerSearcher(controller)
            mirror = optuna_mirror(config, controller, records)
            searcher = StudySearcher(inner, config, study, records, scheduler, on_trial, bar, options.max_retries, mirror)
            tuner = tune.Tuner(
                tune.with_resources(trial_fn, resources),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler or FIFOScheduler(),
                    num_samples=-1,
                    max_concurrent_trials=width,
                    reuse_actors=True,
                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
                ),
                run_config=tune.RunConfig(
                    name=datetime.now(timezone.utc).strftime("run-%Y%m%dT%H%M%S%f"),
                    storage_path=str((Path(study.path) / TUNE_DIR).resolve()),
                    failure_config=tune.FailureConfig(max_failures=options.max_retries),
                    verbose=0,
                ),
            )
            with contextlib.redirect_stdout(io.StringIO()):  # Tune's console tables; the progress bar and records say it
                tuner.fit()
            if not searcher.finished or searcher.cut_short:  # Tune ends an experiment on Ctrl-C (SIGINT) without raising
                raise KeyboardInterrupt
    finally:
        if started_here:
            ray.shutdown()
