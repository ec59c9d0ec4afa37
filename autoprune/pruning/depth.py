"""Depth units and the ``layer`` granularity: remove whole residual blocks or transformer layers.

A ``depth`` unit is an ``nn.Sequential`` or ``nn.ModuleList`` whose removable children
are its ``channels`` (and ``layers``). A child is removable when it keeps its input's
shape and holds at least two conv/linear layers: a residual block with an identity
shortcut, or a transformer layer. ``pruning_ratio`` is the fraction of those children
removed (at least one stays); each is replaced by :class:`SkippedBlock`, which passes its
input through, so module names, and so the other units, stay valid.

Scores per block (lowest removed): ``l1``/``l2``: how much the block changes its input on a
calibration batch (mean absolute / root-mean-square change relative to the input);
``taylor``: ``|w x grad|`` summed over the block's weights; ``bn-scale``: mean absolute
BatchNorm scale inside the block; ``random``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from autoprune.core.errors import AutopruneError
from autoprune.pruning.criteria import weight_scores
from autoprune.pruning.granularity import (
    ORDER_BLOCKS,
    PruneContext,
    kept_channels,
    register_granularity,
)
from autoprune.pruning.units import PRUNABLE_TYPES, Unit


class SkippedBlock(nn.Module):
    """Stands in for a removed block: returns its first input (as a 1-tuple if the block returned tuples)."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return (x,) if self.as_tuple else x


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _prunable_count(module: nn.Module) -> int:
    return sum(isinstance(m, PRUNABLE_TYPES) for m in module.modules())


def trace_blocks(model: nn.Module, example_input: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, tuple[torch.Tensor, Any]]:
    """Run ``model`` once and return, per child of a Sequential/ModuleList (or per name given), its first input and its output."""
    seen: dict[str, tuple[torch.Tensor, Any]] = {}
    handles = []
    wanted = set(names) if names is not None else None
    for cname, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        for child_name, child in container.named_children():
            full = f"{cname}.{child_name}" if cname else child_name
            if wanted is not None and full not in wanted:
                continue

            def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, full: str = full) -> None:
                x = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
                if x is not None and full not in seen:
                    seen[full] = (x.detach(), output)

            handles.append(child.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def depth_units(model: nn.Module, example_input: torch.Tensor) -> list[Unit]:
    """One ``depth`` unit per container with at least two removable children."""
    was_training = model.training
    model.eval()
    traced = trace_blocks(model, example_input)
    model.train(was_training)
    units = []
    for cname, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        removable = []
        for child_name, child in container.named_children():
            full = f"{cname}.{child_name}" if cname else child_name
            if full not in traced or _prunable_count(child) < 2:
                continue
            x, out = traced[full]
            y = _first_tensor(out)
            if y is not None and y.shape == x.shape:
                removable.append(full)
        if len(removable) >= 2:
            units.append(Unit(cname, "depth", len(removable), tuple(removable), ()))
    return units


def _block_scores(ctx: PruneContext, names: list[str], criterion: str) -> torch.Tensor:
    if criterion in ("l1", "l2"):
        traced = trace_blocks(ctx.model, ctx.inputs(), names)
        scores = []
        for name in names:
            x, out = traced[name]
            change = (_first_tensor(out) - x).float()
            if criterion == "l1":
                scores.append(change.abs().mean() / x.abs().mean().clamp_min(1e-12))
            else:
                scores.append(change.pow(2).mean().sqrt() / x.pow(2).mean().sqrt().clamp_min(1e-12))
        return torch.stack(scores)
    if criterion == "bn-scale":
        scores = []
        for name in names:
            bns = [m for m in ctx.layer(name).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
            if not bns:
                raise AutopruneError(f"criterion 'bn-scale': block {name!r} has no BatchNorm to score")
            scores.append(torch.cat([bn.weight.detach().abs() for bn in bns]).mean())
        return torch.stack(scores)
    if criterion == "random":
        return torch.rand(len(names))
    scores = []
    for name in names:
        layers = [m for m in ctx.layer(name).modules() if isinstance(m, PRUNABLE_TYPES)]
        scores.append(sum(weight_scores(ctx, m, criterion).sum() for m in layers))
    return torch.stack(scores)


@register_granularity("layer", structural=True, description="remove whole residual blocks / transformer layers", kinds=("depth",), order=ORDER_BLOCKS)
def _layer(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    present = [name for name in unit.layers if not isinstance(ctx.layer(name), SkippedBlock)]
    n_remove = len(present) - kept_channels(unit.channels, ratio)
    if n_remove <= 0:
        return
    scores = _block_scores(ctx, present, criterion)
    traced = trace_blocks(ctx.model, ctx.example_input, present)
    for i in torch.argsort(scores)[:n_remove].tolist():
        name = present[i]
        as_tuple = isinstance(traced[name][1], (tuple, list))
        ctx.model.set_submodule(name, SkippedBlock(as_tuple))
    ctx.changed()
