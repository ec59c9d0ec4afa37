"""Faults and bad input a careful user meets: two searches on one study, config errors
found after a start, torn files, configs that are empty or not UTF-8, untrusted studies.
Each case ends in one clear line (exit 2) or just works, and no record is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoprune.cli.main import main
from autoprune.core.config import load_config
from autoprune.engine.executor import run_study
from autoprune.results.study import LOCK_FILE, Study, StudyLockedError, study_lock
from tests.conftest import REPO, write_config


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The real command line, in this process: exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    assert err.strip() and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err.strip()


# -- one writer per study -----------------------------------------------------------------
def test_second_search_on_a_live_study_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    config = write_config(tmp_path, budget={"trials": 6}, finetune={"epochs": 0.5})
    cmd = [sys.executable, "-m", "autoprune.cli", "search", str(config), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lock = tmp_path / "study" / LOCK_FILE
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip():
                break
            time.sleep(0.05)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        line = one_line(second.stderr)
        assert f"study in use by pid {first.pid} on " in line and "since" in line
        assert first.poll() is None, "the first search keeps running"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    kept = Study(tmp_path / "study").records()
    assert json.loads(lock.read_text())["pid"] == first.pid  # left behind by the killed holder

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    records = Study(tmp_path / "study").records()
    assert [r.number for r in records] == list(range(6))
    assert [r.to_dict() for r in records[: len(kept)]] == [r.to_dict() for r in kept]
    assert lock.read_text() == ""  # released


def test_lock_is_exclusive_in_one_process_and_a_failed_start_leaves_no_directory(tmp_path):
    with study_lock(tmp_path / "s"):
        with pytest.raises(StudyLockedError, match=rf"study in use by pid {os.getpid()} on "):
            with study_lock(tmp_path / "s"):
                pass
    assert not (tmp_path / "s").exists()  # created for the lock only, and nothing else was written


def test_ray_driver_takes_the_same_lock(tmp_path):
    pytest.importorskip("ray")
    from autoprune.engine.ray_executor import run_study_ray

    config = load_config(write_config(tmp_path))
    with study_lock(config.study_dir):
        with pytest.raises(StudyLockedError, match="study in use by pid"):
            run_study_ray(config, progress=False)


# -- every check before the study directory is written -----------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"devices": ["nodevice"]}, r"devices\[0\]: device 'nodevice': no profile"),
        ({"task": "nosuchtask"}, r"task: unknown task 'nosuchtask'; known: .*digits"),
        ({"task": "nosuchmodule:make"}, r"task 'nosuchmodule:make': cannot import"),
        ({"task_options": {"model": "resnet-tiny", "colour": 1}}, r"task 'digits': bad task_options"),
        ({"controller_options": {"population_size": 4, "populaton": 3}}, r"controller_options: unknown option 'populaton' for controller 'nsga2'; known: .*population_size"),
        ({"search_space": "nope.yaml"}, r"search_space: file 'nope.yaml' not found"),
    ],
)
def test_config_errors_are_found_before_any_work_and_leave_nothing(tmp_path, capsys, monkeypatch, overrides, message):
    cache = tmp_path / "cold-cache"
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache))
    config = write_config(tmp_path, **overrides)
    code, _, err = run_cli(capsys, "search", config, "--no-progress")
    assert code == 2
    assert __import__("re").search(message, one_line(err)), err
    assert not (tmp_path / "study").exists()
    assert not cache.exists() or not any(cache.iterdir()), "no dense model was trained for a config that cannot run"


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("rules:\n  - match: 'layer9.*'\nprotect: [stem, classifier]\n")
    config = write_config(tmp_path, search_space=str(space), budget={"trials": 1}, finetune={"max_steps": 2})
    code, _, err = run_cli(capsys, "search", config, "--no-progress")
    assert code == 2 and "rules[0].match 'layer9.*' matches no prunable unit" in one_line(err)
    space.write_text("rules:\n  - match: '*'\nprotect: [stem, classifier, nothing.here]\n")
    code, _, err = run_cli(capsys, "search", config, "--no-progress")
    assert code == 2 and "protect[2] 'nothing.here' matches no layer" in one_line(err)
    space.write_text("rules:\n  - match: '*'\nprotect: [stem, classifier]\n")
    code, out, err = run_cli(capsys, "search", config, "--no-progress")
    assert code == 0, err
    assert len(Study(tmp_path / "study").records()) == 1


def test_a_changed_search_space_names_the_file_not_the_key_twice(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("rules:\n  - match: '*'\n    pruning_ratio: {low: 0.0, high: 0.5, step: 0.1}\n")
    config = write_config(tmp_path, search_space=str(space), budget={"trials": 1}, finetune={"max_steps": 2})
    assert run_cli(capsys, "search", config, "--no-progress")[0] == 0
    space.write_text("rules:\n  - match: '*'\n    pruning_ratio: {low: 0.0, high: 0.8, step: 0.1}\n")
    code, _, err = run_cli(capsys, "search", config, "--no-progress", "--trials", "2")
    assert code == 2
    assert f"{space}: differs from the search space this study was run with" in one_line(err)


# -- nothing lost when a writer is killed mid-line ----------------------------------------
APPENDER = """
import sys
from autoprune.results.study import Study
from autoprune.core.records import TrialResult
study = Study(sys.argv[1])
i = 0
while True:
    study.append(TrialResult(i, {}, f"k{i}", state="failed", error="x" * 8_000_000))
    i += 1
