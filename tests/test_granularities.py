"""Every granularity and criterion on real CNNs: sparsity counted from the weights, masks that
survive fine-tuning, exports that still run, criteria that find a planted unimportant item."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.core.errors import AutopruneError, ConfigError, UnknownNameError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.recipes import Distillation, FinetuneRecipe
from autoprune.deploy.gradual import cubic_fractions, iterative_prune, scale_plan
from autoprune.latency.backends import get_backend
from autoprune.latency.measured import deployable
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import CRITERIA, Calibration
from autoprune.pruning.depth import SkippedBlock
from autoprune.pruning.granularity import (
    GRANULARITIES,
    PruneContext,
    channel_scores,
    kept_channels,
    refresh_masks,
)
from autoprune.pruning.space import SearchSpace
from autoprune.pruning.sparse import gemm_view
from autoprune.pruning.structure import search_units
from autoprune.tasks.base import cross_entropy
from autoprune.tasks.models import MODELS
from autoprune.training.distill import distillation_loss, kd_term
from autoprune.training.loop import finetune
from tests.conftest import REPO

X = torch.randn(1, 1, 8, 8)
SPARSE = ["unstructured", "n:4", "n:8", "block1x4", "block4x4"]


def make(name="resnet-tiny"):
    torch.manual_seed(0)
    return MODELS.get(name)().eval()


def data(n=64):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def calibration():
    return Calibration(data(), cross_entropy, batches=2, batch_size=16)


def conv_units(model):
    return {u.name: u for u in search_units(model, X, ("stem", "classifier")) if u.kind == "conv"}


def zero_fraction(model, unit):
    weights = [model.get_submodule(layer).weight for layer in unit.layers]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@pytest.mark.parametrize("granularity", SPARSE)
@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "bn-scale", "random"])
def test_sparse_granularities_give_requested_sparsity(granularity, criterion):
    model = make()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.5, granularity, criterion), units, X, calibration=calibration())
    for unit in units.values():
        assert zero_fraction(pruned, unit) == pytest.approx(0.5, abs=0.02), unit.name
    out = pruned(X)
    assert out.shape == model(X).shape and torch.isfinite(out).all()
    assert all((model.get_submodule(l).weight != 0).all() for u in units.values() for l in u.layers)  # dense untouched


@pytest.mark.parametrize("ratio,n", [(0.25, 3), (0.5, 2), (0.75, 1)])
def test_n_of_m_pattern_holds_in_every_group(ratio, n):
    model = make()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), ratio, "n:4"), units, X)
    for unit in units.values():
        for layer in unit.layers:
            w = pruned.get_submodule(layer).weight.detach()
            groups = w.movedim(1, -1).reshape(-1, 4)  # input channels innermost, groups of 4
            assert ((groups != 0).sum(-1) == n).all(), layer


@pytest.mark.parametrize("height,width", [(1, 4), (4, 4), (2, 8)])
def test_blocks_are_zeroed_whole(height, width):
    model = make()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.5, f"block{height}x{width}"), units, X)
    for unit in units.values():
        for layer in unit.layers:
            matrix = gemm_view(pruned.get_submodule(layer).weight.detach())
            rows, cols = matrix.shape
            blocks = matrix[: rows - rows % height, : cols - cols % width].reshape(rows // height, height, cols // width, width)
            nonzero = (blocks != 0).sum(dim=(1, 3))
            assert ((nonzero == 0) | (nonzero == height * width)).all(), layer
            assert (nonzero == 0).float().mean() == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("granularity", SPARSE)
def test_masks_survive_fine_tuning_and_fold_for_export(granularity, tmp_path):
    model = make()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.5, granularity), units, X)
    zero_before = {l: pruned.get_submodule(l).weight.detach() == 0 for u in units.values() for l in u.layers}
    finetune(pruned, data(), FinetuneRecipe(max_steps=3, batch_size=16, lr=0.5), cross_entropy)
    refresh_masks(pruned, X)
    for layer, zeros in zero_before.items():
        weight = pruned.get_submodule(layer).weight
        assert (weight[zeros] == 0).all(), layer
        assert not torch.equal(pruned.get_submodule(layer).weight_orig[~zeros], model.get_submodule(layer).weight[~zeros])  # it trained
    final = deployable(pruned, X)
    assert not any(hasattr(m, "weight_orig") for m in final.modules())
    backend = get_backend("onnxruntime-cpu")
    path = backend.export(final, X, tmp_path / "m.onnx")
    np.testing.assert_allclose(backend.load(path)(X.numpy()), final(X).detach().numpy(), atol=1e-4)
    import onnx

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert sum(int((v == 0).sum()) for v in inits.values() if v.ndim == 4) >= 0.45 * sum(
        int(z.numel()) for z in zero_before.values()
    )  # the zeros reach the exported file (BN folding scales weights, zeros stay zeros)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "bn-scale", "random"])
def test_channel_pruning_shrinks_tensors_with_every_criterion(criterion, tmp_path):
    model = make()
    units = conv_units(model)
    pruned = apply_plan(model, Plan.uniform(list(units), 0.5, "channel", criterion), units, X, calibration=calibration())
    for unit in units.values():
        for layer in unit.layers:
            assert pruned.get_submodule(layer).out_channels == kept_channels(unit.channels, 0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    path = get_backend("onnxruntime-cpu").export(pruned, X, tmp_path / "m.onnx")
    np.testing.assert_allclose(get_backend("onnxruntime-cpu").load(path)(X.numpy()), pruned(X).detach().numpy(), atol=1e-4)


def test_layer_removal_replaces_blocks_and_keeps_other_units_valid(tmp_path):
    model = make("resnet20")
    units = {u.name: u for u in search_units(model, X, ("stem", "classifier"))}
    depth = units["blocks"]
    assert depth.kind == "depth" and depth.channels == 7  # blocks 0-2, 4-5, 7-8 keep their input's shape
    assert "blocks.3" not in depth.layers and "blocks.6" not in depth.layers
    plan = {"blocks": UnitChoice("layer", 0.5)}
    plan.update({n: UnitChoice("channel", 0.5) for n, u in units.items() if u.kind == "conv"})
    pruned = apply_plan(model, Plan.from_dict(plan), units, X)
    skipped = [n for n in depth.layers if isinstance(pruned.get_submodule(n), SkippedBlock)]
    assert len(skipped) == depth.channels - kept_channels(depth.channels, 0.5) == 3
    assert pruned(X).shape == (1, 10)
    path = get_backend("onnxruntime-cpu").export(pruned, X, tmp_path / "m.onnx")
    np.testing.assert_allclose(get_backend("onnxruntime-cpu").load(path)(X.numpy()), pruned(X).detach().numpy(), atol=1e-4)
    again = apply_plan(pruned, Plan.from_dict(plan), units, X)  # ratios are absolute: nothing left to remove
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in pruned.parameters())


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "bn-scale"])
def test_criteria_rank_a_planted_unimportant_channel_last(criterion):
    torch.manual_seed(0)
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv1.weight[5] *= 1e-3
        model.bn1.weight[5] = 1e-3
        model.conv2.weight[:, 5] *= 1e-3
    units = {u.name: u for u in search_units(model, X, ("classifier",))}
    ctx = PruneContext(model, X, calibration())
    import torch_pruning as tp

    group = ctx.graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    scores = channel_scores(ctx, units["conv1"], criterion, group)
    assert int(torch.argmin(scores)) == 5
    pruned = apply_plan(model, Plan.from_dict({"conv1": UnitChoice("channel", 1 / 8, criterion)}), units, X, calibration=calibration())
    assert pruned.conv1.out_channels == 7
    torch.testing.assert_close(pruned.conv1.weight, torch.cat([model.conv1.weight[:5], model.conv1.weight[6:]]))


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "bn-scale"])
def test_depth_criteria_remove_a_planted_dead_block_first(criterion):
    model = make("resnet20")
    with torch.no_grad():
        model.blocks[4].conv2[1].weight.zero_()  # block 4's residual branch now adds nothing
        model.blocks[4].conv2[1].bias.zero_()
    units = {u.name: u for u in search_units(model, X, ("stem", "classifier"))}
    pruned = apply_plan(model, Plan.from_dict({"blocks": UnitChoice("layer", 1 / 7, criterion)}), units, X, calibration=calibration())
    assert isinstance(pruned.blocks[4], SkippedBlock)
    torch.testing.assert_close(pruned(X), model(X))


def test_taylor_without_calibration_is_a_clear_error():
    model = make()
    units = conv_units(model)
    with pytest.raises(AutopruneError, match="needs gradients"):
        apply_plan(model, Plan.uniform(list(units), 0.5, "channel", "taylor"), units, X)


def test_bn_scale_per_weight_follows_the_folded_batchnorm():
    model = make()
    units = conv_units(model)
    name = next(iter(units))
    conv, bn = model.get_submodule(name), model.get_submodule(name[:-1] + "1")
    with torch.no_grad():
        bn.weight[0] = 1e-4  # output channel 0 is nearly silenced by its BatchNorm
    pruned = apply_plan(model, Plan.from_dict({name: UnitChoice("unstructured", 1 / conv.out_channels, "bn-scale")}), units, X)
    assert (pruned.get_submodule(name).weight[0] == 0).all() and (pruned.get_submodule(name).weight[1:] != 0).all()
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)).eval()
    mlp_units = {u.name: u for u in search_units(mlp, torch.randn(1, 4), ("classifier",))}
    with pytest.raises(AutopruneError, match="needs a BatchNorm"):
        apply_plan(mlp, Plan.from_dict({"0": UnitChoice("unstructured", 0.5, "bn-scale")}), mlp_units, torch.randn(1, 4))


def test_registries_list_families_and_reject_bad_parameters():
    assert {"channel", "neuron", "unstructured", "n:M", "blockHxW", "head", "layer", "none"} <= set(GRANULARITIES.names())
    assert {"l1", "l2", "taylor", "bn-scale", "random"} <= set(CRITERIA.names())
    assert "n:16" in GRANULARITIES and "block8x1" in GRANULARITIES
    assert "n:1" not in GRANULARITIES and "block1x1" not in GRANULARITIES and "n:x" not in GRANULARITIES
    with pytest.raises(UnknownNameError, match="blockHxW"):
        GRANULARITIES.get("strided")
    with pytest.raises(ConfigError, match="M must be"):
        GRANULARITIES.get("n:1")


def test_rules_bind_only_units_their_granularities_apply_to(tmp_path):
    model = make("resnet20")
    units = search_units(model, X, ("stem", "classifier"))
    space = SearchSpace.model_validate({"rules": [{"match": "*", "granularities": ["channel", "n:4"]}, {"match": "blocks", "granularities": ["layer"]}]})
    bound = space.resolve(units)
    assert bound["blocks"].rule.granularities == ["layer"]
    assert all(us.rule.granularities == ["channel", "n:4"] for n, us in bound.items() if n != "blocks")
    with pytest.raises(ConfigError, match="matches no prunable unit"):
        SearchSpace.model_validate({"rules": [{"match": "*", "granularities": ["head"]}]}).resolve(units)
    with pytest.raises(ValueError, match="unknown granularity"):
        SearchSpace.model_validate({"rules": [{"granularities": ["n:0"]}]})


def test_the_default_space_offers_blocks_where_a_model_has_them_and_channels_everywhere():
    space = SearchSpace.load(REPO / "search_spaces" / "cnn_channel_full.yaml")
    bound = space.resolve(search_units(make("resnet20"), X, space.protect))
    assert bound["blocks"].rule.granularities == ["layer"]
    assert all(us.rule.granularities == ["channel", "channel:16"] for n, us in bound.items() if n != "blocks")
    plain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    plain(X)
    bound = space.resolve(search_units(plain, X, space.protect))  # no residual block: the optional rule binds nothing
    assert bound and all(us.rule.granularities == ["channel", "channel:16"] for us in bound.values())
    required = SearchSpace.model_validate({"rules": [{"match": "*", "granularities": ["layer"]}, {"match": "*"}]})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.match '\*' matches no prunable unit"):
        required.resolve(search_units(plain, X, space.protect))


def test_aligned_channel_pruning_keeps_multiples_and_the_table_enumerates_its_counts():
    from autoprune.latency.lut.enumeration import unit_options
    from autoprune.pruning.granularity import granularity_multiple

    model = MODELS.get("mobilenetv2")(in_channels=1, num_classes=10).eval()
    x = torch.randn(1, 1, 28, 28)
    units = {u.name: u for u in search_units(model, x, ("classifier",))}
    convs = [n for n, u in units.items() if u.kind == "conv"]
    pruned = apply_plan(model, Plan.from_dict({n: UnitChoice("channel:16", 0.8) for n in convs}), units, x)
    widths = {n: units[n].channels for n in convs}
    kept = {n: pruned.get_submodule(units[n].layers[0]).out_channels for n in convs}
    assert all(k % 16 == 0 or k == widths[n] for n, k in kept.items()) and any(k < widths[n] for n, k in kept.items())
    assert pruned(x).shape == (1, 10)
    assert granularity_multiple("channel:16", 8) == 16 and granularity_multiple("channel:16", 3) == 48 and granularity_multiple("channel") == 1
    with pytest.raises(AutopruneError, match="channel multiple must be at least 2"):
        GRANULARITIES.get("channel:1")
    space = SearchSpace.model_validate({"rules": [{"match": "*", "granularities": ["channel", "channel:16"], "pruning_ratio": {"high": 0.9}}], "protect": ["classifier"]})
    head = space.resolve(list(units.values()))["head.0"]  # 128 channels
    counts = {o.channels for o in unit_options(head)}
    assert {16, 32, 48, 64, 128} <= counts and 13 in counts  # 16-multiples beside the unrounded 0.9 (128 * 0.1 = 12.8)


def test_cubic_schedule_reaches_the_one_shot_model():
    assert cubic_fractions(1) == [1.0]
    fractions = cubic_fractions(4)
    assert fractions[-1] == 1.0 and all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] == pytest.approx(1 - 0.75**3)
    model = make()
    units = conv_units(model)
    names = list(units)
    plan = Plan.from_dict({names[0]: UnitChoice("channel", 0.5), names[1]: UnitChoice("unstructured", 0.6), names[2]: UnitChoice("n:4", 0.5)})
    assert scale_plan(plan, 0.5)[names[1]].pruning_ratio == pytest.approx(0.3)
    tuned = []

    def tune(m, step):
        tuned.append(step)
        finetune(m, data(), FinetuneRecipe(max_steps=2, batch_size=16), cross_entropy, seed=step)

    gradual = iterative_prune(model, plan, units, X, 3, tune)
    one_shot = apply_plan(model, plan, units, X)
    assert tuned == [1, 2]
    for name in names[:3]:
        for layer in units[name].layers:
            g, o = gradual.get_submodule(layer).weight, one_shot.get_submodule(layer).weight
            assert g.shape == o.shape, layer
            assert float((g == 0).float().mean()) == pytest.approx(float((o == 0).float().mean()), abs=0.01), layer
    assert gradual(X).shape == (1, 10)


def test_distillation_loss_blends_task_and_teacher():
    teacher = make()
    units = conv_units(teacher)
    student = apply_plan(teacher, Plan.uniform(list(units), 0.5), units, X)
    x, y = data(16).tensors
    logits = teacher(x).detach()
    assert float(kd_term(logits, logits, Distillation())) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_term(student(x).detach(), logits, Distillation(kind="mse"))) > 0
    only_task = distillation_loss(cross_entropy, teacher, Distillation(weight=0.0))
    torch.testing.assert_close(only_task(student, (x, y)), cross_entropy(student, (x, y)))
    options = Distillation(weight=0.7, temperature=2.0)
    blended = distillation_loss(cross_entropy, teacher, options)(student, (x, y))
    expected = 0.3 * cross_entropy(student, (x, y)) + 0.7 * kd_term(student(x), logits, options)
    torch.testing.assert_close(blended, expected)
    recipe = FinetuneRecipe.model_validate({"max_steps": 3, "batch_size": 16, "distill": {"weight": 0.5, "temperature": 4}})
    assert finetune(student, data(), recipe, distillation_loss(cross_entropy, teacher, recipe.distill)) == 3


def test_study_config_turns_on_distillation_and_the_iterative_export(tmp_path):
    from autoprune.core.config import load_config
    from autoprune.deploy.gradual import prune_for_export
    from autoprune.engine.context import build_context
    from autoprune.engine.trial import prune, run_trial
    from tests.conftest import write_config

    path = write_config(
        tmp_path,
        search_space=str(Path(__file__).resolve().parent.parent / "search_spaces" / "cnn_granularities.yaml"),
        task_options={"model": "resnet20", "epochs": 1},
        finetune={"max_steps": 2, "batch_size": 32, "distill": {"weight": 0.5, "temperature": 2.0}},
        export={"finetune": {"epochs": 0.1}, "iterative": {"steps": 2, "finetune": {"max_steps": 2, "batch_size": 32}}},
    )
    config = load_config(path)
    assert config.finetune.distill.temperature == 2.0 and config.export.iterative.steps == 2
    ctx = build_context(config)
    assert ctx.space["blocks"].rule.granularities == ["layer"] and ctx.units["blocks"].kind == "depth"
    granularities = ["channel", "n:4", "block4x4"]
    plan = {n: UnitChoice(granularities[i % 3], 0.5, "taylor") for i, n in enumerate(n for n in ctx.units if n != "blocks")}
    plan = Plan.from_dict({**plan, "blocks": UnitChoice("layer", 0.3, "taylor")})
    result = run_trial(ctx, plan, 0)
    assert result.state == "complete" and result.finetune_steps == 2, result.error
    one_shot, gradual = prune(ctx, plan), prune_for_export(ctx, plan, config.export.iterative, config.seed)
    for (name, a), (_, b) in zip(one_shot.named_modules(), gradual.named_modules()):
        if isinstance(a, nn.Conv2d):
            assert a.weight.shape == b.weight.shape, name
            assert float((a.weight == 0).float().mean()) == pytest.approx(float((b.weight == 0).float().mean()), abs=0.02), name
