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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional, Protocol

import torch

from autoprune.core.plan import Plan
from autoprune.core.recipes import FinetuneRecipe
from autoprune.core.records import FAILED, STOPPED, TrialResult
from autoprune.latency.measured import LatencyEstimator, checked_latencies
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.pruning.space import UnitSpace
from autoprune.pruning.units import Unit
from autoprune.tasks.base import Task
from autoprune.training.distill import training_loss
from autoprune.training.loop import finetune, recalibrate_batchnorm
from autoprune.training.placement import resolve_device


class Monitor(Protocol):
    """Watches a trial's fine-tune and may stop it (see :class:`autoprune.engine.stopping.TrialMonitor`)."""

    stopped: bool

    def watch(self, ctx: "TrialContext", result: TrialResult) -> Callable[[int, torch.nn.Module], bool]: ...


log = logging.getLogger(__name__)

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


def run_trial(ctx: TrialContext, plan: Plan, number: int, monitor: Optional[Monitor] = None, seed: Optional[int] = None) -> TrialResult:
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
