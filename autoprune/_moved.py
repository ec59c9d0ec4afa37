"""Old module paths of the flat layout, importable for one more release with a DeprecationWarning.

``import autoprune.executor`` (0.1) now gives :mod:`autoprune.engine.executor` and warns once.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence

#: old module (below ``autoprune.``) -> new module; a subpackage maps with everything below it.
MOVED = {
    "errors": "core.errors",
    "registry": "core.registry",
    "yamlio": "core.yamlio",
    "plan": "core.plan",
    "pareto": "core.pareto",
    "config": "core.config",
    "objectives": "core.objectives",
    "distill": "training.distill",
    "placement": "training.placement",
    "text_task": "tasks.text",
    "models": "tasks.models",
    "units": "pruning.units",
    "structure": "pruning.structure",
    "criteria": "pruning.criteria",
    "granularity": "pruning.granularity",
    "depth": "pruning.depth",
    "heads": "pruning.heads",
    "sparse": "pruning.sparse",
    "apply": "pruning.apply",
    "search_space": "pruning.space",
    "metrics": "pruning.metrics",
    "devices": "latency.devices",
    "backends": "latency.backends",
    "lut": "latency.lut",
    "transformer_kernels": "latency.lut.transformer",
    "remote": "latency.remote",
    "study": "results.study",
    "front": "results.front",
    "report": "results.report",
    "context": "engine.context",
    "trial": "engine.trial",
    "executor": "engine.executor",
    "ray_executor": "engine.ray_executor",
    "tune_searcher": "engine.tune_searcher",
    "stopping": "engine.stopping",
    "cost_model": "engine.cost_model",
    "controllers.compare": "engine.compare",
    "controllers": "engine.controllers",
    "export": "deploy.export",
    "quantize": "deploy.quantize",
    "schedule": "deploy.gradual",
    "commands": "cli",
}


def new_name(old: str) -> Optional[str]:
    """The new dotted name of an old ``autoprune.*`` module, or None when it did not move."""
    tail = old.removeprefix("autoprune.")
    for prefix in sorted(MOVED, key=len, reverse=True):
        if tail == prefix or tail.startswith(prefix + "."):
            return "autoprune." + MOVED[prefix] + tail[len(prefix):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; the old path goes away in the next release", DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``autoprune.<old path>`` and hands out the module at its new path."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if not fullname.startswith("autoprune."):
            return None
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder first: an old path never names a file of this layout."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
