"""The front explorer: one self-contained HTML page per study, with the Pareto front of
every device side by side (plotly, its JavaScript inlined so the page works offline).

Hovering a point shows its plan in brief; clicking a front member shows its per-unit
pruning ratios as bars, its figures (params, MACs, latency per device, accuracy) and the
``autoprune export`` command that deploys it. The page is built from the study's records
alone (no model, no torch), so it can be rebuilt while a search is still writing them.
"""
from __future__ import annotations

import html
import json
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autoprune.core.errors import AutopruneError
from autoprune.core.plan import Plan
from autoprune.core.records import COMPLETE, TrialResult
from autoprune.results.front import device_front, front_limits
from autoprune.results.study import Study

if TYPE_CHECKING:
    import plotly.graph_objects as go

log = logging.getLogger(__name__)

#: The page's div holding the fronts (the browser test and the click handler find it by this id).
FRONT_DIV = "autoprune-front"


def _plotly() -> Any:
    """plotly, or a one-line error saying which extra installs it."""
    try:
        import plotly
    except ImportError:
        raise AutopruneError("the front explorer needs plotly: pip install 'autoprune[report]'") from None
    return plotly


def plan_summary(plan: dict[str, Any], top: int = 4) -> str:
    """A short text for a hover: units pruned, mean ratio, granularities, the most pruned units."""
    parsed = Plan.from_dict(plan)
    active = [(u, c) for u, c in parsed if c.active]
    if not active:
        return "dense (nothing pruned)"
    granularities = sorted({c.granularity for _, c in active})
    heaviest = sorted(active, key=lambda uc: -uc[1].pruning_ratio)[:top]
    return (
        f"{len(active)}/{len(parsed)} units pruned, mean ratio {parsed.mean_ratio():.2f}, {', '.join(granularities)}<br>"
        + "<br>".join(f"{u}: {c.pruning_ratio:.2f}" for u, c in heaviest)
        + ("<br>..." if len(active) > top else "")
    )


def export_command(study_path: Path, device: str, member: TrialResult) -> str:
    """The ``autoprune export`` command that deploys ``member`` on ``device``.

    The export picks the most accurate front member within ``--max-latency-ms``; at the
    member's own latency (written exactly, as Python's shortest round-trip repr) that is
    the member itself, since every faster member of the front is less accurate.
    """
    return shlex.join(["autoprune", "export", str(study_path), "--device", device, "--max-latency-ms", repr(member.latency_ms[device])])


def _speedup(dense_ms: Optional[float], latency_ms: float) -> Optional[float]:
    return dense_ms / latency_ms if dense_ms else None


