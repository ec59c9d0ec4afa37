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
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from autoprune.core.errors import ConfigError
from autoprune.core.plan import Plan
from autoprune.latency.backends import get_backend
from autoprune.latency.devices import DeviceProfile, writable_profile
from autoprune.latency.lut.enumeration import enumerate_keys
from autoprune.latency.lut.kernel_key import KernelKey, weight_mb
from autoprune.latency.lut.kernel_timing import (
    REFERENCE_KERNEL,
    kernel_writes,
    measure_keys,
    scale_stats,
)
from autoprune.latency.lut.kernels import CHANNELS_LAST_BACKENDS
from autoprune.latency.lut.keys import architecture, extract_kernels
from autoprune.latency.lut.measure import (
    Relative,
    Rounds,
    RoundsProgress,
    measure_files,
    measure_relative,
    model_writer,
)
from autoprune.latency.lut.plans import (
    MODEL_CI_PCT,
    calibration_plans,
    without_gradients,
)
from autoprune.latency.lut.table import (
    Calibration,
    CalibrationPoint,
    LatencyTable,
    has_table,
    installed_versions,
    kernel_sum,
    load_table,
)
from autoprune.latency.measured import batched, deployable
from autoprune.latency.timing import FileMeasurer
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration as CriterionData
from autoprune.pruning.space import UnitSpace
from autoprune.pruning.units import Unit
from autoprune.tasks.base import Task

#: Interleaved rounds at least, when kernels are timed with the calibration models: finely
#: interleaved, kernels and models see the same share of a busy machine.
JOINT_ROUNDS = 20
#: The empty kernel timed to learn a runtime's per-call overhead.
EMPTY_KERNEL = KernelKey("act", 1, 1, 1, 1, act="relu")
#: Plans ``autoprune profile`` validates its own table on (random ones, besides the uniform sweep).
SELF_CHECK_RANDOM = 4

#: Called while rounds go on: (stage, rounds done, seconds spent, worst interval in %, time cap in s).
StageProgress = Callable[[str, int, float, float, float], None]


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
    validation: Optional[Any] = None

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
    time_cap_s: float = 120.0,
    on_rounds: Optional[StageProgress] = None,
    self_check: bool = True,
) -> ProfileReport:
    """Fill ``device``'s table (in the user's profile folder: a shipped profile's ``device.yaml``
    is copied there and gets a table of this machine's own) with every kernel ``space`` can
    produce for ``model``, calibrate the model's end-to-end latency, and validate the result.

    Calibration times the plans of :func:`calibration_plans` (``calibration`` random ones
    beside the uniform sweep and the corners) in rounds beside the dense model, until every
    ratio to it is known within 1.5% or ``time_cap_s`` seconds have passed. ``progress(done,
    total)`` is called after each chunk of kernels, ``on_rounds`` after each round of
    calibration and validation. Keys already in the table are not measured again, nor is a
    model whose calibration points exist. ``data`` (training batches and loss) lets plans
    use gradient criteria such as ``taylor``; without it they rank by ``l1``.
    ``sparse_keys`` is the setting of a new table (see :class:`.table.TableMeta`). A
    transformer family calibrated for the first time has its kernels timed together with
    the calibration models. With ``self_check`` (a local device only) the table is then
    validated on the uniform sweep and a few random plans, and the figure stored in the
    table's metadata (``validation``).
    """
    from autoprune.latency.lut.transformer import is_transformer

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
    have = [p for p in table.meta.calibration if p.family == family and (p.ratio is not None or measurer is not None)]
    joint = is_transformer(model) and not have and calibration > 0
    if progress:
        progress(0, len(todo))
    for i in range(0, len(todo) if not joint else 0, chunk):
        part = todo[i : i + chunk]
        table.append(measure_keys(device, part, table, rounds, measurer))
        if progress:
            progress(min(i + chunk, len(todo)), len(todo))
    table.save_meta()
    kernel_s = time.perf_counter() - start
    t = time.perf_counter()
    if not have and calibration >= 0:
        multiples = {name: us.rule.channel_multiple for name, us in space.items()}
        plans = calibration_plans(space, calibration, seed)
        if data is None:
            plans = [(label, without_gradients(plan)) for label, plan in plans]
        timed_with, joint_rounds = (keys, max(rounds, JOINT_ROUNDS)) if joint else ((), rounds)
        stage = _stage_progress(on_rounds, "calibration", time_cap_s)
        points = calibrate(device, table, model, example_input, units, plans, multiples, joint_rounds, measurer, data, timed_with, time_cap_s, stage)
        table.meta.calibration = [p for p in table.meta.calibration if p.family != family] + points
        table.save_meta()
        if joint and progress:
            progress(len(todo), len(todo))
    calibration_s = time.perf_counter() - t
    report = ProfileReport(
        device=device.name, model=signature, keys=len(keys), measured=len(todo), reused=reused,
        wall_s=0.0, kernel_s=kernel_s, calibration_s=calibration_s,
        calibration=table.calibration_for(signature, family),
        calibration_points=len([p for p in table.meta.calibration if p.family == family]), table=str(table.table_path),
    )
    if self_check and measurer is None and device.local:
        from autoprune.latency.lut.validate import validate

        check = validate(
            device, model, example_input, units, space, n=SELF_CHECK_RANDOM, seed=seed + 7, rounds=rounds, data=data,
            time_cap_s=time_cap_s / 2, on_rounds=_stage_progress(on_rounds, "self-check", time_cap_s / 2),
        )
        table = load_table(device, check_versions=False)
        table.meta.validation = check.stored()
        table.save_meta()
        report.validation = check
    report.wall_s = time.perf_counter() - start
    return report


