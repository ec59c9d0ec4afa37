"""Plots and an overview of a study: one Pareto-front PNG per device and a markdown index,
with the quality diagnostics of the models exported so far."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator  # noqa: E402

from autoprune.core.records import COMPLETE  # noqa: E402
from autoprune.results.front import device_front, front, front_limits  # noqa: E402
from autoprune.results.study import Study  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

#: Ticks of the speedup axis.
SPEEDUP_TICKS = [0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32]


def plot_front(study: Study, device: str, path: Path) -> Path:
    """Accuracy vs latency of every complete trial (faded), the front as a step line, the
    dense model as a star, and the speedup over the dense model on the top axis: the
    static counterpart of one panel of the front explorer (:mod:`autoprune.results.explorer`)."""
    records = [r for r in study.records() if r.state == COMPLETE and device in r.latency_ms]
    members = device_front(records, device, **front_limits(study.config(), study.baseline(), device))
    baseline = study.baseline() or {}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter([r.latency_ms[device] for r in records], [r.accuracy for r in records], s=14, alpha=0.45, label="trials")
    ax.step([m.latency_ms[device] for m in members], [m.accuracy for m in members], where="post", color="C3", lw=1.5)
    ax.scatter([m.latency_ms[device] for m in members], [m.accuracy for m in members], color="C3", s=28, label="Pareto front")
    dense = (baseline.get("latency_ms") or {}).get(device)
    if dense is not None and baseline.get("accuracy") is not None:
        ax.scatter([dense], [baseline["accuracy"]], marker="*", s=160, color="k", label="dense")
    if dense:
        def speedup(latency_ms: np.ndarray) -> np.ndarray:
            """Latency (ms) <-> speedup over the dense model: the map is its own inverse."""
            latency_ms = np.asarray(latency_ms, dtype=float)
            return dense / np.where(latency_ms > 0, latency_ms, np.nan)

        top = ax.secondary_xaxis("top", functions=(speedup, speedup))
        top.xaxis.set_major_locator(FixedLocator(SPEEDUP_TICKS))  # round speedups; even steps would crowd the fast end
        top.set_xlabel("speedup over the dense model (x)")
    ax.set_xlabel(f"latency on {device} (ms)")
    ax.set_ylabel("accuracy after short fine-tune")
    ax.set_title(f"{study.config().name}: {len(records)} trials, {len(members)} on the front", pad=28 if dense else 6)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(study_dir: str | Path, out_dir: Optional[str | Path] = None, html: bool = False) -> list[Path]:
    """Write ``front_DEVICE.png`` per device and ``report.md`` (the fronts as tables); with
    ``html``, also ``explorer.html``, the interactive front explorer (see :mod:`autoprune.results.explorer`)."""
    study = Study(study_dir).require()
    config = study.config()
    out = Path(out_dir) if out_dir else study.path / "report"
    records = study.records()
    baseline = study.baseline() or {}
    lines = [
        f"# Study {config.name}",
        "",
        f"Task `{config.task}` {config.task_options or ''}, controller `{config.controller}`, "
        f"{sum(r.state == COMPLETE for r in records)} complete and {sum(r.state != COMPLETE for r in records)} failed trials.",
        f"Dense model: accuracy {baseline.get('accuracy', float('nan')):.4f}, latency "
        + ", ".join(f"{d} {v:.4g} ms" for d, v in (baseline.get("latency_ms") or {}).items()),
        "",
    ]
    written = []
    for device in config.devices:
        png = plot_front(study, device, out / f"front_{device}.png")
        written.append(png)
        table = front(study, device=device).drop(columns=["device"])
        lines += [f"## {device}", "", f"![front]({png.name})", "", table.to_markdown(index=False, floatfmt=".4g") if len(table) else "(no front)", ""]
    lines += quality_section(study)
    if html:
        from autoprune.results.explorer import write_explorer  # plotly, only when the page is asked for

        written.append(write_explorer(study, out / "explorer.html"))
        lines += ["[The front explorer](explorer.html): the fronts side by side; click a member for its per-unit ratios and export command.", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return [md, *written]


QUALITY_COLUMNS = [
    "device", "trial", "accuracy", "accuracy_dense", "worst_class", "worst_class_drop", "ece", "ece_dense",
    "accuracy_noise", "accuracy_noise_dense", "accuracy_blur", "accuracy_blur_dense", "flagged",
]


def quality_rows(study: Study) -> list[dict]:
    """One row per exported model card under the study's exports folder that has diagnostics."""
    rows = []
    for path in sorted(study.exports_dir.glob("*/model_card.json")):
        card = json.loads(path.read_text())
        quality = card.get("quality")
        if not quality:
            continue
        pruned, dense = quality["pruned"], quality["dense"]
        rows.append({
            "device": card["device"], "trial": card["trial"],
            "accuracy": pruned["accuracy"], "accuracy_dense": dense["accuracy"],
            "worst_class": quality["worst_class"], "worst_class_drop": quality["worst_class_drop"],
            "ece": pruned["ece"], "ece_dense": dense["ece"],
            "accuracy_noise": pruned["accuracy_noise"], "accuracy_noise_dense": dense["accuracy_noise"],
            "accuracy_blur": pruned["accuracy_blur"], "accuracy_blur_dense": dense["accuracy_blur"],
            "flagged": "yes" if quality["flagged"] else "",
        })
    return rows


