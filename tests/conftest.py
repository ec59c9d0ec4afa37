"""Shared fixtures: a per-session cache for dense models, one torch thread, tiny tasks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Dense models are trained into a temporary cache and user profiles (tables measured
    on demand) go into an empty temporary folder, never into the user's home; shipped
    profiles are found as an installed package finds them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("AUTOPRUNE_PROFILES", str(tmp_path_factory.mktemp("profiles")))
    torch.set_num_threads(1)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_resnet_task():
    from autoprune.tasks.base import load_task

    return load_task("digits", model="resnet-tiny", epochs=3)


@pytest.fixture(scope="session")
def tiny_mobilenet_task():
    from autoprune.tasks.base import load_task

    return load_task("digits", model="mobilenetv2-tiny", epochs=3)


def write_config(tmp_path: Path, **overrides) -> Path:
    """A small study config in ``tmp_path``; keys in ``overrides`` replace the defaults."""
    config = {
        "name": "tiny",
        "task": "digits",
        "task_options": {"model": "resnet-tiny", "epochs": 3},
        "search_space": str(REPO / "search_spaces" / "cnn_channel.yaml"),
        "devices": ["onnxruntime-cpu"],
        "latency": "measured",
        "controller": "nsga2",
        "controller_options": {"population_size": 4},
        "budget": {"trials": 3},
        "finetune": {"epochs": 0.2, "batch_size": 64},
        "export": {"finetune": {"epochs": 0.5}},
        "study_dir": str(tmp_path / "study"),
    }
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


#: Task options of a model whose pruned variants are clearly faster than the dense one (about
#: 3x at 90% of channels removed): resnet-tiny's latency is mostly per-call overhead, so a
#: front of trials faster than the dense model may rightly be empty for it.
PRUNABLE_TASK = {"model": "resnet", "epochs": 3}


def heavy_space(tmp_path: Path) -> Path:
    """A search space of heavily pruned plans only, for tests that need a front (trials
    measured faster than the dense model): use it with :data:`PRUNABLE_TASK`."""
    space = tmp_path / "heavy_space.yaml"
    space.write_text("rules:\n  - match: '*'\n    pruning_ratio: {low: 0.75, high: 0.8, step: 0.05}\nprotect: [stem, classifier]\n")
    return space
