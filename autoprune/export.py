"""Export the chosen front member for a device: rebuild it from the dense model and its
plan, fine-tune it longer, write the device's format, verify it, and write a model card."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .backends import get_backend
from .context import build_context
from .devices import load_device
from .errors import AutopruneError
from .front import device_front
from .latency import batched, deployable
from .metrics import macs, nonzero_params
from .plan import Plan
from .study import Study
from .trial import TrialResult, prune
from .training import FinetuneRecipe, finetune


def select_member(
    records: list[TrialResult], device: str, max_latency_ms: Optional[float] = None, min_accuracy: Optional[float] = None
) -> TrialResult:
    """The front member to deploy on ``device``.

    With a latency budget: the most accurate member within it. With an accuracy floor: the
    fastest member meeting it. With neither: the most accurate member.
    """
    members = device_front(records, device)
    if not members:
        raise AutopruneError(f"the study has no complete trial with a latency for device {device!r}")
    if max_latency_ms is not None:
        fit = [m for m in members if m.latency_ms[device] <= max_latency_ms]
        if not fit:
            fastest = min(m.latency_ms[device] for m in members)
            raise AutopruneError(f"no front member on {device!r} meets --max-latency-ms {max_latency_ms} (fastest: {fastest:.4g} ms)")
        return max(fit, key=lambda m: m.accuracy)
    if min_accuracy is not None:
        fit = [m for m in members if m.accuracy >= min_accuracy]
        if not fit:
            best = max(m.accuracy for m in members)
            raise AutopruneError(f"no front member on {device!r} meets --min-accuracy {min_accuracy} (best: {best:.4g})")
        return min(fit, key=lambda m: m.latency_ms[device])
    return max(members, key=lambda m: m.accuracy)


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


def export_member(
    study_dir: str | Path,
    device: str,
    max_latency_ms: Optional[float] = None,
    min_accuracy: Optional[float] = None,
    recipe: Optional[FinetuneRecipe] = None,
    out_dir: Optional[str | Path] = None,
) -> dict[str, Any]:
    """Export the member :func:`select_member` picks; returns the model card (also written as JSON)."""
    study = Study(study_dir).require()
    config = study.config()
    if device not in config.devices:
        raise AutopruneError(f"device {device!r} is not a device of study {study.path} (devices: {', '.join(config.devices)})")
    member = select_member(study.records(), device, max_latency_ms, min_accuracy)
    profile = load_device(device)
    backend = get_backend(profile.backend)
    recipe = recipe or config.export.finetune
    out = Path(out_dir) if out_dir else study.exports_dir / device
    out.mkdir(parents=True, exist_ok=True)

    ctx = build_context(config)
    task = ctx.task
    started = time.perf_counter()
    model = prune(ctx, Plan.from_dict(member.plan))
    steps = finetune(model, task.train, recipe, task.loss, seed=config.seed)
    accuracy = float(task.metric(model, task.val))
    final = deployable(model, task.example_input)
    x = batched(task.example_input, profile.batch_size)
    path = backend.export(final, x, out / f"model{backend.suffix}")
    runner = backend.load(path, profile.threads)
    checks = parity(runner, final, task.val, profile.batch_size)
    stats = backend.measure(path, x.numpy(), profile.threads, profile.warmup, profile.repeats)
    baseline = study.baseline() or {}
    dense_latency = (baseline.get("latency_ms") or {}).get(device)
    card = {
        "study": str(study.path),
        "task": task.name,
        "device": device,
        "backend": profile.backend,
        "versions": backend.versions(),
        "trial": member.number,
        "plan_key": member.plan_key,
        "plan": member.plan,
        "selection": {"max_latency_ms": max_latency_ms, "min_accuracy": min_accuracy},
        "metric": task.metric_name,
        "accuracy_search": member.accuracy,
        "accuracy": accuracy,
        "accuracy_dense": baseline.get("accuracy"),
        "latency_ms_predicted": member.latency_ms[device],
        "latency_ms_measured": stats.median_ms,
        "latency_ms_measured_p10_p90": [stats.p10_ms, stats.p90_ms],
        "latency_ms_dense": dense_latency,
        "speedup_measured": dense_latency / stats.median_ms if dense_latency else None,
        "params": nonzero_params(final),
        "macs": macs(final, task.example_input),
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "parity": checks,
        "finetune": {**recipe.model_dump(), "steps": steps},
        "export_s": time.perf_counter() - started,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card
