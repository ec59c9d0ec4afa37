"""Every study has a readable Optuna study, whatever the controller: metric names, and per
trial the record's plan, key, params, MACs, latency source, state and error."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from autoprune.core.config import load_config
from autoprune.engine.executor import run_study
from autoprune.results.study import Study
from tests.conftest import write_config

LABELS = ["accuracy", "latency_ms.onnxruntime-cpu"]
#: Small settings so each controller gets past its warm-up within two trials.
OPTIONS = {
    "nsga2": {"population_size": 2},
    "tpe": {"n_startup_trials": 1},
    "evolution": {"population_size": 2, "warm_start": 1},
    "rl": {"warm_start": 1, "updates": 2, "hidden": 8},
    "random": {},
    "uniform": {},
}


def load(study_dir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=Study(study_dir).optuna_storage)


@pytest.mark.parametrize("controller", list(OPTIONS))
def test_every_controller_writes_a_readable_optuna_study(tmp_path: Path, controller: str) -> None:
    config = load_config(write_config(tmp_path, controller=controller, controller_options=OPTIONS[controller], budget={"trials": 2}))
    records = run_study(config, progress=False).records()
    study = load(tmp_path / "study")
    assert study.metric_names == LABELS
    trials = sorted(study.trials, key=lambda t: t.user_attrs["record"])
    assert [t.user_attrs["record"] for t in trials] == [r.number for r in records]
    for trial, record in zip(trials, records):
        assert trial.state == optuna.trial.TrialState.COMPLETE, record.error
        assert trial.values == [record.accuracy, record.latency_ms["onnxruntime-cpu"]]
        attrs = trial.user_attrs
        assert (attrs["plan_key"], attrs["plan"], attrs["params"], attrs["macs"]) == (record.plan_key, record.plan, record.params, record.macs)
        assert attrs["latency_source"] == {"onnxruntime-cpu": "measured"} and attrs["state"] == "complete"
        assert attrs["controller"] == controller


def test_a_failed_trial_keeps_its_traceback_and_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(write_config(tmp_path, controller="random", controller_options={}, finetune={"epochs": 0.2, "lr": 1e12, "momentum": 0.0, "schedule": "constant"}, budget={"trials": 1}))
    with caplog.at_level("WARNING", logger="autoprune"):
        (record,) = run_study(config, progress=False).records()
    assert record.state == "failed" and "DivergedError" in record.error
    assert record.traceback.startswith("Traceback (most recent call last)") and "DivergedError" in record.traceback.splitlines()[-1]
    assert any("trial 0 failed" in m and "DivergedError" in m for m in caplog.messages)
    (trial,) = load(tmp_path / "study").trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["error"] == record.error and trial.user_attrs["traceback"] == record.traceback


def test_switching_controllers_keeps_one_trial_per_record(tmp_path: Path) -> None:
    path = write_config(tmp_path, controller="evolution", controller_options=OPTIONS["evolution"], budget={"trials": 2})
    run_study(load_config(path), progress=False)
    path = write_config(tmp_path, controller="nsga2", controller_options=OPTIONS["nsga2"], budget={"trials": 3})
    run_study(load_config(path), progress=False)
    path = write_config(tmp_path, controller="uniform", controller_options={}, budget={"trials": 4})
    records = run_study(load_config(path), progress=False).records()
    numbers = [t.user_attrs["record"] for t in load(tmp_path / "study").trials]
    assert sorted(numbers) == [r.number for r in records] == [0, 1, 2, 3]


def test_importing_autoprune_leaves_optunas_verbosity_alone() -> None:
    code = "import optuna; v = optuna.logging.get_verbosity(); import autoprune.engine.controllers, autoprune.engine.executor; print(v == optuna.logging.get_verbosity())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_optuna_dashboard_shows_the_names_and_attributes(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in the 'test' extra")
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    if not dashboard.is_file():
        pytest.skip(f"no optuna-dashboard command beside {sys.executable}")
    config = load_config(write_config(tmp_path, controller="evolution", controller_options=OPTIONS["evolution"], budget={"trials": 2}))
    run_study(config, progress=False)
    port = _free_port()
    server = subprocess.Popen(
        [str(dashboard), "--host", "127.0.0.1", "--port", str(port), "--quiet", Study(tmp_path / "study").optuna_storage],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        for _ in range(300):
            if server.poll() is not None:
                pytest.fail(f"optuna-dashboard exited: {server.stdout.read()}")
            try:
                studies = _get(base)["study_summaries"]
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("optuna-dashboard did not answer within 30 s")
        (summary,) = studies
        detail = _get(f"{base}/{summary['study_id']}")
        assert detail["objective_names"] == LABELS
        assert len(detail["trials"]) == 2
        attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
        assert {"plan_key", "plan", "params", "macs", "latency_source", "state"} <= set(attrs)
        assert json.loads(attrs["latency_source"]) == {"onnxruntime-cpu": "measured"}
        assert {a["key"] for a in detail["union_user_attrs"]} >= {"plan_key", "macs"}
    finally:
        server.terminate()
        server.wait(timeout=30)