def _stage_progress(on_rounds: Optional[StageProgress], stage: str, cap_s: float) -> Optional[RoundsProgress]:
    if on_rounds is None:
        return None
    return lambda done, spent, ci: on_rounds(stage, done, spent, ci, cap_s)


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
    time_cap_s: float = 120.0,
    on_rounds: Optional[RoundsProgress] = None,
) -> list[CalibrationPoint]:
    """Measure each plan's model end to end and pair it with its kernel sum from the table.

    Locally the models are timed beside the dense model and the table's reference kernel,
    in rounds until every ratio to the dense model is within 1.5% (or ``time_cap_s``): a
    point's ``measured_ms`` is its ratio to the dense model times the dense model's latency
    on the table's scale (its ratio to the reference kernel times ``reference_kernel_ms``),
    so a slow spell that hits every model of a round leaves the fit unmoved. Through
    ``measurer`` the models are timed file by file in ``rounds`` rounds.

    Kernels in ``timed_with`` are timed in the same rounds as the models and their rows
    written (replacing older ones): kernel sums and whole models then share the machine's
    conditions, which matters for a few large kernels (transformer layers) whose isolated
    timings otherwise miss a share that depends on the load of the moment. Such kernels take
    no layout columns (they run in plain layouts).
    """
    pruned = [deployable(apply_plan(model, plan, units, example_input, channel_multiples, calibration=data), example_input) for _, plan in plans]
    x = batched(example_input, device.batch_size)
    backend = get_backend(device.backend)
    writes = kernel_writes(device, list(timed_with)) + [model_writer(backend, lambda m=m: (m, x)) for m in pruned]
    relative: list[Optional[Relative]] = [None] * len(plans)
    if measurer is not None:
        stats = measure_files(device, writes, rounds=rounds, measurer=measurer)
    else:
        anchored = bool(table.meta.reference_kernel_ms)
        if anchored:
            writes = kernel_writes(device, [REFERENCE_KERNEL]) + writes
        dense = model_writer(backend, lambda: (deployable(model, example_input), x))
        plan = Rounds(min_rounds=max(rounds, 3), max_rounds=200, ci_pct=MODEL_CI_PCT, time_cap_s=time_cap_s)
        dense_stats, stats, ratios = measure_relative(device, writes, dense, plan, 1, on_rounds)[0]
        dense_ms = dense_stats.median_ms
        if anchored:
            dense_ms = table.meta.reference_kernel_ms / ratios[0].ratio
            stats, ratios = stats[1:], ratios[1:]
        stats = [scale_stats(s, r.ratio * dense_ms) for s, r in zip(stats, ratios)]
        relative = list(ratios[len(timed_with) :])
    if timed_with:
        table.append([(k, s, {}) for k, s in zip(timed_with, stats)])
        stats = stats[len(timed_with) :]
    points = []
    for (label, _), m, s, r in zip(plans, pruned, stats, relative):
        kernels = table.lookup(extract_kernels(m, example_input))
        missing = list(dict.fromkeys(k.key for k in kernels if k.key not in table))
        if missing:
            table.append(measure_keys(device, missing, table, rounds, measurer))
        signature, family = architecture(kernels, m, example_input)
        total = kernel_sum(table, kernels)
        points.append(CalibrationPoint(
            model=signature, family=family, kernels=len(kernels), kernel_sum_ms=total, weight_mb=weight_mb(kernels), measured_ms=s.median_ms, label=label,
            ratio=None if r is None else r.ratio, ci_pct=None if r is None else r.ci_pct,
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
    from autoprune.core.config import resolve_file
    from autoprune.core.paths import SEARCH_SPACES
    from autoprune.pruning.space import SearchSpace
    from autoprune.pruning.structure import search_units
    from autoprune.tasks.base import load_task

    loaded = load_task(task, **dict(task_options or {}))
    space_path = str(resolve_file(space_path, None, SEARCH_SPACES))
    space = SearchSpace.load(space_path)
    units = search_units(loaded.model, loaded.example_input, space.protect)
    bound = space.resolve(units)
    return Target(loaded, {u.name: u for u in units if u.name in bound}, bound, str(space_path))
