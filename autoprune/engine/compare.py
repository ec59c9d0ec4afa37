"""Compare controllers on one task, device and latency estimator with the same budget and seeds.

Every (controller, seed) run is a study of its own under the work folder, so it can be
inspected with ``autoprune front`` and resumed after a kill. All runs share one cache of
evaluated plans: a plan is pruned, timed, fine-tuned and scored once, with a fine-tune
seed derived from the plan itself, and every controller that proposes it gets the same
record. That keeps the comparison about what the controllers propose, not about
fine-tuning noise, and saves the evaluations the controllers have in common (uniform
plans are every warm start's first trials).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from autoprune.core.config import Config
from autoprune.core.errors import ConfigError
from autoprune.core.objectives import build_objectives
from autoprune.core.pareto import hypervolume_2d, pareto_mask
from autoprune.core.plan import Plan
from autoprune.core.records import COMPLETE, TrialResult
from autoprune.engine.controllers import Controller, Proposal
from autoprune.engine.controllers.base import CONTROLLERS
from autoprune.engine.cost_model import CostModelFn, cost_model_for
from autoprune.engine.loop import TrialBook, run_loop
from autoprune.engine.trial import TrialContext, run_trial
from autoprune.latency.devices import cpu_model
from autoprune.results.study import Study

#: The order runs are made in: cheap baselines first (their plans warm-start the others).
DEFAULT_CONTROLLERS = ("uniform", "random", "evolution", "knapsack", "rl", "nsga2", "tpe")
SPEEDUPS = (1.5, 2.0, 3.0)


@dataclass(frozen=True)
class Reference:
    """The hypervolume's fixed reference point, relative to the dense model: accuracy
    ``accuracy_drop`` below dense and latency ``latency`` times dense."""

    accuracy_drop: float = 0.10
    latency: float = 1.0


@dataclass
class RunSummary:
    """What one (controller, seed) run reached."""

    controller: str
    seed: int
    device: str
    trials: int
    evaluated: int
    failed: int
    front_size: int
    hypervolume: float
    best: dict[float, Optional[float]]
    trial_s: float
    controller_s: float

    @property
    def wall_s(self) -> float:
        """The run's time on its own: its distinct plans' evaluations plus its controller's time."""
        return self.trial_s + self.controller_s

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "best"}
        out.update({f"best_acc@{s:g}x": v for s, v in self.best.items()})
        out["wall_s"] = self.wall_s
        return out


@dataclass
class Comparison:
    """The runs of a comparison and what they share."""

    config: Config
    baseline: dict[str, Any]
    device: str
    latency_method: str
    reference: Reference
    speedups: tuple[float, ...]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[RunSummary] = field(default_factory=list)
    records: dict[tuple[str, int], list[TrialResult]] = field(default_factory=dict)
    evaluations: int = 0
    evaluation_s: float = 0.0
    wall_s: float = 0.0


class EvaluationCache:
    """Evaluated plans by plan key, appended to a JSON-lines file as they are made (kept in
    memory only when ``path`` is None)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self._records: dict[str, TrialResult] = {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = TrialResult.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue
                self._records[record.plan_key] = record

    def get(self, key: str) -> Optional[TrialResult]:
        return self._records.get(key)

    def add(self, record: TrialResult) -> None:
        self._records[record.plan_key] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record.to_dict()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __len__(self) -> int:
        return len(self._records)

    def values(self) -> list[TrialResult]:
        return list(self._records.values())


def plan_seed(plan: Plan) -> int:
    """A fine-tune seed that depends only on the plan, so its evaluation does too."""
    return int(plan.key[:7], 16)


def evaluate(ctx: TrialContext, plan: Plan, cache: EvaluationCache) -> tuple[TrialResult, bool]:
    """The plan's record from the cache, or a fresh evaluation added to it; and whether it was fresh."""
    known = cache.get(plan.key)
    if known is not None:
        return known, False
    record = run_trial(ctx, plan, plan_seed(plan), seed=plan_seed(plan))
    if record.state == COMPLETE:
        cache.add(record)
    return record, True


