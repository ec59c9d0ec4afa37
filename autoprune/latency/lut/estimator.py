"""Predict a model's latency on a device from its latency table.

The model's kernels are read off its graph (:func:`.keys.extract_kernels`; attention and
FFN kernels for BERT-style encoders), looked up in the table (sparse layers as their dense
kernel unless the table measures sparse keys) and summed; the device's calibration for that
architecture, or for its family when the architecture was calibrated on too few models
(variants with removed blocks or layers), turns the sum into end-to-end milliseconds. A key the table lacks is measured on the spot when the device is
this machine (and added to the table, in the user's copy of a shipped profile); on any other
device it is an error naming the key.

:func:`table_fitness` says whether a table may stand in for measurements on this machine
(``latency: auto`` measures instead when it may not, see :func:`autoprune.latency.estimator_for`).
"""
from __future__ import annotations

import warnings
from typing import Optional

import pandas as pd
import torch
from torch import nn

from autoprune.core.errors import MissingLatencyKeyError
from autoprune.latency.devices import DeviceProfile, is_shipped, writable_profile
from autoprune.latency.lut.kernel_key import Kernel, weight_mb
from autoprune.latency.lut.keys import architecture, extract_kernels
from autoprune.latency.lut.table import (
    Calibration,
    LatencyTable,
    LatencyTableWarning,
    kernel_sum,
    load_table,
)
from autoprune.latency.measured import LatencyEstimator


class LUTEstimator(LatencyEstimator):
    """Latency from the device's lookup table (see the module doc)."""

    method = "lut"

    def __init__(
        self, device: DeviceProfile, table: Optional[LatencyTable] = None, measure_missing: Optional[bool] = None, read_only: bool = False
    ) -> None:
        super().__init__(device)
        self.table = table if table is not None else load_table(device)
        self.measure_missing = device.local if measure_missing is None else measure_missing
        self.read_only = read_only
        self._calibrations: dict[str, Calibration] = {}
        self.measured_on_demand = 0

    def kernels(self, model: nn.Module, example_input: torch.Tensor) -> list[Kernel]:
        """The model's kernels, every one of them in the table (measuring or raising as needed)."""
        kernels = self.table.lookup(extract_kernels(model, example_input[:1]))
        missing = list(dict.fromkeys(k.key for k in kernels if k.key not in self.table))
        if missing:
            if not self.measure_missing:
                shown = ", ".join(k.id for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise MissingLatencyKeyError(
                    f"latency table {self.table.table_path} of device {self.device.name!r} has no row for kernel {shown}; "
                    f"the device is not local, so profile it for this search space (`autoprune profile --device {self.device.name}`) "
                    "or use `latency: measured`"
                )
            from autoprune.latency.lut.kernel_timing import measure_keys

            if is_shipped(self.device):
                self.device = writable_profile(self.device, with_table=True)
                self.table.folder = self.device.path
            rows = measure_keys(self.device, missing, self.table)
            if self.read_only:
                for row in rows:
                    self.table.add(*row)
            else:
                self.table.append(rows)
            self.measured_on_demand += len(missing)
        return kernels

    def calibration(self, kernels: list[Kernel], model: nn.Module, example_input: torch.Tensor) -> Calibration:
        signature, family = architecture(kernels, model, example_input[:1])
        if signature not in self._calibrations:
            cal = self.table.calibration_for(signature, family)
            if not cal.source.startswith(("model", "family")):
                warnings.warn(
                    f"device {self.device.name!r}: no end-to-end calibration for {signature} in {self.table.meta_path}; "
                    f"using the {cal.source} calibration. Run `autoprune profile` for this model to calibrate it.",
                    LatencyTableWarning,
                    stacklevel=3,
                )
            self._calibrations[signature] = cal
        return self._calibrations[signature]

    def latency_ms(self, model: nn.Module, example_input: torch.Tensor) -> float:
        kernels = self.kernels(model, example_input)
        total = kernel_sum(self.table, kernels)
        return float(self.calibration(kernels, model, example_input).predict(len(kernels), total, weight_mb(kernels)))

    def breakdown(self, model: nn.Module, example_input: torch.Tensor) -> pd.DataFrame:
        """One row per kernel of the model: layer, key and table latency (before calibration)."""
        kernels = self.kernels(model, example_input)
        return pd.DataFrame(
            [{"layer": k.layer or "", "key": k.key.id, "op": k.key.op, "ms": self.table.ms(k.key)} for k in kernels]
        )


#: A table that validated below this share of plans within ±10% is not used by ``latency: auto``.
MIN_WITHIN_10_PCT = 80.0


def table_fitness(device: DeviceProfile, model: Optional[nn.Module] = None, example_input: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the device's table should not stand in for measurements here, or None when it may.

    Reasons, for a local device: the table was measured on another CPU, with another runtime
    version, or with more threads than this machine has; it was never validated on this
    machine or validated below :data:`MIN_WITHIN_10_PCT` within ±10%. For any device: it
    cannot describe ``model`` (an operation without a latency key, or a kernel it lacks that
    has no kernel model to time).
    """
    import os

    from autoprune.latency.devices import cpu_model
    from autoprune.latency.lut.table import installed_versions

    table = load_table(device, check_versions=False)
    meta = table.meta
    if device.local:
        table_cpu, this_cpu = meta.machine.get("cpu"), cpu_model()
        if table_cpu and table_cpu != this_cpu:
            return f"its table was measured on {table_cpu!r}, this machine is {this_cpu!r}"
        installed = installed_versions(device.backend)
        changed = [f"{name} {was} (table) vs {installed[name]} (installed)" for name, was in meta.versions.items() if name in installed and installed[name] != was]
        if changed:
            return f"its table was measured with other runtime versions: {'; '.join(changed)}"
        if meta.threads > (os.cpu_count() or 1):
            return f"its table was measured with {meta.threads} threads, this machine has {os.cpu_count()} cores"
        if not meta.validation:
            return "its table was never validated on this machine"
        within = float(meta.validation.get("within_10_pct", 0.0))
        if within < MIN_WITHIN_10_PCT:
            noise = meta.validation.get("noise_within_10_pct")
            floor = f" (noise floor {float(noise):.0f}%)" if noise is not None else ""
            return f"its table validated at {within:.0f}% within ±10%{floor}, below {MIN_WITHIN_10_PCT:.0f}%"
    if model is not None and example_input is not None:
        problem = describe_problem(table, device, model, example_input)
        if problem:
            return f"its table cannot describe the model: {problem}"
    return None


def describe_problem(table: LatencyTable, device: DeviceProfile, model: nn.Module, example_input: torch.Tensor) -> Optional[str]:
    """Why ``table`` cannot describe ``model`` (the layer or node and its operation), or None when it can:
    every kernel has a key, and every key the table lacks has a kernel model to time."""
    from autoprune.core.errors import AutopruneError
    from autoprune.latency.lut.kernels import kernel_model

    try:
        kernels = table.lookup(extract_kernels(model, example_input[:1]))
        for key in dict.fromkeys(k.key for k in kernels if k.key not in table):
            kernel_model(key, device.backend, device.batch_size)
    except AutopruneError as err:
        return str(err)
    return None
