"""Profile a device: measure every kernel a search space can produce, then calibrate.

:func:`profile` enumerates the kernel keys of the task's model under the space
(:mod:`.enumeration`), skips those already in the device's table, times the rest in
chunks (each chunk appended to the CSV as soon as it is measured, so a killed run
resumes where it stopped), and finally measures a few whole models end to end (random
plans of the space) to calibrate what a sum of isolated kernels misses: the call
overhead, the framing around each kernel, operator fusion across kernels, and weights
that stop fitting in cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..apply import apply_plan
from ..backends import LatencyStats, get_backend
from ..criteria import GRADIENT_CRITERIA, Calibration as CriterionData
from ..errors import ConfigError
from ..devices import DeviceProfile, writable_profile
from ..latency import batched, deployable
from ..plan import Plan
from ..search_space import UnitSpace
from ..tasks import Task
from ..units import Unit
from .enumeration import enumerate_keys
from .kernels import CHANNELS_LAST_BACKENDS, SEQUENCE_OPS, kernel_model
from .keys import KernelKey, architecture, extract_kernels, weight_mb
from .measure import FileMeasurer, Write, measure_files, model_writer
from .tflite_kernels import TFLiteKernelWriter
from .table import Calibration, CalibrationPoint, LatencyTable, has_table, installed_versions, kernel_sum, load_table

#: Interleaved rounds at least, when kernels are timed with the calibration models: finely
#: interleaved, kernels and models see the same share of a busy machine.
JOINT_ROUNDS = 20
#: The empty kernel timed to learn a runtime's per-call overhead.
EMPTY_KERNEL = KernelKey("act", 1, 1, 1, 1, act="relu")


@dataclass
class ProfileReport:
    """What a profiling run did: key counts, time spent, the resulting calibration."""

    device: str
    model: str
    keys: int
    measured: int
    reused: int
    wall_s: float
    kernel_s: float
    calibration_s: float
    calibration: Calibration
    calibration_points: int
    table: str

    def summary(self) -> str:
        return (
            f"{self.device}: {self.keys} kernel keys for {self.model} ({self.measured} measured now, {self.reused} already in the table) "
            f"in {self.wall_s:.1f} s ({self.kernel_s:.1f} s kernels, {self.calibration_s:.1f} s calibration on {self.calibration_points} models); "
            f"table {self.table}"
        )


def open_table(device: DeviceProfile, remote: bool = False, sparse_keys: Optional[str] = None) -> LatencyTable:
    """The device's table, or a new empty one in its profile folder.

    ``sparse_keys`` (``dense`` or ``measured``) sets how a new table keys sparse layers; for an
    existing table it must agree with the table's setting.
    """
    if has_table(device):
        table = load_table(device)
        if sparse_keys is not None and sparse_keys != table.meta.sparse_keys:
            raise ConfigError(
                f"{table.meta_path}: sparse_keys: the table keys sparse layers as {table.meta.sparse_keys!r}, "
                f"not {sparse_keys!r}; profile into a new device folder to change it"
            )
        return table
    framing = "nhwc" if device.backend in CHANNELS_LAST_BACKENDS else "nchw"
    context = "onnxruntime-nchwc" if device.backend == "onnxruntime-cpu" and device.local and not remote else "sum"
    return LatencyTable.new(device, device.path, installed_versions(device.backend) if not remote else {}, framing, context, sparse_keys)


_TFLITE_WRITERS: dict[int, TFLiteKernelWriter] = {}


def kernel_writes(device: DeviceProfile, keys: Sequence[KernelKey]) -> list[Write]:
    """How to write each key's kernel model: from templates for LiteRT, by export otherwise."""
    backend = get_backend(device.backend)
    exported = [model_writer(backend, lambda k=k: kernel_model(k, device.backend, device.batch_size)) for k in keys]
    if device.backend == "tflite":
        writer = _TFLITE_WRITERS.setdefault(device.batch_size, TFLiteKernelWriter(backend, device.batch_size))
        return [w if k.op in SEQUENCE_OPS else (lambda path, k=k: writer.write(k, path)) for k, w in zip(keys, exported)]
    return exported


