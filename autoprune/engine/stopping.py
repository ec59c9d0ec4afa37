"""Multi-fidelity stopping that keeps the Pareto front in view.

A trial reports its accuracy at a few intermediate fine-tune steps (the *rungs*). ASHA and
Optuna's pruners rank trials on one number, so they would stop a fast but less accurate
candidate that belongs on the front. Here a trial is stopped only when, at the same rung,
another trial dominates it by a margin: at least ``accuracy_margin`` more accurate and no
worse on every other objective (at least ``latency_margin`` faster on every device).

The rule is plain data (:class:`DominanceRule`), the per-trial hook is :class:`TrialMonitor`
(it plugs into :func:`autoprune.engine.trial.run_trial`), and the reports of finished trials are
kept in the study directory (``reports.jsonl``, written by the driver only) so a resumed
study stops trials exactly as before.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from autoprune.core.config import Stopping
from autoprune.core.objectives import Objective
from autoprune.core.records import TrialResult
from autoprune.engine.trial import TrialContext

REPORTS_FILE = "reports.jsonl"


@dataclass(frozen=True)
class Report:
    """A trial's accuracy at one rung, with its other objectives (all minimised)."""

    number: int
    plan_key: str
    rung: int
    step: int
    accuracy: float
    costs: Mapping[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, str]:
        return (self.number, self.plan_key)

    def to_dict(self) -> dict:
        return {**asdict(self), "costs": dict(self.costs)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Report":
        return cls(**data)


def costs(result: TrialResult, objectives: Sequence[Objective]) -> dict[str, float]:
    """The objectives of ``result`` other than accuracy, by label (``latency_ms.DEVICE``, ``params``, ``macs``)."""
    return {o.label: o.sign * o.value(result) for o in objectives if o.name != "accuracy"}


def dominates(a: Report, b: Report, accuracy_margin: float, latency_margin: float = 0.0) -> bool:
    """Whether ``a`` beats ``b`` by the margins: ``accuracy_margin`` more accurate and, on every
    cost of ``b``, no worse (latencies: at least ``latency_margin`` lower, as a fraction)."""
    if not a.accuracy >= b.accuracy + accuracy_margin:
        return False
    for label, value in b.costs.items():
        limit = value * (1 - latency_margin) if label.startswith("latency_ms") else value
        if not a.costs.get(label, math.inf) <= limit:
            return False
    return True


class DominanceRule:
    """The reports seen so far, by rung, and the decision for a new one."""

    def __init__(self, options: Stopping, reports: Iterable[Report] = ()) -> None:
        self.options = options
        self._rungs: dict[int, dict[tuple[int, str], Report]] = {}
        for report in reports:
            self.add(report)

    def add(self, report: Report) -> None:
        """Keep ``report``; a trial that reports a rung again (a retry) replaces its earlier report."""
        self._rungs.setdefault(report.rung, {})[report.key] = report

    def dominator(self, report: Report) -> Optional[Report]:
        """Another trial's report at the same rung that dominates ``report`` by the margins, if any."""
        for other in self._rungs.get(report.rung, {}).values():
            if other.key != report.key and dominates(other, report, self.options.accuracy_margin, self.options.latency_margin):
                return other
        return None

    def check(self, report: Report) -> bool:
        """Record ``report`` and say whether its trial should stop."""
        stop = self.dominator(report) is not None
        self.add(report)
        return stop

    def reports(self) -> list[Report]:
        return [r for rung in sorted(self._rungs) for r in self._rungs[rung].values()]


def rung_steps(total_steps: int, fractions: Sequence[float]) -> dict[int, int]:
    """Fine-tune step -> rung index, for the rungs that fall strictly inside ``total_steps``."""
    steps: dict[int, int] = {}
    for i, fraction in enumerate(fractions):
        step = max(1, round(fraction * total_steps))
        if step < total_steps:
            steps.setdefault(step, i)
    return steps


class TrialMonitor:
    """One trial's hook into the fine-tune: at each rung, score the model and ask ``check``.

    ``check`` is :meth:`DominanceRule.check` in the local executor and a call to the rule's
    actor on Ray. Scoring runs under a forked RNG, so a trial that is not stopped ends with
    the same weights as it would without stopping.
    """

    def __init__(self, fractions: Sequence[float], check: Callable[[Report], bool], objectives: Sequence[Objective]) -> None:
        self.fractions = list(fractions)
        self.check = check
        self.objectives = list(objectives)
        self.reports: list[Report] = []
        self.stopped = False

    def watch(self, ctx: TrialContext, result: TrialResult) -> Callable[[int, nn.Module], bool]:
        """The ``on_step`` callback of :func:`autoprune.training.loop.finetune` for ``result``'s trial."""
        at = rung_steps(ctx.recipe.steps(len(ctx.task.train)), self.fractions)
        trial_costs = costs(result, self.objectives)

        def on_step(step: int, model: nn.Module) -> bool:
            rung = at.get(step)
            if rung is None:
                return False
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                accuracy = float(ctx.task.metric(model, ctx.task.val))
            model.train()
            report = Report(result.number, result.plan_key, rung, step, accuracy, trial_costs)
            self.reports.append(report)
            self.stopped = bool(self.check(report))
            return self.stopped

        return on_step


def load_reports(study_dir: str | Path, records: Sequence[TrialResult]) -> list[Report]:
    """The reports of the study's recorded trials (those of trials a killed run left unfinished are dropped)."""
    path = Path(study_dir) / REPORTS_FILE
    if not path.exists():
        return []
    recorded = {(r.number, r.plan_key) for r in records}
    out = []
    for line in path.read_text().splitlines():
        try:
            report = Report.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        if report.key in recorded:
            out.append(report)
    return out


def append_reports(study_dir: str | Path, reports: Sequence[Report]) -> None:
    """Add a finished trial's reports durably (before its record, so a record never lacks them)."""
    if not reports:
        return
    path = Path(study_dir) / REPORTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r.to_dict()) + "\n" for r in reports))
        f.flush()
        os.fsync(f.fileno())
