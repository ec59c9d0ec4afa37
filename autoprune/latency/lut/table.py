"""The latency table of one device: kernel rows in a CSV file, metadata in a YAML file.

``device_profiles/NAME/latency_table.csv`` has one row per kernel key (the key's fields,
its readable ``key``, and ``median_ms``, ``p10_ms``, ``p90_ms``, ``repeats``,
``measured_at``); rows are appended as they are measured, so a killed profiling run loses
at most the kernels it was timing. ``latency_table.yaml`` says where and with what the
rows were measured (runtime and library versions, threads, batch, dtype, machine, dates,
autoprune version), the per-call overhead of the runtime, and the end-to-end calibration
points that turn a sum of kernels into a model's latency.

Both files are plain: a device that cannot run Python well (see :mod:`autoprune.latency.remote`)
produces the same two files with its own tools.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import platform
import warnings
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from autoprune.core.errors import ConfigError
from autoprune.latency.backends import LatencyStats
from autoprune.latency.devices import DeviceProfile, cpu_model
from autoprune.latency.lut.kernel_key import Kernel, KernelKey

log = logging.getLogger(__name__)

TABLE_FILE = "latency_table.csv"
META_FILE = "latency_table.yaml"
FORMAT_VERSION = 1

KEY_COLUMNS = [f.name for f in fields(KernelKey)]
STAT_COLUMNS = ["median_ms", "p10_ms", "p90_ms", "repeats", "measured_at"]
#: Optional columns a runtime's context model adds (see :mod:`.ort_layout`).
CONTEXT_COLUMNS = ["layout_in", "layout_out", "reorder_in_ms", "reorder_out_ms"]
COLUMNS = ["key", *KEY_COLUMNS, *STAT_COLUMNS, *CONTEXT_COLUMNS]
#: How kernel rows add up to a network: a plain sum, or ONNX Runtime's NCHWc layouts.
CONTEXTS = ("sum", "onnxruntime-nchwc")
#: How weights with zeros are keyed: as their dense kernel, or under sparse keys measured on their own.
SPARSE_KEYS = ("dense", "measured")
#: Backends known to run zero-laden weights (stored dense) faster than dense ones. None of the
#: runtimes here does: ONNX Runtime and LiteRT run them with their dense kernels (XNNPACK's
#: sparse path needs sparse-encoded 1x1 convolutions and is off on x86 with AVX), so their
#: tables key sparse layers as dense ones unless profiled with ``sparse_keys="measured"``.
SPARSE_KERNEL_BACKENDS: frozenset[str] = frozenset()
#: A model's own calibration is used from this many points on; below, its family's (when larger).
MIN_MODEL_POINTS = 5


class LatencyTableWarning(UserWarning):
    """A table was measured with other library versions than those installed now."""


class CalibrationPoint(BaseModel):
    """One model measured end to end: its kernel count and kernel sum against its real latency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., description="architecture signature the point belongs to")
    family: str = Field("", description="model class and input shape, shared by pruned variants")
    kernels: int = Field(..., ge=0)
    kernel_sum_ms: float = Field(..., ge=0, allow_inf_nan=False)
    weight_mb: float = Field(0.0, ge=0, allow_inf_nan=False, description="megabytes of weights the network's kernels read")
    measured_ms: float = Field(..., gt=0, allow_inf_nan=False)
    label: str = ""
    ratio: Optional[float] = Field(None, description="measured latency over the dense model's, timed in the same rounds")
    ci_pct: Optional[float] = Field(None, description="95% interval half width of that ratio, in percent")