def run_controller(
    config: Config,
    ctx: TrialContext,
    baseline: dict[str, Any],
    controller: str,
    seed: int,
    budget: int,
    study_dir: Path,
    cache: EvaluationCache,
    options: Optional[dict[str, Any]] = None,
    on_trial: Optional[Callable[[TrialResult], None]] = None,
    cost_model: Optional[CostModelFn] = None,
) -> list[TrialResult]:
    """Run (or resume) one controller's study to ``budget`` trials; returns its records.

    The controller gets ``cost_model``, or one built from ``ctx`` as the executors do
    (share one across runs so its predictions are made once).

    The loop is the executors' (:func:`autoprune.engine.loop.run_loop`): a plan the study has
    evaluated is told again, not recorded. Each record's ``timings`` holds ``controller_s``
    (time in ask/tell/resume since the previous record) and, the first time the study meets a
    plan, that plan's evaluation times; ``cached`` marks records whose values came from
    another run's evaluation of the same plan.
    """
    from autoprune.engine.executor import make_controller

    run_config = config.model_copy(
        update={
            "controller": controller,
            "controller_options": dict(options or {}),
            "seed": seed,
            "study_dir": str(study_dir),
            "budget": config.budget.model_copy(update={"trials": budget, "timeout_s": None}),
        }
    )
    study = Study(study_dir)
    study.initialise(run_config)
    if study.baseline() is None:
        study.save_baseline(baseline)
    records = study.records()
    start = time.perf_counter()
    agent = make_controller(run_config, ctx.space, study, ctx, cost_model)
    agent.resume(records)
    timed = _TimedController(agent, time.perf_counter() - start)
    seen = {r.plan_key for r in records}

    def evaluate_once(proposal: Proposal, number: int) -> tuple[TrialResult, list]:
        source, fresh = evaluate(ctx, proposal.plan, cache)
        first = source.plan_key not in seen
        seen.add(source.plan_key)
        result = dataclasses.replace(
            source,
            number=number,
            plan=proposal.plan.to_dict(),
            cached=not fresh,
            timings=dict(source.timings) if first else {"total_s": 0.0},
            latency_ms=dict(source.latency_ms),
        )
        result.timings["controller_s"] = timed.spent()
        return result, []

    book = TrialBook(study, controller, records, on_trial=on_trial)
    run_loop(book, timed, evaluate_once, lambda done: done < budget)
    return records


class _TimedController:
    """A controller whose time in ask, tell and resume is added up, for the trials' ``controller_s``."""

    def __init__(self, controller: Controller, resume_s: float) -> None:
        self.controller = controller
        self._spent = resume_s

    def spent(self) -> float:
        """Seconds in the controller since the last call."""
        spent, self._spent = self._spent, 0.0
        return spent

    def ask(self) -> Proposal:
        start = time.perf_counter()
        try:
            return self.controller.ask()
        finally:
            self._spent += time.perf_counter() - start

    def tell(self, proposal: Proposal, result: TrialResult) -> None:
        start = time.perf_counter()
        try:
            self.controller.tell(proposal, result)
        finally:
            self._spent += time.perf_counter() - start


def summarise(
    records: Sequence[TrialResult],
    baseline: dict[str, Any],
    device: str,
    reference: Reference = Reference(),
    speedups: Sequence[float] = SPEEDUPS,
) -> dict[str, Any]:
    """Hypervolume, best accuracy at each speedup, counts and times of one run's records.

    The hypervolume is over (accuracy, latency / dense latency), bounded by ``reference``:
    the area in accuracy x latency-fraction units that the run's plans dominate.
    """
    dense_ms = baseline["latency_ms"][device]
    dense_acc = baseline["accuracy"]
    unique: dict[str, TrialResult] = {}
    for r in records:
        if r.state == COMPLETE and r.accuracy is not None and device in r.latency_ms:
            unique.setdefault(r.plan_key, r)
    points = np.array([[-r.accuracy, r.latency_ms[device] / dense_ms] for r in unique.values()]).reshape(-1, 2)
    ref = (-(dense_acc - reference.accuracy_drop), reference.latency)
    best: dict[float, Optional[float]] = {}
    for s in speedups:
        fast = [r.accuracy for r in unique.values() if dense_ms / r.latency_ms[device] >= s]
        best[float(s)] = max(fast) if fast else None
    return {
        "trials": len(records),
        "evaluated": len(unique),
        "failed": sum(r.state != COMPLETE for r in records),
        "front_size": int(pareto_mask(points).sum()) if len(points) else 0,
        "hypervolume": hypervolume_2d(points, ref) if len(points) else 0.0,
        "best": best,
        "trial_s": sum(r.timings.get("total_s", 0.0) for r in records),
        "controller_s": sum(r.timings.get("controller_s", 0.0) for r in records),
    }


