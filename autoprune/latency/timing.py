"""Timing: one place for how latency is measured (warm-up, repeats, median and spread,
alternating rounds), shared by the backends, the latency tables and the export."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LatencyStats:
    """Timing of one model on one backend, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def time_runner(run: Runner, x: np.ndarray, warmup: int = 10, repeats: int = 50) -> LatencyStats:
    """Median and 10th/90th percentile wall time of ``run(x)`` after ``warmup`` calls."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return LatencyStats(statistics.median(times), q[0], q[-1], len(times))


class FileMeasurer(Protocol):
    """Times an exported file somewhere else, like ``Backend.measure``."""

    def __call__(self, path: Path, example_input: np.ndarray, threads: int = 1, warmup: int = 20, repeats: int = 100) -> LatencyStats: ...


class TimingSettings(Protocol):
    """How a device times a model (a :class:`autoprune.latency.devices.DeviceProfile`)."""

    threads: int
    warmup: int
    repeats: int


#: Latency timed in this many alternating rounds (member, dense, member, ...); the
#: median of the rounds' medians is reported, so drift on a busy machine hits both.
MEASURE_ROUNDS = 3


def measure_interleaved(measure: FileMeasurer, paths: Sequence[Path], x: np.ndarray, profile: TimingSettings, rounds: int = MEASURE_ROUNDS) -> list[LatencyStats]:
    """Time several files in alternating rounds; per file, the round whose median is the
    median of the rounds (so its spread belongs to that median)."""
    per_file: list[list[LatencyStats]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, path in enumerate(paths):
            per_file[i].append(measure(path, x, profile.threads, profile.warmup, profile.repeats))
    chosen = []
    for stats in per_file:
        mid = statistics.median_low([s.median_ms for s in stats])
        chosen.append(next(s for s in stats if s.median_ms == mid))
    return chosen
