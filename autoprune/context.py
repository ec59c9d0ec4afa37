"""Build what every trial of a study needs, once per process (driver or Ray worker)."""
from __future__ import annotations

import fnmatch
from typing import Any

import torch

from .config import Config
from .devices import load_device
from .errors import ConfigError
from .latency import estimator_for
from .metrics import macs, nonzero_params
from .search_space import SearchSpace
from .structure import with_structure_units
from .tasks import load_task
from .trial import TrialContext
from .units import prunable_units


def build_context(config: Config) -> TrialContext:
    """Task, bound search space, units and one latency estimator per device."""
    task = load_task(config.task, **config.task_options)
    space_path = config.search_space_path()
    space = SearchSpace.load(space_path)
    layer_names = [n for n, _ in task.model.named_modules() if n]
    for i, pattern in enumerate(space.protect):
        if pattern not in ("stem", "classifier") and not any(fnmatch.fnmatchcase(n, pattern) for n in layer_names):
            raise ConfigError(f"{space_path}: protect[{i}] {pattern!r} matches no layer of the model")
    units = with_structure_units(task.model, task.example_input, prunable_units(task.model, task.example_input, space.protect), space.protect)
    bound = space.resolve(units)
    estimators = {name: estimator_for(load_device(name), config.latency, task.model, task.example_input) for name in config.devices}
    return TrialContext(task, {u.name: u for u in units if u.name in bound}, bound, estimators, config.finetune, config.seed)


def dense_baseline(ctx: TrialContext) -> dict[str, Any]:
    """Accuracy, latency per device, params and MACs of the unpruned model."""
    model = ctx.task.model.eval()
    with torch.no_grad():
        accuracy = float(ctx.task.metric(model, ctx.task.val))
    return {
        "accuracy": accuracy,
        "latency_ms": {d: est.latency_ms(model, ctx.task.example_input) for d, est in ctx.estimators.items()},
        "latency_method": {d: est.method for d, est in ctx.estimators.items()},
        "params": nonzero_params(model),
        "macs": macs(model, ctx.task.example_input),
        "units": len(ctx.units),
    }
