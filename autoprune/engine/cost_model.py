"""Predicted costs of a plan before it is fine-tuned: what hardware-aware controllers screen with.

A trial costs seconds of fine-tuning; predicting its latency from a device's lookup table
costs about a tenth of a second (prune, read the kernels off the graph, sum the table),
and its parameter and MAC counts a hundredth. Controllers that are given a cost model can
therefore try many candidate plans at ask time and propose the one that fills a latency
target with the least pruning (as OFA, HAT and APQ do with latency predictors, and as AMC
does by clipping actions to a resource budget).

Predictions are cached by plan key. A device whose latency the study measures (its table
does not hold on this machine, or it has none) is not measured here, which would cost as
much as the trial and be noisy under load; it is *screened* instead: with its table when it
has one that can describe the model (a table off by 20% in absolute terms still ranks plans
mostly right), else in proportion to the plan's MACs. A controller thus stays
hardware-aware when a study measures. The cost model is a tool of the controller only;
nothing it computes goes into the study's records.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from autoprune.core.errors import AutopruneError
from autoprune.core.objectives import Objective
from autoprune.core.plan import Plan
from autoprune.engine.trial import TrialContext, calibration, prune
from autoprune.latency.measured import LatencyEstimator
from autoprune.pruning.granularity import unit_channel_scores
from autoprune.pruning.metrics import macs, nonzero_params

log = logging.getLogger(__name__)

#: What a controller is given: plan -> predicted value per cost label (``latency_ms.<device>``,
#: ``params``, ``macs``); the labels a model cannot predict are absent.
CostModelFn = Callable[[Plan], Mapping[str, float]]


class CostModel:
    """Predicted ``latency_ms.<device>``, ``params`` and ``macs`` of a plan.

    ``dense`` holds the same numbers for the unpruned model, so a controller can speak in
    speedups or cost fractions. ``screens`` says how each device's latency is predicted:
    ``lut`` (the study's own table), ``table`` (the table screening for a measured device)
    or ``macs`` (MACs in millions standing in for milliseconds: only ratios between plans
    mean something). ``calls``, ``hits`` and ``seconds`` count the predictions made,
    answered from the cache, and the time spent.
    """

    def __init__(self, ctx: TrialContext, devices: Optional[Sequence[str]] = None) -> None:
        self.ctx = ctx
        self.devices = list(ctx.estimators) if devices is None else [d for d in devices if d in ctx.estimators]
        self._screening: Optional[dict[str, Optional[LatencyEstimator]]] = None
        self._cache: dict[str, dict[str, float]] = {}
        self._dense: Optional[dict[str, float]] = None
        self.calls = self.hits = 0
        self.seconds = 0.0

    @property
    def _estimators(self) -> dict[str, Optional[LatencyEstimator]]:
        """Each device's predictor, chosen on first use (a controller that never asks pays nothing)."""
        if self._screening is None:
            self._screening = {d: screening_estimator(self.ctx, d) for d in self.devices}
            for device, how in self.screens.items():
                if how != "lut":
                    log.info("device %r: latency is measured for the records; the controller screens plans by %s", device, "its table" if how == "table" else "MACs")
        return self._screening

    @property
    def screens(self) -> dict[str, str]:
        """How each device's latency is predicted: ``lut``, ``table`` or ``macs`` (see the class doc)."""
        return {d: "macs" if e is None else ("lut" if e is self.ctx.estimators[d] else "table") for d, e in self._estimators.items()}

    @property
    def labels(self) -> list[str]:
        """The cost labels this model predicts."""
        return [f"latency_ms.{d}" for d in self.devices] + ["params", "macs"]

    @property
    def dense(self) -> dict[str, float]:
        """The unpruned model's costs under the same predictors."""
        if self._dense is None:
            self._dense = self._predict(self.ctx.task.model)
        return self._dense

    def __call__(self, plan: Plan) -> dict[str, float]:
        self.calls += 1
        known = self._cache.get(plan.key)
        if known is not None:
            self.hits += 1
            return dict(known)
        start = time.perf_counter()
        costs = self._predict(prune(self.ctx, plan))
        self.seconds += time.perf_counter() - start
        self._cache[plan.key] = costs
        return dict(costs)

    def channel_importance(self, criteria: Mapping[str, str]) -> dict[str, np.ndarray]:
        """The dense model's per-channel scores of each unit under its criterion (unit -> criterion):
        what a controller allocating latency weighs channels by (see :mod:`autoprune.engine.controllers.knapsack`)."""
        ctx = self.ctx
        scores = unit_channel_scores(ctx.task.model, ctx.units, ctx.task.example_input, criteria, calibration(ctx))
        return {name: s.numpy() for name, s in scores.items()}

    def _predict(self, model) -> dict[str, float]:
        x = self.ctx.task.example_input
        out = {"params": float(nonzero_params(model)), "macs": float(macs(model, x))}
        for d, estimator in self._estimators.items():
            out[f"latency_ms.{d}"] = out["macs"] / 1e6 if estimator is None else float(estimator.latency_ms(model, x))
        return out


def screening_estimator(ctx: TrialContext, device: str) -> Optional[LatencyEstimator]:
    """What predicts ``device``'s latency for the controller: the study's estimator when it is
    a table; for a measured device its table, read-only and never measuring, when it can
    describe the dense model; else None (MACs stand in)."""
    estimator = ctx.estimators[device]
    if estimator.method != "measured":
        return estimator
    try:
        from autoprune.latency.lut import LUTEstimator, has_table
        from autoprune.latency.lut.table import load_table

        if not has_table(estimator.device):
            return None
        table = LUTEstimator(estimator.device, load_table(estimator.device, check_versions=False), measure_missing=False, read_only=True)
        table.latency_ms(ctx.task.model, ctx.task.example_input)
        return table
    except (AutopruneError, ImportError, OSError, ValueError) as err:
        log.debug("device %r: its table cannot screen this model (%s)", device, err)
        return None


def cost_model_for(ctx: TrialContext, objectives: Sequence[Objective]) -> Optional[CostModel]:
    """The cost model for a study's controller, or None when none of its cost objectives can be predicted.

    Every cost objective is predictable: latency by the device's table or, failing one, by MACs.
    """
    devices = [o.device for o in objectives if o.device is not None]
    model = CostModel(ctx, devices)
    predictable = set(model.labels)
    if not any(o.direction == "minimize" and o.label in predictable for o in objectives):
        return None
    return model


__all__ = ["CostModel", "CostModelFn", "cost_model_for"]
