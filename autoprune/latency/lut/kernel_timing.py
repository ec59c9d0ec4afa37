"""Timing kernels for a latency table: each key's kernel model beside a fixed reference kernel, as ratios to it."""
from __future__ import annotations

from typing import Optional, Sequence

from autoprune.latency.backends import LatencyStats, get_backend
from autoprune.latency.devices import DeviceProfile
from autoprune.latency.lut.kernel_key import KernelKey
from autoprune.latency.lut.kernels import SEQUENCE_OPS, kernel_model
from autoprune.latency.lut.measure import (
    Rounds,
    RoundsProgress,
    Write,
    measure_files,
    measure_relative,
    model_writer,
)
from autoprune.latency.lut.table import LatencyTable
from autoprune.latency.lut.tflite_kernels import TFLiteKernelWriter
from autoprune.latency.timing import FileMeasurer

#: The kernel timed in the same rounds as every chunk of kernels: rows are stored as their
#: ratio to it (times its first measurement), so a slow spell during one chunk does not
#: make that chunk's kernels look slow next to the others.
REFERENCE_KERNEL = KernelKey("conv", 16, 16, 16, 16, 3, 1, 1, 1, "relu")


#: Kernels: rounds until every ratio is known within 3%, at most this many seconds a chunk.
KERNEL_CHUNK_CAP_S = 10.0


def kernel_writes(device: DeviceProfile, keys: Sequence[KernelKey]) -> list[Write]:
    """How to write each key's kernel model: from templates for LiteRT, by export otherwise."""
    backend = get_backend(device.backend)
    exported = [model_writer(backend, lambda k=k: kernel_model(k, device.backend, device.batch_size)) for k in keys]
    if device.backend == "tflite":
        writer = _TFLITE_WRITERS.setdefault(device.batch_size, TFLiteKernelWriter(backend, device.batch_size))
        return [w if k.op in SEQUENCE_OPS else (lambda path, k=k: writer.write(k, path)) for k, w in zip(keys, exported)]
    return exported


def measure_keys(
    device: DeviceProfile,
    keys: Sequence[KernelKey],
    table: LatencyTable,
    rounds: int = 3,
    measurer: Optional[FileMeasurer] = None,
    cap_s: float = KERNEL_CHUNK_CAP_S,
    on_rounds: Optional[RoundsProgress] = None,
) -> list[tuple[KernelKey, LatencyStats, dict]]:
    """Time each key's kernel model on the device, with the columns the table's context
    model needs; returns rows for :meth:`LatencyTable.append`.

    Locally the keys are timed beside :data:`REFERENCE_KERNEL` (at least ``rounds`` rounds,
    more until each ratio is within 3%, at most ``cap_s`` seconds) and each row is its ratio
    to the reference times the reference's latency in the table's first chunk
    (``reference_kernel_ms``): chunks timed minutes apart share one scale. A remote device
    is timed file by file in ``rounds`` rounds.
    """
    if measurer is not None:
        stats = measure_files(device, kernel_writes(device, keys), rounds=rounds, measurer=measurer)
        return [(k, s, {}) for k, s in zip(keys, stats)]
    probes: list[dict] = []
    nchwc = table.meta.context == "onnxruntime-nchwc"
    inspect = None
    if nchwc:
        from autoprune.latency.lut.ort_layout import probe, row_columns

        inspect = lambda p, x: probe(p, x, device.threads)  # noqa: E731
    reference = kernel_writes(device, [REFERENCE_KERNEL])[0]
    plan = Rounds(min_rounds=max(rounds, 2), max_rounds=max(rounds, 30), ci_pct=3.0, time_cap_s=cap_s)
    ref_stats, stats, relative = measure_relative(device, kernel_writes(device, keys), reference, plan, 1, on_rounds, inspect, probes)[0]
    if not table.meta.reference_kernel_ms:
        table.meta.reference_kernel, table.meta.reference_kernel_ms = REFERENCE_KERNEL.id, ref_stats.median_ms
    anchor = table.meta.reference_kernel_ms
    rows = []
    for i, (k, s, r) in enumerate(zip(keys, stats, relative)):
        scaled = scale_stats(s, r.ratio * anchor)
        rows.append((k, scaled, row_columns(probes[i], scaled.median_ms, table.meta.overhead_ms) if nchwc else {}))
    return rows


_TFLITE_WRITERS: dict[int, TFLiteKernelWriter] = {}


def scale_stats(stats: LatencyStats, median_ms: float) -> LatencyStats:
    """``stats`` moved to ``median_ms``, its spread kept in proportion."""
    f = median_ms / stats.median_ms if stats.median_ms > 0 else 1.0
    return LatencyStats(median_ms, stats.p10_ms * f, stats.p90_ms * f, stats.repeats)
