"""Plots and an overview of a study: one Pareto-front PNG per device and a markdown index."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .front import device_front, front, front_limits  # noqa: E402
from .study import Study  # noqa: E402
from .trial import COMPLETE  # noqa: E402


def plot_front(study: Study, device: str, path: Path) -> Path:
    """Accuracy vs latency of every complete trial, the front as a step line, the dense model as a star."""
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
    ax.set_xlabel(f"latency on {device} (ms)")
    ax.set_ylabel("accuracy after short fine-tune")
    ax.set_title(f"{study.config().name}: {len(records)} trials, {len(members)} on the front")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(study_dir: str | Path, out_dir: Optional[str | Path] = None) -> list[Path]:
    """Write ``front_DEVICE.png`` per device and ``report.md`` (the fronts as tables)."""
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
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return [md, *written]
