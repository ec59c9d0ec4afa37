"""Plug-ins: a package registers a controller, task, criterion, granularity or backend through
entry points, and a config names them (run in a fresh process, as an installed plug-in is)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, write_config

PLUGIN = '''
import torch_pruning as tp

from autoprune.latency.backends.onnxruntime import OnnxRuntimeCPU
from autoprune.engine.controllers.baselines import UniformController
from autoprune.tasks import load_task


class Sweep(UniformController):
    """Uniform pruning under another name."""

    name = "sweep"


class OtherOnnx(OnnxRuntimeCPU):
    name = "other-onnx"


def tiny_digits():
    return load_task("digits", model="resnet-tiny", epochs=3)


def squares():
    return tp.importance.MagnitudeImportance(p=2)
'''

GRANULARITIES = '''
from autoprune.pruning.granularity import GRANULARITIES, register_granularity


@register_granularity("plugin-channel", structural=True, description="channel pruning under another name")
def plugin_channel(*args, **kwargs):
    return GRANULARITIES.get("channel").apply(*args, **kwargs)
'''

ENTRY_POINTS = """
[autoprune.controllers]
sweep = autoprune_demo_plugin:Sweep
broken = autoprune_demo_plugin:DoesNotExist

[autoprune.tasks]
tiny-digits = autoprune_demo_plugin:tiny_digits

[autoprune.criteria]
squares = autoprune_demo_plugin:squares

[autoprune.granularities]
demo = autoprune_demo_plugin.granularities

[autoprune.backends]
other-onnx = autoprune_demo_plugin:OtherOnnx
"""


def install_plugin(site: Path) -> None:
    """A distribution on ``site`` with entry points, as pip would leave it."""
    package = site / "autoprune_demo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN)
    (package / "granularities.py").write_text(GRANULARITIES)
    info = site / "autoprune_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: autoprune-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def test_a_config_names_plugin_entries(tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"rules": [{"match": "*", "granularities": ["plugin-channel"], "criteria": ["squares"], "pruning_ratio": {"high": 0.5, "step": 0.25}}]}))
    config = write_config(tmp_path, task="tiny-digits", task_options={}, controller="sweep", controller_options={}, search_space=str(space), budget={"trials": 2})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "site")])}
    done = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", str(config), "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "controller plug-in 'broken' (autoprune_demo_plugin:DoesNotExist) could not be loaded: AttributeError" in done.stderr
    records = [yaml.safe_load(line) for line in (tmp_path / "study" / "trials.jsonl").read_text().splitlines()]
    assert [r["controller"] for r in records] == ["sweep", "sweep"] and all(r["state"] == "complete" for r in records)
    assert {c["granularity"] for r in records for c in r["plan"].values()} == {"plugin-channel"}
    assert {c["criterion"] for r in records for c in r["plan"].values()} == {"squares"}
    check = "from autoprune.latency.backends import BACKENDS; from autoprune.engine.controllers import CONTROLLERS; print(BACKENDS.names(), CONTROLLERS.names())"
    listed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True).stdout
    assert "'other-onnx'" in listed and "'sweep'" in listed and "'broken'" not in listed


def test_without_plugins_an_unknown_name_lists_the_builtin_ones(tmp_path: Path) -> None:
    from autoprune.core.errors import UnknownNameError
    from autoprune.engine.controllers import CONTROLLERS

    try:
        CONTROLLERS.get("sweep")
    except UnknownNameError as err:
        assert "unknown controller 'sweep'; known: evolution, global, knapsack, nsga2" in str(err)
    else:
        raise AssertionError("a plug-in that is not installed was found")