def quality_section(study: Study) -> list[str]:
    """Markdown lines: the exported models' quality beside the dense model's (nothing if none exported)."""
    rows = quality_rows(study)
    if not rows:
        return []

    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    bound = study.config().export.max_class_drop
    lines = [
        "## Exported models: quality beyond top-1",
        "",
        "Per-class accuracy (the worst class's drop against the dense model), expected calibration error "
        "(15 bins) and accuracy under fixed Gaussian noise and blur; "
        + (f"flagged when the worst class lost more than {bound:.4g}." if bound is not None else "no `export.max_class_drop` bound set."),
        "",
        "| " + " | ".join(QUALITY_COLUMNS) + " |",
        "|" + "---|" * len(QUALITY_COLUMNS),
    ]
    lines += ["| " + " | ".join(fmt(row[c]) for c in QUALITY_COLUMNS) + " |" for row in rows]
    return lines + [""]


def plot_sensitivity(table: "pd.DataFrame", path: Path, title: str = "") -> Path:
    """Sensitivity curves (see :mod:`autoprune.engine.sensitivity`): accuracy vs pruning
    ratio, one line per unit; beside it, the latency saved on each device against the same ratios."""
    devices = [c.split(".", 1)[1] for c in table.columns if c.startswith("latency_saved_ms.")]
    fig, axes = plt.subplots(1, 1 + len(devices), figsize=(6.4 * (1 + len(devices)), 4.6), dpi=110, squeeze=False)
    units = list(dict.fromkeys(table["unit"]))
    colours = plt.get_cmap("tab20" if len(units) > 10 else "tab10")
    for i, unit in enumerate(units):
        rows = table[table["unit"] == unit].sort_values("ratio")
        axes[0, 0].plot(rows["ratio"], rows["accuracy"], marker="o", ms=3, lw=1.2, color=colours(i % colours.N), label=unit)
        for ax, device in zip(axes[0, 1:], devices):
            ax.plot(rows["ratio"], rows[f"latency_saved_ms.{device}"], marker="o", ms=3, lw=1.2, color=colours(i % colours.N))
    axes[0, 0].set_xlabel("pruning_ratio of the one unit pruned")
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].set_title(title or "sensitivity: one unit pruned at a time")
    for ax, device in zip(axes[0, 1:], devices):
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("pruning_ratio of the one unit pruned")
        ax.set_ylabel(f"latency saved on {device} (ms)")
        ax.set_title(device)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2 if len(units) > 12 else 1, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
