"""Pruning granularities: how a unit's chosen ratio turns into removed or zeroed weights.

Each granularity is registered by name and says which unit kinds it applies to. A
*structural* one physically removes channels, heads or blocks, so it runs before the sparse
ones (``order``: blocks, then heads, then channels, then masks), which mask weights of the
unit's layers with ``torch.nn.utils.prune`` parametrisations that persist through
fine-tuning and are folded into the weights at export (:func:`fold_masks`).

Ratios are absolute: ``pruning_ratio`` is the fraction of the unit's *original* channels,
heads, blocks or weights removed, so applying a plan to an already pruned model only
removes what is still missing. That makes the iterative schedule
(:mod:`autoprune.deploy.gradual`) a loop over the same plan with growing ratios.

Built-in names: ``none``, ``channel``, ``neuron``, ``unstructured`` (here), ``n:M`` and
``blockHxW`` families (:mod:`autoprune.pruning.sparse`), ``head`` (:mod:`autoprune.pruning.heads`) and
``layer`` (:mod:`autoprune.pruning.depth`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from autoprune.core.errors import AutopruneError, UnknownNameError
from autoprune.core.registry import Registry
from autoprune.pruning.criteria import (
    ACTIVATION_CRITERIA,
    CRITERIA,
    GRADIENT_CRITERIA,
    GRADIENT_FILLERS,
    Calibration,
    activations_current,
    clear_input_activations,
    record_input_activations,
    weight_scores,
)
from autoprune.pruning.units import Unit, build_graph

CHANNEL_KINDS = ("conv", "linear")

#: Order in which granularities run inside one plan (lower first).
ORDER_BLOCKS, ORDER_HEADS, ORDER_CHANNELS, ORDER_MASKS = 0, 1, 2, 3


@dataclass
class PruneContext:
    """The model being pruned and what granularities need to act on it.

    The dependency graph is built lazily, once, on the first channel granularity; a
    granularity that changes the model outside Torch-Pruning calls :meth:`changed` so the
    graph is rebuilt. Gradients (or per-weight saliencies) for gradient criteria come from
    ``calibration``, computed when first needed (one-shot) and sliced along with the weights
    by every structural change; they are recomputed only when a unit asks for another
    gradient criterion than the one in ``.grad``. Activation statistics are recorded again
    whenever the structure has changed. :meth:`close` drops both.
    """

    model: nn.Module
    example_input: torch.Tensor
    calibration: Optional[Calibration] = None
    _graph: Optional[tp.DependencyGraph] = None
    _gradients: Optional[str] = field(default=None, repr=False)
    _activations: bool = field(default=False, repr=False)

    @property
    def graph(self) -> tp.DependencyGraph:
        if self._graph is None:
            self._graph = build_graph(self.model, self.example_input)
        return self._graph

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def has_layer(self, name: str) -> bool:
        try:
            self.model.get_submodule(name)
        except AttributeError:
            return False
        return True

    def live_layers(self, unit: Unit) -> list[str]:
        """The unit's layers still in the model (a removed block takes its layers with it)."""
        return [name for name in unit.layers if self.has_layer(name)]

    def changed(self) -> None:
        """The model's structure changed outside Torch-Pruning: rebuild the graph and activations when next needed."""
        self._graph = None
        if self._activations:
            clear_input_activations(self.model)

    def close(self) -> None:
        """Drop the calibration gradients and activation statistics (the pruned model leaves clean)."""
        if self._gradients:
            self.model.zero_grad(set_to_none=True)
            self._gradients = None
        if self._activations:
            clear_input_activations(self.model)
            self._activations = False

    def ensure_gradients(self, criterion: str) -> None:
        """Fill ``.grad`` as ``criterion`` reads it (once, unless another gradient criterion filled it since)."""
        if self._gradients == criterion:
            return
        if self.calibration is None:
            raise AutopruneError(
                f"criterion {criterion!r} needs gradients: pass calibration=Calibration(data, loss) to apply_plan"
            )
        self.model.zero_grad(set_to_none=True)
        GRADIENT_FILLERS[criterion](self.model, self.calibration)
        self._gradients = criterion

    def ensure_activations(self) -> None:
        """Record every layer's input statistics over the calibration batches, unless still current."""
        if self._activations and activations_current(self.model):
            return
        inputs = self.calibration.input_batches() if self.calibration is not None else [self.example_input]
        record_input_activations(self.model, inputs)
        self._activations = True

    def inputs(self) -> torch.Tensor:
        """A batch of model inputs for activation-based scores: calibration data if any, else the example."""
        return self.calibration.inputs() if self.calibration is not None else self.example_input


