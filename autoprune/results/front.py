"""Query a study's Pareto front per device, as a pandas DataFrame."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from autoprune.core.config import Config
from autoprune.core.errors import UnknownNameError
from autoprune.core.pareto import pareto_mask
from autoprune.results.study import Study
from autoprune.search.trial import COMPLETE, TrialResult

COLUMNS = ["device", "number", "accuracy", "latency_ms", "speedup", "params", "macs", "mean_ratio", "plan_key"]


def device_front(
    records: Sequence[TrialResult],
    device: str,
    dense_latency_ms: Optional[float] = None,
    accuracy_floor: Optional[float] = None,
) -> list[TrialResult]:
    """Complete trials not dominated in (accuracy up, latency on ``device`` down), by latency.

    Repeated evaluations of one plan count once (the first). With the dense model's
    latency, the dense model takes part in dominance: a trial not faster than it is no
    trade-off worth a pruned model and is left out (a plan that prunes nothing, timed
    slower under load, would otherwise sit on the front at a speedup below 1). Trials
    below ``accuracy_floor`` (collapsed models) are left out too.
    """
    seen: set[str] = set()
    done = []
    for r in records:
        if r.state == COMPLETE and device in r.latency_ms and r.accuracy is not None and r.plan_key not in seen:
            seen.add(r.plan_key)
            if dense_latency_ms is not None and not r.latency_ms[device] < dense_latency_ms:
                continue
            if accuracy_floor is not None and r.accuracy < accuracy_floor:
                continue
            done.append(r)
    if not done:
        return []
    points = np.array([[-r.accuracy, r.latency_ms[device]] for r in done])
    front = [r for r, keep in zip(done, pareto_mask(points)) if keep]
    return sorted(front, key=lambda r: r.latency_ms[device])


def front_limits(config: Config, baseline: Optional[dict], device: str) -> dict[str, Optional[float]]:
    """What bounds a study's front on ``device``: the dense model's latency (the dense model
    takes part in dominance) and the accuracy floor, the higher of ``min_accuracy`` and the
    dense accuracy less ``max_accuracy_drop``; as keyword arguments of :func:`device_front`."""
    baseline = baseline or {}
    floors = [config.min_accuracy] if config.min_accuracy is not None else []
    if config.max_accuracy_drop is not None and baseline.get("accuracy") is not None:
        floors.append(float(baseline["accuracy"]) - config.max_accuracy_drop)
    return {"dense_latency_ms": (baseline.get("latency_ms") or {}).get(device), "accuracy_floor": max(floors) if floors else None}


def front(
    study: str | Path | Study,
    device: Optional[str] = None,
    max_latency_ms: Optional[float] = None,
    min_accuracy: Optional[float] = None,
    measure: bool = False,
    trust_task: bool = False,
) -> pd.DataFrame:
    """The Pareto front of a study, one row per member and device.

    ``device`` restricts to one device (default: every device of the study); the
    constraints then filter the members. Members are faster than the dense model and
    meet the study's accuracy floor (see :func:`front_limits`). ``speedup`` is relative to the dense model.
    With ``measure`` (which builds the study's task: see ``trust_task`` in
    :func:`with_measured_latency`), every member left and the dense model are pruned again (no
    fine-tune: latency does not depend on the weights) and timed on the device's backend,
    in interleaved rounds, into ``latency_ms_measured`` and ``speedup_measured``; a device
    that is not this machine gets NaN there (time it with ``autoprune export --remote``).
    """
    study = study if isinstance(study, Study) else Study(study)
    config = study.require().config()
    devices = [device] if device else list(config.devices)
    unknown = [d for d in devices if d not in config.devices]
    if unknown:
        raise UnknownNameError(f"device {unknown[0]!r} is not a device of study {study.path} (devices: {', '.join(config.devices)})")
    baseline = study.baseline() or {}
    records = study.records()
    rows = []
    for d in devices:
        dense = (baseline.get("latency_ms") or {}).get(d)
        for r in device_front(records, d, **front_limits(config, baseline, d)):
            rows.append(
                {
                    "device": d,
                    "number": r.number,
                    "accuracy": r.accuracy,
                    "latency_ms": r.latency_ms[d],
                    "speedup": dense / r.latency_ms[d] if dense else float("nan"),
                    "params": r.params,
                    "macs": r.macs,
                    "mean_ratio": r.flat()["mean_ratio"],
                    "plan_key": r.plan_key,
                }
            )
    df = pd.DataFrame(rows, columns=COLUMNS)
    if max_latency_ms is not None:
        df = df[df.latency_ms <= max_latency_ms]
    if min_accuracy is not None:
        df = df[df.accuracy >= min_accuracy]
    df = df.reset_index(drop=True)
    if measure:
        df = with_measured_latency(df, study, trust_task)
    return df


def with_measured_latency(df: pd.DataFrame, study: Study, trust_task: bool = False) -> pd.DataFrame:
    """``df`` (rows of :func:`front`) with each member's latency measured on its device, beside the dense model's.
    A ``module:function`` task is imported only with ``trust_task`` (see :func:`~autoprune.search.context.study_context`)."""
    import tempfile

    from autoprune.latency.backends import get_backend
    from autoprune.search.context import study_context
    from autoprune.latency.devices import load_device
    from autoprune.deploy.export import measure_interleaved
    from autoprune.latency.measured import batched, deployable
    from autoprune.core.plan import Plan
    from autoprune.search.trial import prune

    df = df.assign(latency_ms_measured=float("nan"), speedup_measured=float("nan"))
    if df.empty:
        return df
    ctx = study_context(study.config(), study.config_file, trust_task)
    plans = {r.plan_key: Plan.from_dict(r.plan) for r in study.records()}
    for name, rows in df.groupby("device"):
        profile = load_device(name)
        backend = get_backend(profile.backend)
        if not profile.local or not backend.available()[0]:
            continue
        x = batched(ctx.task.example_input, profile.batch_size)
        models = [ctx.task.model] + [prune(ctx, plans[key]) for key in rows.plan_key]
        with tempfile.TemporaryDirectory(prefix="autoprune-front-") as tmp:
            paths = [
                backend.export(deployable(m, ctx.task.example_input), x, Path(tmp) / f"m{i}{backend.suffix}") for i, m in enumerate(models)
            ]
            stats = measure_interleaved(backend.measure, paths, x.numpy(), profile)
        dense_ms = stats[0].median_ms
        df.loc[rows.index, "latency_ms_measured"] = [s.median_ms for s in stats[1:]]
        df.loc[rows.index, "speedup_measured"] = [dense_ms / s.median_ms for s in stats[1:]]
    return df
