"""Study runs: records, resume after a kill, repeated plans, failed trials, front queries."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from autoprune.core.config import load_config
from autoprune.core.errors import ConfigError
from autoprune.core.records import TrialResult
from autoprune.deploy.verify import with_measured_latency
from autoprune.engine.executor import run_study
from autoprune.results.front import front
from autoprune.results.study import Study
from tests.conftest import PRUNABLE_TASK, heavy_space, write_config


def test_study_records_every_trial_and_resumes_without_recomputing(tmp_path):
    config = load_config(write_config(tmp_path, budget={"trials": 2}, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp_path))))
    study = run_study(config, progress=False)
    first = study.records()
    assert [r.number for r in first] == [0, 1]
    assert all(r.state == "complete" and 0 <= r.accuracy <= 1 and r.latency_ms["onnxruntime-cpu"] > 0 for r in first)
    assert study.csv_file.exists() and len(study.dataframe()) == 2
    assert set(study.baseline()) >= {"accuracy", "latency_ms", "params", "macs"}

    more = load_config(write_config(tmp_path, budget={"trials": 4}, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp_path))))
    study = run_study(more, progress=False)
    records = study.records()
    assert [r.number for r in records] == [0, 1, 2, 3]
    assert [r.to_dict() for r in records[:2]] == [r.to_dict() for r in first]  # kept, not recomputed
    optuna_study = optuna.load_study(study_name="tiny", storage=study.optuna_storage)
    # a plan proposed again is told to the sampler (a finished Optuna trial) but not recorded
    assert len([t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 4

    measured = with_measured_latency(front(study), study)
    assert len(measured) == len(front(study)) > 0
    assert (measured.latency_ms_measured > 0).all() and (measured.speedup_measured > 0).all()
    # the study's latency was measured too: a second measurement agrees within noise, not exactly
    assert (measured.latency_ms_measured / measured.latency_ms).between(1 / 3, 3).all()


def test_changing_what_is_searched_refuses_to_mix_studies(tmp_path):
    run_study(load_config(write_config(tmp_path, budget={"trials": 1})), progress=False)
    with pytest.raises(ConfigError, match=r"different 'devices'"):
        run_study(load_config(write_config(tmp_path, devices=["torch-cpu"])), progress=False)


def test_a_study_saved_before_an_option_existed_resumes_with_its_default(tmp_path):
    config = load_config(write_config(tmp_path, budget={"trials": 1}))
    study = run_study(config, progress=False)
    saved = study.config_file.read_text()
    assert "device: auto" in saved
    study.config_file.write_text("".join(line for line in saved.splitlines(keepends=True) if line.strip() != "device: auto"))
    more = load_config(write_config(tmp_path, budget={"trials": 2}))
    assert [r.number for r in run_study(more, progress=False).records()] == [0, 1]


def test_killed_search_resumes_with_no_trial_lost_or_run_twice(tmp_path):
    config_path = write_config(tmp_path, budget={"trials": 8}, finetune={"epochs": 0.5})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "autoprune.cli", "search", str(config_path), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records_file = tmp_path / "study" / "trials.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records_file.exists() and len(records_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Study(tmp_path / "study").records()
    assert 2 <= len(before) < 8, "the kill should land mid-study"

    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    after = Study(tmp_path / "study").records()
    assert [r.number for r in after] == list(range(8))
    assert [r.to_dict() for r in after[: len(before)]] == [r.to_dict() for r in before]
    trials = optuna.load_study(study_name="tiny", storage=Study(tmp_path / "study").optuna_storage).trials
    complete = {t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert {r.trial_id for r in after} <= complete  # (a proposal of an evaluated plan is told to Optuna too, unrecorded)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)


def test_repeated_plan_is_not_evaluated_again_nor_counted(tmp_path, caplog):
    space = tmp_path / "space.yaml"
    space.write_text("rules:\n  - match: '*'\n    pruning_ratio: {low: 0.5, high: 0.5, step: 0.1}\n")
    with caplog.at_level("WARNING", logger="autoprune.engine.executor"):
        study = run_study(load_config(write_config(tmp_path, search_space=str(space), budget={"trials": 3})), progress=False)
    records = study.records()
    assert [(r.number, r.cached) for r in records] == [(0, False)]  # the one plan of the space, once
    assert "evaluated before" in caplog.text and "exhausted" in caplog.text


@pytest.mark.parametrize("controller", ["nsga2", "tpe", "evolution", "random"])
def test_resumed_study_proposes_plans_it_has_not_evaluated(tmp_path, controller):
    options = {"population_size": 10} if controller in ("nsga2", "evolution") else {}  # all 7 in the random first generation
    config = load_config(write_config(tmp_path, controller=controller, controller_options=options, budget={"trials": 3}, finetune={"max_steps": 2}))
    run_study(config, progress=False)
    more = load_config(write_config(tmp_path, controller=controller, controller_options=options, budget={"trials": 7}, finetune={"max_steps": 2}))
    records = run_study(more, progress=False).records()
    assert [r.number for r in records] == list(range(7))
    assert len({r.plan_key for r in records}) == 7 and not any(r.cached for r in records)
    if controller in ("nsga2", "tpe"):  # every plan the resumed sampler proposed was new: no repeats were asked
        assert len(optuna.load_study(study_name="tiny", storage=Study(more.study_dir).optuna_storage).trials) == 7


def test_failed_trial_is_recorded_and_the_study_goes_on(tmp_path):
    config = load_config(write_config(tmp_path, finetune={"epochs": 0.2, "lr": 1e12, "momentum": 0.0, "schedule": "constant"}, budget={"trials": 2}))
    records = run_study(config, progress=False).records()
    assert len(records) == 2
    assert all(r.state == "failed" and "DivergedError" in r.error for r in records)
    assert front(tmp_path / "study").empty


def hand_made_study(tmp_path):
    config = load_config(write_config(tmp_path))
    study = Study(config.study_dir)
    study.initialise(config)
    study.save_baseline({"accuracy": 0.95, "latency_ms": {"onnxruntime-cpu": 2.0}})
    points = [(0.94, 1.6), (0.90, 1.0), (0.93, 1.8), (0.80, 0.5), (0.85, 1.1), (0.70, 0.5)]
    for i, (acc, lat) in enumerate(points):
        study.append(TrialResult(i, {"u": {"granularity": "channel", "pruning_ratio": 0.1 * i, "criterion": "l1"}}, f"k{i}", accuracy=acc, latency_ms={"onnxruntime-cpu": lat}, params=100, macs=1000))
    study.append(TrialResult(6, {}, "k6", state="failed", error="boom"))
    return study


def test_front_query_and_filters_match_hand_computed_sets(tmp_path):
    study = hand_made_study(tmp_path)
    df = front(study)
    assert df.number.tolist() == [3, 1, 0]  # sorted by latency; 2, 4, 5 dominated
    assert df.speedup.tolist() == pytest.approx([4.0, 2.0, 1.25])
    assert front(study, max_latency_ms=1.0).number.tolist() == [3, 1]
    assert front(study, min_accuracy=0.9).number.tolist() == [1, 0]
    assert front(study, device="onnxruntime-cpu", max_latency_ms=1.2, min_accuracy=0.85).number.tolist() == [1]
    with pytest.raises(KeyError, match="not a device of study"):
        front(study, device="tflite")


def test_front_cli_formats(tmp_path):
    hand_made_study(tmp_path)
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", "front", str(tmp_path / "study"), "--format", "json", "--max-latency-ms", "1.0"], capture_output=True, text=True, check=True)
    assert [row["number"] for row in json.loads(out.stdout)] == [3, 1]
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", "front", str(tmp_path / "study"), "--format", "csv"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0].startswith("device,number,accuracy,latency_ms")
    bad = subprocess.run([sys.executable, "-m", "autoprune.cli", "front", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a study directory" in bad.stderr