"""


def test_kill_during_an_append_loses_only_the_line_being_written(tmp_path, caplog):
    from autoprune.core.appendlog import torn_tail
    from autoprune.core.records import TrialResult

    study = Study(tmp_path / "study")
    records = study.records_file
    for attempt in range(40):  # until a kill lands mid-line (usually the first few)
        child = subprocess.Popen([sys.executable, "-c", APPENDER, str(study.path)], env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.time() + 60
        while time.time() < deadline and not (records.exists() and records.stat().st_size > 8_000_000 and torn_tail(records) is not None):
            pass  # kill once a record is whole and the next one is being written
        child.kill()
        child.wait()
        if torn_tail(records) is not None:
            break
        records.unlink()
    torn = torn_tail(records)
    assert torn is not None, "no kill landed mid-line in 40 tries"
    kept = study.records()
    assert kept and [r.number for r in kept] == list(range(len(kept)))

    with caplog.at_level("WARNING", logger="autoprune.core.appendlog"):
        study.append(TrialResult(len(kept), {}, "after", state="failed", error="fine"))
    assert "last line was cut short" in caplog.text
    after = study.records()
    assert [r.number for r in after] == list(range(len(kept) + 1)) and after[-1].plan_key == "after"
    assert records.with_name("trials.jsonl.torn").read_bytes() == torn + b"\n"


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    from autoprune.core.records import TrialResult

    study = Study(tmp_path / "study")
    study.append(TrialResult(0, {}, "a", state="failed", error="e"))
    study.records_file.write_text(study.records_file.read_text().rstrip("\n"))
    study.append(TrialResult(1, {}, "b", state="failed", error="e"))
    assert [r.plan_key for r in study.records()] == ["a", "b"]
    assert not study.records_file.with_name("trials.jsonl.torn").exists()


# -- latency tables: values checked on load, appends under the header as written -----------
def copied_profiles(tmp_path: Path) -> Path:
    """The shipped onnxruntime-cpu profile copied into a user folder (the original is never written)."""
    import shutil

    root = tmp_path / "profiles"
    shutil.copytree(REPO / "device_profiles" / "onnxruntime-cpu", root / "onnxruntime-cpu", ignore=shutil.ignore_patterns("validation"))
    return root


def edit_first_row(path: Path, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index(column)] = value
    lines[1] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("value", ["nan", "-0.5", "inf", "1e300", "0"])
def test_table_latency_that_is_not_a_positive_finite_number_is_refused_on_load(tmp_path, value):
    from autoprune.core.errors import ConfigError
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import load_table

    root = copied_profiles(tmp_path)
    edit_first_row(root / "onnxruntime-cpu" / "latency_table.csv", "median_ms", value)
    with pytest.raises(ConfigError, match=rf"latency_table\.csv:2: bad row \(median_ms must be a finite number of milliseconds in \(0, 1e\+06\], but got '{value}'\)"):
        load_table(load_device("onnxruntime-cpu", root), check_versions=False)


@pytest.mark.parametrize("key, value, message", [("overhead_ms", -1.0, "greater than or equal to 0"), ("overhead_ms", float("nan"), "finite number")])
def test_table_metadata_values_are_checked_on_load(tmp_path, key, value, message):
    from autoprune.core.errors import ConfigError
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import load_table

    root = copied_profiles(tmp_path)
    meta = root / "onnxruntime-cpu" / "latency_table.yaml"
    data = yaml.safe_load(meta.read_text())
    data[key] = value
    meta.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"latency_table\.yaml: {key}: .*{message}"):
        load_table(load_device("onnxruntime-cpu", root), check_versions=False)
    data[key] = 0.004
    data["calibration"][0]["measured_ms"] = -1.0
    meta.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"latency_table\.yaml: calibration\[0\]\.measured_ms: .*greater than 0"):
        load_table(load_device("onnxruntime-cpu", root), check_versions=False)


def test_a_search_on_a_broken_table_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    root = copied_profiles(tmp_path)
    edit_first_row(root / "onnxruntime-cpu" / "latency_table.csv", "median_ms", "nan")
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(root))
    code, _, err = run_cli(capsys, "search", write_config(tmp_path, latency="lut"), "--no-progress")
    assert code == 2 and "latency_table.csv:2: bad row (median_ms must be" in one_line(err)
    assert not (tmp_path / "study").exists()


def test_table_missing_a_key_column_or_not_utf8_is_refused(tmp_path):
    from autoprune.core.errors import ConfigError
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import load_table

    root = copied_profiles(tmp_path)
    path = root / "onnxruntime-cpu" / "latency_table.csv"
    original = path.read_bytes()
    rows = list(__import__("csv").reader(original.decode().splitlines()))
    act = rows[0].index("act")
    path.write_text("\n".join(",".join(r[:act] + r[act + 1 :]) for r in rows) + "\n")
    with pytest.raises(ConfigError, match=r"latency_table\.csv: not a latency table: missing columns act"):
        load_table(load_device("onnxruntime-cpu", root), check_versions=False)
    path.write_bytes(original[:200] + b"\xff\xfe" + original[200:])
    with pytest.raises(ConfigError, match=r"latency_table\.csv: not a UTF-8 text file"):
        load_table(load_device("onnxruntime-cpu", root), check_versions=False)


def test_table_cut_mid_row_loads_without_it_and_the_next_append_sets_it_aside(tmp_path, caplog):
    from autoprune.latency.backends import LatencyStats
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import load_table
    from autoprune.latency.lut.kernel_key import KernelKey

    root = copied_profiles(tmp_path)
    path = root / "onnxruntime-cpu" / "latency_table.csv"
    whole = load_table(load_device("onnxruntime-cpu", root), check_versions=False)
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + text.rstrip("\n").splitlines()[-1][:30])  # last row cut at 30 characters
    with caplog.at_level("WARNING"):
        table = load_table(load_device("onnxruntime-cpu", root), check_versions=False)
    assert "last row cut short" in caplog.text and len(table) == len(whole) - 1
    key = KernelKey("conv", 8, 8, 8, 16, 3, 1, 1, 1, "relu")
    table.append([(key, LatencyStats(0.012, 0.011, 0.015, 60))])
    again = load_table(load_device("onnxruntime-cpu", root), check_versions=False)
    assert len(again) == len(whole) and again.ms(key) == pytest.approx(0.012)
    assert path.with_name("latency_table.csv.torn").exists()
    header = path.read_text().splitlines()[0].split(",")
    assert all(len(line.split(",")) == len(header) for line in path.read_text().splitlines())


def test_a_trial_whose_latency_is_not_finite_fails_with_the_reason(tmp_path):
    from autoprune.core.plan import Plan
    from autoprune.engine.context import build_context
    from autoprune.engine.trial import run_trial
    from autoprune.latency.measured import LatencyEstimator

    class Broken(LatencyEstimator):
        method = "broken"

        def latency_ms(self, model, example_input):
            return float("nan")

    ctx = build_context(load_config(write_config(tmp_path)))
    ctx.estimators = {"onnxruntime-cpu": Broken(ctx.estimators["onnxruntime-cpu"].device)}
    record = run_trial(ctx, Plan.from_dict({}), 0)
    assert record.state == "failed"
    assert "latency on device 'onnxruntime-cpu' came out as nan ms (broken), not a positive finite number" in record.error


# -- config edge cases --------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [("", "the file is empty"), ("0\n", "got int 0"), ("false\n", "got bool False"), ("[]\n", "got list []"), ("{}\n", "no keys")])
def test_an_empty_config_is_an_error_not_a_default_study(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(text)
    code, _, err = run_cli(capsys, "search", "config.yaml", "--no-progress")
    assert code == 2 and message in one_line(err) and err.startswith("autoprune search: error: config.yaml:")
    assert not (tmp_path / "runs").exists()


def test_non_utf8_config_and_trials_zero_are_one_line(tmp_path, capsys):
    config = write_config(tmp_path)
    config.write_bytes(config.read_bytes().replace(b"tiny", b"t\xe9ny"))
    code, _, err = run_cli(capsys, "search", config, "--no-progress")
    assert code == 2 and "not a UTF-8 text file" in one_line(err)
    config = write_config(tmp_path)
    code, _, err = run_cli(capsys, "search", config, "--no-progress", "--trials", "0")
    assert code == 2 and "budget.trials: Input should be greater than or equal to 1 (got 0) (from the command line)" in one_line(err)


def test_a_search_in_which_every_trial_failed_exits_non_zero(tmp_path, capsys):
    config = write_config(tmp_path, finetune={"epochs": 0.2, "lr": 1e12, "momentum": 0.0, "schedule": "constant"}, budget={"trials": 2})
    code, out, err = run_cli(capsys, "search", config, "--no-progress")
    assert code == 1
    *logged, last = err.strip().splitlines()
    assert last.startswith("autoprune search: error: no trial of 2 completed; the first error: ") and "DivergedError" in last
    assert len(logged) == 2 and all("WARNING: trial" in line for line in logged)  # each failed trial is logged as it fails


# -- the front: the dense model takes part, collapsed models stay out ----------------------
def hand_made(tmp_path: Path, **config_keys) -> Study:
    from autoprune.core.records import TrialResult

    config = load_config(write_config(tmp_path, **config_keys))
    study = Study(config.study_dir)
    study.initialise(config)
    study.save_baseline({"accuracy": 0.95, "latency_ms": {"onnxruntime-cpu": 1.0}})
    # (accuracy, latency): 0 prunes nothing and was timed slower than dense under load;
    # 1 is more accurate than dense but slower; 2..4 are faster; 4 has collapsed
    points = [(0.95, 2.0), (0.96, 1.2), (0.94, 0.8), (0.90, 0.5), (0.21, 0.2)]
    for i, (acc, lat) in enumerate(points):
        study.append(TrialResult(i, {}, f"k{i}", accuracy=acc, latency_ms={"onnxruntime-cpu": lat}, params=1, macs=1))
    return study


def test_front_members_are_faster_than_the_dense_model(tmp_path):
    from autoprune.results.front import front

    df = front(hand_made(tmp_path))
    assert df.number.tolist() == [4, 3, 2]  # 0 and 1 are not faster than dense
    assert (df.speedup > 1).all()


@pytest.mark.parametrize("keys, expected", [({"min_accuracy": 0.5}, [3, 2]), ({"max_accuracy_drop": 0.03}, [2]), ({"min_accuracy": 0.5, "max_accuracy_drop": 0.1}, [3, 2])])
def test_an_accuracy_floor_keeps_collapsed_models_off_the_front_and_the_report(tmp_path, keys, expected):
    from autoprune.results.front import front
    from autoprune.results.report import write_report

    study = hand_made(tmp_path, **keys)
    assert front(study).number.tolist() == expected
    paths = write_report(study.path)
    text = next(p for p in paths if p.suffix == ".md").read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("|") and line.split("|")[1].strip().isdigit()]
    assert rows == [str(n) for n in expected] and "0.21" not in text


def test_the_accuracy_floor_may_change_between_runs_of_a_study(tmp_path):
    study = hand_made(tmp_path)
    config = load_config(write_config(tmp_path, min_accuracy=0.5))
    study.check(config)  # no error: it only bounds the front


# -- trust: opening a study does not run the code it names --------------------------------
def test_opening_someone_elses_study_does_not_run_its_task_without_trust_task(tmp_path, capsys):
    from autoprune.core.records import TrialResult

    marker = tmp_path / "ran"
    config = load_config(write_config(tmp_path, task="os:system", task_options={"command": f"touch {marker}"}))
    study = Study(config.study_dir)
    study.initialise(config)
    study.save_baseline({"accuracy": 0.9, "latency_ms": {"onnxruntime-cpu": 1.0}})
    study.append(TrialResult(0, {}, "k0", accuracy=0.9, latency_ms={"onnxruntime-cpu": 0.5}, params=1, macs=1))
    for args in (["front", study.path, "--measure"], ["export", study.path, "--device", "onnxruntime-cpu"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "task 'os:system' is code the study names" in one_line(err) and "--trust-task" in err
        assert not marker.exists()
    code, _, err = run_cli(capsys, "front", study.path, "--measure", "--trust-task")  # the user said so: it runs
    assert marker.exists()


def test_onnxruntime_through_autoprune_writes_no_telemetry_files(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # CI=true also turns ONNX Runtime's telemetry off, which would leave the control below nothing to show
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "CI")}
    code = "import autoprune.latency.backends, onnxruntime; onnxruntime.SessionOptions()"
    subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(home), "PYTHONPATH": str(REPO)}, check=True, timeout=120)
    assert [p for p in home.rglob("*") if p.is_file()] == []
    # the control: onnxruntime alone, without the setting, does write them (so the test can fail)
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env={**env, "HOME": str(home)}, check=True, timeout=120)
    assert any(p.is_file() for p in home.rglob("*"))
