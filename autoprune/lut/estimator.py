"""Predict a model's latency on a device from its latency table.

The model's kernels are read off its graph (:func:`.keys.extract_kernels`; attention and
FFN kernels for BERT-style encoders), looked up in the table (sparse layers as their dense
kernel unless the table measures sparse keys) and summed; the device's calibration for that
architecture, or for its family when the architecture was calibrated on too few models
(variants with removed blocks or layers), turns the sum into end-to-end milliseconds. A key the table lacks is measured on the spot when the device is
this machine (and added to the table, in the user's copy of a shipped profile); on any other
device it is an error naming the key.
"""
from __future__ import annotations

import warnings
from typing import Optional

import pandas as pd
import torch
from torch import nn

from ..devices import DeviceProfile, is_shipped, writable_profile
from ..errors import MissingLatencyKeyError
from ..latency import LatencyEstimator
from .keys import Kernel, architecture, extract_kernels, weight_mb
from .table import Calibration, LatencyTable, LatencyTableWarning, kernel_sum, load_table


class LUTEstimator(LatencyEstimator):
    """Latency from the device's lookup table (see the module doc)."""

    method = "lut"

    def __init__(self, device: DeviceProfile, table: Optional[LatencyTable] = None, measure_missing: Optional[bool] = None) -> None:
        super().__init__(device)
        self.table = table if table is not None else load_table(device)
        self.measure_missing = device.local if measure_missing is None else measure_missing
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
            from .profiler import measure_keys

            if is_shipped(self.device):
                self.device = writable_profile(self.device, with_table=True)
                self.table.folder = self.device.path
            self.table.append(measure_keys(self.device, missing, self.table))
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