def measure_keys(
    device: DeviceProfile, keys: Sequence[KernelKey], table: LatencyTable, rounds: int = 3, measurer: Optional[FileMeasurer] = None
) -> list[tuple[KernelKey, LatencyStats, dict]]:
    """Time each key's kernel model on the device (interleaved locally), with the columns
    the table's context model needs; returns rows for :meth:`LatencyTable.append`."""
    if table.meta.context == "onnxruntime-nchwc" and measurer is None:
        from .ort_layout import probe, row_columns

        probes: list[dict] = []
        stats = measure_files(device, kernel_writes(device, keys), rounds=rounds, inspect=lambda p, x: probe(p, x, device.threads), inspected=probes)
        return [(k, s, row_columns(info, s.median_ms, table.meta.overhead_ms)) for k, s, info in zip(keys, stats, probes)]
    stats = measure_files(device, kernel_writes(device, keys), rounds=rounds, measurer=measurer)
    return [(k, s, {}) for k, s in zip(keys, stats)]


def calibration_plans(space: Mapping[str, UnitSpace], n: int, seed: int = 0) -> list[tuple[str, Plan]]:
    """``n`` random plans of the space.

    Random plans are what the search and :func:`.validate.validate` draw from; extreme
    plans (the dense model, everything at the highest ratio) have so much leverage on a
    least-squares fit that they bent it away from the bulk of the space (on the digits
    ResNet with LiteRT: MAPE 6.6% with them, 4.3% without, same points otherwise).
    """
    from ..controllers import random_plan

    rng = np.random.default_rng(seed + 1_000_003)
    return [(f"random-{i}", random_plan(space, rng)) for i in range(n)]


def without_gradients(plan: Plan) -> Plan:
    """``plan`` with criteria that need gradients replaced by ``l1``: for latency only, when no
    training data is at hand (which channels go changes little of how long the model takes)."""
    return Plan.from_dict({name: replace(c, criterion="l1") if c.criterion in GRADIENT_CRITERIA else c for name, c in plan})


def profile(
    device: DeviceProfile,
    model: nn.Module,
    example_input: torch.Tensor,
    units: Mapping[str, Unit],
    space: Mapping[str, UnitSpace],
    calibration: int = 12,
    rounds: int = 3,
    chunk: int = 32,
    seed: int = 0,
    measurer: Optional[FileMeasurer] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    data: Optional[CriterionData] = None,
    sparse_keys: Optional[str] = None,
) -> ProfileReport:
    """Fill ``device``'s table (in the user's profile folder: a shipped profile's ``device.yaml``
    is copied there and gets a table of this machine's own) with every kernel ``space`` can produce for ``model`` and
    calibrate the model's end-to-end latency from ``calibration`` whole-model measurements.

    ``progress(done, total)`` is called after each chunk of kernels. Keys already in the
    table are not measured again, nor is a model family whose calibration points exist.
    ``data`` (training batches and loss) lets calibration plans use gradient criteria such
    as ``taylor``; without it they rank by ``l1``. ``sparse_keys`` is the setting of a new
    table (see :class:`.table.TableMeta`). A transformer family calibrated for the first time
    has its kernels timed together with the calibration models (see :func:`calibrate`).
    """
    from ..transformer_kernels import is_transformer

    start = time.perf_counter()
    device = writable_profile(device, with_table=False)
    table = open_table(device, remote=measurer is not None, sparse_keys=sparse_keys)
    if measurer is not None:
        table.meta.notes = table.meta.notes or "measured through a remote measurer"
        describe = getattr(measurer, "describe", None)
        if callable(describe):
            table.meta.machine = describe()
    if not table.meta.overhead_ms:
        table.meta.overhead_ms = measure_files(device, kernel_writes(device, [EMPTY_KERNEL]), rounds=rounds, measurer=measurer)[0].median_ms
        table.save_meta()
    keys = enumerate_keys(model, example_input, units, space, sparse_keys=table.meta.sparse_keys == "measured")
    todo = [k for k in keys if k not in table]
    reused = len(keys) - len(todo)
    signature, family = architecture(extract_kernels(model, example_input), model, example_input)
    have = [p for p in table.meta.calibration if p.family == family]
    joint = is_transformer(model) and not have and calibration > 0
    if progress:
        progress(0, len(todo))
    for i in range(0, len(todo) if not joint else 0, chunk):
        part = todo[i : i + chunk]
        table.append(measure_keys(device, part, table, rounds, measurer))
        if progress:
            progress(min(i + chunk, len(todo)), len(todo))
    kernel_s = time.perf_counter() - start
    t = time.perf_counter()
    if len(have) < calibration:
        multiples = {name: us.rule.channel_multiple for name, us in space.items()}
        plans = calibration_plans(space, calibration, seed)[len(have) :]
        if data is None:
            plans = [(label, without_gradients(plan)) for label, plan in plans]
        timed_with, joint_rounds = (keys, max(rounds, JOINT_ROUNDS)) if joint else ((), rounds)
        table.meta.calibration.extend(calibrate(device, table, model, example_input, units, plans, multiples, joint_rounds, measurer, data, timed_with))
        table.save_meta()
        if joint and progress:
            progress(len(todo), len(todo))
    calibration_s = time.perf_counter() - t
    return ProfileReport(
        device=device.name, model=signature, keys=len(keys), measured=len(todo), reused=reused,
        wall_s=time.perf_counter() - start, kernel_s=kernel_s, calibration_s=calibration_s,
        calibration=table.calibration_for(signature, family),
        calibration_points=len([p for p in table.meta.calibration if p.family == family]), table=str(table.table_path),
    )


