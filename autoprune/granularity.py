"""Pruning granularities: how a unit's chosen ratio turns into removed or zeroed weights.

Each granularity is registered by name. A *structural* one physically removes channels
through the dependency graph, so it runs before the sparse ones, which mask weights of the
unit's layers with ``torch.nn.utils.prune`` parametrisations that persist through
fine-tuning and are folded into the weights at export (:func:`fold_masks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from .criteria import CRITERIA
from .registry import Registry
from .units import Unit, build_graph


@dataclass
class PruneContext:
    """The model being pruned and what granularities need to act on it.

    The dependency graph is built lazily, once, on the first structural granularity.
    """

    model: nn.Module
    example_input: torch.Tensor
    _graph: Optional[tp.DependencyGraph] = None

    @property
    def graph(self) -> tp.DependencyGraph:
        if self._graph is None:
            self._graph = build_graph(self.model, self.example_input)
        return self._graph

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)


@dataclass(frozen=True)
class Granularity:
    """A registered way to prune a unit at a ratio with a criterion."""

    name: str
    apply: Callable[[PruneContext, Unit, float, str, int], None]
    structural: bool
    description: str = ""


GRANULARITIES: Registry[Granularity] = Registry("granularity")


def register_granularity(name: str, structural: bool, description: str = ""):
    """Decorator registering ``apply(ctx, unit, ratio, criterion, channel_multiple)``."""

    def decorator(fn: Callable[[PruneContext, Unit, float, str, int], None]):
        GRANULARITIES.register(name)(Granularity(name, fn, structural, description))
        return fn

    return decorator


def kept_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """How many of ``channels`` survive pruning ``ratio`` of them, rounded to ``multiple``.

    Never fewer than one (or one ``multiple``), never more than ``channels``.
    """
    keep = channels * (1.0 - ratio)
    if multiple > 1:
        keep = multiple * round(keep / multiple)
        keep = max(multiple, keep)
    return int(min(channels, max(1, round(keep))))


@register_granularity("none", structural=False, description="leave the unit dense")
def _none(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    return None


@register_granularity("channel", structural=True, description="remove whole output channels (filters) of the coupled group")
def _channel(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    root = ctx.layer(unit.name)
    channels = root.out_channels if isinstance(root, nn.modules.conv._ConvNd) else root.out_features
    n_remove = channels - kept_channels(channels, ratio, multiple)
    if n_remove <= 0:
        return
    handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
    group = ctx.graph.get_pruning_group(root, handler, idxs=list(range(channels)))
    scores = CRITERIA.get(criterion)()(group)
    idxs = torch.argsort(scores)[:n_remove].tolist()
    ctx.graph.get_pruning_group(root, handler, idxs=idxs).prune()


@register_granularity("unstructured", structural=False, description="zero the smallest-magnitude weights of the unit's layers")
def _unstructured(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    for name in unit.layers:
        layer = ctx.layer(name)
        prune.l1_unstructured(layer, "weight", amount=ratio) if criterion != "random" else prune.random_unstructured(layer, "weight", amount=ratio)


def fold_masks(model: nn.Module) -> nn.Module:
    """Make every pruning mask permanent (zeros stay in ``weight``); needed before export."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def refresh_masks(model: nn.Module, example_input: torch.Tensor) -> None:
    """Put ``model`` in eval mode and recompute masked weights without autograd history.

    Masked weights computed during training carry a graph and cannot be deep-copied.
    """
    model.eval()
    with torch.no_grad():
        model(example_input)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over conv and linear layers (masks applied)."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            zeros += (m.weight == 0).sum().item()
            total += m.weight.numel()
    return zeros / max(total, 1)
