"""Query a study's Pareto front per device, as a pandas DataFrame."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from autoprune.core.config import Config
from autoprune.core.errors import AutopruneError, UnknownNameError
from autoprune.core.pareto import pareto_mask
from autoprune.core.records import COMPLETE, TrialResult
from autoprune.results.study import Study

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
) -> pd.DataFrame:
    """The Pareto front of a study, one row per member and device.

    ``device`` restricts to one device (default: every device of the study); the
    constraints then filter the members. Members are faster than the dense model and
    meet the study's accuracy floor (see :func:`front_limits`). ``speedup`` is relative to the dense model.
    :func:`autoprune.deploy.verify.with_measured_latency` adds the latency measured on the devices.
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
    return df.reset_index(drop=True)


def select_member(
    records: Sequence[TrialResult],
    device: str,
    max_latency_ms: Optional[float] = None,
    min_accuracy: Optional[float] = None,
    min_speedup: Optional[float] = None,
    dense_latency_ms: Optional[float] = None,
    accuracy_floor: Optional[float] = None,
) -> TrialResult:
    """The front member to deploy on ``device``.

    With a latency budget (``max_latency_ms``, or ``min_speedup`` over the dense model's
    ``dense_latency_ms``): the most accurate member within it. With an accuracy floor:
    the fastest member meeting it. With none: the most accurate member.
    """
    if sum(v is not None for v in (max_latency_ms, min_accuracy, min_speedup)) > 1:
        raise AutopruneError("give at most one of max_latency_ms, min_accuracy, min_speedup")
    members = device_front(records, device, dense_latency_ms, accuracy_floor)
    if not members:
        raise AutopruneError(
            f"the study has no complete trial with a latency for device {device!r}"
            + (f" faster than the dense model ({dense_latency_ms:.4g} ms)" if dense_latency_ms is not None else "")
            + (f" and at least {accuracy_floor:.4g} accurate (the study's accuracy floor)" if accuracy_floor is not None else "")
        )
    if min_speedup is not None:
        if not dense_latency_ms:
            raise AutopruneError(f"--min-speedup needs the dense model's latency on {device!r}; the study has no baseline for it")
        fit = [m for m in members if dense_latency_ms / m.latency_ms[device] >= min_speedup]
        if not fit:
            best = dense_latency_ms / min(m.latency_ms[device] for m in members)
            raise AutopruneError(f"no front member on {device!r} meets --min-speedup {min_speedup} (fastest: {best:.3g}x)")
        return max(fit, key=lambda m: m.accuracy)
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