Apply = Callable[[PruneContext, Unit, float, str, int], None]


@dataclass(frozen=True)
class Granularity:
    """A registered way to prune a unit at a ratio with a criterion.

    ``kinds`` are the unit kinds it applies to (``conv``, ``linear``, ``heads``, ``depth``);
    ``order`` places it in a plan's sequence (blocks, heads, channels, then masks);
    ``channel_multiple`` is the multiple it rounds kept channel counts to (with the rule's).
    """

    name: str
    apply: Apply
    structural: bool
    description: str = ""
    kinds: tuple[str, ...] = CHANNEL_KINDS
    order: int = ORDER_MASKS
    channel_multiple: int = 1


class GranularityRegistry(Registry[Granularity]):
    """The granularity registry; parametrised families (``n:8``, ``block4x4``) are built on first use."""

    def __init__(self, kind: str, group: Optional[str] = None) -> None:
        super().__init__(kind, group)
        self._families: list[tuple[re.Pattern, str, Callable[[re.Match], Granularity]]] = []

    def add_family(self, pattern: str, label: str, build: Callable[[re.Match], Granularity]) -> None:
        """Names fully matching ``pattern`` are built by ``build(match)``; ``label`` shows it in listings."""
        self._families.append((re.compile(pattern), label, build))

    def _build(self, name: str) -> Optional[Granularity]:
        for pattern, _, build in self._families:
            match = pattern.fullmatch(name)
            if match:
                return build(match)
        return None

    def get(self, name: str) -> Granularity:
        if name not in self._items:
            self.load_plugins()
        if name not in self._items:
            built = self._build(name) if isinstance(name, str) else None
            if built is None:
                raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
            self._items[name] = built
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.load_plugins()
        if name in self._items:
            return True
        try:
            return isinstance(name, str) and self._build(name) is not None
        except (ValueError, AutopruneError):
            return False

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(set(self._items) | {label for _, label, _ in self._families})


GRANULARITIES: GranularityRegistry = GranularityRegistry("granularity", "autoprune.granularities")


def register_granularity(
    name: str,
    structural: bool,
    description: str = "",
    kinds: Sequence[str] = CHANNEL_KINDS,
    order: Optional[int] = None,
):
    """Decorator registering ``apply(ctx, unit, ratio, criterion, channel_multiple)``.

    The registered function is skipped for units whose layers a removed block took away.
    """

    def decorator(fn: Apply):
        GRANULARITIES.register(name)(make_granularity(name, fn, structural, description, kinds, order))
        return fn

    return decorator


