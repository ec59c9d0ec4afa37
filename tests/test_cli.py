"""The user's path end to end through the CLI: search, front, export with parity, report."""
import json
import subprocess
import sys

import onnxruntime as ort

from tests.conftest import PRUNABLE_TASK, heavy_space, write_config


def cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "autoprune.cli", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert not check or done.returncode == 0, f"autoprune {args[0]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def test_three_trial_search_then_front_export_report(tmp_path):
    config = write_config(tmp_path, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp_path)))
    out = cli("search", config, "--no-progress")
    assert "Pareto front of tiny (3 trials" in out.stdout
    study = tmp_path / "study"
    rows = json.loads(cli("front", study, "--format", "json").stdout)
    assert rows and all(r["device"] == "onnxruntime-cpu" for r in rows)

    budget = max(r["latency_ms"] for r in rows) * 1.01  # above every member despite JSON rounding
    out = cli("export", study, "--device", "onnxruntime-cpu", "--max-latency-ms", budget, "--epochs", "0.3")
    summary = json.loads(out.stdout)
    card = json.loads((study / "exports" / "onnxruntime-cpu" / "model_card.json").read_text())
    assert card["trial"] == max((r for r in rows if r["latency_ms"] <= budget), key=lambda r: r["accuracy"])["number"]
    assert card["parity"]["max_abs_diff"] < 1e-4 and card["parity"]["top1_agreement"] == 1.0
    assert card["latency_ms_measured"] > 0 and card["latency_ms_predicted"] > 0
    assert card["size_bytes"] == (study / "exports" / "onnxruntime-cpu" / "model.onnx").stat().st_size
    assert set(card["plan"]) and card["params"] > 0 and card["macs"] > 0
    assert summary["trial"] == card["trial"]
    session = ort.InferenceSession(str(study / "exports" / "onnxruntime-cpu" / "model.onnx"))
    assert session.get_inputs()[0].shape == [1, 1, 8, 8]

    paths = cli("report", study).stdout.split()
    assert any(p.endswith("front_onnxruntime-cpu.png") for p in paths)
    assert (study / "report" / "report.md").read_text().startswith("# Study tiny")


def test_unmeetable_export_constraint_is_one_clear_line(tmp_path):
    config = write_config(tmp_path, budget={"trials": 2}, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp_path)))
    cli("search", config, "--no-progress")
    bad = cli("export", tmp_path / "study", "--device", "onnxruntime-cpu", "--max-latency-ms", "1e-9", check=False)
    assert bad.returncode == 2
    # one line either way: no member meets the bound, or (timed on a busy machine) no trial beat the dense model
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("autoprune export: error: ")
    assert "meets --max-latency-ms" in bad.stderr or "faster than the dense model" in bad.stderr


def test_bad_config_is_one_clear_line(tmp_path):
    config = write_config(tmp_path, objectives=["accuracy", "joy"])
    bad = cli("search", config, check=False)
    assert bad.returncode == 2
    assert "objectives" in bad.stderr and "unknown objective 'joy'" in bad.stderr and "Traceback" not in bad.stderr
