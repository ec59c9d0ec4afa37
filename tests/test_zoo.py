"""torchvision's classification zoo beside the CPU torch: import, build, and what the
latency tables, the export and the pruning make of a fast subset of it."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

if importlib.util.find_spec("torchvision") is None:
    pytest.skip("torchvision is not installed (pip install 'autoprune[test]')", allow_module_level=True)


def test_torchvision_imports_in_a_fresh_process_and_builds_a_model() -> None:
    code = (
        "import autoprune.tasks, torch, torchvision\n"
        "from autoprune.tasks.zoo import torchvision_model\n"
        "m = torchvision_model('mobilenet_v3_small', num_classes=7).eval()\n"
        "print(tuple(m(torch.randn(1, 3, 32, 32)).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 7)"


def test_detection_ops_without_the_extension_fail_with_torchvision_s_own_error() -> None:
    from autoprune.tasks.zoo import import_torchvision

    torchvision = import_torchvision()
    if torchvision.extension._has_ops():
        pytest.skip("torchvision's C extension loads here: nms has a kernel")
    with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


def test_unknown_model_names_the_known_ones() -> None:
    from autoprune.core.errors import ConfigError
    from autoprune.tasks.zoo import torchvision_model

    with pytest.raises(ConfigError, match="'fasterrcnn_resnet50_fpn': not an image classification model; known: .*resnet18"):
        torchvision_model("fasterrcnn_resnet50_fpn")


def _tiny(name: str) -> torch.nn.Module:
    """A narrow, shallow member of each family (what the builders allow), random weights."""
    from autoprune.tasks.zoo import import_torchvision, torchvision_model

    models = import_torchvision().models
    if name == "densenet":
        return models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10)
    if name == "convnext":
        from torchvision.models.convnext import CNBlockConfig

        return models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    if name == "vit":
        return models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    if name == "encoder_vit":
        return EncoderViT()
    kwargs = {"mobilenet_v2": {"width_mult": 0.25}, "mobilenet_v3_small": {"width_mult": 0.25}, "mnasnet0_5": {}, "squeezenet1_1": {}, "resnet18": {}}
    return torchvision_model(name, num_classes=10, **kwargs[name])


class EncoderViT(torch.nn.Module):
    """A ViT as users write it with ``nn.TransformerEncoder``: patch embedding, encoder, mean pool, head."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, patch: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, dim, patch, patch)
        layer = torch.nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, activation="gelu")
        self.encoder = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


#: A fast subset of the zoo, one per kind of graph: residual adds and max-pooling, inverted
#: residuals, squeeze-and-excitation with hard-swish/hard-sigmoid, concatenation (fire modules,
#: dense blocks), layer norm with permutes and layer scale, attention with patch embedding.
ZOO = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "squeezenet1_1", "densenet", "convnext", "vit", "encoder_vit"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_prunes_exports_and_is_described_by_the_latency_table(name: str, tmp_path) -> None:
    import numpy as np

    from autoprune.core.plan import Plan, UnitChoice
    from autoprune.latency.backends.onnxruntime import OnnxRuntimeCPU
    from autoprune.latency.lut.keys import extract_kernels
    from autoprune.latency.lut.kernels import kernel_model
    from autoprune.pruning.apply import apply_plan
    from autoprune.pruning.units import prunable_units

    torch.manual_seed(0)
    model = _tiny(name).eval()
    x = torch.randn(1, 3, 32, 32)
    units = {u.name: u for u in prunable_units(model, x, ("stem", "classifier"))}
    assert units
    rng = np.random.default_rng(0)
    plan = Plan.from_dict({n: UnitChoice("channel", float(rng.choice([0.25, 0.5]))) for n in units if units[n].channels >= 4})
    pruned = apply_plan(model, plan, units, x)
    with torch.no_grad():
        expected = pruned(x).numpy()
    assert expected.shape == (1, 10)

    backend = OnnxRuntimeCPU()
    run = backend.load(backend.export(pruned, x, tmp_path / "pruned.onnx"))
    np.testing.assert_allclose(run(x.numpy()), expected, atol=1e-4, rtol=1e-3)

    kernels = extract_kernels(pruned, x)
    assert len(kernels) >= 3
    assert all(k.key.cin > 0 and k.key.cout > 0 for k in kernels)
    for key in dict.fromkeys(k.key for k in kernels):  # every key has a kernel model that runs
        module, kx = kernel_model(key, "onnxruntime-cpu")
        with torch.no_grad():
            assert torch.isfinite(module(kx)).all(), key.id


