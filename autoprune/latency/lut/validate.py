"""Check a latency table against reality: predict plans over the whole range, measure them, compare.

The plans are the uniform plan at every ratio of the space (the dense model and the most
pruned one included), the space's mixed corners and ``n`` random plans: random plans alone
sit mid-range and never reach the heavily pruned models where the fastest members of a
front live. Locally every candidate is timed beside the dense model in the same rounds and
compared as its **ratio to the dense model** (predicted: its predicted latency over the
dense model's), which a slow spell of a shared machine does not move; the errors are
reported overall and per band of measured speedup (below 2x, 2-3x, above 3x), with the rank
correlation (Kendall's tau) the search relies on. Every candidate is measured in two
separate passes; the same statistics between the passes are the noise floor, which no
predictor can beat. A remote device is compared in absolute milliseconds.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from autoprune.latency.devices import DeviceProfile
from autoprune.latency.lut.estimator import LUTEstimator
from autoprune.latency.lut.measure import (
    Rounds,
    RoundsProgress,
    device_backend,
    measure_models_passes,
    measure_relative,
    model_writer,
)
from autoprune.latency.lut.plans import range_plans
from autoprune.latency.measured import batched, checked_latencies, deployable
from autoprune.latency.timing import FileMeasurer
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import Calibration as CriterionData
from autoprune.pruning.space import UnitSpace
from autoprune.pruning.units import Unit

#: Bands of measured speedup the error is reported in: (label, low, high).
SPEEDUP_BANDS = (("<2x", 0.0, 2.0), ("2-3x", 2.0, 3.0), (">3x", 3.0, float("inf")))


def error_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE (%), share within ±10% and ±5% (%), mean signed error (%), Kendall's tau."""
    from scipy.stats import kendalltau

    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(measured) == 0:
        return {"n": 0, **{k: float("nan") for k in ("mape_pct", "within_10_pct", "within_5_pct", "bias_pct", "max_abs_error_pct", "kendall_tau")}}
    err = (predicted - measured) / measured * 100.0
    tau = kendalltau(predicted, measured)[0] if len(measured) > 1 and np.ptp(measured) > 0 else float("nan")
    return {
        "n": int(len(measured)),
        "mape_pct": float(np.mean(np.abs(err))),
        "within_10_pct": float(np.mean(np.abs(err) <= 10.0) * 100.0),
        "within_5_pct": float(np.mean(np.abs(err) <= 5.0) * 100.0),
        "bias_pct": float(np.mean(err)),
        "max_abs_error_pct": float(np.max(np.abs(err))) if len(err) else float("nan"),
        "kendall_tau": float(tau),
    }


