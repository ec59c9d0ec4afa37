"""The package as users get it: package data read through importlib.resources, device
profiles resolved user folder first, and a wheel that works from an empty directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from autoprune.core.config import load_config
from autoprune.core.errors import ConfigError
from autoprune.core.paths import (
    DEVICE_PROFILES,
    SEARCH_SPACES,
    builtin_search_spaces,
    shipped_dir,
    user_profiles_dir,
)
from autoprune.latency.devices import is_shipped, load_device, writable_profile

REPO = Path(__file__).resolve().parent.parent
#: What the wheel is built from (the rest of the checkout is not package material).
SOURCES = ["autoprune", "search_spaces", "device_profiles", "pyproject.toml", "README.md"]


def test_shipped_folders_hold_the_repository_data() -> None:
    assert sorted(p.name for p in shipped_dir(SEARCH_SPACES).glob("*.yaml")) == sorted(p.name for p in (REPO / SEARCH_SPACES).glob("*.yaml"))
    assert (shipped_dir(DEVICE_PROFILES) / "onnxruntime-cpu" / "device.yaml").is_file()
    assert "cnn_channel_aligned" in builtin_search_spaces()


def test_user_profiles_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "mine"))
    assert user_profiles_dir() == tmp_path / "mine"
    monkeypatch.delenv("AUTOPRUNE_PROFILES")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert user_profiles_dir() == tmp_path / "xdg" / "autoprune" / "device_profiles"


def test_a_shipped_profile_is_found_with_an_empty_user_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "empty"))
    device = load_device("onnxruntime-cpu")
    assert is_shipped(device) and device.path == shipped_dir(DEVICE_PROFILES) / "onnxruntime-cpu"
    with pytest.raises(ConfigError, match=r"device 'nope': no profile nope/device.yaml in .*empty.*; known devices: .*onnxruntime-cpu"):
        load_device("nope")


def test_the_user_copy_shadows_the_shipped_profile_and_leaves_it_untouched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "profiles"))
    shipped = load_device("onnxruntime-cpu")
    before = {p.name: p.read_bytes() for p in shipped.path.iterdir() if p.is_file()}
    fresh = writable_profile(shipped, with_table=False)
    assert fresh.path == tmp_path / "profiles" / "onnxruntime-cpu" and not is_shipped(fresh)
    assert sorted(p.name for p in fresh.path.iterdir()) == ["device.yaml"]
    assert load_device("onnxruntime-cpu").path == fresh.path  # user folder first
    assert writable_profile(fresh, with_table=True).path == fresh.path
    shutil.rmtree(fresh.path)
    copied = writable_profile(shipped, with_table=True)
    assert sorted(p.name for p in copied.path.iterdir()) == ["device.yaml", "latency_table.csv", "latency_table.yaml"]
    assert (copied.path / "latency_table.csv").read_bytes() == before["latency_table.csv"]
    assert {p.name: p.read_bytes() for p in shipped.path.iterdir() if p.is_file()} == before


def test_profiling_a_shipped_device_writes_the_users_own_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from autoprune.cli.main import main

    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "profiles"))
    shipped = load_device("onnxruntime-cpu").path
    before = {p.name: p.read_bytes() for p in shipped.iterdir() if p.is_file()}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"rules": [{"match": "*", "pruning_ratio": {"low": 0.0, "high": 0.0}}]}))
    args = ["--device", "onnxruntime-cpu", "--space", str(space), "--task", "digits", "--task-option", "model=resnet-tiny", "--task-option", "epochs=3"]
    assert main(["profile", *args, "--calibration", "1", "--rounds", "1", "--no-progress"]) == 0
    mine = tmp_path / "profiles" / "onnxruntime-cpu"
    assert sorted(p.name for p in mine.iterdir()) == ["device.yaml", "latency_table.csv", "latency_table.yaml"]
    assert (mine / "device.yaml").read_bytes() == before["device.yaml"]
    assert len((mine / "latency_table.csv").read_text().splitlines()) < len(before["latency_table.csv"].decode().splitlines())
    assert {p.name: p.read_bytes() for p in shipped.iterdir() if p.is_file()} == before
    assert load_device("onnxruntime-cpu").path == mine


def test_keys_measured_on_demand_extend_a_user_copy_of_a_shipped_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import warnings

    import torch

    from autoprune.latency.lut import LUTEstimator

    monkeypatch.setenv("AUTOPRUNE_PROFILES", str(tmp_path / "profiles"))
    shipped = load_device("onnxruntime-cpu")
    before = {p.name: p.read_bytes() for p in shipped.path.iterdir() if p.is_file()}
    odd = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5), torch.nn.ReLU()).eval()  # no table has 3->5 at 7x7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shipped table was measured elsewhere, and has no calibration for this model
        estimator = LUTEstimator(shipped)
        assert estimator.latency_ms(odd, torch.randn(1, 3, 7, 7)) > 0
    assert estimator.measured_on_demand > 0
    mine = tmp_path / "profiles" / "onnxruntime-cpu"
    assert estimator.device.path == mine and estimator.table.table_path == mine / "latency_table.csv"
    rows = (mine / "latency_table.csv").read_text().splitlines()
    assert rows[: len(before["latency_table.csv"].decode().splitlines())] == before["latency_table.csv"].decode().splitlines()
    assert len(rows) == len(before["latency_table.csv"].decode().splitlines()) + estimator.measured_on_demand
    assert {p.name: p.read_bytes() for p in shipped.path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("given", ["cnn_channel_aligned", "search_spaces/cnn_channel_aligned.yaml", "cnn_channel_aligned.yaml"])
def test_a_config_names_a_builtin_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"search_space": given}))
    assert load_config(path).search_space_path() == shipped_dir(SEARCH_SPACES) / "cnn_channel_aligned.yaml"


def test_a_config_file_beside_the_config_wins_over_a_builtin_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "cnn_channel.yaml").write_text("rules: [{match: '*', pruning_ratio: {high: 0.5}}]\n")
    path = tmp_path / "conf" / "study.yaml"
    path.write_text(yaml.safe_dump({"search_space": "cnn_channel.yaml"}))
    assert load_config(path).search_space_path() == tmp_path / "conf" / "cnn_channel.yaml"


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the package sources (nothing written into the checkout)."""
    src = tmp_path / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("autoprune-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment that sees this environment's installed dependencies (the
    versions of constraints.txt, so nothing is downloaded) but not its autoprune."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours |= {p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")}  # site folders of this one's own .pth files
    (Path(site) / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def _missing_requirements(wheel: Path) -> list[str]:
    """The wheel's (non-extra) requirements this environment does not have installed."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    missing = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                try:
                    version(requirement.name)
                except PackageNotFoundError:
                    missing.append(requirement.name)
    return missing


@pytest.mark.slow
def test_the_wheel_installs_and_runs_a_study_from_an_empty_directory(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"autoprune/{p.relative_to(REPO / 'autoprune').as_posix()}" for p in (REPO / "autoprune").rglob("*.py")}
    expected |= {f"autoprune/{p.relative_to(REPO).as_posix()}" for d in (SEARCH_SPACES, DEVICE_PROFILES) for p in (REPO / d).rglob("*") if p.is_file()}
    assert expected - names == set(), "files missing from the wheel (a new subpackage must be listed in pyproject.toml)"
    assert "autoprune/py.typed" in names

    missing = _missing_requirements(wheel)
    if missing:
        pytest.skip(f"this environment lacks {', '.join(missing)}, required by the wheel: install it as `make env` does")
    python = _fresh_venv(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index", "-c", str(REPO / "constraints.txt"), str(wheel)],
        check=True, cwd=tmp_path,
    )
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUTOPRUNE_PROFILES")}
    env.update(XDG_DATA_HOME=str(tmp_path / "home-data"), AUTOPRUNE_CACHE=str(tmp_path / "cache"), PYTHONNOUSERSITE="1")
    autoprune = [str(python), "-m", "autoprune.cli"]

    def run(*args: str) -> str:
        done = subprocess.run([*autoprune, *args], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"autoprune {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    where = subprocess.run([str(python), "-c", "import autoprune; print(autoprune.__file__)"], cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    config = {
        "name": "wheel", "task": "digits", "task_options": {"model": "resnet", "epochs": 3},
        "search_space": "cnn_channel_aligned", "devices": ["onnxruntime-cpu"], "latency": "auto",
        "controller": "nsga2", "controller_options": {"population_size": 4, "warm_start": 2}, "budget": {"trials": 2},
        "finetune": {"epochs": 0.2, "batch_size": 64}, "export": {"finetune": {"epochs": 0.2, "batch_size": 64}}, "study_dir": "study",
    }
    # warm start: the least and the most pruned uniform plans of a model that pruning makes
    # faster, so that the front (trials faster than the dense model) holds a member
    (work / "study.yaml").write_text(yaml.safe_dump(config))
    run("search", "study.yaml", "--no-progress")
    assert "accuracy" in run("front", "study", "--format", "csv").splitlines()[0]
    run("export", "study", "--device", "onnxruntime-cpu")
    assert list((work / "study" / "exports").rglob("*.onnx"))
    run("report", "study")
    installed = Path(subprocess.run([str(python), "-c", "from autoprune.core.paths import shipped_dir; print(shipped_dir('device_profiles'))"], cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert installed.is_relative_to(tmp_path / "venv")
    assert {p.relative_to(installed): p.read_bytes() for p in installed.rglob("*") if p.is_file()} == {
        p.relative_to(REPO / DEVICE_PROFILES): p.read_bytes() for p in (REPO / DEVICE_PROFILES).rglob("*") if p.is_file()
    }, "the shipped profiles were written at run time"
    assert sorted(p.name for p in work.iterdir()) == ["study", "study.yaml"]
