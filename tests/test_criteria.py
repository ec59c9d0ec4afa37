"""The data-driven criteria (fisher, snip, grasp, activation, apoz) on real models: exact
channel counts, kept output shapes, and a hand-made network where they must disagree with l1."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.core.errors import AutopruneError, UnknownNameError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import CRITERIA, Calibration
from autoprune.pruning.granularity import PruneContext, channel_scores, kept_channels
from autoprune.pruning.space import SearchSpace
from autoprune.pruning.structure import search_units
from autoprune.tasks.base import cross_entropy
from autoprune.tasks.models import MODELS

X = torch.randn(1, 1, 8, 8)
NEW = ["fisher", "snip", "grasp", "activation", "apoz"]
WEIGHT_LEVEL = ["fisher", "snip", "grasp", "activation"]


def images(n: int = 48) -> Calibration:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Calibration(data, cross_entropy, batches=2, batch_size=16)


def conv_units(model: nn.Module) -> dict:
    return {u.name: u for u in search_units(model, X, ("stem", "classifier")) if u.kind == "conv"}


@pytest.mark.parametrize("model_name", ["resnet-tiny", "mobilenetv2-tiny"])
@pytest.mark.parametrize("criterion", NEW)
def test_channel_pruning_reaches_the_planned_count(model_name, criterion):
    torch.manual_seed(0)
    model = MODELS.get(model_name)().eval()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.5, "channel", criterion), units, X, calibration=images())
    for unit in units.values():
        for layer in unit.layers:
            assert pruned.get_submodule(layer).out_channels == kept_channels(unit.channels, 0.5), layer
    out = pruned(X)
    assert out.shape == model(X).shape and torch.isfinite(out).all()
    assert all(p.grad is None for p in pruned.parameters())  # saliencies do not leave with the model
    assert not any(hasattr(m, "_autoprune_input_stats") for m in pruned.modules())


def test_a_plan_mixing_criteria_scores_each_unit_with_its_own():
    torch.manual_seed(0)
    model = MODELS.get("mobilenetv2-tiny")().eval()
    units = conv_units(model)
    criteria = ["fisher", "taylor", "grasp", "activation", "snip", "l1", "apoz"]
    plan = Plan.from_dict({name: UnitChoice("channel", 0.5, criteria[i % len(criteria)]) for i, name in enumerate(units)})
    pruned = apply_plan(model, plan, units, X, calibration=images())
    for unit in units.values():
        assert pruned.get_submodule(unit.layers[0]).out_channels == kept_channels(unit.channels, 0.5)
    assert pruned(X).shape == (1, 10)


class DeadNeuron(nn.Module):
    """fc1's neuron 0 has the largest weights but never fires (bias far below any input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight[0] = 3.0
            self.fc1.bias[0] = -1000.0
            self.fc2.weight[:, 0] = 5.0  # the weights that read the dead neuron are the largest of fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def vectors() -> Calibration:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))
    return Calibration(data, cross_entropy, batches=2, batch_size=16)


def neuron_scores(criterion: str) -> torch.Tensor:
    import torch_pruning as tp

    model = DeadNeuron().eval()
    x = torch.randn(1, 4)
    units = {u.name: u for u in search_units(model, x, ("classifier",))}
    ctx = PruneContext(model, x, vectors())
    group = ctx.graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 1, 2])
    return channel_scores(ctx, units["fc1"], criterion, group)


@pytest.mark.parametrize("criterion", ["fisher", "snip", "activation", "apoz"])
def test_data_criteria_remove_the_heavy_dead_neuron_that_l1_keeps(criterion):
    assert int(neuron_scores("l1").argmax()) == 0
    scores = neuron_scores(criterion)
    assert float(scores[0]) == 0.0 and (scores[1:] > 0).all()
    model, x = DeadNeuron().eval(), torch.randn(1, 4)
    units = {u.name: u for u in search_units(model, x, ("classifier",))}
    pruned = apply_plan(model, Plan.from_dict({"fc1": UnitChoice("neuron", 1 / 3, criterion)}), units, x, calibration=vectors())
    torch.testing.assert_close(pruned.fc1.weight, model.fc1.weight[1:])
    torch.testing.assert_close(pruned(x), model(x))  # the dead neuron contributed nothing


def test_grasp_scores_the_dead_neuron_zero_and_ranks_unlike_l1():
    scores = neuron_scores("grasp")
    assert float(scores[0]) == 0.0 and (scores[1:] != 0).all()
    assert torch.argsort(scores).tolist() != torch.argsort(neuron_scores("l1")).tolist()


@pytest.mark.parametrize("criterion", ["fisher", "snip", "activation"])
def test_weight_level_scores_drop_the_large_weights_reading_a_dead_neuron(criterion):
    model, x = DeadNeuron().eval(), torch.randn(1, 4)
    units = {u.name: u for u in search_units(model, x, ("classifier",))}
    plan = Plan.from_dict({"fc2": UnitChoice("unstructured", 3 / 9, criterion)})
    pruned = apply_plan(model, plan, units, x, calibration=vectors())
    assert (pruned.fc2.weight[:, 0] == 0).all() and (pruned.fc2.weight[:, 1:] != 0).all()
    l1 = apply_plan(model, Plan.from_dict({"fc2": UnitChoice("unstructured", 3 / 9, "l1")}), units, x)
    assert (l1.fc2.weight[:, 0] != 0).all()


@pytest.mark.parametrize("granularity", ["unstructured", "n:4", "block1x4"])
@pytest.mark.parametrize("criterion", WEIGHT_LEVEL)
def test_weight_level_granularities_accept_the_new_criteria(granularity, criterion):
    torch.manual_seed(0)
    model = MODELS.get("resnet-tiny")().eval()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.5, granularity, criterion), units, X, calibration=images())
    for unit in units.values():
        weights = [pruned.get_submodule(layer).weight for layer in unit.layers]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(0.5, abs=0.02), unit.name
    assert pruned(X).shape == (1, 10)


def test_apoz_refuses_weight_level_granularities_and_gradient_criteria_need_data():
    torch.manual_seed(0)
    model = MODELS.get("resnet-tiny")().eval()
    units = conv_units(model)
    with pytest.raises(AutopruneError, match="'apoz' scores whole channels"):
        apply_plan(model, Plan.uniform(list(units), 0.5, "unstructured", "apoz"), units, X, calibration=images())
    for criterion in ["fisher", "snip", "grasp"]:
        with pytest.raises(AutopruneError, match="needs gradients"):
            apply_plan(model, Plan.uniform(list(units), 0.5, "channel", criterion), units, X)


def test_search_spaces_name_the_new_criteria_and_unknown_names_list_them():
    assert set(NEW) <= set(CRITERIA.names())
    SearchSpace.model_validate({"rules": [{"criteria": NEW}]})
    with pytest.raises(ValueError, match="known: .*activation.*fisher.*grasp.*snip"):
        SearchSpace.model_validate({"rules": [{"criteria": ["obd"]}]})
    with pytest.raises(UnknownNameError, match="fisher"):
        CRITERIA.get("obd")
