"""Prunable units from Torch-Pruning's dependency graph.

A unit is one group of coupled channels: the output channels of every convolution or
linear layer that must shrink together (through residual adds, BatchNorm, depthwise
convolutions), named after its first such layer in module order.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass(frozen=True)
class Unit:
    """A group of coupled output channels.

    ``layers`` are the conv/linear layers whose output channels the group holds (the
    layers a sparse granularity masks); ``consumers`` those whose input channels follow.
    """

    name: str
    kind: str
    channels: int
    layers: tuple[str, ...]
    consumers: tuple[str, ...]


def stem_and_classifier(model: nn.Module) -> tuple[str | None, str | None]:
    """The first conv/linear layer and the last linear layer, by module order; in a network
    without linear layers (SqueezeNet's convolutional classifier) the last convolution."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return (names[0] if names else None), linears[-1]
    return (names[0] if names else None), (names[-1] if names else None)


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into Torch-Pruning's dependency graph.

    Protected layers are left out when listing groups, not when tracing: passing them to
    the trace makes Torch-Pruning mis-size the indices of groups that reach them.
    """
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def prunable_units(model: nn.Module, example_input: torch.Tensor, protect: Sequence[str] = ("classifier",)) -> list[Unit]:
    """All channel groups of ``model``, minus protected ones, in module order.

    ``protect`` holds ``"stem"`` (the unit of the first layer), ``"classifier"`` (the last
    linear layer's outputs) and glob patterns over unit and layer names.
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    stem, classifier = stem_and_classifier(model)
    ignored = [model.get_submodule(classifier)] if classifier and "classifier" in protect else []
    graph = build_graph(model, example_input)
    units = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES):
        outs, ins = [], []
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, PRUNABLE_TYPES) or module not in names:
                continue
            (outs if graph.is_out_channel_pruning_fn(dep.handler) else ins).append(names[module])
        if not outs:
            continue
        outs = sorted(set(outs), key=order.get)
        first = model.get_submodule(outs[0])
        channels = first.out_channels if isinstance(first, nn.modules.conv._ConvNd) else first.out_features
        unit = Unit(outs[0], "linear" if isinstance(first, nn.Linear) else "conv", channels, tuple(outs), tuple(sorted(set(ins), key=order.get)))
        if _protected(unit, protect, stem):
            continue
        units.append(unit)
    return sorted(units, key=lambda u: order[u.name])


def _protected(unit: Unit, protect: Sequence[str], stem: str | None) -> bool:
    for pattern in protect:
        if pattern == "classifier":
            continue
        if pattern == "stem":
            if stem in unit.layers:
                return True
        elif fnmatch.fnmatchcase(unit.name, pattern) or any(fnmatch.fnmatchcase(layer, pattern) for layer in unit.layers):
            return True
    return False