def make_granularity(
    name: str, fn: Apply, structural: bool, description: str = "", kinds: Sequence[str] = CHANNEL_KINDS, order: Optional[int] = None
) -> Granularity:
    """A :class:`Granularity` whose ``apply`` checks the unit kind and skips removed units."""
    kinds = tuple(kinds)

    def apply(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
        if unit.kind not in kinds:
            raise AutopruneError(f"granularity {name!r} does not apply to unit {unit.name!r} of kind {unit.kind!r}; it applies to {', '.join(kinds)}")
        if unit.kind != "depth" and not ctx.live_layers(unit):
            return None
        return fn(ctx, unit, ratio, criterion, multiple)

    apply.__doc__ = fn.__doc__
    return Granularity(name, apply, structural, description, kinds, order if order is not None else (ORDER_CHANNELS if structural else ORDER_MASKS))


def kept_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """How many of ``channels`` survive pruning ``ratio`` of them, rounded to ``multiple``.

    Never fewer than one (or one ``multiple``), never more than ``channels``.
    """
    keep = channels * (1.0 - ratio)
    if multiple > 1:
        keep = multiple * round(keep / multiple)
        keep = max(multiple, keep)
    return int(min(channels, max(1, round(keep))))


def granularity_multiple(granularity: str, rule_multiple: int = 1) -> int:
    """The multiple a unit's kept channel count is rounded to under ``granularity`` and its rule."""
    return math.lcm(rule_multiple, GRANULARITIES.get(granularity).channel_multiple)


def out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features


def channel_scores(ctx: PruneContext, unit: Unit, criterion: str, group: tp.Group) -> torch.Tensor:
    """One score per channel of the coupled group (Torch-Pruning importance, aggregated over it)."""
    if criterion in GRADIENT_CRITERIA:
        ctx.ensure_gradients(criterion)
    elif criterion in ACTIVATION_CRITERIA:
        ctx.ensure_activations()
    scores = CRITERIA.get(criterion)()(group)
    if scores is None:
        raise AutopruneError(
            f"criterion {criterion!r} found nothing to score in unit {unit.name!r} "
            "(bn-scale needs a BatchNorm after the unit's layers; activation and apoz need a layer reading its channels)"
        )
    return scores


def unit_channel_scores(
    model: nn.Module, units: Mapping[str, Unit], example_input: torch.Tensor, criteria: Mapping[str, str], calibration: Optional[Calibration] = None
) -> dict[str, torch.Tensor]:
    """One score per output channel of each named conv/linear unit of ``model`` (unpruned),
    under the criterion ``criteria`` gives it: the scores channel pruning ranks by.

    Scores a copy, so gradients a criterion accumulates stay off ``model``."""
    ctx = PruneContext(copy.deepcopy(model).eval(), example_input, calibration)
    out = {}
    for name, criterion in criteria.items():
        unit = units.get(name)
        if unit is None or unit.kind not in CHANNEL_KINDS:
            continue
        root = ctx.layer(unit.layers[0])
        handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        group = ctx.graph.get_pruning_group(root, handler, idxs=list(range(out_channels(root))))
        out[name] = channel_scores(ctx, unit, criterion, group).detach().cpu()
    ctx.close()
    return out


@register_granularity("none", structural=False, description="leave the unit dense", kinds=("conv", "linear", "heads", "depth"))
def _none(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    return None


@register_granularity("channel", structural=True, description="remove whole output channels (filters) of the coupled group")
def _channel(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    root = ctx.layer(ctx.live_layers(unit)[0])
    current = out_channels(root)
    n_remove = current - kept_channels(unit.channels, ratio, multiple)
    if n_remove <= 0:
        return
    handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
    group = ctx.graph.get_pruning_group(root, handler, idxs=list(range(current)))
    scores = channel_scores(ctx, unit, criterion, group)
    idxs = torch.argsort(scores)[:n_remove].tolist()
    ctx.graph.get_pruning_group(root, handler, idxs=idxs).prune()


def _aligned_channel_granularity(match: re.Match) -> Granularity:
    """``channel:K``: channel pruning whose kept counts are multiples of ``K``.

    A runtime's fast kernels often work on blocks of channels (ONNX Runtime's NCHWc layout
    on AVX-512 uses 16): a MobileNetV2 at 28x28 with 80% of its channels removed ran 0.8x
    of the dense model's speed unrounded, 2.9x with counts in multiples of 16
    (bench/results/reach.md). Offered beside ``channel``, the search chooses per unit."""
    k = int(match.group(1))
    if k < 2:
        raise AutopruneError(f"granularity {match.group(0)!r}: the channel multiple must be at least 2 (plain 'channel' keeps any count)")

    def apply(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
        _channel(ctx, unit, ratio, criterion, math.lcm(multiple, k))

    apply.__doc__ = f"remove whole output channels, keeping a multiple of {k}"
    return dataclasses.replace(make_granularity(match.group(0), apply, True, apply.__doc__), channel_multiple=k)


GRANULARITIES.add_family(r"channel:(\d+)", "channel:K", _aligned_channel_granularity)


@register_granularity("neuron", structural=True, description="remove whole neurons (output features) of linear layers, e.g. a transformer's FFN", kinds=("linear",))
def _neuron(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    _channel(ctx, unit, ratio, criterion, multiple)


def mask_layer(layer: nn.Module, keep: torch.Tensor) -> None:
    """Add a pruning mask (1 = keep) to ``layer.weight``, combined with any mask already there."""
    prune.custom_from_mask(layer, "weight", keep.to(dtype=layer.weight.dtype, device=layer.weight.device))


def masked_fraction(layer: nn.Module) -> float:
    """Fraction of ``layer.weight`` that is zero (masks applied)."""
    weight = layer.weight
    return float((weight == 0).sum()) / weight.numel()


@register_granularity("unstructured", structural=False, description="zero the lowest-scoring individual weights of the unit's layers")
def _unstructured(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    for name in ctx.live_layers(unit):
        layer = ctx.layer(name)
        scores = weight_scores(ctx, layer, criterion).flatten()
        n_prune = int(round(ratio * scores.numel()))
        if n_prune <= 0:
            continue
        keep = torch.ones_like(scores)
        keep[torch.argsort(scores)[:n_prune]] = 0
        mask_layer(layer, keep.view_as(layer.weight))


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
