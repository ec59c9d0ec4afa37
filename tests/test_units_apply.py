"""Units from the dependency graph, and plans applied to both built-in CNN families."""
import pytest
import torch

from autoprune.core.errors import AutopruneError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.recipes import FinetuneRecipe
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.granularity import kept_channels, sparsity
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.pruning.units import prunable_units
from autoprune.tasks.models import MODELS
from autoprune.training.loop import finetune

X = torch.randn(1, 1, 8, 8)


@pytest.fixture(params=["resnet", "mobilenetv2"])
def model(request):
    torch.manual_seed(0)
    return MODELS.get(request.param)().eval()


def units_of(model):
    return {u.name: u for u in prunable_units(model, X, ("stem", "classifier"))}


def test_residual_and_depthwise_channels_are_one_unit(model):
    units = units_of(model)
    names = [n for n, _ in model.named_modules()]
    # every conv appears as an output layer in at most one unit
    seen = [layer for u in units.values() for layer in u.layers]
    assert len(seen) == len(set(seen))
    if "blocks.3.shortcut.0" in names:  # ResNet: the stage-2 residual stream couples 4 convolutions
        stream = [u for u in units.values() if "blocks.3.shortcut.0" in u.layers][0]
        assert {"blocks.3.conv2.0", "blocks.4.conv2.0", "blocks.5.conv2.0"} <= set(stream.layers)
    else:  # MobileNetV2: a depthwise conv shares its unit with the expansion feeding it
        unit = units["blocks.1.expand.0"]
        assert "blocks.1.depthwise.0" in unit.layers
    assert not any("classifier" in u.layers for u in units.values())
    assert not any("stem.0" in u.layers for u in units.values())


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_channel_plan_gives_exact_channel_counts_and_keeps_shapes(model, ratio):
    units = units_of(model)
    pruned = apply_plan(model, Plan.uniform(list(units), ratio), units, X)
    for unit in units.values():
        for layer in unit.layers:
            assert pruned.get_submodule(layer).out_channels == kept_channels(unit.channels, ratio)
    out = pruned(X)
    assert out.shape == model(X).shape
    assert torch.isfinite(out).all()
    assert macs(pruned, X) < macs(model, X)
    assert model.get_submodule(next(iter(units))).out_channels == next(iter(units.values())).channels  # dense untouched


def test_channel_multiple_rounds_kept_counts(model):
    units = units_of(model)
    name = max(units, key=lambda n: units[n].channels)
    pruned = apply_plan(model, Plan.from_dict({name: UnitChoice("channel", 0.3)}), units, X, {name: 8})
    assert pruned.get_submodule(name).out_channels % 8 == 0


def test_unstructured_plan_gives_requested_sparsity_and_survives_finetuning(model, tiny_resnet_task):
    units = units_of(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.6, "unstructured"), units, X)
    layers = [pruned.get_submodule(layer) for u in units.values() for layer in u.layers]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    finetune(pruned, data, FinetuneRecipe(epochs=1, batch_size=16, lr=0.05), tiny_resnet_task.loss)
    zeros_after = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros_after >= zeros
    assert nonzero_params(pruned) < nonzero_params(model)
    assert macs(pruned, X) == macs(model, X)  # dense kernels still execute the zeros
    assert sparsity(pruned) > 0.3


def test_plan_with_unknown_unit_lists_units(model):
    units = units_of(model)
    with pytest.raises(AutopruneError, match="plan names unit 'nope'"):
        apply_plan(model, Plan.from_dict({"nope": UnitChoice("channel", 0.5)}), units, X)


@pytest.mark.parametrize("channels,ratio,multiple,expected", [(32, 0.5, 1, 16), (32, 0.3, 8, 24), (10, 0.99, 1, 1), (16, 0.9, 8, 8), (12, 0.0, 8, 12)])
def test_kept_channels(channels, ratio, multiple, expected):
    assert kept_channels(channels, ratio, multiple) == expected
