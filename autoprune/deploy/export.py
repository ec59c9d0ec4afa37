"""Export the chosen front member for a device: rebuild it from the dense model and its
plan, fine-tune it longer, write the device's format, verify it, and write a model card.

The format is the device backend's (``.onnx`` for ONNX Runtime, ``.tflite`` through
litert-torch for LiteRT, a ``torch.export`` ``.pt2`` program for PyTorch). Channel pruning
physically shrinks the exported layers; sparse granularities leave their zeros in the
weights. Every export is verified: outputs of the file against PyTorch on validation data
(max abs difference, top-1 agreement), latency measured on the device (interleaved with
the dense model exported the same way) beside the predicted one, and file size; for
classifiers, per-class accuracy, calibration and accuracy under noise and blur beside the
dense model's (:mod:`autoprune.deploy.diagnostics`), flagged past ``export.max_class_drop``. An
optional int8 post-training quantization (:mod:`autoprune.deploy.quantize`) adds a second file,
verified the same way, with its accuracy re-measured through the file.

:func:`export_all` exports one model per device of a study into one folder with an index;
devices that choose the same front member share its fine-tune.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from autoprune.core.errors import AutopruneError
from autoprune.core.plan import Plan
from autoprune.core.recipes import FinetuneRecipe
from autoprune.core.records import TrialResult
from autoprune.deploy.diagnostics import classifier_quality, compare
from autoprune.engine.context import study_context
from autoprune.engine.trial import TrialContext
from autoprune.latency.backends import get_backend
from autoprune.latency.devices import DeviceProfile, load_device
from autoprune.latency.measured import batched, deployable
from autoprune.latency.timing import FileMeasurer, measure_interleaved
from autoprune.pruning.granularity import sparsity
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.results.front import front_limits, select_member
from autoprune.results.study import Study
from autoprune.training.loop import finetune
from autoprune.training.placement import resolve_device

INDEX_FILE = "index.json"


def parity(runner: Any, model: torch.nn.Module, data: torch.utils.data.Dataset, batch_size: int, limit: int = 256) -> dict[str, float]:
    """Exported file vs PyTorch on validation inputs: max absolute difference and top-1 agreement."""
    n = min(len(data), limit)
    xs = torch.stack([data[i][0] for i in range(n)])
    max_diff, agree = 0.0, 0
    with torch.no_grad():
        for start in range(0, n - batch_size + 1, batch_size):
            x = xs[start : start + batch_size]
            ref = model(x).numpy()
            out = runner(x.numpy())
            max_diff = max(max_diff, float(np.abs(out - ref).max()))
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
    checked = (n // batch_size) * batch_size
    return {"max_abs_diff": max_diff, "top1_agreement": agree / max(checked, 1), "samples": checked}


@dataclass(frozen=True)
class ExportResult:
    """An exported model: its file and its model card (also ``model_card.json`` beside the file)."""

    device: str
    path: Path
    card: dict[str, Any]

    @classmethod
    def from_card(cls, card: Mapping[str, Any], folder: Union[str, Path]) -> "ExportResult":
        return cls(card["device"], Path(folder) / card["file"], dict(card))

    @property
    def trial(self) -> int:
        """The record number of the exported front member."""
        return self.card["trial"]

    @property
    def accuracy(self) -> float:
        """Accuracy after the export fine-tune."""
        return self.card["accuracy"]

    @property
    def latency_ms(self) -> float:
        """Latency on the device: measured where it could be, else predicted."""
        measured = self.card.get("latency_ms_measured")
        return measured if measured is not None else self.card["latency_ms_predicted"]


@dataclass
class ExportRequest:
    """What to export for one device and how: the selection, the format's extras, where to time it."""

    device: str
    max_latency_ms: Optional[float] = None
    min_accuracy: Optional[float] = None
    min_speedup: Optional[float] = None
    quantize: Optional[str] = None
    calibration_samples: int = 256
    measurer: Optional[FileMeasurer] = None
    measured_on: str = ""

    @property
    def selection(self) -> dict[str, Optional[float]]:
        return {"max_latency_ms": self.max_latency_ms, "min_accuracy": self.min_accuracy, "min_speedup": self.min_speedup}


@dataclass
class _Tuned:
    """A front member after the export fine-tune, shared by devices that chose it."""

    model: torch.nn.Module
    accuracy: float
    steps: int
    seconds: float


