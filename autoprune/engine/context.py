"""Build what every trial of a study needs, once per process (driver or Ray worker)."""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch

from autoprune.core.config import Config
from autoprune.core.errors import AutopruneError, ConfigError
from autoprune.engine.trial import TrialContext
from autoprune.latency.devices import DeviceProfile, load_device
from autoprune.latency.lut import has_table, load_table
from autoprune.latency.measured import MeasuredLatency, checked_latencies
from autoprune.latency.policy import estimator_for
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.pruning.space import SearchSpace
from autoprune.pruning.structure import with_structure_units
from autoprune.pruning.units import prunable_units
from autoprune.tasks.base import load_task, task_function


def study_context(config: Config, source: Path, trust_task: bool = False) -> TrialContext:
    """The trial context of a study opened from its directory (``source``, its config file).

    A study's config may name its task as ``module:function``: building the context imports
    that module and calls that function, which runs whatever code it names. A study
    directory from someone else is therefore only opened with ``trust_task``; built-in
    task names are always safe.
    """
    if ":" in config.task and not trust_task:
        raise AutopruneError(
            f"{source}: task {config.task!r} is code the study names, and opening the study would import and run it;"
            " if you trust where this study came from, run again with --trust-task"
        )
    return build_context(config)


def check_inputs(config: Config) -> tuple[SearchSpace, dict[str, DeviceProfile]]:
    """What can be checked before the task is built (which may train the dense model): the
    task's name and options, the search-space file, every device and its latency table.
    Returns the search space and the device profiles."""
    task_function(config.task, config.task_options)
    space_path = config.search_space_path()
    if not space_path.is_file():
        raise ConfigError(f"search_space: file {config.search_space!r} not found (looked beside the config and in search_spaces/)")
    space = SearchSpace.load(space_path)
    devices = {}
    for i, name in enumerate(config.devices):
        try:
            device = load_device(name)
            if config.latency != "measured" and has_table(device):
                load_table(device, check_versions=False)  # a broken table is found now, before the dense model is trained
        except ConfigError as err:
            raise ConfigError(f"devices[{i}]: {err}") from None
        devices[name] = device
    return space, devices


def build_context(config: Config) -> TrialContext:
    """Task, bound search space, units and one latency estimator per device; cheap checks
    (:func:`check_inputs`) come before the task is built."""
    space, devices = check_inputs(config)
    space_path = config.search_space_path()
    task = load_task(config.task, **config.task_options)
    layer_names = [n for n, _ in task.model.named_modules() if n]
    for i, pattern in enumerate(space.protect):
        if pattern not in ("stem", "classifier") and not any(fnmatch.fnmatchcase(n, pattern) for n in layer_names):
            raise ConfigError(f"{space_path}: protect[{i}] {pattern!r} matches no layer of the model")
    units = with_structure_units(task.model, task.example_input, prunable_units(task.model, task.example_input, space.protect), space.protect)
    bound = space.resolve(units)
    estimators = {name: estimator_for(device, config.latency, task.model, task.example_input) for name, device in devices.items()}
    for estimator in estimators.values():
        if isinstance(estimator, MeasuredLatency):
            estimator.set_reference(task.model)  # candidates timed beside the dense model
    return TrialContext(task, {u.name: u for u in units if u.name in bound}, bound, estimators, config.finetune, config.seed)


def dense_baseline(ctx: TrialContext) -> dict[str, Any]:
    """Accuracy, latency per device, params and MACs of the unpruned model."""
    model = ctx.task.model.eval()
    with torch.no_grad():
        accuracy = float(ctx.task.metric(model, ctx.task.val))
    return {
        "accuracy": accuracy,
        "latency_ms": checked_latencies(ctx.estimators, model, ctx.task.example_input),
        "latency_method": {d: est.method for d, est in ctx.estimators.items()},
        "params": nonzero_params(model),
        "macs": macs(model, ctx.task.example_input),
        "units": len(ctx.units),
    }