def compare_controllers(
    config: Config,
    controllers: Sequence[str] = DEFAULT_CONTROLLERS,
    budget: int = 48,
    seeds: Sequence[int] = (0, 1),
    work_dir: Path = Path("runs/bench-controllers"),
    device: Optional[str] = None,
    reference: Reference = Reference(),
    speedups: Sequence[float] = SPEEDUPS,
    options: Optional[dict[str, dict[str, Any]]] = None,
    order: str = "seed",
    on_run: Optional[Callable[[Comparison], None]] = None,
    on_trial: Optional[Callable[[str, int, TrialResult], None]] = None,
    context: Optional[TrialContext] = None,
) -> Comparison:
    """Run every controller with the same budget and seeds on ``config``'s task and device.

    ``order`` "seed" runs all controllers for the first seed, then the next seed;
    "controller" runs all seeds of one controller before the next. ``options`` maps a
    controller to its options (``config.controller_options`` apply to ``config.controller``).
    ``on_run`` is called with the comparison so far after every finished run.
    """
    from autoprune.engine.context import build_context, dense_baseline

    unknown = [c for c in controllers if c not in CONTROLLERS]
    if unknown:
        raise ConfigError(f"unknown controller {unknown[0]!r}; known: {', '.join(CONTROLLERS.names())}")
    if budget < 1:
        raise ConfigError(f"budget: must be >= 1, but got budget={budget}")
    device = device or config.devices[0]
    if device not in config.devices:
        raise ConfigError(f"device {device!r} is not a device of the config (devices: {', '.join(config.devices)})")
    options = dict(options or {})
    options.setdefault(config.controller, dict(config.controller_options))
    started = time.perf_counter()
    work_dir = Path(work_dir)
    ctx = context or build_context(config)
    baseline_file = work_dir / "baseline.json"
    method = ctx.estimators[device].method
    if baseline_file.exists():
        baseline = json.loads(baseline_file.read_text())
        earlier = (baseline.get("latency_method") or {}).get(device)
        if earlier is not None and earlier != method:
            raise ConfigError(
                f"{work_dir}: this comparison was started with {earlier} latency on {device!r}, now it would use {method}; "
                "finish it with the same estimator or start another with a new --work-dir"
            )
    else:
        baseline = dense_baseline(ctx)
        work_dir.mkdir(parents=True, exist_ok=True)
        baseline_file.write_text(json.dumps(baseline, indent=2))
    cache = EvaluationCache(work_dir / "evaluations.jsonl")
    cost_model = cost_model_for(ctx, build_objectives(config.objectives, config.devices))
    comparison = Comparison(config, baseline, device, method, reference, tuple(float(s) for s in speedups))
    comparison.options = {c: dict(options.get(c) or {}) for c in controllers}
    pairs = [(c, s) for s in seeds for c in controllers] if order == "seed" else [(c, s) for c in controllers for s in seeds]
    for controller, seed in pairs:
        trial_hook = (lambda r, c=controller, s=seed: on_trial(c, s, r)) if on_trial else None
        records = run_controller(
            config, ctx, baseline, controller, seed, budget, work_dir / f"{controller}-seed{seed}", cache, options.get(controller), trial_hook,
            cost_model,
        )
        stats = summarise(records, baseline, device, reference, speedups)
        comparison.runs.append(RunSummary(controller, seed, device, **stats))
        comparison.records[(controller, seed)] = records
        comparison.evaluations = len(cache)
        comparison.evaluation_s = sum(r.timings.get("total_s", 0.0) for r in cache.values())
        comparison.wall_s = time.perf_counter() - started
        if on_run is not None:
            on_run(comparison)
    return comparison