class Calibration(BaseModel):
    """``latency = overhead_ms + per_kernel_ms * kernels + scale * kernel_sum_ms + per_mb_ms * weight_mb``.

    ``per_mb_ms`` is what each megabyte of weights costs on top of the kernels timed alone:
    a kernel timed on its own finds its weights in cache, a network larger than the cache
    streams them in on every call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    overhead_ms: float = 0.0
    per_kernel_ms: float = 0.0
    scale: float = 1.0
    per_mb_ms: float = 0.0
    points: int = 0
    source: str = "none"
    flags: list[str] = Field(default_factory=list, description="why the fit was constrained or should not be trusted")

    def predict(self, kernels: int, kernel_sum_ms: float, weight_mb: float = 0.0) -> float:
        return self.overhead_ms + self.per_kernel_ms * kernels + self.scale * kernel_sum_ms + self.per_mb_ms * weight_mb


#: A fitted constant (call overhead plus per-kernel cost) above this share of the lightest
#: calibration model's latency is not believed: it would hide what pruning saves on small models.
MAX_CONSTANT_SHARE = 0.5


def fit_calibration(points: list[CalibrationPoint], overhead_ms: float, source: str) -> Calibration:
    """Fit ``points`` with the call overhead held fixed and every term non-negative.

    Points of one architecture (same kernel count: channel-pruned variants of one model) are
    fitted by non-negative least squares on a constant (the per-kernel cost), the kernel
    sum's scale and the cost per megabyte of weights: none of these makes a network faster,
    so none may come out negative. A constant that would be more than
    :data:`MAX_CONSTANT_SHARE` of the lightest model's latency is flagged, and refused
    (refitted without it) unless it predicts left-out models better than a fit without it:
    fitted on mid-range models such a constant swamped what heavy pruning saves, while a
    runtime's real per-kernel cost, pinned down by the most pruned models, can be that large.

    Points with different kernel counts (variants of other depths) fit the per-kernel cost,
    the scale and the weight cost by least squares, dropping a term that cannot be told apart
    or comes out negative, and keep the kernel sum's scale alone when that predicts left-out
    points better: when whole layers go, the kernel count and the kernel sum move together.
    With fewer than three points only the per-kernel cost is fitted.
    """
    if not points:
        return Calibration(overhead_ms=overhead_ms, per_kernel_ms=-overhead_ms, scale=1.0, source="default", flags=["no calibration points"])
    n = np.array([p.kernels for p in points], dtype=float)
    s = np.array([p.kernel_sum_ms for p in points], dtype=float)
    w = np.array([p.weight_mb for p in points], dtype=float)
    y = np.array([p.measured_ms for p in points], dtype=float) - overhead_ms

    def per_kernel_only(flags: list[str]) -> Calibration:
        per_kernel = float(np.mean((y - s) / np.maximum(n, 1)))
        return Calibration(overhead_ms=overhead_ms, per_kernel_ms=per_kernel, scale=1.0, points=len(points), source=source, flags=flags)

    if len(points) < 3 or np.ptp(s) < 1e-9:
        return per_kernel_only(["too few distinct points: only a per-kernel cost fitted"])
    if np.ptp(n) == 0:
        return _fit_one_architecture(n[0], s, w, y, overhead_ms, source)
    base = n
    terms = ["sum", "mb"] if len(points) >= 5 and np.ptp(w) > 1e-9 else ["sum"]
    while True:
        columns = [base] + [s if t == "sum" else w for t in terms]
        coef, *_ = np.linalg.lstsq(np.stack(columns, axis=1), y, rcond=None)
        fitted = dict(zip(terms, coef[1:]))
        if fitted.get("mb", 0.0) >= 0 and fitted.get("sum", 1.0) > 0 or terms == ["sum"]:
            break
        terms = ["sum"]
    if fitted["sum"] <= 0:
        return per_kernel_only(["the kernel sum came out with a negative scale: only a per-kernel cost fitted"])
    per_kernel = float(coef[0])
    if len(points) >= 4:
        full = np.stack(columns, axis=1)
        if _left_out_error(s[:, None], y) < _left_out_error(full, y):
            scale = float(np.linalg.lstsq(s[:, None], y, rcond=None)[0][0])
            return Calibration(overhead_ms=overhead_ms, per_kernel_ms=0.0, scale=scale, points=len(points), source=source)
    return Calibration(
        overhead_ms=overhead_ms, per_kernel_ms=per_kernel, scale=float(fitted.get("sum", 1.0)),
        per_mb_ms=float(fitted.get("mb", 0.0)), points=len(points), source=source,
    )


def _fit_one_architecture(kernels: float, s: np.ndarray, w: np.ndarray, y: np.ndarray, overhead_ms: float, source: str) -> Calibration:
    """Non-negative fit of ``y = c + a * s + b * w`` for one architecture (see :func:`fit_calibration`)."""
    from scipy.optimize import nnls

    flags: list[str] = []
    use_mb = len(y) >= 5 and np.ptp(w) > 1e-9
    columns = [np.ones_like(s), s] + ([w] if use_mb else [])
    design = np.stack(columns, axis=1)
    coef, _ = nnls(design, y)
    lightest = float(np.min(y + overhead_ms))
    if coef[0] > MAX_CONSTANT_SHARE * lightest:
        share = f"a constant of {coef[0]:.4f} ms is {coef[0] / lightest:.0%} of the lightest model ({lightest:.4f} ms)"
        if _left_out_nnls(design[:, 1:], y) <= _left_out_nnls(design, y):
            flags.append(f"{share}: refitted without it")
            rest, _ = nnls(design[:, 1:], y)
            coef = np.concatenate([[0.0], rest])
        else:
            flags.append(f"{share}: kept, as it predicts left-out models better than a fit without it")
    if coef[1] <= 0:
        # a fit blind to the kernels would predict every pruned variant as slow as the dense model
        scale = float(np.linalg.lstsq(s[:, None], y, rcond=None)[0][0])
        flags.append(f"the kernel sum got no weight (the table's kernels did not explain these models): kernel sum scaled by {scale:.3g} alone")
        coef = np.array([0.0, max(scale, 1e-6)] + ([0.0] if use_mb else []))
    return Calibration(
        overhead_ms=overhead_ms, per_kernel_ms=float(coef[0] / max(kernels, 1)), scale=float(coef[1]),
        per_mb_ms=float(coef[2]) if use_mb else 0.0, points=len(y), source=source, flags=flags,
    )


def _left_out_nnls(columns: np.ndarray, y: np.ndarray) -> float:
    """Mean relative error of each point predicted by a non-negative fit on the others."""
    from scipy.optimize import nnls

    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef, _ = nnls(columns[keep], y[keep])
        errors.append(abs(float(columns[i] @ coef) - y[i]) / max(abs(y[i]), 1e-12))
    return float(np.mean(errors))


def _left_out_error(columns: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error of each point predicted by a least-squares fit on the others."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef, *_ = np.linalg.lstsq(columns[keep], y[keep], rcond=None)
        errors.append(abs(float(columns[i] @ coef) - y[i]))
    return float(np.mean(errors))


class TableMeta(BaseModel):
    """Where and how a latency table was measured."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    device: str
    backend: str
    threads: int
    batch_size: int
    dtype: str
    versions: dict[str, str] = Field(default_factory=dict, description="runtime and library versions measured with")
    machine: dict[str, Any] = Field(default_factory=dict, description="CPU/GPU model, cores, OS")
    autoprune: str = ""
    created: str = ""
    updated: str = ""
    overhead_ms: float = Field(0.0, ge=0, allow_inf_nan=False, description="latency of an empty call on the runtime, subtracted per kernel")
    framing: str = Field("nchw", description="activation layout at the kernel models' interface")
    context: str = Field("sum", description="how rows add up to a network: sum, or onnxruntime-nchwc (layouts and reorders)")
    sparse_keys: str = Field(
        "dense", description="weights with zeros looked up as the dense kernel (dense), or under sparse keys of their own (measured)"
    )
    calibration: list[CalibrationPoint] = Field(default_factory=list)
    reference_kernel: str = Field("", description="kernel timed beside every chunk of kernels; rows are ratios to it")
    reference_kernel_ms: float = Field(0.0, description="the reference kernel's latency the rows are scaled to")
    validation: dict[str, Any] = Field(
        default_factory=dict, description="the table validated on this machine right after profiling (share within ±10%, noise floor)"
    )
    notes: str = ""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, caches, OS and load of this machine, for the metadata (the cache
    sizes say which networks stream their weights; the load how noisy the timings were)."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            if kind != "Instruction":
                info[f"l{level}_cache"] = (index / "size").read_text().strip()
        except OSError:
            continue
    if hasattr(os, "getloadavg"):
        info["load_1min_at_start"] = round(os.getloadavg()[0], 2)
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001  (the GPU name is informative only)
        pass
    return info


