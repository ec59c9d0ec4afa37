"""Latency objectives per device.

A :class:`LatencyEstimator` maps a pruned model to milliseconds on one device. The
default measures it for real (export, run, median); a lookup-table predictor plugs in by
implementing the same method, chosen per device by :func:`autoprune.latency.policy.estimator_for`.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from autoprune.core.errors import AutopruneError, BackendUnavailableError
from autoprune.latency.backends import get_backend
from autoprune.latency.devices import DeviceProfile
from autoprune.latency.timing import measure_interleaved
from autoprune.pruning.granularity import fold_masks, refresh_masks

log = logging.getLogger(__name__)


def batched(example_input: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The example input repeated to the device's batch size."""
    return example_input.expand(batch_size, *example_input.shape[1:]).contiguous()


def deployable(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode with masks folded into the weights, ready to export."""
    refresh_masks(model, example_input)
    return fold_masks(copy.deepcopy(model)).eval()


class LatencyEstimator(ABC):
    """Latency of a model on one device, in milliseconds."""

    def __init__(self, device: DeviceProfile) -> None:
        self.device = device

    @abstractmethod
    def latency_ms(self, model: nn.Module, example_input: torch.Tensor) -> float:
        """Predicted or measured latency of ``model`` at the device's batch size."""

    @property
    def method(self) -> str:
        return type(self).__name__


class MeasuredLatency(LatencyEstimator):
    """Export to the device's format and time it on the device's backend (median).

    With a reference (:meth:`set_reference`, the study's dense model) every candidate is timed
    in rounds interleaved with the reference and reported on the scale of the reference's
    first timing: a slow spell of a busy machine moves candidate and reference alike, so a
    study's latencies, the dense baseline's included, stay comparable with each other.
    """

    method = "measured"

    def __init__(self, device: DeviceProfile) -> None:
        super().__init__(device)
        self.backend = get_backend(device.backend)
        ok, why = self.backend.available()
        if not ok:
            raise BackendUnavailableError(f"device {device.name!r}: backend {device.backend!r} cannot run here: {why}")
        self.reference: Optional[nn.Module] = None
        self.reference_ms: Optional[float] = None
        self._exported: dict[int, Path] = {}

    def set_reference(self, model: nn.Module) -> None:
        """Time every candidate beside ``model`` from now on (see the class docstring)."""
        self.reference = model
        self.reference_ms = None
        self._exported: dict[int, Path] = {}

    def _reference_file(self, x: torch.Tensor, example_input: torch.Tensor) -> Path:
        """The reference exported once per process (a .tflite conversion takes seconds)."""
        pid = os.getpid()
        if pid not in self._exported:
            folder = Path(tempfile.mkdtemp(prefix="autoprune-reference-"))
            weakref.finalize(self, shutil.rmtree, folder, True)
            self._exported[pid] = self.backend.export(deployable(self.reference, example_input), x, folder / f"reference{self.backend.suffix}")
        return self._exported[pid]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_exported": {}}  # another process exports its own

    def latency_ms(self, model: nn.Module, example_input: torch.Tensor) -> float:
        x = batched(example_input, self.device.batch_size)
        with tempfile.TemporaryDirectory(prefix="autoprune-") as tmp:
            path = self.backend.export(deployable(model, example_input), x, Path(tmp) / f"model{self.backend.suffix}")
            if self.reference is None:
                return self.backend.measure(path, x.numpy(), self.device.threads, self.device.warmup, self.device.repeats).median_ms
            ref_path = self._reference_file(x, example_input)
            ref, candidate = measure_interleaved(self.backend.measure, [ref_path, path], x.numpy(), self.device)
        if self.reference_ms is None:
            self.reference_ms = ref.median_ms
        return candidate.median_ms * self.reference_ms / ref.median_ms


class BadLatencyError(AutopruneError, ValueError):
    """An estimator gave a latency that is not a positive finite number."""


def checked_latencies(estimators: Mapping[str, LatencyEstimator], model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """Latency (ms) of ``model`` on every device; one that is not a positive finite number
    (a broken table or calibration) is an error naming the device, never a value to rank."""
    out = {}
    for device, estimator in estimators.items():
        value = float(estimator.latency_ms(model, example_input))
        if not (math.isfinite(value) and value > 0):
            raise BadLatencyError(f"latency on device {device!r} came out as {value!r} ms ({estimator.method}), not a positive finite number; check its latency table")
        out[device] = value
    return out