def calibrate(
    device: DeviceProfile,
    table: LatencyTable,
    model: nn.Module,
    example_input: torch.Tensor,
    units: Mapping[str, Unit],
    plans: Sequence[tuple[str, Plan]],
    channel_multiples: Mapping[str, int],
    rounds: int = 3,
    measurer: Optional[FileMeasurer] = None,
    data: Optional[CriterionData] = None,
    timed_with: Sequence[KernelKey] = (),
) -> list[CalibrationPoint]:
    """Measure each plan's model end to end and pair it with its kernel sum from the table.

    Kernels in ``timed_with`` are timed in the same interleaved rounds as the models and
    their rows written (replacing older ones): kernel sums and whole models then share the
    machine's conditions, which matters for a few large kernels (transformer layers) whose
    isolated timings otherwise miss a share that depends on the load of the moment. Such
    kernels take no layout columns (they run in plain layouts).
    """
    pruned = [deployable(apply_plan(model, plan, units, example_input, channel_multiples, calibration=data), example_input) for _, plan in plans]
    x = batched(example_input, device.batch_size)
    backend = get_backend(device.backend)
    writes = kernel_writes(device, list(timed_with)) + [model_writer(backend, lambda m=m: (m, x)) for m in pruned]
    stats = measure_files(device, writes, rounds=rounds, measurer=measurer)
    if timed_with:
        table.append([(k, s, {}) for k, s in zip(timed_with, stats)])
        stats = stats[len(timed_with) :]
    points = []
    for (label, _), m, s in zip(plans, pruned, stats):
        kernels = table.lookup(extract_kernels(m, example_input))
        missing = list(dict.fromkeys(k.key for k in kernels if k.key not in table))
        if missing:
            table.append(measure_keys(device, missing, table, rounds, measurer))
        signature, family = architecture(kernels, m, example_input)
        total = kernel_sum(table, kernels)
        points.append(CalibrationPoint(
            model=signature, family=family, kernels=len(kernels), kernel_sum_ms=total, weight_mb=weight_mb(kernels), measured_ms=s.median_ms, label=label,
        ))
    return points


@dataclass
class Target:
    """A task's model bound to a search space: what profiling and validation work on."""

    task: Task
    units: dict[str, Unit]
    space: dict[str, UnitSpace]
    space_path: str

    @property
    def data(self) -> CriterionData:
        """The task's training batches and loss, for gradient criteria."""
        return CriterionData(self.task.train, self.task.loss)


def bind_task(task: str, space_path: str, task_options: Optional[Mapping[str, Any]] = None) -> Target:
    """Load ``task`` (trained, from the cache when it is) and bind the search space to its units."""
    from ..search_space import SearchSpace
    from ..structure import search_units
    from ..tasks import load_task

    from ..config import resolve_file
    from ..paths import SEARCH_SPACES

    loaded = load_task(task, **dict(task_options or {}))
    space_path = str(resolve_file(space_path, None, SEARCH_SPACES))
    space = SearchSpace.load(space_path)
    units = search_units(loaded.model, loaded.example_input, space.protect)
    bound = space.resolve(units)
    return Target(loaded, {u.name: u for u in units if u.name in bound}, bound, str(space_path))