def best_plans(comparison: Comparison, speedup: float) -> list[tuple[str, int, TrialResult]]:
    """Each run's most accurate plan at least ``speedup`` times faster than dense."""
    dense_ms = comparison.baseline["latency_ms"][comparison.device]
    out = []
    for (controller, seed), records in comparison.records.items():
        fast = [r for r in records if r.state == COMPLETE and r.accuracy is not None
                and dense_ms / r.latency_ms[comparison.device] >= speedup]
        if fast:
            out.append((controller, seed, max(fast, key=lambda r: r.accuracy)))
    return out


def rescore(
    config: Config,
    comparison: Comparison,
    speedup: float = 2.0,
    task_options: Optional[dict[str, Any]] = None,
    cache: Optional[EvaluationCache] = None,
) -> list[dict[str, Any]]:
    """Evaluate each run's best plan at ``speedup`` again on other validation data.

    The plan is pruned and fine-tuned exactly as in the search (same seed, same training
    data), then scored on the task built with ``task_options`` (for instance a larger
    validation split): the best of many noisy scores is biased up, and this shows by how much.
    ``cache`` keeps these evaluations (it must not be the comparison's own cache).
    """
    from autoprune.engine.context import build_context

    picked = best_plans(comparison, speedup)
    cache = cache if cache is not None else EvaluationCache(None)
    other = None
    rows = []
    for controller, seed, record in picked:
        again = cache.get(record.plan_key)
        if again is None:
            if other is None:
                options = {**config.task_options, **(task_options or {})}
                other = build_context(config.model_copy(update={"task_options": options}))
            plan = Plan.from_dict(record.plan)
            again = run_trial(other, plan, plan_seed(plan), seed=plan_seed(plan))
            if again.state == COMPLETE:
                cache.add(again)
        rows.append(
            {
                "controller": controller,
                "seed": seed,
                "plan_key": record.plan_key,
                "speedup": comparison.baseline["latency_ms"][comparison.device] / record.latency_ms[comparison.device],
                "accuracy_search": record.accuracy,
                "accuracy_rescored": again.accuracy,
            }
        )
    return rows


def reseed(
    ctx: TrialContext,
    comparison: Comparison,
    speedup: float = 2.0,
    seeds: int = 4,
    controllers: Optional[Sequence[str]] = None,
    path: Optional[Path] = None,
) -> list[dict[str, Any]]:
    """Fine-tune each run's best plan at ``speedup`` again with ``seeds`` other fine-tune seeds.

    The search scores every plan once, so "best accuracy at 2x" is the best of noisy
    draws; the mean over other seeds says how good the plan itself is. One row per
    (run, extra seed); rows are kept in ``path`` (JSON lines) and not recomputed.
    """
    done: dict[tuple[str, int], float] = {}
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[(row["plan_key"], row["k"])] = row["accuracy"]
    rows = []
    for controller, seed, record in best_plans(comparison, speedup):
        if controllers is not None and controller not in controllers:
            continue
        plan = Plan.from_dict(record.plan)
        for k in range(1, seeds + 1):
            if (plan.key, k) not in done:
                again = run_trial(ctx, plan, plan_seed(plan) + k, seed=plan_seed(plan) + k)
                done[(plan.key, k)] = again.accuracy
                if path is not None and again.state == COMPLETE:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "a") as f:
                        f.write(json.dumps({"plan_key": plan.key, "k": k, "accuracy": again.accuracy}) + "\n")
            rows.append({"controller": controller, "seed": seed, "plan_key": plan.key, "k": k,
                         "accuracy_search": record.accuracy, "accuracy": done[(plan.key, k)]})
    return rows


