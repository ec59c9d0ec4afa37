"""Timing many small models on a device, interleaved so that load drifts hit all alike.

A shared machine's load comes and goes: timing model A for a second and then model B
for a second can put a burst of load on one of them only. Locally every model is
exported and loaded first, then timed in several rounds that visit all of them in turn;
a model's latency is the median over all its calls, its spread the 10th and 90th
percentiles. A remote device is reached through a ``measure(path, x, threads, warmup,
repeats)`` function (:class:`autoprune.latency.remote.AgentMeasurer`), one file at a time.
"""
from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from autoprune.core.errors import BackendUnavailableError
from autoprune.latency.backends import Backend, LatencyStats, Runner, get_backend
from autoprune.latency.devices import DeviceProfile
from autoprune.latency.timing import FileMeasurer

Build = Callable[[], tuple[nn.Module, torch.Tensor]]
#: Writes a model file at the given path; returns the path and an input for the model.
Write = Callable[[Path], tuple[Path, np.ndarray]]


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


@dataclass(frozen=True)
class Rounds:
    """How long relative timing goes on: at least ``min_rounds``, then until every model's
    ratio to the reference is known within ``ci_pct`` (95% interval, half width, in percent),
    at most ``max_rounds`` or ``time_cap_s`` seconds (the cap wins)."""

    min_rounds: int = 5
    max_rounds: int = 40
    ci_pct: float = 2.0
    time_cap_s: float = 60.0
    calls_per_round: int = 0  # 0: a fifth of the device's repeats (at least 3)


@dataclass(frozen=True)
class Relative:
    """A model's latency as a ratio to the reference timed in the same rounds."""

    ratio: float
    ci_pct: float
    rounds: int


#: Progress of relative timing: (rounds done, seconds spent, worst interval half width in %).
RoundsProgress = Callable[[int, float, float], None]


def ratio_interval(log_ratios: Sequence[float]) -> tuple[float, float]:
    """(ratio, 95% half width in %) from per-round log ratios: the median round ratio, and a
    Student interval on the mean log ratio (a slow spell moves a round's model and reference
    alike, so the round-to-round spread of their ratio is what remains uncertain)."""
    from scipy.stats import t as student

    values = np.asarray(log_ratios, float)
    ratio = float(np.exp(np.median(values)))
    if len(values) < 2:
        return ratio, float("inf")
    half = float(student.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return ratio, float(np.expm1(half) * 100.0)


#: Calls in a row before switching between a model and its reference within a visit.
BLOCK_CALLS = 5


def _timed_calls(m: Timed, calls: int, out: list[float]) -> None:
    run, x = m.run, m.x
    for _ in range(calls):
        t0 = time.perf_counter()
        run(x)
        out.append((time.perf_counter() - t0) * 1e3)


def time_relative(
    models: Sequence[Timed], reference: int, warmup: int = 10, rounds: Rounds = Rounds(), progress: Optional[RoundsProgress] = None
) -> tuple[list[LatencyStats], list[Relative]]:
    """Time ``models`` in rounds, each model's calls beside the reference's, and return every
    model's absolute stats and its ratio to ``models[reference]``.

    Each round visits all models (in an order rotated every round); a visit alternates
    blocks of :data:`BLOCK_CALLS` calls of the model and of the reference until each had
    ``rounds.calls_per_round`` calls, and records the ratio of their medians. On a shared
    machine a slow spell lasts longer than a few calls, so it slows model and reference
    alike and leaves their ratio; the median over rounds of these ratios is the estimate.
    Rounds are added until every ratio's interval is within ``rounds.ci_pct``.
    """
    for m in models:
        for _ in range(warmup):
            m.run(m.x)
    start = time.perf_counter()
    samples: list[list[float]] = [[] for _ in models]
    log_ratios: list[list[float]] = [[] for _ in models]
    n = len(models)
    calls = max(rounds.calls_per_round, 1)
    ref_model = models[reference]
    done = 0
    while True:
        for j in range(n):
            i = (j + done) % n
            if i == reference:
                continue
            mine: list[float] = []
            theirs: list[float] = []
            while len(mine) < calls:
                block = min(BLOCK_CALLS, calls - len(mine))
                _timed_calls(ref_model, block, theirs)
                _timed_calls(models[i], block, mine)
            samples[i].extend(mine)
            samples[reference].extend(theirs)
            log_ratios[i].append(float(np.log(statistics.median(mine) / statistics.median(theirs))))
        done += 1
        intervals = [(1.0, 0.0) if i == reference else ratio_interval(log_ratios[i]) for i in range(n)]
        worst = max(ci for _, ci in intervals) if n > 1 else 0.0
        spent = time.perf_counter() - start
        if progress:
            progress(done, spent, worst)
        if n == 1 or done >= rounds.min_rounds and (worst <= rounds.ci_pct or done >= rounds.max_rounds or spent >= rounds.time_cap_s):
            break
    relative = [Relative(r, ci, done) for r, ci in intervals]
    return [stats_of(s) if s else stats_of([0.0]) for s in samples], relative


def measure_relative(
    device: DeviceProfile,
    writes: Sequence[Write],
    reference: Write,
    rounds: Rounds = Rounds(),
    passes: int = 1,
    progress: Optional[RoundsProgress] = None,
    inspect: Optional[Callable[[Path, np.ndarray], dict]] = None,
    inspected: Optional[list[dict]] = None,
) -> list[tuple[LatencyStats, list[LatencyStats], list[Relative]]]:
    """Write ``reference`` and each model file once; in each of ``passes`` passes load them
    afresh and time them with :func:`time_relative` (locally only: a remote device is timed
    one file at a time). Returns per pass (the reference's stats, each model's stats, each
    model's ratio to the reference)."""
    backend = device_backend(device)
    if not rounds.calls_per_round:
        rounds = replace(rounds, calls_per_round=max(3, device.repeats // 5))
    with tempfile.TemporaryDirectory(prefix="autoprune-lut-") as tmp:
        files = [reference(Path(tmp) / f"ref{backend.suffix}")]
        files += [write(Path(tmp) / f"m{i}{backend.suffix}") for i, write in enumerate(writes)]
        results = []
        for _ in range(passes):
            loaded = [Timed(backend.load(path, device.threads), x) for path, x in files]
            stats, relative = time_relative(loaded, 0, device.warmup, rounds, progress)
            results.append((stats[0], stats[1:], relative[1:]))
            del loaded
        if inspect is not None and inspected is not None:
            inspected.extend(inspect(path, x) for path, x in files[1:])
        return results
