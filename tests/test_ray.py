"""Studies through Ray Tune on a real Ray cluster started here (a head and a second node),
with faults: a worker process killed mid-trial, the driver killed and resumed, a node
leaving; multi-fidelity stopping as a Tune scheduler; the controller searcher in a Tune
experiment of one's own."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autoprune.core.config import load_config
from autoprune.core.records import COMPLETE, STOPPED
from autoprune.engine.context import build_context
from autoprune.engine.controllers.optuna_samplers import params_to_plan
from autoprune.results.study import Study
from tests.conftest import write_config

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

if importlib.util.find_spec("psycopg") is not None:
    from tests.test_storage_postgres import postgres_url  # noqa: F401  (a PostgreSQL server started for this module)
else:

    @pytest.fixture(scope="module")
    def postgres_url():
        pytest.skip("PostgreSQL storage needs psycopg 3 (pip install 'autoprune[postgres]')")

RAY = Path(sys.executable).with_name("ray")
TRIAL_TITLE = "ray::ImplicitFunc.train"  # a Tune function trainable's actor while it runs a trial


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def descendants(roots: list[int]) -> list[int]:
    table = process_table()
    found, frontier = [], list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


class Cluster:
    """A Ray cluster of this test run: `ray start --block` processes, one per node, stopped by
    killing exactly the processes they started (never `ray stop`, which stops every cluster
    of the machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # a loopback test cluster; no token written to the home folder
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }

    def start_node(self, num_cpus: int = 1, head: bool = False) -> subprocess.Popen:
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if head else ["--address", self.address]
        cmd = [str(RAY), "start", "--block", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(self.root), "--disable-usage-stats", *ports]
        log = open(self.root / f"node{len(self.nodes)}.log", "w")
        node = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(node)
        return node

    def wait_for(self, n_nodes: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([str(RAY), "status", "--address", self.address], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.count("node_") >= n_nodes and "Pending:\n (no pending nodes)" in out.stdout:
                return
            if any(node.poll() is not None for node in self.nodes):
                break
            time.sleep(1)
        logs = "\n".join(p.read_text()[-2000:] for p in self.root.glob("node*.log"))
        raise RuntimeError(f"Ray cluster at {self.address} did not come up with {n_nodes} nodes:\n{logs}")

    def trial_workers(self, node: subprocess.Popen | None = None) -> list[int]:
        """Worker processes of this cluster (or of one node) running a trial now."""
        table = process_table()
        roots = [node.pid] if node else [n.pid for n in self.nodes]
        return [pid for pid in descendants(roots) if table.get(pid, (0, ""))[1].startswith(TRIAL_TITLE)]

    def kill_node(self, node: subprocess.Popen) -> None:
        pids = descendants([node.pid])
        for pid in [node.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill_node(node)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head and a second node, 1 CPU each, on this machine."""
    c = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start_node(head=True)
        c.start_node()
        c.wait_for(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def driver(cluster, tmp_path_factory):
    """This test process as a Ray driver on the cluster, and a context built once for its studies."""
    import ray

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield build_context(load_config(write_config(tmp_path_factory.mktemp("ctx"))))
    finally:
        ray.shutdown()
        mp.undo()


#: Small settings so each controller gets past its warm-up within a few trials.
CONTROLLER_OPTIONS = {
    "evolution": {"population_size": 2, "warm_start": 1},
    "rl": {"warm_start": 1, "updates": 2, "hidden": 8},
    "nsga2": {"population_size": 2},
}


#: Every controller through the ControllerSearcher; nsga2 (which also drives the fault,
#: stopping and storage tests below; tpe takes the same path) asks and tells in its Optuna study.
@pytest.mark.parametrize("name", ["evolution", "rl", "nsga2"])
def test_controllers_drive_a_study_through_tune(driver, tmp_path, name):
    from autoprune.engine.ray_executor import RayOptions, run_study_ray

    config = load_config(write_config(tmp_path, controller=name, controller_options=CONTROLLER_OPTIONS.get(name, {}), budget={"trials": 4}))
    records = run_study_ray(config, RayOptions(max_concurrent=2), progress=False, context=driver).records()
    assert sorted(r.number for r in records) == [0, 1, 2, 3]
    assert all(r.state == COMPLETE and r.controller == name for r in records), [r.error for r in records]
    assert len({r.trial_id for r in records}) == 4
    if name == "nsga2":
        trials = optuna.load_study(study_name="tiny", storage=Study(tmp_path / "study").optuna_storage).trials
        assert {t.state.name for t in trials} == {"COMPLETE"}
        assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4  # more trials only as repeats of recorded plans


def test_a_trial_no_node_can_hold_is_a_clear_error(driver, tmp_path):
    from autoprune.core.errors import AutopruneError
    from autoprune.engine.ray_executor import RayOptions, run_study_ray

    config = load_config(write_config(tmp_path))
    with pytest.raises(AutopruneError, match="--gpus-per-trial 1: the Ray cluster has 0 GPUs"):
        run_study_ray(config, RayOptions(gpus_per_trial=1), progress=False, context=driver)
    with pytest.raises(AutopruneError, match="--cpus-per-trial 64: the Ray cluster has 2 CPUs"):
        run_study_ray(config, RayOptions(cpus_per_trial=64), progress=False, context=driver)


def test_dominated_trials_are_stopped_by_the_tune_scheduler(driver, tmp_path):
    from autoprune.engine.ray_executor import RayOptions, run_study_ray
    from tests.test_stopping import seed_strong_trial

    config = load_config(write_config(tmp_path, budget={"trials": 3}, finetune={"epochs": 0.5, "batch_size": 64}, stopping={"rungs": [0.25, 0.5]}))
    ctx = seed_strong_trial(config)
    records = run_study_ray(config, RayOptions(max_concurrent=2), progress=False, context=ctx).records()
    assert [r.state for r in records] == [COMPLETE, STOPPED, STOPPED]
    assert all(r.finetune_steps == 3 and r.accuracy is not None and r.latency_ms for r in records[1:])
    reports = [json.loads(line) for line in (tmp_path / "study" / "reports.jsonl").read_text().splitlines()]
    assert sorted((p["number"], p["rung"], p["step"]) for p in reports) == [(0, 0, 3), (0, 1, 6), (1, 0, 3), (2, 0, 3)]
    assert all(r.accuracy == p["accuracy"] for r in records[1:] for p in reports if p["number"] == r.number)
    assert ctx.recipe.steps(len(ctx.task.train)) == 12
    assert optuna_states(tmp_path / "study") == ["COMPLETE", "PRUNED", "PRUNED"]


def test_controller_searcher_in_a_tune_experiment_of_ones_own(driver, tmp_path):
    import ray
    from ray import tune

    from autoprune.engine.executor import make_controller
    from autoprune.engine.tune_searcher import ControllerSearcher, trainable

    config = load_config(write_config(tmp_path, controller="nsga2", controller_options=CONTROLLER_OPTIONS["nsga2"]))
    controller = make_controller(config, driver.space, Study(config.study_dir))
    searcher = ControllerSearcher(controller, max_trials=3)
    tuner = tune.Tuner(
        tune.with_parameters(trainable, context=[ray.put(driver)], objectives=controller.objectives),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    grid = tuner.fit()
    assert len(grid) == 3 and not grid.errors
    assert sorted(r.number for r in searcher.records) == [0, 1, 2]
    assert all(r.state == COMPLETE and r.controller == "nsga2" for r in searcher.records)
    assert {r.metrics["accuracy"] for r in grid} == {r.accuracy for r in searcher.records}
    # the controller was told: its Optuna study holds the three results
    assert [t.values[0] for t in controller.study.trials] == [r.accuracy for r in sorted(searcher.records, key=lambda r: r.trial_id)]


def test_optuna_search_keeps_the_study_in_postgres_and_resumes_from_it(driver, tmp_path, postgres_url):
    from autoprune.engine.ray_executor import RayOptions, run_study_ray

    def config(trials: int):
        return load_config(write_config(tmp_path, name="tiny-tune", budget={"trials": trials}), storage=postgres_url)

    run_study_ray(config(2), RayOptions(max_concurrent=2), progress=False, context=driver)
    records = run_study_ray(config(3), RayOptions(max_concurrent=2), progress=False, context=driver).records()
    assert not (tmp_path / "study" / "optuna.db").exists()
    assert sorted(r.number for r in records) == [0, 1, 2]
    trials = {t.number: t for t in optuna.load_study(study_name="tiny-tune", storage=postgres_url).trials}
    assert sorted(trials) == sorted(r.trial_id for r in records)
    assert all(trials[r.trial_id].state.name == "COMPLETE" and trials[r.trial_id].values[0] == r.accuracy for r in records if r.state == COMPLETE)


def search(config: Path, cluster: Cluster, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autoprune.cli", "search", str(config), "--backend", "ray", "--address", cluster.address, "--no-progress", *extra]


def start_driver(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})


def finish(driver: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    assert driver.wait(timeout) == 0, log.read_text()[-3000:]


def wait_until(condition, driver: subprocess.Popen, log: Path, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert driver.poll() is None, f"the driver ended before the fault was injected:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting; driver log:\n{log.read_text()[-3000:]}")


def optuna_states(study_dir: Path) -> list[str]:
    trials = optuna.load_study(study_name="tiny", storage=Study(study_dir).optuna_storage).trials
    return sorted(t.state.name for t in trials)


def test_killed_worker_is_retried_and_the_budget_is_met(cluster, tmp_path):
    config = write_config(tmp_path, budget={"trials": 6}, finetune={"epochs": 1.5, "batch_size": 64}, stopping={"rungs": [0.3]})
    log = tmp_path / "driver.log"
    driver = start_driver(search(config, cluster, "--max-concurrent", "2", "--max-retries", "2"), log)
    records_file = tmp_path / "study" / "trials.jsonl"
    victim = wait_until(lambda: records_file.exists() and cluster.trial_workers(), driver, log)[0]
    os.kill(victim, signal.SIGKILL)
    finished_before = len(Study(tmp_path / "study").records())
    finish(driver, log)

    records = Study(tmp_path / "study").records()
    assert finished_before < 6, "the kill should land mid-study"
    assert sorted(r.number for r in records) == list(range(6))
    assert all(r.state in (COMPLETE, STOPPED) for r in records), [r.error for r in records]
    # the dense model and data reach each worker process once, not once per trial
    fetched = sum("context_s" in r.timings for r in records)
    assert 1 <= fetched <= 3 < 6 - sum(r.cached for r in records)
    reports = [json.loads(line) for line in (tmp_path / "study" / "reports.jsonl").read_text().splitlines()]
    ran = {(r.number, r.plan_key) for r in records if not r.cached}
    assert {(p["number"], p["plan_key"]) for p in reports} == ran
    assert all(r.finetune_steps == p["step"] for r in records for p in reports if r.state == STOPPED and p["number"] == r.number)
    assert optuna_states(tmp_path / "study").count("RUNNING") == 0


def test_killed_driver_resumes_without_losing_or_repeating_a_trial(cluster, tmp_path):
    config = write_config(tmp_path, budget={"trials": 6}, finetune={"epochs": 1.5, "batch_size": 64})
    log = tmp_path / "driver.log"
    cmd = search(config, cluster, "--max-concurrent", "2")
    driver = start_driver(cmd, log)
    study = Study(tmp_path / "study")
    wait_until(lambda: len(study.records()) >= 2 and cluster.trial_workers(), driver, log)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = study.records()
    assert 2 <= len(before) < 6

    resumed = start_driver(cmd + ["--resume"], tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    after = study.records()
    assert sorted(r.number for r in after) == list(range(6))
    assert [r.to_dict() for r in after[: len(before)]] == [r.to_dict() for r in before]
    assert len({r.trial_id for r in after}) == 6
    # the results file and the Optuna study agree: every record is a finished Optuna trial, nothing left running
    trials = {t.number: t for t in optuna.load_study(study_name="tiny", storage=study.optuna_storage).trials}
    assert all(trials[r.trial_id].state.name == "COMPLETE" and list(trials[r.trial_id].values)[0] == r.accuracy for r in after if r.state == COMPLETE)
    others = [t for n, t in trials.items() if n not in {r.trial_id for r in after}]
    cut_short = [t for t in others if t.state.name == "FAIL"]  # the runs the kill cut short, re-enqueued
    repeats = [t for t in others if t.state.name == "COMPLETE"]  # proposals of evaluated plans: told, not recorded
    assert len(cut_short) + len(repeats) == len(others) and len(cut_short) <= 2
    space = build_context(load_config(config)).space
    assert all(params_to_plan(t.params, space).key in {r.plan_key for r in after} for t in repeats)


def test_trials_of_a_node_that_leaves_are_rescheduled(cluster, tmp_path):
    extra = cluster.start_node()
    cluster.wait_for(3)
    config = write_config(tmp_path, budget={"trials": 4}, finetune={"epochs": 1.5, "batch_size": 64})
    log = tmp_path / "driver.log"
    driver = start_driver(search(config, cluster, "--max-concurrent", "3"), log)
    wait_until(lambda: cluster.trial_workers(extra), driver, log)
    cluster.kill_node(extra)
    finish(driver, log)
    records = Study(tmp_path / "study").records()
    assert sorted(r.number for r in records) == list(range(4))
    assert all(r.state == COMPLETE for r in records), [r.error for r in records]
