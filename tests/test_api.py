"""The public Python API: autoprune.search -> Study, Study.front, Study.export, autoprune.load_study."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

import autoprune
from autoprune.core.config import Budget
from autoprune.core.errors import AutopruneError, ConfigError
from tests.conftest import PRUNABLE_TASK, heavy_space, write_config


def test_search_front_export_and_load_study(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path, budget={"trials": 2}, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp_path))).read_text())
    study = autoprune.search(config)
    assert isinstance(study, autoprune.Study) and study.path == tmp_path / "study"
    assert len(study.records()) == 2

    front = study.front(device="onnxruntime-cpu")
    assert isinstance(front, pd.DataFrame) and len(front) >= 1
    assert set(front.device) == {"onnxruntime-cpu"} and {"accuracy", "latency_ms", "plan_key"} <= set(front.columns)
    slowest = front.latency_ms.max()
    assert study.front(device="onnxruntime-cpu", max_latency_ms=slowest / 2).latency_ms.le(slowest / 2).all()

    result = study.export("onnxruntime-cpu", epochs=0.1)
    assert isinstance(result, autoprune.ExportResult)
    assert result.path == tmp_path / "study" / "exports" / "onnxruntime-cpu" / "model.onnx" and result.path.is_file()
    assert result.trial in set(front.number) and 0 <= result.accuracy <= 1 and result.latency_ms > 0
    assert result.card["parity"]["top1_agreement"] > 0.9
    if importlib.util.find_spec("onnxscript") is not None:
        assert result.card["written_with"]["exporter"] == "torch.onnx dynamo (torch.export)"

    again = autoprune.load_study(tmp_path / "study")
    pd.testing.assert_frame_equal(again.front(), study.front())
    assert again.optuna_study().metric_names == ["accuracy", "latency_ms.onnxruntime-cpu"]


def test_search_resumes_from_a_config_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, budget={"trials": 1})
    autoprune.search(path)
    study = autoprune.search(autoprune.load_config(path).model_copy(update={"budget": Budget(trials=2)}))
    assert [r.number for r in study.records()] == [0, 1]


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config: finetune.epochs: "):
        autoprune.search({"finetune": {"epochs": -1}})
    with pytest.raises(AutopruneError, match=r"not a study directory"):
        autoprune.load_study(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"backend: expected 'local' or 'ray'"):
        autoprune.search(write_config(tmp_path), backend="dask")
