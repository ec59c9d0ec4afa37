"""Query a study's Pareto front per device, as a pandas DataFrame."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .errors import UnknownNameError
from .pareto import pareto_mask
from .study import Study
from .trial import COMPLETE, TrialResult

COLUMNS = ["device", "number", "accuracy", "latency_ms", "speedup", "params", "macs", "mean_ratio", "plan_key"]


def device_front(records: Sequence[TrialResult], device: str) -> list[TrialResult]:
    """Complete trials not dominated in (accuracy up, latency on ``device`` down), by latency.

    Repeated evaluations of one plan count once (the first).
    """
    seen: set[str] = set()
    done = []
    for r in records:
        if r.state == COMPLETE and device in r.latency_ms and r.accuracy is not None and r.plan_key not in seen:
            seen.add(r.plan_key)
            done.append(r)
    if not done:
        return []
    points = np.array([[-r.accuracy, r.latency_ms[device]] for r in done])
    front = [r for r, keep in zip(done, pareto_mask(points)) if keep]
    return sorted(front, key=lambda r: r.latency_ms[device])


def front(
    study: str | Path | Study,
    device: Optional[str] = None,
    max_latency_ms: Optional[float] = None,
    min_accuracy: Optional[float] = None,
) -> pd.DataFrame:
    """The Pareto front of a study, one row per member and device.

    ``device`` restricts to one device (default: every device of the study); the
    constraints then filter the members. ``speedup`` is relative to the dense model.
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
        for r in device_front(records, d):
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
