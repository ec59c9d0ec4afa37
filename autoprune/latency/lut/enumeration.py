"""Every kernel key a search space can produce for a model.

A kernel's key depends on the channel counts of at most a few units: the unit feeding its
input channels, the unit holding its output channels, and the unit whose sparse
granularity masks its weights. Which unit drives which field is found by pruning each unit
alone and seeing which keys change; the keys are then enumerated over the product of
those units' options (every channel count the rule allows, rounded to its
``channel_multiple``, and every ratio of its sparse granularities). A sparse key's bucket
and pattern come from applying the granularity itself to a layer of the key's shape, so
they are the ones :func:`.keys.extract_kernels` will read off a pruned model.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Mapping

import torch
from torch import nn

from autoprune.core.plan import Plan, UnitChoice
from autoprune.latency.lut.kernel_key import SPARSITY_STEP, Kernel, KernelKey
from autoprune.latency.lut.keys import extract_kernels, weight_sparsity
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.granularity import (
    GRANULARITIES,
    ORDER_CHANNELS,
    PruneContext,
    granularity_multiple,
    kept_channels,
)
from autoprune.pruning.space import UnitSpace
from autoprune.pruning.units import Unit

#: Ops whose weights sparse granularities mask.
WEIGHTED_OPS = ("conv", "dwconv", "linear")


@dataclass(frozen=True)
class UnitOption:
    """One state a unit can be left in: its channel count, and the sparse granularity and
    ratio masking its layers (``""`` for none)."""

    channels: int
    granularity: str = ""
    ratio: float = 0.0


def unit_options(space: UnitSpace, sparse_keys: bool = True) -> list[UnitOption]:
    """The distinct states the unit's rule allows (sparse ones only with ``sparse_keys``:
    a table keying sparse layers as dense ones needs only their channel counts)."""
    rule, channels = space.rule, space.unit.channels
    ratios = rule.pruning_ratio.grid() if rule.pruning_ratio.step is not None else None
    options: set[UnitOption] = {UnitOption(channels)}
    for name in rule.granularities:
        granularity = GRANULARITIES.get(name)
        if granularity.structural and granularity.order != ORDER_CHANNELS:
            continue  # removing whole blocks or heads removes kernels; it makes no new keys
        if granularity.structural:
            multiple = granularity_multiple(name, rule.channel_multiple)
            if ratios is None:
                low = kept_channels(channels, rule.pruning_ratio.high, multiple)
                high = kept_channels(channels, rule.pruning_ratio.low, multiple)
                counts = {kept_channels(channels, 1 - c / channels, multiple) for c in range(low, high + 1)}
            else:
                counts = {kept_channels(channels, r, multiple) for r in ratios}
            options |= {UnitOption(c) for c in counts}
        elif name != "none" and sparse_keys:
            grid = ratios if ratios is not None else _continuous_grid(rule.pruning_ratio.low, rule.pruning_ratio.high)
            options |= {UnitOption(channels, name, r) for r in grid if r > 0}
    return sorted(options, key=lambda o: (o.channels, o.granularity, o.ratio))


def _continuous_grid(low: float, high: float) -> list[float]:
    """Ratios standing for a continuous range: every sparsity bucket it reaches."""
    n = int(round(1 / SPARSITY_STEP))
    return [round(i * SPARSITY_STEP, 6) for i in range(n) if low - SPARSITY_STEP / 2 <= i * SPARSITY_STEP <= high + SPARSITY_STEP / 2]


@lru_cache(maxsize=None)
def sparse_key(key: KernelKey, granularity: str, ratio: float) -> KernelKey:
    """``key`` with the sparsity bucket and pattern that ``granularity`` at ``ratio`` leaves."""
    from autoprune.latency.lut.kernels import kernel_layer

    layer = kernel_layer(key.dense())
    holder = nn.Sequential(layer)
    unit = Unit("0", "linear" if isinstance(layer, nn.Linear) else "conv", key.cout, ("0",), ())
    GRANULARITIES.get(granularity).apply(PruneContext(holder, torch.zeros(1)), unit, ratio, "l1", 1)
    sparsity, pattern = weight_sparsity(layer)
    return replace(key, sparsity=sparsity, pattern=pattern)


@dataclass(frozen=True)
class KernelDependence:
    """Which units drive a kernel's input channels, output channels and weight sparsity."""

    kernel: Kernel
    cin_unit: str | None
    cout_unit: str | None
    sparse_unit: str | None
    #: Every unit driving the input channels (a concatenation's parts), ``cin_unit`` first.
    cin_units: tuple[str, ...] = ()


