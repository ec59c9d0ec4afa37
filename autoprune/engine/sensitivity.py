"""Per-unit sensitivity: prune one unit at a time over its ratio range and score each.

Each point is one plan that prunes a single unit (the others dense), run through the
search's own trial function (:func:`autoprune.engine.trial.run_trial`), so it is pruned,
timed on every device and scored exactly as a trial is. By default it is scored after
BatchNorm recalibration only (no weight update: the raw damage of removing those
channels); ``finetune_steps`` adds a short fine-tune (how much of the damage a few steps
repair). Ratio 0 is the dense model itself, scored once, and so is a ratio that removes
no channel (a small unit whose kept count rounds back up to all of them).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import COMPLETE
from autoprune.engine.context import dense_baseline
from autoprune.engine.trial import TrialContext, run_trial
from autoprune.pruning.space import UnitSpace

log = logging.getLogger(__name__)

#: BatchNorm recalibration batches when the study's recipe sets none (scoring right after
#: pruning with the dense model's statistics would measure stale statistics, not the unit).
DEFAULT_BN_BATCHES = 8


def unit_ratios(unit_space: UnitSpace, count: int = 5) -> list[float]:
    """``count`` ratios spread over the unit's range in the search space, on its grid,
    from 0 (the dense model) to the rule's highest ratio."""
    rule = unit_space.rule.pruning_ratio
    grid = sorted({0.0, *rule.grid()}) if rule.step is not None else [float(r) for r in np.linspace(0.0, rule.high, count)]
    if len(grid) <= count:
        return grid
    picks = np.linspace(0, len(grid) - 1, count).round().astype(int)
    return [grid[i] for i in sorted(set(picks))]


def single_unit_plan(space: dict[str, UnitSpace], unit: str, ratio: float) -> Plan:
    """A plan that prunes only ``unit`` by ``ratio`` (its rule's first granularity and
    criterion); every other unit dense."""
    choices = {}
    for name, us in space.items():
        rule = us.rule
        choices[name] = UnitChoice(rule.granularities[0], ratio if name == unit else 0.0, rule.criteria[0])
    return Plan.from_dict(choices)


def sensitivity(
    ctx: TrialContext,
    ratios_per_unit: int = 5,
    finetune_steps: int = 0,
    on_point: Optional[Callable[[int, int], None]] = None,
) -> pd.DataFrame:
    """One row per unit and ratio: ``unit, ratio, accuracy, params, macs``, then
    ``latency_ms.DEVICE`` and ``latency_saved_ms.DEVICE`` (against the dense model) for
    every device the context has an estimator for, and the ``finetune_steps`` each point ran.

    ``finetune_steps`` 0 scores after BatchNorm recalibration only. ``on_point(done,
    total)`` is called after each point (a progress bar). A point whose trial fails gets
    NaN figures and its error in ``error``.
    """
    recipe = ctx.recipe.model_copy(update={
        "max_steps": finetune_steps,
        "epochs": float(finetune_steps),  # at least one step per epoch: max_steps decides
        "bn_recalibration_batches": ctx.recipe.bn_recalibration_batches or DEFAULT_BN_BATCHES,
    })
    scoring = replace(ctx, recipe=recipe)
    dense = dense_baseline(ctx)
    devices = list(ctx.estimators)
    points = [(unit, ratio) for unit, us in ctx.space.items() for ratio in unit_ratios(us, ratios_per_unit)]
    rows: list[dict[str, Any]] = []
    for i, (unit, ratio) in enumerate(points):
        if ratio == 0.0:
            rows.append({**_row(unit, ratio, dense["accuracy"], dense["params"], dense["macs"], dense["latency_ms"], dense, devices), "finetune_steps": 0})
        else:
            result = run_trial(scoring, single_unit_plan(ctx.space, unit, ratio), number=i)
            if result.state == COMPLETE and (result.params, result.macs) == (dense["params"], dense["macs"]):
                # rounding to the rule's channel multiple kept every channel: this is the dense
                # model, and recalibration or timing noise must not draw a step that is not there
                rows.append({**_row(unit, ratio, dense["accuracy"], dense["params"], dense["macs"], dense["latency_ms"], dense, devices), "finetune_steps": 0})
            elif result.state != COMPLETE:
                log.warning("sensitivity of %s at ratio %.3g failed: %s", unit, ratio, result.error)
                rows.append({**_row(unit, ratio, math.nan, None, None, {}, dense, devices), "finetune_steps": result.finetune_steps, "error": result.error})
            else:
                rows.append({**_row(unit, ratio, result.accuracy, result.params, result.macs, result.latency_ms, dense, devices), "finetune_steps": result.finetune_steps})
        if on_point is not None:
            on_point(i + 1, len(points))
    df = pd.DataFrame(rows)
    if "error" not in df:
        df["error"] = None
    return df


def _row(
    unit: str, ratio: float, accuracy: float, params: Optional[int], macs: Optional[int],
    latency_ms: dict[str, float], dense: dict[str, Any], devices: list[str],
) -> dict[str, Any]:
    row: dict[str, Any] = {"unit": unit, "ratio": ratio, "accuracy": accuracy, "params": params, "macs": macs}
    for d in devices:
        ms = latency_ms.get(d, math.nan)
        row[f"latency_ms.{d}"] = ms
        row[f"latency_saved_ms.{d}"] = dense["latency_ms"][d] - ms
    return row
