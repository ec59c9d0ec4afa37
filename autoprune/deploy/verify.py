"""Verification on the device: time front members beside the dense model, as they really run."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from autoprune.core.plan import Plan
from autoprune.engine.context import study_context
from autoprune.engine.trial import prune
from autoprune.latency.backends import get_backend
from autoprune.latency.devices import load_device
from autoprune.latency.measured import batched, deployable
from autoprune.latency.timing import measure_interleaved
from autoprune.results.study import Study


def with_measured_latency(df: pd.DataFrame, study: Study, trust_task: bool = False) -> pd.DataFrame:
    """``df`` (rows of :func:`autoprune.results.front.front`) with each member's latency measured on its device.

    Every member and the dense model are pruned again (no fine-tune: latency does not depend
    on the weights) and timed on the device's backend in interleaved rounds, into
    ``latency_ms_measured`` and ``speedup_measured``; a device that is not this machine gets
    NaN there (time it with ``autoprune export --remote``). Building the study's task imports a
    ``module:function`` task only with ``trust_task`` (see :func:`autoprune.engine.context.study_context`).
    """

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