def band_metrics(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """:func:`error_metrics` of the ratio predictions (and their noise floor) per band of measured speedup."""
    bands = {}
    for label, low, high in SPEEDUP_BANDS:
        part = rows[(rows.measured_speedup >= low) & (rows.measured_speedup < high)]
        metrics = error_metrics(part.predicted_ratio.to_numpy(), part.measured_ratio.to_numpy())
        noise = error_metrics(part.measured_again_ratio.to_numpy(), part.measured_ratio.to_numpy())
        bands[label] = {**metrics, "noise_within_10_pct": noise["within_10_pct"]}
    return bands


@dataclass
class Validation:
    """Per-candidate predictions and measurements, and the summary statistics.

    ``metrics`` and ``noise`` compare ratios to the dense model when ``relative`` (a local
    device), absolute milliseconds otherwise; ``bands`` splits ``metrics`` by measured speedup.
    """

    device: str
    rows: pd.DataFrame
    metrics: dict[str, float]
    noise: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    bands: dict[str, dict[str, float]] = field(default_factory=dict)
    relative: bool = False

    def summary(self) -> str:
        m, z = self.metrics, self.noise
        what = "latency ratios to the dense model" if self.relative else "latencies"
        text = (
            f"{self.device}: {m['n']} candidates ({what}): within ±10% {m['within_10_pct']:.0f}% "
            f"(noise floor {z['within_10_pct']:.0f}%), MAPE {m['mape_pct']:.2f}%, bias {m['bias_pct']:+.2f}%, "
            f"Kendall tau {m['kendall_tau']:.3f} (noise floor {z['kendall_tau']:.3f})"
        )
        for label, b in self.bands.items():
            if b["n"]:
                text += f"\n  speedup {label}: {b['n']} candidates, within ±10% {b['within_10_pct']:.0f}% (noise floor {b['noise_within_10_pct']:.0f}%), MAPE {b['mape_pct']:.2f}%, bias {b['bias_pct']:+.2f}%"
        if "uniform" in self.info:
            pairs = ", ".join(f"{u['ratio']:.1f}: {u['predicted_speedup']:.2f}x/{u['measured_speedup']:.2f}x" for u in self.info["uniform"])
            text += f"\n  uniform plans, predicted/measured speedup: {pairs}"
        if z["within_10_pct"] < 90:
            text += f"\n  note: this machine's own noise floor ({z['within_10_pct']:.0f}% within ±10%) is wider than ±10%: no table can do better here"
        return text

    def stored(self) -> dict[str, Any]:
        """The figures a table keeps in its metadata: where, when, how well."""
        from autoprune.latency.devices import cpu_model
        from autoprune.latency.lut.table import now

        return {
            "within_10_pct": round(self.metrics["within_10_pct"], 1),
            "mape_pct": round(self.metrics["mape_pct"], 2),
            "bias_pct": round(self.metrics["bias_pct"], 2),
            "kendall_tau": round(self.metrics["kendall_tau"], 3),
            "noise_within_10_pct": round(self.noise["within_10_pct"], 1),
            "n": self.metrics["n"],
            "relative": self.relative,
            "cpu": cpu_model(),
            "at": now(),
        }

    def save(self, folder: Path) -> dict[str, Path]:
        """Write ``validation.csv``, ``validation.json`` and ``validation.png`` under ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"csv": folder / "validation.csv", "json": folder / "validation.json", "plot": folder / "validation.png"}
        self.rows.to_csv(paths["csv"], index=False)
        payload = {"device": self.device, "relative": self.relative, "metrics": self.metrics, "noise_floor": self.noise, "bands": self.bands, **self.info}
        paths["json"].write_text(json.dumps(payload, indent=2, default=float))
        plot(self, paths["plot"])
        return paths


def plot(result: Validation, path: Path) -> Path:
    """Predicted against measured latency, with the ±10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    lo = float(min(rows.measured_ms.min(), rows.predicted_ms.min())) * 0.9
    hi = float(max(rows.measured_ms.max(), rows.predicted_ms.max())) * 1.1
    line = np.linspace(lo, hi, 2)
    ax.plot(line, line, color="black", linewidth=0.8)
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="±10%")
    ax.scatter(rows.measured_ms, rows.predicted_ms, s=12, label="candidates")
    m = result.metrics
    ax.set_title(f"{result.device}: MAPE {m['mape_pct']:.1f}%, tau {m['kendall_tau']:.2f}", fontsize=10)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def validate(
    device: DeviceProfile,
    model: nn.Module,
    example_input: torch.Tensor,
    units: Mapping[str, Unit],
    space: Mapping[str, UnitSpace],
    n: int = 100,
    seed: int = 12345,
    rounds: int = 3,
    estimator: Optional[LUTEstimator] = None,
    measurer: Optional[FileMeasurer] = None,
    progress: Optional[Callable[[str], None]] = None,
    data: Optional[CriterionData] = None,
    time_cap_s: float = 300.0,
    on_rounds: Optional[RoundsProgress] = None,
) -> Validation:
    """Predict the plans of :func:`autoprune.latency.lut.plans.range_plans` from the table and measure each twice on
    the device (locally beside the dense model, in rounds until every ratio is within 1.5% or
    ``time_cap_s`` per pass; remotely file by file in ``rounds`` rounds).

    ``data`` (training batches and loss) serves gradient criteria such as ``taylor``; without
    it such plans rank by ``l1``.
    """
    from autoprune.latency.lut.plans import MODEL_CI_PCT, without_gradients

    estimator = estimator or LUTEstimator(device, read_only=True)
    multiples = {name: us.rule.channel_multiple for name, us in space.items()}
    labelled = range_plans(space, n, seed)
    plans = [p if data is not None else without_gradients(p) for _, p in labelled]
    say = progress or (lambda _msg: None)
    say(f"pruning and predicting {len(plans)} candidates ({n} random, the rest uniform and corners)")
    models, predicted = [], []
    for plan in plans:
        pruned = apply_plan(model, plan, units, example_input, multiples, calibration=data)
        predicted.append(checked_latencies({device.name: estimator}, pruned, example_input)[device.name])  # never a NaN MAPE
        models.append(deployable(pruned, example_input))
    dense_predicted = estimator.latency_ms(model, example_input)
    x = batched(example_input, device.batch_size)
    builds = [lambda m=m: (m, x) for m in models]
    t = time.perf_counter()
    say(f"exporting {len(plans)} candidates and measuring them on {device.name}, twice")
    relative = measurer is None
    if relative:
        backend = device_backend(device)
        writes = [model_writer(backend, b) for b in builds]
        dense = model_writer(backend, lambda: (deployable(model, example_input), x))
        plan_rounds = Rounds(min_rounds=max(rounds, 3), max_rounds=200, ci_pct=MODEL_CI_PCT, time_cap_s=time_cap_s)
        (_, first, r1), (_, second, r2) = measure_relative(device, writes, dense, plan_rounds, passes=2, progress=on_rounds)
        measured_ratio, again_ratio = [r.ratio for r in r1], [r.ratio for r in r2]
    else:
        first, second = measure_models_passes(device, builds, passes=2, rounds=rounds, measurer=measurer)
        measured_ratio = again_ratio = [float("nan")] * len(plans)
    measure_s = time.perf_counter() - t
    rows = pd.DataFrame(
        {
            "label": [label for label, _ in labelled],
            "plan_key": [p.key for p in plans],
            "mean_ratio": [p.mean_ratio() for p in plans],
            "predicted_ms": predicted,
            "measured_ms": [s.median_ms for s in first],
            "measured_again_ms": [s.median_ms for s in second],
            "measured_p10_ms": [s.p10_ms for s in first],
            "measured_p90_ms": [s.p90_ms for s in first],
            "predicted_ratio": np.asarray(predicted) / dense_predicted,
            "measured_ratio": measured_ratio,
            "measured_again_ratio": again_ratio,
            "plan": [p.to_json() for p in plans],
        }
    )
    rows["predicted_speedup"] = 1.0 / rows.predicted_ratio
    rows["measured_speedup"] = 1.0 / rows.measured_ratio
    if relative:
        rows["error_pct"] = (rows.predicted_ratio - rows.measured_ratio) / rows.measured_ratio * 100.0
        metrics = error_metrics(rows.predicted_ratio.to_numpy(), rows.measured_ratio.to_numpy())
        noise = error_metrics(rows.measured_again_ratio.to_numpy(), rows.measured_ratio.to_numpy())
        bands = band_metrics(rows)
    else:
        rows["error_pct"] = (rows.predicted_ms - rows.measured_ms) / rows.measured_ms * 100.0
        metrics = error_metrics(rows.predicted_ms.to_numpy(), rows.measured_ms.to_numpy())
        noise = error_metrics(rows.measured_again_ms.to_numpy(), rows.measured_ms.to_numpy())
        bands = {}
    uniform = rows[rows.label.str.startswith("uniform-")]
    info: dict[str, Any] = {
        "seed": seed, "measure_s": measure_s, "measured_on_demand": estimator.measured_on_demand, "table": str(estimator.table.table_path),
        "absolute": error_metrics(rows.predicted_ms.to_numpy(), rows.measured_ms.to_numpy()),
    }
    if relative:
        info["uniform"] = [
            {"ratio": float(r.mean_ratio), "predicted_speedup": float(r.predicted_speedup), "measured_speedup": float(r.measured_speedup)}
            for r in uniform.itertuples()
        ]
    return Validation(device=device.name, rows=rows, metrics=metrics, noise=noise, info=info, bands=bands, relative=relative)
