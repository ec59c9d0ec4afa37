"""Iterative (gradual) pruning for the final model: prune in ``k`` steps, fine-tuning between them.

Ratios follow the cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune": after
step ``t`` of ``k`` each unit is at ``ratio * (1 - (1 - t/k)^3)`` of its planned ratio, so
most of the pruning happens early, while the network still has capacity to recover, and the
last steps remove little. Because granularity ratios are absolute (see
:mod:`autoprune.pruning.granularity`), each step re-applies the same plan with larger ratios to the
fine-tuned model and only removes what is still missing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch
from torch import nn

from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.recipes import IterativeSchedule
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration
from autoprune.pruning.granularity import fold_masks, refresh_masks
from autoprune.pruning.units import Unit
from autoprune.training.loop import finetune
from autoprune.training.placement import resolve_device

if TYPE_CHECKING:
    from autoprune.engine.trial import TrialContext


def cubic_fractions(steps: int) -> list[float]:
    """Fraction of the final ratio reached after each of ``steps`` steps: ``1 - (1 - t/steps)^3``."""
    if steps < 1:
        raise ValueError(f"`steps >= 1` must hold, but got steps={steps}")
    return [1.0 - (1.0 - t / steps) ** 3 for t in range(1, steps + 1)]


def scale_plan(plan: Plan, fraction: float) -> Plan:
    """``plan`` with every ratio multiplied by ``fraction`` (granularities and criteria kept)."""
    return Plan.from_dict({u: UnitChoice(c.granularity, c.pruning_ratio * fraction, c.criterion) for u, c in plan})


def iterative_prune(
    model: nn.Module,
    plan: Plan,
    units: Mapping[str, Unit],
    example_input: torch.Tensor,
    steps: int,
    tune: Callable[[nn.Module, int], Any],
    channel_multiples: Optional[Mapping[str, int]] = None,
    calibration: Optional[Calibration] = None,
) -> nn.Module:
    """A copy of ``model`` pruned to ``plan`` in ``steps`` cubic steps; ``tune(model, step)`` runs after each but the last.

    Masks are folded between steps so structural pruning sees plain weights; the next step
    masks the same (lowest) weights again plus the new ones.
    """
    fractions = cubic_fractions(steps)
    current = apply_plan(model, scale_plan(plan, fractions[0]), units, example_input, channel_multiples, calibration=calibration)
    for step, fraction in enumerate(fractions[1:], start=1):
        tune(current, step)
        refresh_masks(current, example_input)
        fold_masks(current)
        apply_plan(current, scale_plan(plan, fraction), units, example_input, channel_multiples, copy_model=False, calibration=calibration)
    return current


def gradual_prune(ctx: "TrialContext", plan: Plan, schedule: IterativeSchedule, seed: int = 0) -> nn.Module:
    """The dense model of ``ctx`` pruned to ``plan`` by ``schedule``, with the study's distillation setting per step."""
    from autoprune.engine.trial import calibration
    from autoprune.training.distill import training_loss

    device = resolve_device(schedule.finetune.device)
    loss = training_loss(ctx.task, schedule.finetune.distill, device)

    def tune(model: nn.Module, step: int) -> None:
        model.to(device)
        finetune(model, ctx.task.train, schedule.finetune, loss, seed=seed + step)
        model.cpu()

    return iterative_prune(
        ctx.task.model, plan, ctx.units, ctx.task.example_input, schedule.steps, tune, ctx.channel_multiples, calibration(ctx)
    )


def prune_for_export(ctx: "TrialContext", plan: Plan, iterative: Optional[IterativeSchedule] = None, seed: int = 0) -> nn.Module:
    """The pruned model an export then fine-tunes: one shot, or gradual when ``export.iterative`` is set.

    Export code calls ``prune_for_export(ctx, plan, config.export.iterative, config.seed)``
    then ``finetune(model, ..., training_loss(ctx.task, recipe.distill))``.
    """
    if iterative is None or iterative.steps <= 1:
        from autoprune.engine.trial import prune

        return prune(ctx, plan)
    return gradual_prune(ctx, plan, iterative, seed)
