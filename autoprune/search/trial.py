"""The one function that does a trial's work, shared by the local executor and Ray.

:class:`TrialContext` holds what every trial needs (dense model, data, units, latency
estimators, fine-tune recipe) and is built once per process; :func:`run_trial` prunes,
times, fine-tunes and scores one plan and never raises: failures become records.
"""
from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import torch

from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration
from autoprune.training.distill import training_loss
from autoprune.latency.measured import LatencyEstimator, checked_latencies
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.training.placement import resolve_device
from autoprune.core.plan import Plan
from autoprune.pruning.space import UnitSpace
from autoprune.tasks.base import Task
from autoprune.training.finetune import FinetuneRecipe, finetune, recalibrate_batchnorm
from autoprune.pruning.units import Unit

if TYPE_CHECKING:
    from autoprune.search.stopping import TrialMonitor

log = logging.getLogger(__name__)

#: Record states. A stopped trial was cut short by multi-fidelity stopping (see autoprune.search.stopping).
COMPLETE, FAILED, STOPPED = "complete", "failed", "stopped"


@dataclass
class TrialResult:
    """One evaluated plan: the record a study keeps, one JSON line per trial."""

    number: int
    plan: dict[str, Any]
    plan_key: str
    state: str = COMPLETE
    accuracy: Optional[float] = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_source: dict[str, str] = field(default_factory=dict)  # per device: "lut" (lookup table) or "measured"
    params: Optional[int] = None
    macs: Optional[int] = None
    finetune_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None  # the exception, one line
    traceback: Optional[str] = None  # the full traceback of a failed trial
    trial_id: Optional[int] = None
    controller: Optional[str] = None
    cached: bool = False
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialResult":
        return cls(**data)

    def flat(self) -> dict[str, Any]:
        """One row for a table: latencies and timings spread into columns."""
        row = {k: v for k, v in self.to_dict().items() if k not in ("latency_ms", "latency_source", "timings", "plan", "traceback")}
        row.update({f"latency_ms.{d}": v for d, v in self.latency_ms.items()})
        row.update({f"latency_source.{d}": v for d, v in self.latency_source.items()})
        row.update({f"time_s.{k}": v for k, v in self.timings.items()})
        row["mean_ratio"] = Plan.from_dict(self.plan).mean_ratio()
        return row


@dataclass
class TrialContext:
    """Everything a trial needs, built once: see :func:`autoprune.results.study.build_context`."""

    task: Task
    units: dict[str, Unit]
    space: dict[str, UnitSpace]
    estimators: dict[str, LatencyEstimator]
    recipe: FinetuneRecipe
    seed: int = 0

    @property
    def channel_multiples(self) -> dict[str, int]:
        return {name: us.rule.channel_multiple for name, us in self.space.items()}


def calibration(ctx: TrialContext) -> Calibration:
    """Training batches and loss for gradient-based criteria (used only by plans that need them)."""
    return Calibration(ctx.task.train, ctx.task.loss, seed=ctx.seed)


def prune(ctx: TrialContext, plan: Plan) -> torch.nn.Module:
    """The dense model pruned by ``plan``."""
    return apply_plan(ctx.task.model, plan, ctx.units, ctx.task.example_input, ctx.channel_multiples, calibration=calibration(ctx))


def trial_seed(ctx: TrialContext, number: int) -> int:
    """The fine-tune seed of trial ``number``: the study's own seed for every trial when the
    recipe asks for common batches (common random numbers), else one seed per trial."""
    return ctx.seed if ctx.recipe.common_batches else ctx.seed + number


def run_trial(ctx: TrialContext, plan: Plan, number: int, monitor: Optional["TrialMonitor"] = None, seed: Optional[int] = None) -> TrialResult:
    """Prune, time on every device, fine-tune, score. Errors are recorded, not raised.

    With a ``monitor`` the fine-tune reports accuracy at intermediate steps and may be
    stopped early; the record then has state ``stopped`` and the steps it ran. ``seed``
    overrides the fine-tune seed (see :func:`trial_seed`), to fine-tune a plan again on
    other batches.
    """
    result = TrialResult(number=number, plan=plan.to_dict(), plan_key=plan.key)
    timings = result.timings
    start = time.perf_counter()
    seed = trial_seed(ctx, number) if seed is None else seed
    try:
        torch.manual_seed(seed)
        model = prune(ctx, plan)
        result.params = nonzero_params(model)
        result.macs = macs(model, ctx.task.example_input)
        t = time.perf_counter()
        result.latency_ms = checked_latencies(ctx.estimators, model, ctx.task.example_input)
        result.latency_source = {d: est.method for d, est in ctx.estimators.items()}
        timings["latency_s"] = time.perf_counter() - t
        t = time.perf_counter()
        on_step = monitor.watch(ctx, result) if monitor is not None else None
        device = resolve_device(ctx.recipe.device)
        model.to(device)
        loss = training_loss(ctx.task, ctx.recipe.distill, device)
        result.finetune_steps = finetune(model, ctx.task.train, ctx.recipe, loss, seed=seed, on_step=on_step)
        if monitor is not None and monitor.stopped:
            result.state = STOPPED
        recalibrate_batchnorm(model, ctx.task.train, ctx.recipe.bn_recalibration_batches, ctx.recipe.batch_size, seed=ctx.seed)
        timings["finetune_s"] = time.perf_counter() - t
        t = time.perf_counter()
        result.accuracy = float(ctx.task.metric(model, ctx.task.val))
        timings["eval_s"] = time.perf_counter() - t
        if not math.isfinite(result.accuracy):
            raise FloatingPointError(f"{ctx.task.metric_name} is {result.accuracy}")
    except Exception as err:  # a failed trial is a record; the study goes on
        result.state = FAILED
        result.error = "".join(traceback.format_exception_only(err)).strip()
        result.traceback = "".join(traceback.format_exception(err))
        log.warning("trial %d failed: %s", number, result.error, exc_info=log.isEnabledFor(logging.DEBUG))
    timings["total_s"] = time.perf_counter() - start
    timings["other_s"] = max(0.0, timings["total_s"] - sum(timings.get(k, 0.0) for k in ("latency_s", "finetune_s", "eval_s")))
    result.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result