class LatencyTable:
    """Kernel key -> measured latency of one device, plus its metadata; see the module doc."""

    def __init__(self, folder: Path, meta: TableMeta, rows: Optional[dict[str, dict[str, Any]]] = None) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self.rows: dict[str, dict[str, Any]] = rows or {}

    @property
    def table_path(self) -> Path:
        return self.folder / TABLE_FILE

    @property
    def meta_path(self) -> Path:
        return self.folder / META_FILE

    def __contains__(self, key: KernelKey) -> bool:
        return key.id in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def ms(self, key: KernelKey) -> float:
        return float(self.rows[key.id]["median_ms"])

    def keys(self) -> list[KernelKey]:
        return [KernelKey.from_dict(r) for r in self.rows.values()]

    @classmethod
    def new(
        cls, device: DeviceProfile, folder: Path, versions: dict[str, str], framing: str, context: str = "sum", sparse_keys: Optional[str] = None
    ) -> "LatencyTable":
        """An empty table; ``sparse_keys`` defaults to ``measured`` only for backends in :data:`SPARSE_KERNEL_BACKENDS`."""
        from autoprune import __version__

        if sparse_keys is None:
            sparse_keys = "measured" if device.backend in SPARSE_KERNEL_BACKENDS else "dense"
        if sparse_keys not in SPARSE_KEYS:
            raise ConfigError(f"sparse_keys must be one of {', '.join(SPARSE_KEYS)}, got {sparse_keys!r}")
        meta = TableMeta(
            device=device.name, backend=device.backend, threads=device.threads, batch_size=device.batch_size,
            dtype=device.dtype, versions=versions, machine=machine_info(), autoprune=__version__,
            created=now(), updated=now(), framing=framing, context=context, sparse_keys=sparse_keys,
        )
        return cls(folder, meta)

    def lookup(self, kernels: list[Kernel]) -> list[Kernel]:
        """``kernels`` keyed as this table keys them: sparse layers as their dense kernel
        unless the table measures sparse keys (``sparse_keys``)."""
        if self.meta.sparse_keys == "measured":
            return kernels
        return [replace(k, key=k.key.dense()) if k.key.sparsity or k.key.pattern else k for k in kernels]

    def add(self, key: KernelKey, stats: LatencyStats, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Record a measurement in memory (see :meth:`append` to persist it)."""
        row = {"key": key.id, **key.to_dict(), "median_ms": stats.median_ms, "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms, "repeats": stats.repeats, "measured_at": now()}
        row.update({k: v for k, v in (extra or {}).items() if k in CONTEXT_COLUMNS})
        self.rows[key.id] = row
        return row

    def append(self, measured: Iterable[tuple[KernelKey, LatencyStats] | tuple[KernelKey, LatencyStats, dict[str, Any]]]) -> None:
        """Add rows and append them to the CSV at once (the file is created with its header)."""
        rows = [self.add(*item) for item in measured]
        if not rows:
            return
        from autoprune.core.appendlog import seal_tail

        self.folder.mkdir(parents=True, exist_ok=True)
        seal_tail(self.table_path, whole=lambda line: False)  # a row cut short is measured again, not trusted
        new = not self.table_path.exists() or self.table_path.stat().st_size == 0
        columns = COLUMNS if new else self._header()
        with open(self.table_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns, lineterminator="\n", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        if not self.meta_path.exists():
            self.save_meta()

    def _header(self) -> list[str]:
        """The columns of the CSV as written; appended rows follow them."""
        with open(self.table_path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in ("median_ms", *KEY_COLUMNS) if c not in header]
        if missing:
            raise ConfigError(f"{self.table_path}: not a latency table: missing columns {', '.join(missing)}; not appending to it")
        return header

    def save_meta(self) -> None:
        """Write the metadata file (atomically)."""
        self.meta.updated = now()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".yaml.tmp")
        tmp.write_text(
            "# Latency table metadata (autoprune). Rows are in latency_table.csv.\n"
            + yaml.safe_dump(self.meta.model_dump(mode="json"), sort_keys=False)
        )
        tmp.replace(self.meta_path)

    def save(self) -> None:
        """Rewrite both files from memory (rows sorted by key)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.table_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows[k] for k in sorted(self.rows))
        tmp.replace(self.table_path)
        self.save_meta()

    def calibration_for(self, model: str, family: str) -> Calibration:
        """The calibration of this architecture, else of its family, else over every point.

        An architecture with fewer than :data:`MIN_MODEL_POINTS` points of its own takes its
        family's calibration when the family has more: variants of other depths (removed
        blocks or layers) share the family's fit, which then covers every kernel count.
        """
        own = [p for p in self.meta.calibration if p.model == model]
        kin = [p for p in self.meta.calibration if p.family == family]
        if own and (len(own) >= MIN_MODEL_POINTS or len(kin) <= len(own)):
            return fit_calibration(own, self.meta.overhead_ms, f"model {model}")
        for source, points in ((f"family {family}", kin), ("all calibrated models", list(self.meta.calibration))):
            if points:
                return fit_calibration(points, self.meta.overhead_ms, source)
        return fit_calibration([], self.meta.overhead_ms, "default")


