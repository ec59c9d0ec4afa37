"""Config and search-space validation: each bad input is one clear error naming file and key."""
from pathlib import Path

import pytest
import yaml

from autoprune.core.config import load_config
from autoprune.core.errors import ConfigError
from autoprune.engine.context import build_context
from autoprune.engine.executor import check_controller
from autoprune.pruning.space import SearchSpace
from tests.conftest import REPO, write_config


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_configs_and_spaces_are_valid():
    files = sorted((REPO / "examples").glob("*.yaml")) + sorted((REPO / "search_spaces").glob("*.yaml"))
    for path in files:
        is_space = "rules" in (yaml.safe_load(path.read_text()) or {})
        (SearchSpace.load if is_space else load_config)(path)


def test_unknown_config_key_names_file_and_key(tmp_path):
    path = write_config(tmp_path, budjet={"trials": 3})
    with pytest.raises(ConfigError, match=r"config\.yaml: budjet: unknown key"):
        load_config(path)


def test_nested_bad_value_names_the_nested_key(tmp_path):
    path = write_config(tmp_path, finetune={"epochs": -1})
    with pytest.raises(ConfigError, match=r"config\.yaml: finetune\.epochs: .*greater than or equal to 0"):
        load_config(path)


def test_unknown_controller_lists_known_ones(tmp_path):
    path = write_config(tmp_path, controller="simulated-annealing")
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"controller: .*unknown controller 'simulated-annealing'; known: .*nsga2"):
        check_controller(config)


@pytest.mark.parametrize("ratio", [{"low": 0.0, "high": 1.0}, {"low": -0.2, "high": 0.5}])
def test_ratio_outside_unit_interval_names_the_key(tmp_path, ratio):
    path = write(tmp_path, "space.yaml", {"rules": [{"match": "*", "pruning_ratio": ratio}]})
    with pytest.raises(ConfigError, match=r"space\.yaml: rules\[0\]\.pruning_ratio\.(high|low)"):
        SearchSpace.load(path)


def test_low_above_high_shows_both_values(tmp_path):
    path = write(tmp_path, "space.yaml", {"rules": [{"pruning_ratio": {"low": 0.6, "high": 0.2}}]})
    with pytest.raises(ConfigError, match=r"`low <= high` must hold, but got \(low=0.6, high=0.2\)"):
        SearchSpace.load(path)


def test_a_step_that_does_not_divide_the_range_is_refused(tmp_path):
    path = write(tmp_path, "space.yaml", {"rules": [{"pruning_ratio": {"low": 0.0, "high": 0.8, "step": 0.5}}]})
    with pytest.raises(ConfigError, match=r"space\.yaml: rules\[0\]\.pruning_ratio: .*step=0\.5 does not divide 0\.8 .*a step of 0\.4 does"):
        SearchSpace.load(path)
    assert SearchSpace.model_validate({"rules": [{"pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.16667}}]})  # 1/6, as written in YAML


def test_unknown_granularity_and_key_in_space(tmp_path):
    path = write(tmp_path, "space.yaml", {"rules": [{"granularities": ["channel", "voxel"]}]})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.granularities: .*unknown granularity 'voxel'"):
        SearchSpace.load(path)
    path = write(tmp_path, "space2.yaml", {"rules": [{"match": "*", "ratio": 0.3}]})
    with pytest.raises(ConfigError, match=r"space2\.yaml: rules\[0\]\.ratio: unknown key"):
        SearchSpace.load(path)


def test_pattern_matching_no_unit_names_file_rule_and_units(tmp_path):
    space = write(tmp_path, "space.yaml", {"rules": [{"match": "*conv1*"}, {"match": "layer9.*"}]})
    config = load_config(write_config(tmp_path, search_space=str(space)))
    with pytest.raises(ConfigError, match=r"space\.yaml: rules\[1\]\.match 'layer9\.\*' matches no prunable unit; units are: blocks"):
        build_context(config)


def test_protect_pattern_matching_no_layer(tmp_path):
    space = write(tmp_path, "space.yaml", {"rules": [{"match": "*"}], "protect": ["stem", "nothing.here"]})
    config = load_config(write_config(tmp_path, search_space=str(space)))
    with pytest.raises(ConfigError, match=r"protect\[1\] 'nothing.here' matches no layer"):
        build_context(config)


def test_missing_files_and_unknown_device(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    config = load_config(write_config(tmp_path, devices=["pixel-42"]))
    with pytest.raises(ConfigError, match=r"device 'pixel-42': no profile pixel-42/device.yaml in .*; known devices: .*onnxruntime-cpu"):
        build_context(config)