def explorer_data(study: Study) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-ready data: per device the dense model, every
    complete trial and the front members with their plans, figures and export commands."""
    config = study.require().config()
    baseline = study.baseline() or {}
    records = [r for r in study.records() if r.state == COMPLETE and r.accuracy is not None]
    devices = []
    for device in config.devices:
        dense = (baseline.get("latency_ms") or {}).get(device)
        timed = [r for r in records if device in r.latency_ms]
        members = device_front(records, device, **front_limits(config, baseline, device))

        devices.append({
            "device": device,
            "dense": {"accuracy": baseline.get("accuracy"), "latency_ms": dense, "params": baseline.get("params"), "macs": baseline.get("macs")},
            "trials": [
                {"number": r.number, "accuracy": r.accuracy, "latency_ms": r.latency_ms[device], "speedup": _speedup(dense, r.latency_ms[device]), "summary": plan_summary(r.plan)}
                for r in timed
            ],
            "front": [
                {
                    "number": m.number,
                    "accuracy": m.accuracy,
                    "latency_ms": m.latency_ms[device],
                    "speedup": _speedup(dense, m.latency_ms[device]),
                    "latency_ms_all": dict(m.latency_ms),
                    "latency_source": m.latency_source.get(device),
                    "params": m.params,
                    "macs": m.macs,
                    "ratios": {u: c["pruning_ratio"] for u, c in sorted(m.plan.items())},
                    "granularity": {u: c["granularity"] for u, c in sorted(m.plan.items())},
                    "summary": plan_summary(m.plan),
                    "export": export_command(study.path, device, m),
                }
                for m in members
            ],
        })
    return {"study": config.name, "path": str(study.path), "task": config.task, "devices": devices}


def explorer_figure(data: dict[str, Any]) -> "go.Figure":
    """The fronts, one panel per device side by side: every trial faded, the front as a
    step line with markers, the dense model as a star; hover shows speedup and plan."""
    _plotly()
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    devices = data["devices"]
    fig = make_subplots(rows=1, cols=max(1, len(devices)), subplot_titles=[d["device"] for d in devices], horizontal_spacing=0.06)
    hover = "trial %{customdata[0]}<br>accuracy %{y:.4f}<br>latency %{x:.4g} ms<br>speedup %{customdata[1]}<br>%{customdata[2]}<extra></extra>"

    def custom(points: list[dict[str, Any]]) -> list[list[Any]]:
        return [[p["number"], f"{p['speedup']:.2f}x" if p["speedup"] else "n/a", p["summary"]] for p in points]

    for col, d in enumerate(devices, start=1):
        first = col == 1
        fig.add_trace(go.Scatter(
            x=[t["latency_ms"] for t in d["trials"]], y=[t["accuracy"] for t in d["trials"]], customdata=custom(d["trials"]),
            mode="markers", name="all trials", legendgroup="trials", showlegend=first, hovertemplate=hover,
            marker={"color": "rgba(100,110,130,0.30)", "size": 7}, meta={"role": "trials", "device": d["device"]},
        ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[m["latency_ms"] for m in d["front"]], y=[m["accuracy"] for m in d["front"]], customdata=custom(d["front"]),
            mode="lines+markers", line={"shape": "hv", "color": "#d62728"}, marker={"size": 11, "color": "#d62728"},
            name="Pareto front (click a member)", legendgroup="front", showlegend=first, hovertemplate=hover,
            meta={"role": "front", "device": d["device"]},
        ), row=1, col=col)
        dense = d["dense"]
        if dense["latency_ms"] is not None and dense["accuracy"] is not None:
            fig.add_trace(go.Scatter(
                x=[dense["latency_ms"]], y=[dense["accuracy"]], mode="markers", name="dense model", legendgroup="dense", showlegend=first,
                marker={"symbol": "star", "size": 16, "color": "black"},
                hovertemplate="dense model<br>accuracy %{y:.4f}<br>latency %{x:.4g} ms<extra></extra>", meta={"role": "dense", "device": d["device"]},
            ), row=1, col=col)
        fig.update_xaxes(title_text=f"latency on {d['device']} (ms)", row=1, col=col)
    fig.update_yaxes(title_text="accuracy after short fine-tune", row=1, col=1)
    fig.update_layout(
        title=f"{data['study']}: the Pareto front per device", template="plotly_white", height=480,
        legend={"orientation": "h", "y": -0.2}, margin={"t": 80, "l": 60, "r": 20, "b": 40}, hovermode="closest",
    )
    return fig


#: Shows a clicked front member: its ratios as bars (a plotly chart), its figures and its export command.
_CLICK_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById("autoprune-data").textContent);
  const byDevice = Object.fromEntries(data.devices.map(d => [d.device, d]));
  const fmt = (v, digits) => (v === null || v === undefined) ? "n/a"
    : Number.isInteger(v) ? v.toLocaleString("en-US")
    : typeof v === "number" ? Number(v.toPrecision(digits || 4)).toString() : String(v);
  function cell(row, text, header) {
    const c = document.createElement(header ? "th" : "td"); c.textContent = text; row.appendChild(c);
  }
  function show(device, member) {
    const dense = byDevice[device].dense;
    const panel = document.getElementById("autoprune-member");
    panel.hidden = false;
    document.getElementById("autoprune-member-title").textContent = `Trial ${member.number} on ${device}`;
    const table = document.getElementById("autoprune-member-figures");
    table.replaceChildren();
    const rows = [
      ["accuracy", fmt(member.accuracy), fmt(dense.accuracy)],
      ["params", fmt(member.params), fmt(dense.params)],
      ["MACs", fmt(member.macs), fmt(dense.macs)],
      ["speedup on " + device, member.speedup ? fmt(member.speedup, 3) + "x" : "n/a", "1x"],
    ];
    for (const [d, ms] of Object.entries(member.latency_ms_all)) {
      rows.push(["latency_ms on " + d + (d === device ? " (" + (member.latency_source || "predicted") + ")" : ""), fmt(ms), fmt((byDevice[d] || {dense: {}}).dense.latency_ms)]);
    }
    const head = table.insertRow(); ["", "member", "dense model"].forEach(t => cell(head, t, true));
    for (const r of rows) { const tr = table.insertRow(); r.forEach(t => cell(tr, t, false)); }
    document.getElementById("autoprune-export").textContent = member.export;
    const units = Object.keys(member.ratios);
    Plotly.newPlot("autoprune-plan", [{
      type: "bar", x: units, y: units.map(u => member.ratios[u]), text: units.map(u => member.granularity[u]),
      hovertemplate: "%{x}<br>pruning_ratio %{y:.2f}<br>%{text}<extra></extra>", marker: {color: "#d62728"},
    }], {
      title: {text: "pruning_ratio per unit (fraction removed)"}, yaxis: {range: [0, 1], title: {text: "pruning_ratio"}},
      xaxis: {tickangle: -45, automargin: true}, margin: {t: 50, l: 60, r: 20}, height: 380, template: "plotly_white",
    }, {displaylogo: false, responsive: true});
  }
  const plot = document.getElementById("__FRONT_DIV__");
  plot.on("plotly_click", function (event) {
    // a front member is also drawn among the faded trials: find it by trial number, whichever trace was hit
    for (const p of event.points) {
      const meta = p.data.meta || {};
      if (!byDevice[meta.device] || !p.customdata) continue;
      const member = byDevice[meta.device].front.find(m => m.number === p.customdata[0]);
      if (member) { show(meta.device, member); return; }
    }
  });
  window.autopruneShowMember = function (device, index) { show(device, byDevice[device].front[index]); };
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%(title)s</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #222; }
  #autoprune-member { border-top: 1px solid #ccc; margin-top: 1em; padding-top: 0.5em; }
  #autoprune-member-figures { border-collapse: collapse; margin: 0.5em 0; }
  #autoprune-member-figures th, #autoprune-member-figures td { border: 1px solid #ddd; padding: 0.2em 0.7em; text-align: right; }
  #autoprune-member-figures td:first-child { text-align: left; }
  pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; }
  .note { color: #666; }
</style>
</head>
<body>
<h1>%(title)s</h1>
<p class="note">Study <code>%(path)s</code>, task <code>%(task)s</code>. Each panel is one device: every trial faded,
the front in red, the dense model as a star. Hover a point for its plan; click a front member for its per-unit ratios and the command that exports it.</p>
%(plot)s
<section id="autoprune-member" hidden>
<h2 id="autoprune-member-title"></h2>
<div id="autoprune-plan"></div>
<table id="autoprune-member-figures"></table>
<p>Export it (the most accurate member within its own latency is this one):</p>
<pre id="autoprune-export"></pre>
</section>
<script type="application/json" id="autoprune-data">%(data)s</script>
<script>%(script)s</script>
</body>
</html>
"""