def kernel_sum(table: LatencyTable, kernels: list[Kernel]) -> float:
    """A network's kernels summed from the table as its runtime runs them (see ``context``)."""
    if table.meta.context == "onnxruntime-nchwc":
        from autoprune.latency.lut.ort_layout import network_sum

        return network_sum(kernels, table.rows, table.meta.overhead_ms)
    return sum(table.ms(k.key) for k in kernels)


def has_table(device: DeviceProfile) -> bool:
    """Whether the device's profile folder holds a latency table."""
    return device.path is not None and (device.path / TABLE_FILE).is_file()


#: Largest latency a table row may hold (ms): anything above is a unit or parsing error.
MAX_ROW_MS = 1e6


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a table CSV by key; a later row for the same key replaces an earlier one.

    Every key column must be in the header (a missing one would merge keys), and every
    latency must be a finite number of milliseconds: ``median_ms`` in (0, 1e6], the others
    in [0, 1e6]. A last row with no newline (a profiling run killed mid-row) is left out
    with a warning; the next append sets it aside.
    """
    from autoprune.core.appendlog import torn_tail

    rows: dict[str, dict[str, Any]] = {}
    torn = torn_tail(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}); a latency table is CSV text") from None
    if torn is not None:
        text = text[: len(text) - len(torn.decode("utf-8"))]
        log.warning("%s: last row cut short (a profiling run was killed mid-row); left out", path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("median_ms", *KEY_COLUMNS) if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{path}: not a latency table: missing columns {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    for i, raw in enumerate(reader, start=2):
        if raw.get("median_ms") in (None, ""):
            continue  # a row cut short by a killed run
        if None in raw or None in raw.values():
            raise ConfigError(f"{path}:{i}: {len(reader.fieldnames or [])} columns in the header, another number in this row")
        try:
            key = KernelKey.from_dict(raw)
            row = {**raw, **key.to_dict(), "key": key.id, "median_ms": _ms(raw["median_ms"], "median_ms", positive=True)}
            for col in ("p10_ms", "p90_ms"):
                row[col] = _ms(raw[col], col) if raw.get(col) not in (None, "") else row["median_ms"]
            for col in ("reorder_in_ms", "reorder_out_ms"):
                row[col] = _ms(raw[col], col) if raw.get(col) not in (None, "") else 0.0
            row["repeats"] = int(float(raw["repeats"])) if raw.get("repeats") not in (None, "") else 0
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}:{i}: bad row ({err})") from None
        rows[key.id] = row
    return rows


def _ms(text: str, column: str, positive: bool = False) -> float:
    value = float(text)
    low_ok = value > 0 if positive else value >= 0
    if not (math.isfinite(value) and low_ok and value <= MAX_ROW_MS):
        raise ValueError(f"{column} must be a finite number of milliseconds in {'(0' if positive else '[0'}, {MAX_ROW_MS:g}], but got {text!r}")
    return value


def load_table(device: DeviceProfile, check_versions: bool = True) -> LatencyTable:
    """Read the device's table; settings that differ from ``device.yaml`` are an error,
    library versions that differ from those installed a :class:`LatencyTableWarning`."""
    folder = device.path
    if folder is None or not (folder / TABLE_FILE).is_file():
        raise ConfigError(f"device {device.name!r}: no latency table at {(folder or Path('?')) / TABLE_FILE}; run `autoprune profile --device {device.name}`")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: missing; a latency table needs its metadata file")
    from autoprune.core.yamlio import load_model

    meta = load_model(TableMeta, meta_path)
    for name in ("backend", "threads", "batch_size", "dtype"):
        if getattr(meta, name) != getattr(device, name):
            raise ConfigError(
                f"{meta_path}: {name}: the table was measured with {getattr(meta, name)!r} but "
                f"{folder / 'device.yaml'} says {getattr(device, name)!r}; re-profile or restore the setting"
            )
    table = LatencyTable(folder, meta, read_rows(folder / TABLE_FILE))
    if check_versions:
        check_table_versions(table, device)
    return table


def installed_versions(backend: str) -> dict[str, str]:
    from autoprune.latency.backends import get_backend

    try:
        return get_backend(backend).versions()
    except Exception:  # noqa: BLE001  (a backend that cannot import has no versions to compare)
        return {}


def check_table_versions(table: LatencyTable, device: DeviceProfile) -> list[str]:
    """Warn when a local device's table was measured on another CPU or with other runtime
    versions than this machine's; returns the differences."""
    if not device.local:
        return []
    now_versions = installed_versions(device.backend)
    diffs = [
        f"{name} {was} (table) vs {now_versions[name]} (installed)"
        for name, was in table.meta.versions.items()
        if name in now_versions and now_versions[name] != was
    ]
    table_cpu, this_cpu = table.meta.machine.get("cpu"), machine_info()["cpu"]
    if table_cpu and this_cpu and table_cpu != this_cpu:
        diffs.insert(0, f"CPU {table_cpu!r} (table) vs {this_cpu!r} (this machine)")
    if diffs:
        warnings.warn(
            f"{table.meta_path}: measured elsewhere or with other versions: {'; '.join(diffs)}; "
            f"check it still holds with `autoprune lut validate --device {device.name}` or re-profile",
            LatencyTableWarning,
            stacklevel=3,
        )
    return diffs
