"""Timing many small models on a device, interleaved so that load drifts hit all alike.

A shared machine's load comes and goes: timing model A for a second and then model B
for a second can put a burst of load on one of them only. Locally every model is
exported and loaded first, then timed in several rounds that visit all of them in turn;
a model's latency is the median over all its calls, its spread the 10th and 90th
percentiles. A remote device is reached through a ``measure(path, x, threads, warmup,
repeats)`` function (:class:`autoprune.remote.AgentMeasurer`), one file at a time.
"""
from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..backends import Backend, LatencyStats, Runner, get_backend
from ..devices import DeviceProfile
from ..errors import BackendUnavailableError

Build = Callable[[], tuple[nn.Module, torch.Tensor]]
#: Writes a model file at the given path; returns the path and an input for the model.
Write = Callable[[Path], tuple[Path, np.ndarray]]


class FileMeasurer(Protocol):
    """Times an exported file somewhere else, like ``Backend.measure``."""

    def __call__(self, path: Path, example_input: np.ndarray, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats: ...


@dataclass
class Timed:
    """A loaded model ready to time: its runner and input."""

    run: Runner
    x: np.ndarray


def device_backend(device: DeviceProfile) -> Backend:
    """The device's backend, checked to run here."""
    backend = get_backend(device.backend)
    ok, why = backend.available()
    if not ok:
        raise BackendUnavailableError(f"device {device.name!r}: backend {device.backend!r} cannot run here: {why}")
    return backend


@contextmanager
def quiet_export() -> Iterator[None]:
    """Exporters warn about their own deprecations on every call; profiling makes thousands."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def export(backend: Backend, model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    with quiet_export(), torch.no_grad():
        return backend.export(model.eval(), x, path)


def time_interleaved(models: Sequence[Timed], warmup: int = 10, repeats: int = 60, rounds: int = 3) -> list[LatencyStats]:
    """Median and spread of each model's call time, ``repeats`` calls split over ``rounds`` rounds."""
    for m in models:
        for _ in range(warmup):
            m.run(m.x)
    per_round = max(1, -(-repeats // rounds))
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            run, x, out = m.run, m.x, samples[i]
            for _ in range(per_round):
                t0 = time.perf_counter()
                run(x)
                out.append((time.perf_counter() - t0) * 1e3)
    return [stats_of(s) for s in samples]


def stats_of(times: list[float]) -> LatencyStats:
    """Median and 10th/90th percentiles of call times in milliseconds."""
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return LatencyStats(statistics.median(times), q[0], q[-1], len(times))


def model_writer(backend: Backend, build: Build) -> Write:
    """A :data:`Write` exporting the model ``build`` makes with the backend's exporter."""

    def write(path: Path) -> tuple[Path, np.ndarray]:
        model, x = build()
        return export(backend, model, x, path), x.numpy()

    return write


def measure_files(
    device: DeviceProfile,
    writes: Sequence[Write],
    rounds: int = 3,
    measurer: Optional[FileMeasurer] = None,
    repeats: Optional[int] = None,
    inspect: Optional[Callable[[Path, np.ndarray], dict]] = None,
    inspected: Optional[list[dict]] = None,
) -> list[LatencyStats]:
    """Write each model file and time it on ``device`` (see :func:`measure_passes`).

    ``inspect(path, x)``, if given, is called on every file after timing and its results
    appended to ``inspected``.
    """
    return measure_passes(device, writes, 1, rounds, measurer, repeats, inspect, inspected)[0]


def measure_passes(
    device: DeviceProfile,
    writes: Sequence[Write],
    passes: int = 1,
    rounds: int = 3,
    measurer: Optional[FileMeasurer] = None,
    repeats: Optional[int] = None,
    inspect: Optional[Callable[[Path, np.ndarray], dict]] = None,
    inspected: Optional[list[dict]] = None,
) -> list[list[LatencyStats]]:
    """Write each model file once and time every file in each of ``passes`` passes.

    Locally each pass loads the files afresh and times them together, interleaved; with
    ``measurer`` each file is sent to it in turn. ``repeats`` defaults to the device's.
    """
    repeats = repeats or device.repeats
    backend = device_backend(device) if measurer is None else get_backend(device.backend)
    with tempfile.TemporaryDirectory(prefix="autoprune-lut-") as tmp:
        files = [write(Path(tmp) / f"m{i}{backend.suffix}") for i, write in enumerate(writes)]
        results = []
        for _ in range(passes):
            if measurer is not None:
                results.append([measurer(path, x, device.threads, device.warmup, repeats) for path, x in files])
                continue
            loaded = [Timed(backend.load(path, device.threads), x) for path, x in files]
            results.append(time_interleaved(loaded, device.warmup, repeats, rounds))
            del loaded
        if inspect is not None and inspected is not None:
            inspected.extend(inspect(path, x) for path, x in files)
        return results


def measure_models(
    device: DeviceProfile,
    builds: Sequence[Build],
    rounds: int = 3,
    measurer: Optional[FileMeasurer] = None,
    repeats: Optional[int] = None,
) -> list[LatencyStats]:
    """Export the models ``builds`` make with the device's backend and time them (see :func:`measure_files`)."""
    backend = get_backend(device.backend)
    return measure_files(device, [model_writer(backend, b) for b in builds], rounds, measurer, repeats)


def measure_models_passes(
    device: DeviceProfile, builds: Sequence[Build], passes: int, rounds: int = 3, measurer: Optional[FileMeasurer] = None
) -> list[list[LatencyStats]]:
    """Export each model once and time all of them in ``passes`` separate passes."""
    backend = get_backend(device.backend)
    return measure_passes(device, [model_writer(backend, b) for b in builds], passes, rounds, measurer)