def explorer_html(study: str | Path | Study) -> str:
    """The explorer page of ``study`` as one self-contained HTML document (no network needed)."""
    study = study if isinstance(study, Study) else Study(study)
    data = explorer_data(study)
    if not any(d["trials"] for d in data["devices"]):
        log.warning("%s: no complete trial yet; the explorer shows empty panels", study.path)
    plot = explorer_figure(data).to_html(full_html=False, include_plotlyjs=True, div_id=FRONT_DIV, config={"displaylogo": False, "responsive": True})
    payload = json.dumps(data).replace("</", "<\\/")  # no "</script>" can end the data block early
    return _PAGE % {
        "title": html.escape(f"autoprune: {data['study']}"),
        "path": html.escape(data["path"]),
        "task": html.escape(str(data["task"])),
        "plot": plot,
        "data": payload,
        "script": _CLICK_SCRIPT.replace("__FRONT_DIV__", FRONT_DIV),
    }


def write_explorer(study: str | Path | Study, path: Optional[str | Path] = None) -> Path:
    """Write the explorer page (default: ``STUDY/report/explorer.html``); returns its path."""
    study = study if isinstance(study, Study) else Study(study)
    out = Path(path) if path else study.require().path / "report" / "explorer.html"
    text = explorer_html(study)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
