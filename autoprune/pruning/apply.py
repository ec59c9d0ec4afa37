"""Apply a plan to a copy of the dense model."""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from autoprune.core.errors import AutopruneError
from autoprune.core.plan import Plan
from autoprune.pruning.criteria import Calibration
from autoprune.pruning.granularity import GRANULARITIES, PruneContext
from autoprune.pruning.units import Unit


def apply_plan(
    model: nn.Module,
    plan: Plan,
    units: Mapping[str, Unit],
    example_input: torch.Tensor,
    channel_multiples: Mapping[str, int] | None = None,
    copy_model: bool = True,
    calibration: Calibration | None = None,
) -> nn.Module:
    """Return ``model`` pruned by ``plan`` (a deep copy unless ``copy_model`` is False).

    Structural granularities run first (they need an unmasked graph), then sparse ones.
    A plan naming an unknown unit is an error that lists the units. ``calibration``
    (training batches and loss) feeds gradient-based criteria such as ``taylor``.
    """
    pruned = copy.deepcopy(model) if copy_model else model
    pruned.eval()
    ctx = PruneContext(pruned, example_input, calibration)
    steps = []
    for name, choice in plan:
        if name not in units:
            raise AutopruneError(f"plan names unit {name!r}, which this model does not have; units: {', '.join(units)}")
        if choice.active:
            steps.append((GRANULARITIES.get(choice.granularity), units[name], choice))
    steps.sort(key=lambda s: s[0].order)
    for granularity, unit, choice in steps:
        multiple = (channel_multiples or {}).get(unit.name, 1)
        try:
            granularity.apply(ctx, unit, choice.pruning_ratio, choice.criterion, multiple)
        except Exception as err:
            raise AutopruneError(f"applying {choice.granularity} pruning to unit {unit.name!r} failed: {err}") from err
    ctx.close()
    return pruned
