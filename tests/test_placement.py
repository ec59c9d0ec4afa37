"""Where fine-tuning runs: the recipe's ``device``, batches moved to it, GPU trials and exports."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.core.config import load_config
from autoprune.core.errors import AutopruneError
from autoprune.core.recipes import FinetuneRecipe
from autoprune.training.placement import model_device, resolve_device, to_device
from tests.conftest import PRUNABLE_TASK, REPO, heavy_space, write_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")


def test_recipe_device_is_validated_and_resolved(tmp_path):
    assert FinetuneRecipe().device == "auto"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AutopruneError, match=r"finetune\.device"):
        load_config(write_config(tmp_path, finetune={"epochs": 0.2, "device": "tpu"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_names_the_key():
    with pytest.raises(AutopruneError, match=r"finetune\.device: 'cuda'.*finds none"):
        resolve_device("cuda")


def test_nested_batches_move_whole():
    batch = {"ids": torch.zeros(2, 3, dtype=torch.long), "pair": (torch.ones(2), [torch.ones(1)]), "name": "x"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["name"] == "x" and isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    assert torch.equal(moved["ids"], batch["ids"])
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu") and model_device(nn.ReLU()) == torch.device("cpu")


@pytest.mark.gpu
@needs_cuda
def test_masks_survive_a_fine_tune_on_the_gpu(tiny_resnet_task):
    import copy

    from autoprune.pruning.granularity import sparsity
    from autoprune.tasks.base import cross_entropy
    from autoprune.training.loop import finetune

    model = copy.deepcopy(tiny_resnet_task.model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        torch.nn.utils.prune.l1_unstructured(conv, "weight", amount=0.5)
    seen = []
    model.to("cuda")
    recipe = FinetuneRecipe(max_steps=3, batch_size=32, device="cuda")
    assert finetune(model, tiny_resnet_task.train, recipe, cross_entropy, after_step=lambda m: seen.append(model_device(m).type)) == 3
    assert seen == ["cuda"] * 3
    assert sparsity(model.cpu()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.gpu
@needs_cuda
def test_study_and_gradual_export_fine_tune_on_the_gpu_with_distillation(tmp_path):
    from autoprune.deploy.export import export_member
    from autoprune.engine.executor import run_study

    on_gpu = {"max_steps": 3, "batch_size": 32, "device": "cuda", "distill": {"weight": 0.5}}
    path = write_config(
        tmp_path,
        budget={"trials": 2},
        task_options=PRUNABLE_TASK,
        search_space=str(heavy_space(tmp_path)),
        finetune=on_gpu,
        export={"finetune": on_gpu, "iterative": {"steps": 2, "finetune": on_gpu}},
    )
    study = run_study(load_config(path), progress=False)
    records = study.records()
    assert [r.state for r in records] == ["complete", "complete"], [r.error for r in records]
    assert all(r.finetune_steps == 3 for r in records)
    card = export_member(study.path, "onnxruntime-cpu", out_dir=tmp_path / "export")
    assert card["parity"]["max_abs_diff"] < 1e-4 and card["parity"]["top1_agreement"] == 1.0
