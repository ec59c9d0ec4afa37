"""Units beyond channel groups: attention heads and removable blocks, merged with the graph's units.

:func:`search_units` is what a study binds its search space to. The dependency-graph unit
coupling an attention module's query/key/value outputs is replaced by that module's
``heads`` unit (its channels can only go by whole heads); ``depth`` units are added.
A rule binds a unit only if one of its granularities applies to the unit's kind, so
channel-only search spaces are unaffected.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autoprune.pruning.depth import depth_units
from autoprune.pruning.heads import head_units
from autoprune.pruning.units import (
    Unit,
    _protected,
    prunable_units,
    stem_and_classifier,
)


def with_structure_units(model: nn.Module, example_input: torch.Tensor, units: list[Unit], protect: Sequence[str] = ()) -> list[Unit]:
    """``units`` (from :func:`autoprune.pruning.units.prunable_units`) plus head and depth units."""
    stem, _ = stem_and_classifier(model)
    heads = [u for u in head_units(model, units) if not _protected(u, protect, stem)]
    covered = {layer for u in heads for layer in u.layers}
    merged = [u for u in units if not (set(u.layers) & covered)] + heads
    merged += [u for u in depth_units(model, example_input) if not _protected(u, protect, stem)]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(merged, key=lambda u: order.get(u.name, len(order)))


def search_units(model: nn.Module, example_input: torch.Tensor, protect: Sequence[str] = ("classifier",)) -> list[Unit]:
    """Every unit a search space may bind: channel groups, attention heads and depth units."""
    return with_structure_units(model, example_input, prunable_units(model, example_input, protect), protect)