def describe_machine() -> dict[str, str]:
    """CPU model, cores, Python and library versions, date: the header of a benchmark result."""
    versions = {}
    for package in ("torch", "torch-pruning", "optuna", "onnxruntime", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        **versions,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def summary_table(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per controller: means and standard deviations over its seeds."""
    rows = []
    names = list(dict.fromkeys(r.controller for r in comparison.runs))
    for name in names:
        runs = [r for r in comparison.runs if r.controller == name]
        hv = np.array([r.hypervolume for r in runs])
        row: dict[str, Any] = {
            "controller": name,
            "seeds": len(runs),
            "hypervolume_mean": float(hv.mean()),
            "hypervolume_std": float(hv.std(ddof=1)) if len(hv) > 1 else 0.0,
        }
        for s in comparison.speedups:
            values = [r.best[s] for r in runs if r.best[s] is not None]
            row[f"best_acc@{s:g}x"] = float(np.mean(values)) if values else None
        row["trials"] = float(np.mean([r.trials for r in runs]))
        row["evaluated"] = float(np.mean([r.evaluated for r in runs]))
        row["trial_s"] = float(np.mean([r.trial_s for r in runs]))
        row["controller_s"] = float(np.mean([r.controller_s for r in runs]))
        row["wall_s"] = float(np.mean([r.wall_s for r in runs]))
        rows.append(row)
    return rows


def verdicts(comparison: Comparison, contenders: Sequence[str] = ("evolution", "rl"), margin: float = 0.01) -> list[str]:
    """The issue's claims, checked on this comparison's numbers: each contender's mean
    hypervolume above ``random``'s, and its mean best accuracy at 2x at least ``margin``
    above ``uniform``'s."""
    table = {row["controller"]: row for row in summary_table(comparison)}
    lines = []
    for name in contenders:
        if name not in table:
            continue
        row = table[name]
        if "random" in table:
            ok = row["hypervolume_mean"] > table["random"]["hypervolume_mean"]
            lines.append(
                f"{'PASS' if ok else 'FAIL'}: {name} mean hypervolume {row['hypervolume_mean']:.4f} "
                f"{'>' if ok else '<='} random {table['random']['hypervolume_mean']:.4f}"
            )
        key = "best_acc@2x"
        if "uniform" in table and key in row:
            mine, base = row[key], table["uniform"][key]
            if mine is None or base is None:
                lines.append(f"n/a: {name} or uniform has no plan at 2x predicted speedup")
            else:
                ok = mine >= base + margin
                lines.append(
                    f"{'PASS' if ok else 'FAIL'}: {name} best accuracy at 2x {100 * mine:.2f}% vs uniform {100 * base:.2f}% "
                    f"({100 * (mine - base):+.2f} points; needs {100 * margin:+.1f})"
                )
    return lines


def write_results(comparison: Comparison, out_dir: Path, stem: str = "controllers", notes: str = "") -> list[Path]:
    """``STEM.csv`` (one row per run), ``STEM.md`` (setup, summary, runs, verdicts) and
    ``STEM.png`` (every run's front, overlaid) in ``out_dir``."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.png"
    runs = pd.DataFrame([r.row() for r in comparison.runs])
    runs.to_csv(csv_path, index=False)
    summary = pd.DataFrame(summary_table(comparison))
    plot_fronts(comparison, png_path)
    md_path.write_text(_markdown(comparison, runs, summary, png_path.name, notes))
    return [md_path, csv_path, png_path]


def _markdown(comparison: Comparison, runs, summary, plot_name: str, notes: str) -> str:
    config, baseline, device = comparison.config, comparison.baseline, comparison.device
    machine = describe_machine()
    recipe = config.finetune
    ref = comparison.reference
    pct = lambda v: "–" if v is None or v != v else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        "# Search controllers compared",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}, torch {machine['torch']}, "
        f"torch-pruning {machine['torch-pruning']}, optuna {machine['optuna']}, onnxruntime {machine['onnxruntime']}, "
        f"numpy {machine['numpy']}; {machine['date']}.",
        "",
        "## Setup",
        "",
        f"- Task `{config.task}` {json.dumps(config.task_options)}; search space `{Path(config.search_space).name}`; "
        f"device `{device}`, latency **{comparison.latency_method}**"
        + (" (lookup table: speedups are predicted)" if comparison.latency_method != "measured" else " (no lookup table for this device: every plan was exported and timed, median of the profile's repeats; noisy under load)"),
        "- Controller options: "
        + ("; ".join(f"`{c}` {json.dumps(o)}" for c, o in comparison.options.items() if o) or "none")
        + " (anything not given: the controller's defaults).",
        f"- Dense model: accuracy {pct(baseline['accuracy'])}%, latency {baseline['latency_ms'][device]:.4f} ms on `{device}`.",
        "- Fine-tune recipe per trial: "
        + (f"{recipe.max_steps} steps (at most {recipe.epochs:g} epochs)" if recipe.max_steps is not None else f"{recipe.epochs:g} epochs")
        + f", batch {recipe.batch_size}, "
        f"SGD lr {recipe.lr:g} momentum {recipe.momentum:g}, {recipe.schedule} schedule; accuracy on the task's validation set.",
        f"- Each plan is evaluated once (fine-tune seed derived from the plan) and shared by every run that proposes it: "
        f"{comparison.evaluations} distinct plans evaluated in {comparison.evaluation_s / 60:.1f} min of trial time; "
        f"this run of the comparison took {comparison.wall_s / 60:.1f} min.",
        f"- Hypervolume over (accuracy, latency / dense latency) with the fixed reference point "
        f"(dense accuracy - {100 * ref.accuracy_drop:g} points, {ref.latency:g} x dense latency); "
        f"best accuracy at Nx = the most accurate plan at least N times faster than dense; `trials` counts every "
        f"trial (repeats included), `evaluated` the distinct plans; `wall_s` is a run's time on its own (its distinct "
        f"plans' evaluation time `trial_s` plus its controller's ask/tell time `controller_s`).",
        "",
        "## Summary (mean over seeds)",
        "",
        _table(summary, pct),
        "",
        "## Runs",
        "",
        _table(runs, pct),
        "",
        "## Checks",
        "",
        *[f"- {line}" for line in verdicts(comparison)],
        "",
        f"![fronts]({plot_name})",
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


def _table(df, pct) -> str:
    if df.empty:
        return "(no finished run yet)"
    headers = list(df.columns)
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in df.iterrows():
        cells = []
        for h in headers:
            v = row[h]
            if h.startswith("best_acc"):
                cells.append(pct(v))
            elif isinstance(v, float):
                cells.append(f"{v:.4f}" if "hypervolume" in h else f"{v:.1f}")
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_fronts(comparison: Comparison, path: Path) -> Path:
    """Every run's front as a step line (one colour per controller, one line style per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device, baseline = comparison.device, comparison.baseline
    dense_ms = baseline["latency_ms"][device]
    names = list(dict.fromkeys(r.controller for r in comparison.runs))
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    for (name, seed), records in comparison.records.items():
        points = {r.plan_key: r for r in records if r.state == COMPLETE and device in r.latency_ms}.values()
        if not points:
            continue
        xy = np.array([[dense_ms / r.latency_ms[device], r.accuracy] for r in points])
        keep = pareto_mask(np.column_stack([-xy[:, 0], -xy[:, 1]]))
        front = xy[keep][np.argsort(xy[keep][:, 0])]
        colour = f"C{names.index(name) % 10}"
        seeds = sorted({s for c, s in comparison.records if c == name})
        ax.step(front[:, 0], front[:, 1], where="pre", color=colour, ls=styles[seeds.index(seed) % len(styles)], lw=1.4,
                label=name if seed == seeds[0] else None)
        ax.scatter(front[:, 0], front[:, 1], color=colour, s=12)
    ax.scatter([1.0], [baseline["accuracy"]], marker="*", s=160, color="k", label="dense", zorder=5)
    floor = baseline["accuracy"] - 2 * comparison.reference.accuracy_drop
    ax.set_ylim(bottom=max(floor, 0.0))
    fastest = max([dense_ms / r.latency_ms[device] for rs in comparison.records.values() for r in rs
                   if r.state == COMPLETE and device in r.latency_ms] or [1.0])
    ax.set_xlim(right=max(fastest * 1.05, 1.1))
    for s in comparison.speedups:
        if s <= fastest * 1.05:
            ax.axvline(s, color="grey", lw=0.6, alpha=0.5)
    ax.set_xlabel(f"speedup over dense on {device} ({comparison.latency_method})")
    ax.set_ylabel("accuracy after the trial fine-tune")
    ax.set_title("Pareto fronts per controller (line style = seed)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = [
    "Comparison",
    "DEFAULT_CONTROLLERS",
    "EvaluationCache",
    "Reference",
    "RunSummary",
    "compare_controllers",
    "describe_machine",
    "evaluate",
    "best_plans",
    "plan_seed",
    "rescore",
    "reseed",
    "run_controller",
    "summarise",
    "summary_table",
    "verdicts",
    "write_results",
]
