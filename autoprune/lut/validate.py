"""Check a latency table against reality: predict random plans, measure them, compare.

The search ranks candidates by latency, so besides the error of each prediction (MAPE,
share within ±5% and ±10%) the rank correlation between predicted and measured latencies
(Kendall's tau) is reported. Every candidate is measured twice, in two separate
interleaved passes; the same statistics between the two passes are the measurement's
noise floor, which no predictor can beat. (Each candidate is exported once; each pass
loads it afresh.)
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

from ..apply import apply_plan
from ..criteria import Calibration as CriterionData
from ..devices import DeviceProfile
from ..latency import batched, checked_latencies, deployable
from ..search_space import UnitSpace
from ..units import Unit
from .estimator import LUTEstimator
from .measure import FileMeasurer, measure_models_passes


def error_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE (%), share within ±10% and ±5% (%), mean signed error (%), Kendall's tau."""
    from scipy.stats import kendalltau

    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    err = (predicted - measured) / measured * 100.0
    tau = kendalltau(predicted, measured)[0] if len(measured) > 1 else float("nan")
    return {
        "n": int(len(measured)),
        "mape_pct": float(np.mean(np.abs(err))),
        "within_10_pct": float(np.mean(np.abs(err) <= 10.0) * 100.0),
        "within_5_pct": float(np.mean(np.abs(err) <= 5.0) * 100.0),
        "bias_pct": float(np.mean(err)),
        "max_abs_error_pct": float(np.max(np.abs(err))) if len(err) else float("nan"),
        "kendall_tau": float(tau),
    }


@dataclass
class Validation:
    """Per-candidate predictions and measurements, and the summary statistics."""

    device: str
    rows: pd.DataFrame
    metrics: dict[str, float]
    noise: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        m, z = self.metrics, self.noise
        return (
            f"{self.device}: {m['n']} random candidates: MAPE {m['mape_pct']:.2f}%, within ±10% {m['within_10_pct']:.0f}%, "
            f"within ±5% {m['within_5_pct']:.0f}%, bias {m['bias_pct']:+.2f}%, Kendall tau {m['kendall_tau']:.3f} | "
            f"noise floor (same models measured twice): MAPE {z['mape_pct']:.2f}%, within ±10% {z['within_10_pct']:.0f}%, "
            f"tau {z['kendall_tau']:.3f}"
        )

    def save(self, folder: Path) -> dict[str, Path]:
        """Write ``validation.csv``, ``validation.json`` and ``validation.png`` under ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"csv": folder / "validation.csv", "json": folder / "validation.json", "plot": folder / "validation.png"}
        self.rows.to_csv(paths["csv"], index=False)
        paths["json"].write_text(json.dumps({"device": self.device, "metrics": self.metrics, "noise_floor": self.noise, **self.info}, indent=2))
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
) -> Validation:
    """Draw ``n`` random plans, predict each from the table and measure it twice on the device.

    ``data`` (training batches and loss) serves gradient criteria such as ``taylor``; without
    it such plans rank by ``l1``.
    """
    from ..controllers import random_plan

    estimator = estimator or LUTEstimator(device)
    rng = np.random.default_rng(seed)
    multiples = {name: us.rule.channel_multiple for name, us in space.items()}
    plans = [random_plan(space, rng) for _ in range(n)]
    if data is None:
        from .profiler import without_gradients

        plans = [without_gradients(p) for p in plans]
    say = progress or (lambda _msg: None)
    say(f"pruning and predicting {n} candidates")
    models, predicted = [], []
    for plan in plans:
        pruned = apply_plan(model, plan, units, example_input, multiples, calibration=data)
        predicted.append(checked_latencies({device.name: estimator}, pruned, example_input)[device.name])  # never a NaN MAPE
        models.append(deployable(pruned, example_input))
    x = batched(example_input, device.batch_size)
    builds = [lambda m=m: (m, x) for m in models]
    t = time.perf_counter()
    say(f"exporting {n} candidates and measuring them on {device.name}, twice")
    first, second = measure_models_passes(device, builds, passes=2, rounds=rounds, measurer=measurer)
    measure_s = time.perf_counter() - t
    rows = pd.DataFrame(
        {
            "plan_key": [p.key for p in plans],
            "mean_ratio": [p.mean_ratio() for p in plans],
            "predicted_ms": predicted,
            "measured_ms": [s.median_ms for s in first],
            "measured_again_ms": [s.median_ms for s in second],
            "measured_p10_ms": [s.p10_ms for s in first],
            "measured_p90_ms": [s.p90_ms for s in first],
            "plan": [p.to_json() for p in plans],
        }
    )
    rows["error_pct"] = (rows.predicted_ms - rows.measured_ms) / rows.measured_ms * 100.0
    return Validation(
        device=device.name,
        rows=rows,
        metrics=error_metrics(rows.predicted_ms.to_numpy(), rows.measured_ms.to_numpy()),
        noise=error_metrics(rows.measured_again_ms.to_numpy(), rows.measured_ms.to_numpy()),
        info={"seed": seed, "measure_s": measure_s, "measured_on_demand": estimator.measured_on_demand, "table": str(estimator.table.table_path)},
    )