def _local_device(root, first_key):
    """A local ONNX Runtime device whose table holds one measured kernel, validated as fit for use."""
    import yaml

    from autoprune.latency.devices import load_device
    from autoprune.latency.lut.kernel_timing import measure_keys
    from autoprune.latency.lut.table import LatencyTable

    folder = root / "near"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"name": "near", "backend": "onnxruntime-cpu", "threads": 1, "batch_size": 1, "warmup": 3, "repeats": 15, "local": True}
    (folder / "device.yaml").write_text(yaml.safe_dump(settings))
    device = load_device("near", root)
    table = LatencyTable.new(device, device.path, {}, "nchw")
    table.meta.validation = {"within_10_pct": 95.0}
    table.append(measure_keys(device, [first_key], table, rounds=1))
    table.save_meta()
    return device


@pytest.mark.parametrize("name", ["vit", "encoder_vit"])
def test_table_predicts_an_attention_model_from_kernels_measured_on_demand(name: str, tmp_path) -> None:
    import warnings

    from autoprune.latency.lut import LUTEstimator, extract_kernels
    from autoprune.latency.lut.table import LatencyTableWarning

    torch.manual_seed(0)
    model, x = _tiny(name).eval(), torch.randn(1, 3, 32, 32)
    kernels = extract_kernels(model, x)
    device = _local_device(tmp_path, kernels[0].key)
    estimator = LUTEstimator(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LatencyTableWarning)  # no calibration for this model: the default is used
        predicted = estimator.latency_ms(model, x)
    assert predicted > 0
    assert estimator.measured_on_demand == len({k.key for k in kernels}) - 1
    assert {"mha", "layernorm"} <= {k.key.op for k in kernels} or {"attention", "ffn"} <= {k.key.op for k in kernels}


class _Cumulative(torch.nn.Module):
    """A model with an operation no latency key describes (a cumulative sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cumsum(self.conv(x), dim=1).mean((2, 3)))


def test_lut_names_the_op_it_cannot_describe_and_auto_measures_instead(tmp_path, caplog) -> None:
    import logging

    from autoprune.core.errors import ConfigError
    from autoprune.latency.lut import KernelKey
    from autoprune.latency.measured import MeasuredLatency
    from autoprune.latency.policy import estimator_for

    model, x = _Cumulative().eval(), torch.randn(1, 3, 16, 16)
    device = _local_device(tmp_path, KernelKey("conv", 3, 16, 16, 8, 3, 1, 1))
    with pytest.raises(ConfigError, match=r"device 'near': `latency: lut` cannot describe this model: node 'cumsum' \(cumsum\): no latency key"):
        estimator_for(device, "lut", model, x)
    with caplog.at_level(logging.WARNING, logger="autoprune.latency.policy"):
        assert isinstance(estimator_for(device, "auto", model, x), MeasuredLatency)
    said = [r.getMessage() for r in caplog.records if "measuring candidates" in r.getMessage()]
    assert len(said) == 1 and "cannot describe the model: node 'cumsum'" in said[0]


@pytest.mark.parametrize("name", ["densenet"])
def test_enumeration_covers_the_concatenations_of_random_plans(name: str, tmp_path) -> None:
    import numpy as np

    from autoprune.core.plan import Plan, UnitChoice
    from autoprune.latency.lut.enumeration import enumerate_keys
    from autoprune.latency.lut.keys import extract_kernels
    from autoprune.pruning.apply import apply_plan
    from autoprune.pruning.space import SearchSpace
    from autoprune.pruning.units import prunable_units

    torch.manual_seed(0)
    model, x = _tiny(name).eval(), torch.randn(1, 3, 32, 32)
    path = tmp_path / "space.yaml"
    path.write_text("rules:\n  - match: '*'\n    pruning_ratio: {low: 0.0, high: 0.5, step: 0.25}\nprotect: [stem, classifier]\n")
    units = prunable_units(model, x, ("stem", "classifier"))
    space = SearchSpace.load(path).resolve(units)
    units_by_name = {u.name: u for u in units if u.name in space}
    keys = set(enumerate_keys(model, x, units_by_name, space))
    rng = np.random.default_rng(1)
    for _ in range(3):
        plan = Plan.from_dict({n: UnitChoice("channel", float(rng.choice([0.0, 0.25, 0.5]))) for n in units_by_name})
        pruned = apply_plan(model, plan, units_by_name, x)
        concat = [k.key.id for k in extract_kernels(pruned, x) if k.key.op == "concat"]
        assert concat and [k for k in concat if k not in {key.id for key in keys}] == []
