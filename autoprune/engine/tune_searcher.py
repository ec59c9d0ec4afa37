"""autoprune on Ray Tune: any controller as a Tune search algorithm, and the trial as a Tune
function trainable.

:class:`ControllerSearcher` wraps a registered :class:`~autoprune.engine.controllers.Controller`:
``suggest`` asks it for a plan, ``on_trial_complete`` tells it the trial's record. The
trainable :func:`trainable` runs :func:`autoprune.engine.trial.run_trial` on the config the
searcher suggested (``{"plan": ..., "number": ...}``) and reports the record. Both work in
a Tune experiment of your own::

    from ray import tune
    from autoprune.engine.tune_searcher import ControllerSearcher, trainable

    searcher = ControllerSearcher(controller, max_trials=64)
    tuner = tune.Tuner(
        tune.with_parameters(trainable, context=[ray.put(ctx)], objectives=controller.objectives),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=8),
    )
    tuner.fit()
    searcher.records  # one TrialResult per trial, in the order they finished

``autoprune search --backend ray`` (:mod:`autoprune.engine.ray_executor`) runs the same trainable
with this searcher (for every controller, the Optuna samplers included) inside a searcher that
keeps the study directory, and adds resume and multi-fidelity stopping.
"""
from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

import ray
import torch
from ray import tune
from ray.tune.search import Searcher

from autoprune.core.objectives import Objective
from autoprune.core.plan import Plan
from autoprune.core.records import FAILED, STOPPED, TrialResult
from autoprune.engine.controllers import Controller, Proposal
from autoprune.engine.stopping import Report, TrialMonitor
from autoprune.engine.trial import TrialContext, run_trial

#: Keys of what the trainable reports: the trial's record (as JSON, so Tune does not flatten
#: it), and at a rung, the rung's report and the record the trial has if it is stopped there.
RECORD, RUNG, RECORD_IF_STOPPED = "autoprune_record", "autoprune_rung", "autoprune_record_if_stopped"


def metrics(result: TrialResult, objectives: Sequence[Objective]) -> dict[str, float]:
    """The record's objectives by label (``accuracy``, ``latency_ms.DEVICE``, ...), for Tune's tables."""
    out = {}
    for o in objectives:
        try:
            out[o.label] = float(o.value(result))
        except (KeyError, TypeError):
            continue
    return out


# -- the worker side ------------------------------------------------------------------
_CONTEXTS: dict[str, TrialContext] = {}


def _context(ref: ray.ObjectRef) -> tuple[TrialContext, float]:
    """The study's context, fetched from the object store once per worker process (Tune
    reuses a trial's actor for the next trial, so later trials find it here)."""
    key = ref.hex()
    if key in _CONTEXTS:
        return _CONTEXTS[key], 0.0
    start = time.perf_counter()
    _CONTEXTS.clear()
    _CONTEXTS[key] = ray.get(ref)
    return _CONTEXTS[key], time.perf_counter() - start