def kernel_dependence(
    model: nn.Module, example_input: torch.Tensor, units: Mapping[str, Unit], space: Mapping[str, UnitSpace]
) -> list[KernelDependence]:
    """For each kernel of the dense model, the units its key depends on.

    Each unit of the space is channel-pruned alone; a key field that changes is driven by it.
    """
    dense = extract_kernels(model, example_input)
    cin_of: dict[int, list[str]] = {}
    cout_of: dict[int, str] = {}
    for name in space:
        unit = units[name]
        if unit.channels < 2 or unit.kind not in ("conv", "linear"):
            continue
        plan = Plan.from_dict({name: UnitChoice("channel", 0.5)})
        pruned = extract_kernels(apply_plan(model, plan, units, example_input), example_input)
        for i, (before, after) in enumerate(zip(dense, pruned)):
            if before.key.cin != after.key.cin:
                cin_of.setdefault(i, []).append(name)
            if before.key.cout != after.key.cout and before.key.op in ("conv", "linear"):
                cout_of[i] = name
    sparse_of = {layer: name for name in space for layer in units[name].layers}
    return [
        KernelDependence(k, cin_of[i][-1] if i in cin_of else None, cout_of.get(i), sparse_of.get(k.layer) if k.layer else None, tuple(cin_of.get(i, ())))
        for i, k in enumerate(dense)
    ]


#: A concatenation whose parts' units have more joint states than this is enumerated one
#: part at a time (its other keys are measured when a search meets them).
MAX_CONCAT_STATES = 512


def _input_channels(key: KernelKey, unit_channels: int, kept: int) -> int:
    """``key``'s input channels when its driving unit keeps ``kept`` of ``unit_channels``: a
    concatenation's input is the sum of its parts, a flattened input a multiple of the channels."""
    if key.op == "concat":
        return key.cin - unit_channels + kept
    if key.cin % unit_channels == 0:
        return key.cin // unit_channels * kept
    return kept


def enumerate_keys(
    model: nn.Module, example_input: torch.Tensor, units: Mapping[str, Unit], space: Mapping[str, UnitSpace], sparse_keys: bool = True
) -> list[KernelKey]:
    """Every distinct kernel key that some plan of ``space`` produces for ``model``, sorted.

    Removing residual blocks or transformer layers removes kernels and makes no new keys;
    sparse granularities make keys of their own only with ``sparse_keys`` (else their
    layers are looked up as the dense kernels enumerated here). A BERT-style encoder's
    keys are its attention and FFN kernels (:func:`autoprune.latency.lut.transformer.space_keys`).
    """
    from autoprune.latency.lut.transformer import is_transformer, space_keys

    if is_transformer(model):
        return space_keys(model, space, example_input)
    options = {name: unit_options(us, sparse_keys) for name, us in space.items()}
    keys: set[KernelKey] = set()
    for dep in kernel_dependence(model, example_input, units, space):
        base = dep.kernel.key
        parts = dep.cin_units if base.op == "concat" and math.prod(len(options[u]) for u in dep.cin_units) <= MAX_CONCAT_STATES else ()
        drivers = [u for u in dict.fromkeys((*parts, dep.cin_unit, dep.cout_unit, dep.sparse_unit)) if u is not None]
        for combo in itertools.product(*(options[u] for u in drivers)):
            state = dict(zip(drivers, combo))
            if parts:
                cin = base.cin + sum(state[u].channels - units[u].channels for u in parts)
            else:
                cin = _input_channels(base, units[dep.cin_unit].channels, state[dep.cin_unit].channels) if dep.cin_unit else base.cin
            cout = state[dep.cout_unit].channels if dep.cout_unit else base.cout
            key = base.with_channels(cin, cout)
            sparse = state[dep.sparse_unit] if dep.sparse_unit else None
            if sparse is not None and sparse.granularity and key.op in WEIGHTED_OPS:
                key = sparse_key(key.dense(), sparse.granularity, sparse.ratio)
            keys.add(key)
    return sorted(keys)
