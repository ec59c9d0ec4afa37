"""The one trial loop: ask the controller, reuse what the study knows of the plan or evaluate
it, record the result, tell the controller.

:func:`run_loop` is the loop of the local executor and of the controller comparison; the Ray
Tune executor, whose loop Tune drives, keeps its books with the same :class:`TrialBook`, so a
repeated plan, a record and the controller's news mean the same on every executor.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, Optional

from autoprune.core.plan import Plan
from autoprune.core.records import COMPLETE, TrialResult
from autoprune.engine.controllers import Controller, Proposal
from autoprune.engine.optuna_study import OptunaMirror
from autoprune.engine.stopping import Report, append_reports
from autoprune.results.study import Study

log = logging.getLogger(__name__)

#: Proposals of already evaluated plans in a row after which a run ends (the space is likely exhausted).
MAX_REPEATS = 50

Tell = Callable[[TrialResult], None]


class TrialBook:
    """A study's books while it runs: which plans it has evaluated, and what becomes of a result.

    A result is recorded (``trials.jsonl``, stopping reports), told to the controller, added
    to the Optuna study when the controller keeps none of its own (``mirror``), and passed to
    ``on_trial``. A plan proposed again is told its earlier result under the new handle and is
    not a trial: neither recorded nor counted.
    """

    def __init__(
        self,
        study: Study,
        controller_name: str,
        records: list[TrialResult],
        mirror: Optional[OptunaMirror] = None,
        on_trial: Optional[Callable[[TrialResult], None]] = None,
    ) -> None:
        self.study = study
        self.controller_name = controller_name
        self.records = records
        self.mirror = mirror
        self.on_trial = on_trial
        self.evaluated = {r.plan_key: r for r in records if r.state == COMPLETE}
        self.repeats = 0

    def earlier(self, plan: Plan) -> Optional[TrialResult]:
        """The study's complete record of ``plan``, if it has one."""
        return self.evaluated.get(plan.key)

    def repeat(self, earlier: TrialResult, trial_id: Optional[int], tell: Tell) -> bool:
        """Tell the controller the earlier result of a plan it proposed again; False once it has
        proposed nothing new :data:`MAX_REPEATS` times in a row (the run should end)."""
        tell(dataclasses.replace(earlier, trial_id=trial_id, controller=self.controller_name, cached=True, timings={"total_s": 0.0}))
        self.repeats += 1
        if self.repeats < MAX_REPEATS:
            return True
        log.warning(
            "%s: the controller proposed only plans evaluated before %d times in a row; stopping with %d trials (the search space may be exhausted)",
            self.study.path, self.repeats, len(self.records),
        )
        return False

    def record(self, result: TrialResult, trial_id: Optional[int], tell: Tell, reports: Iterable[Report] = ()) -> None:
        """Record a trial's result durably, then tell the controller and the Optuna study."""
        result.trial_id, result.controller = trial_id, self.controller_name
        append_reports(self.study.path, list(reports))
        self.study.append(result)
        tell(result)
        if self.mirror is not None:
            self.mirror.add(result)
        self.records.append(result)
        if result.state == COMPLETE:
            self.evaluated.setdefault(result.plan_key, result)
        if self.on_trial is not None:
            self.on_trial(result)


Evaluate = Callable[[Proposal, int], tuple[TrialResult, list[Report]]]


def run_loop(book: TrialBook, controller: Controller, evaluate: Evaluate, more: Callable[[int], bool]) -> None:
    """Ask, evaluate and record until ``more(trials so far)`` says stop.

    ``evaluate(proposal, number)`` returns the trial's record and its stopping reports; a plan
    the study has evaluated is not evaluated again (see :meth:`TrialBook.repeat`).
    """
    while more(len(book.records)):
        proposal = controller.ask()
        tell = lambda result, p=proposal: controller.tell(p, result)  # noqa: E731
        earlier = book.earlier(proposal.plan)
        if earlier is not None:
            if not book.repeat(earlier, proposal.trial_id, tell):
                return
            continue
        book.repeats = 0
        result, reports = evaluate(proposal, len(book.records))
        book.record(result, proposal.trial_id, tell, reports)