@dataclass
class Exporter:
    """Exports members of one study; builds the task once and fine-tunes each chosen plan once.

    ``recipe`` and ``seed`` replace the study's export fine-tune and seed (to fine-tune a
    member again on other batches)."""

    study: Study
    recipe: Optional[FinetuneRecipe] = None
    trust_task: bool = False  # import a ``module:function`` task the study names (see :func:`~autoprune.engine.context.study_context`)
    seed: Optional[int] = None
    _ctx: Optional[TrialContext] = None
    _tuned: dict[str, _Tuned] = field(default_factory=dict)
    _quality: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.study = self.study.require()
        self.config = self.study.config()
        self.recipe = self.recipe or self.config.export.finetune

    @property
    def ctx(self) -> TrialContext:
        if self._ctx is None:
            self._ctx = study_context(self.config, self.study.config_file, self.trust_task)
        return self._ctx

    def choose(self, request: ExportRequest) -> TrialResult:
        if request.device not in self.config.devices:
            raise AutopruneError(f"device {request.device!r} is not a device of study {self.study.path} (devices: {', '.join(self.config.devices)})")
        limits = front_limits(self.config, self.study.baseline(), request.device)
        return select_member(
            self.study.records(), request.device, request.max_latency_ms, request.min_accuracy, request.min_speedup, limits["dense_latency_ms"], limits["accuracy_floor"]
        )

    def tuned(self, member: TrialResult) -> _Tuned:
        """``member`` rebuilt from the dense model (one shot, or gradually with ``export.iterative``)
        and fine-tuned with the export recipe, distilling when it says so (cached per plan)."""
        if member.plan_key not in self._tuned:
            from autoprune.deploy.gradual import prune_for_export
            from autoprune.training.distill import training_loss

            task = self.ctx.task
            started = time.perf_counter()
            seed = self.config.seed if self.seed is None else self.seed
            model = prune_for_export(self.ctx, Plan.from_dict(member.plan), self.config.export.iterative, seed)
            device = resolve_device(self.recipe.device)
            model.to(device)
            steps = finetune(model, task.train, self.recipe, training_loss(task, self.recipe.distill, device), seed=seed)
            accuracy = float(task.metric(model, task.val))
            model.cpu()
            self._tuned[member.plan_key] = _Tuned(model, accuracy, steps, time.perf_counter() - started)
        return self._tuned[member.plan_key]

    def quality(self, member: TrialResult) -> Optional[dict[str, Any]]:
        """The model card's ``quality`` section for ``member`` (see :mod:`autoprune.deploy.diagnostics`);
        the dense model's diagnostics are measured once, each plan's once."""
        task = self.ctx.task
        if "" not in self._quality:
            self._quality[""] = classifier_quality(task.model, task.val)
        if member.plan_key not in self._quality:
            self._quality[member.plan_key] = classifier_quality(self.tuned(member).model, task.val)
        return compare(self._quality[member.plan_key], self._quality[""], self.config.export.max_class_drop)

    def export(self, request: ExportRequest, out_dir: Optional[Union[str, Path]] = None) -> dict[str, Any]:
        """Export the member :meth:`choose` picks for ``request.device`` into ``out_dir``;
        returns the model card (also written as ``model_card.json``)."""
        member = self.choose(request)
        profile = load_device(request.device)
        backend = get_backend(profile.backend)
        out = Path(out_dir) if out_dir else self.study.exports_dir / request.device
        out.mkdir(parents=True, exist_ok=True)
        task = self.ctx.task
        started = time.perf_counter()
        tuned = self.tuned(member)
        final = deployable(tuned.model, task.example_input)
        dense = deployable(task.model, task.example_input)
        x = batched(task.example_input, profile.batch_size)
        path, written = backend.deploy(final, x, out / f"model{backend.suffix}")
        checks = parity(backend.load(path, profile.threads), final, task.val, profile.batch_size)
        measure, measured_on = self._measurer(request, profile)

        baseline = self.study.baseline() or {}
        dense_predicted = (baseline.get("latency_ms") or {}).get(request.device)
        predicted = member.latency_ms[request.device]
        card: dict[str, Any] = {
            "study": str(self.study.path),
            "task": task.name,
            "device": request.device,
            "backend": profile.backend,
            "versions": backend.versions(),
            "trial": member.number,
            "plan_key": member.plan_key,
            "plan": member.plan,
            "granularities": sorted({c["granularity"] for c in member.plan.values() if c["pruning_ratio"] > 0}),
            "selection": request.selection,
            "metric": task.metric_name,
            "accuracy_search": member.accuracy,
            "accuracy": tuned.accuracy,
            "accuracy_dense": baseline.get("accuracy"),
            "latency_ms_predicted": predicted,
            "latency_ms_dense": dense_predicted,
            "speedup_predicted": dense_predicted / predicted if dense_predicted else None,
            "latency_ms_measured": None,
            "latency_ms_measured_p10_p90": None,
            "latency_ms_dense_measured": None,
            "speedup_measured": None,
            "speedup_realised_over_predicted": None,
            "measured_on": measured_on,
            "params": nonzero_params(final),
            "params_dense": nonzero_params(dense),
            "macs": macs(final, task.example_input),
            "macs_dense": macs(dense, task.example_input),
            "sparsity": sparsity(final),
            "file": path.name,
            "written_with": written,
            "size_bytes": path.stat().st_size,
            "size_bytes_dense": None,
            "parity": checks,
            "quantized": None,
            "finetune": {**self.recipe.model_dump(mode="json"), "steps": tuned.steps, "seconds": tuned.seconds},
            "iterative": self.config.export.iterative.model_dump(mode="json") if self.config.export.iterative else None,
            "quality": self.quality(member),
        }
        if measure is not None:
            with tempfile.TemporaryDirectory(prefix="autoprune-dense-") as tmp:
                dense_path, _ = backend.deploy(dense, x, Path(tmp) / f"dense{backend.suffix}")
                card["size_bytes_dense"] = dense_path.stat().st_size
                stats, dense_stats = measure_interleaved(measure, [path, dense_path], x.numpy(), profile)
            card.update(
                latency_ms_measured=stats.median_ms,
                latency_ms_measured_p10_p90=[stats.p10_ms, stats.p90_ms],
                latency_ms_dense_measured=dense_stats.median_ms,
                speedup_measured=dense_stats.median_ms / stats.median_ms,
            )
            if card["speedup_predicted"]:
                card["speedup_realised_over_predicted"] = card["speedup_measured"] / card["speedup_predicted"]
        if request.quantize:
            card["quantized"] = self._quantize(request, profile, path, final, out, measure)
        card["export_s"] = time.perf_counter() - started
        card["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        (out / "model_card.json").write_text(json.dumps(card, indent=2))
        return card

    def _measurer(self, request: ExportRequest, profile: DeviceProfile) -> tuple[Optional[FileMeasurer], str]:
        if request.measurer is not None:
            return request.measurer, request.measured_on or "remote"
        if not profile.local:
            return None, f"not measured: device {profile.name!r} is not this machine (local: false); pass --remote URL to time it through its agent"
        backend = get_backend(profile.backend)
        ok, why = backend.available()
        if not ok:
            return None, f"not measured: {why}"
        return backend.measure, f"this machine, {profile.backend}"

    def _quantize(
        self, request: ExportRequest, profile: DeviceProfile, float_path: Path, final: torch.nn.Module, out: Path, measure: Optional[FileMeasurer]
    ) -> dict[str, Any]:
        from autoprune.deploy import quantize as q

        task = self.ctx.task
        mode = request.quantize
        started = time.perf_counter()
        calibration = q.calibration_batches(task.train, request.calibration_samples, profile.batch_size, self.config.seed) if mode == "static" else []
        path = q.quantize_file(profile.backend, float_path, out / f"model_int8{float_path.suffix}", mode, calibration)
        run = q.load_quantized(profile.backend, path, profile.threads)
        info: dict[str, Any] = {
            "mode": mode,
            "method": q.method(profile.backend, mode),
            "calibration_samples": sum(len(b) for b in calibration),
            "file": path.name,
            "size_bytes": path.stat().st_size,
            **q.describe(profile.backend, path),
            "accuracy": q.file_metric(run, profile.batch_size, task.metric, task.val),
            "parity_vs_float": parity(run, final, task.val, profile.batch_size),
            "latency_ms_measured": None,
            "latency_ms_measured_p10_p90": None,
            "speedup_over_float_measured": None,
        }
        if measure is not None:
            example = batched(task.example_input, profile.batch_size).numpy()
            stats, float_stats = measure_interleaved(measure, [path, float_path], example, profile)
            info.update(
                latency_ms_measured=stats.median_ms,
                latency_ms_measured_p10_p90=[stats.p10_ms, stats.p90_ms],
                speedup_over_float_measured=float_stats.median_ms / stats.median_ms,
            )
        info["seconds"] = time.perf_counter() - started
        return info


def export_member(
    study_dir: Union[str, Path],
    device: str,
    max_latency_ms: Optional[float] = None,
    min_accuracy: Optional[float] = None,
    recipe: Optional[FinetuneRecipe] = None,
    out_dir: Optional[Union[str, Path]] = None,
    trust_task: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Export the member :func:`select_member` picks for ``device``; returns the model card.

    ``options`` are the other fields of :class:`ExportRequest` (``min_speedup``,
    ``quantize``, ``calibration_samples``, ``measurer``, ``measured_on``).
    """
    request = ExportRequest(device, max_latency_ms, min_accuracy, **options)
    return Exporter(Study(study_dir), recipe, trust_task).export(request, out_dir)


def export_all(
    study_dir: Union[str, Path],
    max_latency_ms: Optional[Mapping[str, float]] = None,
    min_accuracy: Optional[float] = None,
    min_speedup: Optional[float] = None,
    recipe: Optional[FinetuneRecipe] = None,
    out_dir: Optional[Union[str, Path]] = None,
    quantize: Optional[str] = None,
    calibration_samples: int = 256,
    trust_task: bool = False,
) -> dict[str, Any]:
    """One model per device of the study in ``out_dir/DEVICE/``, plus ``index.json`` and
    ``index.md`` listing them. ``max_latency_ms`` maps devices to budgets (a device not in it
    gets the most accurate member, or the one ``min_accuracy`` / ``min_speedup`` picks)."""
    exporter = Exporter(Study(study_dir), recipe, trust_task)
    devices = list(exporter.config.devices)
    budgets = dict(max_latency_ms or {})
    unknown = sorted(set(budgets) - set(devices))
    if unknown:
        raise AutopruneError(f"--max-latency-ms names device {unknown[0]!r}, which is not a device of the study (devices: {', '.join(devices)})")
    out = Path(out_dir) if out_dir else exporter.study.exports_dir
    cards = {}
    for device in devices:
        request = ExportRequest(
            device,
            max_latency_ms=budgets.get(device),
            min_accuracy=None if device in budgets else min_accuracy,
            min_speedup=None if device in budgets else min_speedup,
            quantize=quantize,
            calibration_samples=calibration_samples,
        )
        cards[device] = exporter.export(request, out / device)
    index = write_index(out, exporter.study, cards)
    return index


INDEX_COLUMNS = [
    "device", "backend", "trial", "accuracy", "accuracy_search", "latency_ms_predicted", "latency_ms_measured",
    "speedup_predicted", "speedup_measured", "size_bytes", "parity_max_abs_diff", "parity_top1_agreement", "file",
]


def write_index(out: Path, study: Study, cards: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """``index.json`` (one summary row per device, pointing at its folder) and ``index.md``."""
    rows = []
    for device, card in cards.items():
        row = {k: card.get(k) for k in INDEX_COLUMNS}
        row["parity_max_abs_diff"] = card["parity"]["max_abs_diff"]
        row["parity_top1_agreement"] = card["parity"]["top1_agreement"]
        row["file"] = f"{device}/{card['file']}"
        row["model_card"] = f"{device}/model_card.json"
        quality = card.get("quality") or {}
        row["worst_class_drop"] = quality.get("worst_class_drop")
        row["quality_flagged"] = quality.get("flagged", False)
        if card.get("quantized"):
            quant = card["quantized"]
            row["int8"] = {"file": f"{device}/{quant['file']}", "accuracy": quant["accuracy"], "size_bytes": quant["size_bytes"], "latency_ms_measured": quant["latency_ms_measured"]}
        rows.append(row)
    index = {"study": str(study.path), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": rows}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = [f"# Exported models of {study.path}", "", "| " + " | ".join(INDEX_COLUMNS) + " |", "|" + "---|" * len(INDEX_COLUMNS)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in INDEX_COLUMNS) + " |" for row in rows]
    flagged = [row for row in rows if row["quality_flagged"]]
    if flagged:
        lines += ["", "Flagged (worst class lost more than export.max_class_drop): " + ", ".join(f"{r['device']} ({r['worst_class_drop']:.4g})" for r in flagged)]
    quantized = [row for row in rows if "int8" in row]
    if quantized:
        lines += ["", "int8 files: " + ", ".join(f"{r['int8']['file']} (accuracy {r['int8']['accuracy']:.4g})" for r in quantized)]
    (out / "index.md").write_text("\n".join(lines) + "\n")
    return index