class TuneMonitor(TrialMonitor):
    """Reports each rung to Tune; the driver's scheduler decides whether the trial stops.

    With each rung goes the record the trial would have if it stopped there, since a
    stopped Tune trial returns nothing more.
    """

    def __init__(self, fractions: Sequence[float], objectives: Sequence[Objective], timings: Optional[Mapping[str, float]] = None) -> None:
        super().__init__(fractions, self._report, objectives)
        self._timings = dict(timings or {})  # the worker's own, e.g. fetching the context: a stopped trial's record keeps them
        self._result: Optional[TrialResult] = None
        self._start = time.perf_counter()

    def watch(self, ctx: TrialContext, result: TrialResult):
        self._result = result
        return super().watch(ctx, result)

    def _report(self, report: Report) -> bool:
        assert self._result is not None
        total = time.perf_counter() - self._start
        stopped = dataclasses.replace(
            self._result,
            state=STOPPED,
            accuracy=report.accuracy,
            finetune_steps=report.step,
            timings={**self._result.timings, **self._timings, "total_s": total},
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        tune.report({RUNG: json.dumps(report.to_dict()), RECORD_IF_STOPPED: json.dumps(stopped.to_dict())})
        return False


def trainable(
    config: Mapping[str, Any],
    context: list,
    threads: int = 1,
    rungs: Sequence[float] = (),
    objectives: Sequence[Objective] = (),
) -> None:
    """One trial as a Tune function trainable: run the suggested plan, report its record.

    ``context`` is ``[ray.put(ctx)]``: boxed, so the worker gets the reference and fetches
    the context once per process. With ``rungs`` each rung is reported on the way.
    """
    torch.set_num_threads(threads)
    ctx, fetch_s = _context(context[0])
    monitor = TuneMonitor(rungs, objectives, {"context_s": fetch_s} if fetch_s else None) if rungs else None
    result = run_trial(ctx, Plan.from_dict(config["plan"]), int(config["number"]), monitor)
    if fetch_s:
        result.timings["context_s"] = fetch_s
    tune.report({RECORD: json.dumps(result.to_dict()), **metrics(result, objectives)})


# -- the driver side ------------------------------------------------------------------
def record_from_result(result: Optional[Mapping[str, Any]], stopped: bool = True) -> Optional[TrialResult]:
    """The trial's record from the last result Tune kept: the final one, or (when ``stopped``)
    the record of the rung where a scheduler stopped it."""
    for key in (RECORD, RECORD_IF_STOPPED) if stopped else (RECORD,):
        if result and result.get(key):
            return TrialResult.from_dict(json.loads(result[key]))
    return None


def lost_trial(number: int, plan: Plan, reason: str) -> TrialResult:
    """The record of a trial Tune gave up on (its worker or node died more than the retries allow)."""
    return TrialResult(
        number,
        plan.to_dict(),
        plan.key,
        state=FAILED,
        error=reason,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


class ControllerSearcher(Searcher):
    """An autoprune controller as a Ray Tune search algorithm.

    ``suggest`` asks the controller and returns ``{"plan": plan.to_dict(), "number": n}``;
    ``on_trial_complete`` turns the trial's last result into a
    :class:`~autoprune.engine.trial.TrialResult` (see :func:`trainable`), tells the controller and
    keeps it in :attr:`records`. After ``max_trials`` suggestions it returns
    ``Searcher.FINISHED``, so ``num_samples=-1`` runs exactly that many. Use with
    ``max_concurrent_trials`` (or a ``ConcurrencyLimiter``) for the trials in flight.

    The controller's state is the records: to continue a search, build a new controller,
    ``controller.resume(records)`` and a new searcher (``save``/``restore`` keep nothing).
    """

    def __init__(self, controller: Controller, max_trials: Optional[int] = None) -> None:
        super().__init__()  # the controller holds the objectives; Tune needs no metric to rank by
        self.controller = controller
        self.max_trials = max_trials
        self.records: list[TrialResult] = []
        self._live: dict[str, tuple[Proposal, int]] = {}
        self._suggested = 0

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def proposal(self, trial_id: str) -> Proposal:
        """The controller's proposal behind a suggested trial (its ``trial_id`` is the controller's handle)."""
        return self._live[trial_id][0]

    def can_suggest(self) -> bool:
        """Whether the budget allows another trial."""
        return self.max_trials is None or self._suggested < self.max_trials

    def next_number(self) -> int:
        """The record number of the next trial."""
        return self._suggested

    def suggest(self, trial_id: str) -> Optional[dict]:
        if not self.can_suggest():
            return Searcher.FINISHED
        proposal = self.controller.ask()
        number = self.next_number()
        self._suggested += 1
        self._live[trial_id] = (proposal, number)
        return {"plan": proposal.plan.to_dict(), "number": number}

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        proposal, number = live
        record = record_from_result(result)
        if record is None:
            reason = "the trial's worker or node died more times than the retries allow" if error else "the trial ended without a result"
            record = lost_trial(number, proposal.plan, reason)
        self.finish(proposal, record, trial_id)

    def finish(self, proposal: Proposal, record: TrialResult, trial_id: Optional[str] = None) -> None:
        """Keep the record and tell the controller."""
        record.trial_id, record.controller = proposal.trial_id, self.controller.name
        self.records.append(record)
        self.controller.tell(proposal, record)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the records are the state (see the class docstring)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"records": len(self.records)}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: resume the controller from the records instead."""

    def __getstate__(self) -> dict:
        # Tune pickles the experiment's settings; the live controller (an open Optuna
        # storage, a generator) stays in the driver.
        return {"_metric": self._metric, "_mode": self._mode, "max_trials": self.max_trials}
