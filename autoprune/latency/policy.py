"""Which latency estimator a study uses for a device: its lookup table when it holds here, or measurement."""
from __future__ import annotations

import logging

import torch
from torch import nn

from autoprune.core.errors import ConfigError
from autoprune.latency.devices import DeviceProfile
from autoprune.latency.measured import LatencyEstimator, MeasuredLatency

log = logging.getLogger(__name__)

def estimator_for(
    device: DeviceProfile, method: str = "auto", model: nn.Module | None = None, example_input: torch.Tensor | None = None
) -> LatencyEstimator:
    """The estimator a study uses for ``device``: ``measured``, ``lut``, or ``auto``.

    ``auto`` uses the device's lookup table only when it holds on this machine (see
    :func:`autoprune.latency.lut.estimator.table_fitness`: same CPU, runtime version and threads,
    validated at 80% within ±10% or better, and able to describe ``model`` when given);
    otherwise a local device is measured (a small model takes milliseconds to time) and one
    log line names the reason and the command that fixes it. A remote device's table
    describes that device, not this machine: only whether it can describe ``model`` is
    checked, and where it cannot the table is kept with the same line as a warning.
    """
    if method == "measured":
        return MeasuredLatency(device)
    try:
        from autoprune.latency.lut import LUTEstimator, has_table
        from autoprune.latency.lut.estimator import table_fitness
    except ImportError:
        if method == "lut":
            raise
        return MeasuredLatency(device)
    if method == "lut":
        estimator = LUTEstimator(device)
        if model is not None and example_input is not None:
            from autoprune.latency.lut.estimator import describe_problem

            problem = describe_problem(estimator.table, device, model, example_input)
            if problem:
                raise ConfigError(f"device {device.name!r}: `latency: lut` cannot describe this model: {problem.split('; use `latency: measured`')[0]}; use `latency: auto` or `latency: measured`")
        return estimator
    if not has_table(device):
        log.info("device %r: no latency table; measuring candidates (`autoprune profile --device %s` builds one)", device.name, device.name)
        return MeasuredLatency(device)
    reason = table_fitness(device, model, example_input)
    if reason is None:
        return LUTEstimator(device)
    fix = f"`autoprune profile --device {device.name}` on this machine"
    if not device.local:
        log.warning("device %r: %s; using it anyway (the device is remote and cannot be measured here); re-profile it", device.name, reason)
        return LUTEstimator(device)
    log.warning("device %r: %s; measuring candidates instead of using the table (%s fixes it)", device.name, reason, fix)
    return MeasuredLatency(device)
