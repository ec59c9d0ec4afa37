"""``autoprune bench controllers``: same budget and seeds for every controller, results files, resume."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from autoprune.cli.main import main
from autoprune.core.config import load_config
from autoprune.core.records import TrialResult
from autoprune.engine.compare import Reference, summarise
from autoprune.results.study import Study
from tests.conftest import write_config


def test_bench_controllers_writes_table_and_plot_and_resumes(tmp_path, capsys):
    config = write_config(tmp_path, controller="evolution", controller_options={"population_size": 4, "warm_start": 2})
    args = ["bench", "controllers", str(config), "--budget", "3", "--seeds", "2", "--controllers", "uniform,evolution",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    runs = pd.read_csv(tmp_path / "out" / "controllers.csv")
    assert sorted(zip(runs.controller, runs.seed)) == [("evolution", 0), ("evolution", 1), ("uniform", 0), ("uniform", 1)]
    assert (runs.trials == 3).all()
    markdown = (tmp_path / "out" / "controllers.md").read_text()
    assert "latency **measured**" in markdown and "| evolution |" in markdown
    assert (tmp_path / "out" / "controllers.png").stat().st_size > 0
    cache = (tmp_path / "work" / "evaluations.jsonl").read_text().splitlines()
    records = Study(tmp_path / "work" / "evolution-seed0").records()
    assert records[0].plan_key == Study(tmp_path / "work" / "uniform-seed0").records()[0].plan_key
    assert records[0].cached, "the warm start's dense plan was evaluated for uniform already"
    assert len({json.loads(line)["plan_key"] for line in cache}) == len(cache)

    args[args.index("--budget") + 1] = "4"
    assert main(args) == 0
    assert len(Study(tmp_path / "work" / "evolution-seed0").records()) == 4
    assert [r.to_dict() for r in Study(tmp_path / "work" / "evolution-seed0").records()[:3]] == [r.to_dict() for r in records]
    assert "hypervolume" in capsys.readouterr().out


def test_bench_refuses_an_unknown_controller(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["bench", "controllers", str(config), "--controllers", "annealing", "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown controller 'annealing'; known:" in capsys.readouterr().err


def test_summary_counts_each_plan_once_and_reads_speedups_from_the_dense_latency():
    baseline = {"accuracy": 0.9, "latency_ms": {"d": 1.0}}
    record = lambda n, key, acc, ms: TrialResult(number=n, plan={}, plan_key=key, accuracy=acc, latency_ms={"d": ms})  # noqa: E731
    records = [record(0, "a", 0.88, 0.6), record(1, "b", 0.85, 0.45), record(2, "a", 0.88, 0.6), record(3, "c", 0.7, 0.3)]
    stats = summarise(records, baseline, "d", Reference(accuracy_drop=0.1, latency=1.0), speedups=(1.5, 2.0, 3.0))
    assert stats["evaluated"] == 3 and stats["trials"] == 4
    assert stats["best"] == {1.5: 0.88, 2.0: 0.85, 3.0: 0.7}
    # points (acc, latency fraction) a=(0.88, 0.6), b=(0.85, 0.45); c is below the reference accuracy 0.8
    assert stats["hypervolume"] == pytest.approx((1 - 0.6) * (0.88 - 0.85) + (1 - 0.45) * (0.85 - 0.8))


def test_reseed_fine_tunes_the_best_plans_again_once(tmp_path):
    from autoprune.engine.compare import compare_controllers, reseed
    from autoprune.engine.context import build_context

    config = load_config(write_config(tmp_path))
    ctx = build_context(config)
    comparison = compare_controllers(config, ["uniform"], budget=2, seeds=[0], work_dir=tmp_path / "work", context=ctx)
    path = tmp_path / "work" / "reseeded.jsonl"
    rows = reseed(ctx, comparison, speedup=0.0, seeds=2, path=path)
    best = max(comparison.records[("uniform", 0)], key=lambda r: r.accuracy)
    assert [(r["controller"], r["k"], r["plan_key"]) for r in rows] == [("uniform", 1, best.plan_key), ("uniform", 2, best.plan_key)]
    assert all(0 <= r["accuracy"] <= 1 and r["accuracy_search"] == best.accuracy for r in rows)
    assert len(path.read_text().splitlines()) == 2
    assert reseed(ctx, comparison, speedup=0.0, seeds=2, path=path) == rows
    assert len(path.read_text().splitlines()) == 2, "kept rows are not recomputed"
