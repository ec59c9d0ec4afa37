"""Quality diagnostics: hand-checkable ECE, per-class accuracy consistent with the overall one,
fixed shifts that are the same for every model, and the model card / report fields."""
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.core.config import load_config
from autoprune.core.errors import ConfigError
from autoprune.deploy.diagnostics import (
    blur,
    classifier_quality,
    compare,
    expected_calibration_error,
    gaussian_noise,
    per_class_accuracy,
    worst_class_drop,
)
from tests.conftest import PRUNABLE_TASK, heavy_space, write_config


def calibrated_toy() -> tuple[nn.Module, TensorDataset]:
    """Two input kinds; the model says 80% class 0 for kind A and 60% class 1 for kind B, and
    the labels agree exactly: 4 of 5 A samples are class 0, 3 of 5 B samples class 1."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.log(torch.tensor([[0.8, 0.4], [0.2, 0.6]])))  # column k = log-probs of kind k
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    y = torch.tensor([0, 0, 0, 0, 1] + [1, 1, 1, 0, 0])
    return model.eval(), TensorDataset(x, y)


def test_ece_of_a_perfectly_calibrated_model_is_zero():
    model, data = calibrated_toy()
    quality = classifier_quality(model, data, noise_scale=0.0)
    assert quality["ece"] == pytest.approx(0.0, abs=1e-6)
    assert quality["accuracy"] == pytest.approx(0.7)  # 4 + 3 of 10
    assert quality["per_class_accuracy"] == {"0": pytest.approx(4 / 6), "1": pytest.approx(3 / 4)}
    assert quality["class_counts"] == {"0": 6, "1": 4}
    assert quality["accuracy_noise"] == pytest.approx(0.7)  # zero noise changes nothing
    assert quality["accuracy_blur"] is None  # not images


def test_ece_by_hand_on_two_bins():
    # 10 predictions at confidence 0.8, 8 right (gap 0); 10 at 0.9, all right (gap 0.1): ECE = 0.5 * 0.1
    probs = torch.tensor([[0.8, 0.2]] * 10 + [[0.1, 0.9]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 10)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.05)
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(abs(18 / 20 - 0.85))


def test_per_class_accuracy_weighted_by_counts_is_the_accuracy(tiny_resnet_task):
    task = tiny_resnet_task
    quality = classifier_quality(task.model, task.val)
    weighted = sum(quality["per_class_accuracy"][c] * n for c, n in quality["class_counts"].items()) / sum(quality["class_counts"].values())
    assert weighted == pytest.approx(quality["accuracy"])
    assert quality["accuracy"] == pytest.approx(task.metric(task.model, task.val))
    assert sum(quality["class_counts"].values()) == len(task.val) and len(quality["class_counts"]) == 10
    assert 0.0 <= quality["ece"] <= 1.0 and quality["accuracy_blur"] is not None
    assert classifier_quality(task.model, task.val) == quality  # the shifts are fixed: same numbers again


def test_shifts_are_fixed_and_blur_keeps_flat_images():
    x = torch.randn(4, 3, 6, 6)
    noise = gaussian_noise(0.5)
    torch.testing.assert_close(noise(x, 2), noise(x, 2))
    assert not torch.equal(noise(x, 2), noise(x, 3))
    assert float((noise(x, 0) - x).std()) == pytest.approx(0.5, rel=0.2)
    flat = torch.full((2, 3, 5, 5), 7.0)
    torch.testing.assert_close(blur(flat), flat)
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 16.0
    assert blur(spike)[0, 0, 1:4, 1:4].tolist() == [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]


def test_non_classification_tasks_get_no_diagnostics():
    data = TensorDataset(torch.randn(8, 3), torch.randn(8))  # regression targets
    assert classifier_quality(nn.Linear(3, 1), data) is None
    assert compare(None, None, 0.1) is None


def test_worst_class_drop_and_the_flag():
    dense = {"0": 0.9, "1": 0.8, "2": 0.95}
    pruned = {"0": 0.88, "1": 0.6, "2": 0.97}
    worst, drop = worst_class_drop(pruned, dense)
    assert worst == "1" and drop == pytest.approx(0.2)
    q = {"per_class_accuracy": pruned}
    d = {"per_class_accuracy": dense}
    assert compare(q, d, 0.1)["flagged"] and not compare(q, d, 0.25)["flagged"] and not compare(q, d, None)["flagged"]


@pytest.mark.parametrize("bad", [0, 1.5, -0.1])
def test_max_class_drop_is_validated_with_its_key(tmp_path, bad):
    path = write_config(tmp_path, export={"max_class_drop": bad})
    with pytest.raises(ConfigError, match=r"config\.yaml: export\.max_class_drop: "):
        load_config(path)


def test_model_card_and_report_carry_the_diagnostics(tmp_path):
    from autoprune.deploy.export import export_member
    from autoprune.engine.executor import run_study
    from autoprune.results.report import write_report

    config = write_config(
        tmp_path, budget={"trials": 2}, task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp_path)),
        export={"finetune": {"epochs": 0.2}, "max_class_drop": 0.001},
    )
    study = run_study(load_config(config), progress=False)
    card = export_member(study.path, "onnxruntime-cpu")
    assert json.loads((study.path / "exports" / "onnxruntime-cpu" / "model_card.json").read_text()) == card
    quality = card["quality"]
    assert set(quality) == {"pruned", "dense", "worst_class", "worst_class_drop", "max_class_drop", "flagged"}
    pruned, dense = quality["pruned"], quality["dense"]
    assert pruned["accuracy"] == pytest.approx(card["accuracy"]) and dense["accuracy"] == pytest.approx(card["accuracy_dense"], abs=1e-6)
    drops = {c: dense["per_class_accuracy"][c] - a for c, a in pruned["per_class_accuracy"].items()}
    assert quality["worst_class_drop"] == pytest.approx(max(drops.values())) and drops[quality["worst_class"]] == max(drops.values())
    assert quality["flagged"] == (quality["worst_class_drop"] > 0.001) and quality["max_class_drop"] == 0.001
    for section in (pruned, dense):
        assert all(math.isfinite(section[k]) for k in ("ece", "accuracy_noise", "accuracy_blur"))
    report = write_report(study.path)[0].read_text()
    assert "## Exported models: quality beyond top-1" in report
    assert f"| onnxruntime-cpu | {card['trial']} |" in report
