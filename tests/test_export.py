"""Export per device: member selection, parity of the exported ONNX and .tflite files of both
built-in CNN families, structural shrinking vs kept zeros, int8 quantization with accuracy
re-measured through the file, and ``--all-devices`` with its index."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from autoprune.core.errors import AutopruneError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.records import COMPLETE, FAILED, TrialResult
from autoprune.deploy.export import parity
from autoprune.latency.backends import get_backend
from autoprune.latency.measured import deployable
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.units import prunable_units
from autoprune.results.front import select_member
from tests.conftest import PRUNABLE_TASK, heavy_space, write_config


def _record(number: int, accuracy: float, latency: dict, state: str = COMPLETE) -> TrialResult:
    plan = {"u": {"granularity": "channel", "pruning_ratio": number / 100, "criterion": "l1"}}
    return TrialResult(number=number, plan=plan, plan_key=f"k{number}", state=state, accuracy=accuracy, latency_ms=latency)


RECORDS = [
    _record(0, 0.95, {"ort": 1.00, "tfl": 0.9}),
    _record(1, 0.93, {"ort": 0.60, "tfl": 0.3}),
    _record(2, 0.90, {"ort": 0.40, "tfl": 0.5}),
    _record(3, 0.85, {"ort": 0.25, "tfl": 0.2}),
    _record(4, 0.80, {"ort": 0.50, "tfl": 0.1}),  # dominated on ort (slower and worse than 2)
    _record(5, 0.99, {"ort": 0.10, "tfl": 0.05}, state=FAILED),
]


@pytest.mark.parametrize(
    "device, kwargs, expected",
    [
        ("ort", {}, 0),
        ("ort", {"max_latency_ms": 0.6}, 1),
        ("ort", {"max_latency_ms": 0.59}, 2),
        ("ort", {"max_latency_ms": 0.5}, 2),  # trial 4 fits but is dominated
        ("ort", {"max_latency_ms": 0.25}, 3),
        ("ort", {"min_accuracy": 0.9}, 2),
        ("ort", {"min_accuracy": 0.94}, 0),
        ("ort", {"min_speedup": 2.0, "dense_latency_ms": 1.2}, 1),
        ("ort", {"min_speedup": 2.5, "dense_latency_ms": 1.2}, 2),
        ("tfl", {"max_latency_ms": 0.3}, 1),  # per device: on tfl trial 1 is faster than 2
        ("tfl", {"max_latency_ms": 0.15}, 4),
    ],
)
def test_select_member_picks_the_right_front_member(device, kwargs, expected):
    assert select_member(RECORDS, device, **kwargs).number == expected


def test_select_member_errors_say_what_is_possible():
    with pytest.raises(AutopruneError, match=r"--max-latency-ms 0.1 \(fastest: 0.25 ms\)"):
        select_member(RECORDS, "ort", max_latency_ms=0.1)
    with pytest.raises(AutopruneError, match=r"--min-accuracy 0.97 \(best: 0.95\)"):
        select_member(RECORDS, "ort", min_accuracy=0.97)
    with pytest.raises(AutopruneError, match="fastest: 4.8x"):
        select_member(RECORDS, "ort", min_speedup=10, dense_latency_ms=1.2)
    with pytest.raises(AutopruneError, match="no baseline"):
        select_member(RECORDS, "ort", min_speedup=2)
    with pytest.raises(AutopruneError, match="no complete trial with a latency for device 'gpu'"):
        select_member(RECORDS, "gpu")


def _available(name: str):
    backend = get_backend(name)
    ok, why = backend.available()
    if not ok:
        pytest.skip(f"{name}: {why}")
    return backend


@pytest.fixture(scope="module", params=["resnet20", "mobilenetv2"])
def cnn_task(request):
    from autoprune.tasks.base import load_task

    return load_task("digits", model=request.param, epochs=1)


def _pruned(task, granularity: str, ratio: float) -> torch.nn.Module:
    units = {u.name: u for u in prunable_units(task.model, task.example_input, ("stem", "classifier"))}
    plan = Plan.from_dict({name: UnitChoice(granularity, ratio) for name in units})
    model = apply_plan(task.model, plan, units, task.example_input)
    return deployable(model, task.example_input)


@pytest.mark.parametrize("backend_name", ["onnxruntime-cpu", pytest.param("tflite", marks=pytest.mark.tflite)])
def test_exported_builtin_cnns_pass_parity(cnn_task, backend_name, tmp_path):
    backend = _available(backend_name)
    model = _pruned(cnn_task, "channel", 0.5)
    path = backend.export(model, cnn_task.example_input, tmp_path / f"model{backend.suffix}")
    checks = parity(backend.load(path, 1), model, cnn_task.val, 1, limit=128)
    assert checks["samples"] == 128
    assert checks["max_abs_diff"] < 1e-4 and checks["top1_agreement"] == 1.0


def _conv_weights(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.name: inits[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in inits}


def test_channel_pruning_shrinks_the_graph_and_sparse_keeps_its_zeros(cnn_task, tmp_path):
    onnx_backend = get_backend("onnxruntime-cpu")
    dense = onnx_backend.export(deployable(cnn_task.model, cnn_task.example_input), cnn_task.example_input, tmp_path / "dense.onnx")
    channel = onnx_backend.export(_pruned(cnn_task, "channel", 0.5), cnn_task.example_input, tmp_path / "channel.onnx")
    sparse = onnx_backend.export(_pruned(cnn_task, "unstructured", 0.6), cnn_task.example_input, tmp_path / "sparse.onnx")
    dense_params = sum(w.size for w in _conv_weights(dense).values())
    assert sum(w.size for w in _conv_weights(channel).values()) < 0.6 * dense_params
    assert channel.stat().st_size < 0.6 * dense.stat().st_size
    sparse_w = _conv_weights(sparse)
    assert sum(w.size for w in sparse_w.values()) == dense_params  # same shapes ...
    zeros = sum(int((w == 0).sum()) for w in sparse_w.values())
    assert zeros > 0.5 * dense_params  # ... with the zeros kept in the file


@pytest.fixture(scope="module")
def small_task():
    from autoprune.tasks.base import load_task

    return load_task("digits", model="resnet-tiny", epochs=3)


@pytest.mark.parametrize(
    "backend_name, mode",
    [
        ("onnxruntime-cpu", "static"),
        ("onnxruntime-cpu", "dynamic"),
        pytest.param("tflite", "static", marks=pytest.mark.tflite),
        pytest.param("tflite", "dynamic", marks=pytest.mark.tflite),
    ],
)
def test_int8_quantization_keeps_accuracy_measured_through_the_file(small_task, backend_name, mode, tmp_path):
    from autoprune.deploy import quantize as q

    backend = _available(backend_name)
    float_path = backend.export(deployable(small_task.model, small_task.example_input), small_task.example_input, tmp_path / f"m{backend.suffix}")
    calibration = q.calibration_batches(small_task.train, 64, 1) if mode == "static" else []
    path = q.quantize_file(backend_name, float_path, tmp_path / f"m_int8{backend.suffix}", mode, calibration)
    run = q.load_quantized(backend_name, path, 1)
    float_accuracy = q.file_metric(backend.load(float_path, 1), 1, small_task.metric, small_task.val)
    int8_accuracy = q.file_metric(run, 1, small_task.metric, small_task.val)
    assert float_accuracy == pytest.approx(float(small_task.metric(small_task.model, small_task.val)), abs=1e-3)
    assert int8_accuracy > float_accuracy - 0.05
    assert parity(run, small_task.model, small_task.val, 1, limit=64)["top1_agreement"] > 0.85
    if backend_name == "onnxruntime-cpu":
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("DequantizeLinear" in ops) if mode == "static" else ({"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} & ops)
    else:
        dtypes = q.describe(backend_name, path)
        assert dtypes["input_dtype"] == ("int8" if mode == "static" else "float32")


def test_quantization_of_a_torch_program_is_a_clear_error(tmp_path):
    from autoprune.deploy import quantize as q

    with pytest.raises(AutopruneError, match="available for onnxruntime-\\* and tflite devices, not backend 'torch-cpu'"):
        q.quantize_file("torch-cpu", tmp_path / "m.pt2", tmp_path / "q.pt2", "dynamic")
    with pytest.raises(AutopruneError, match="static quantization needs calibration"):
        q.quantize_file("onnxruntime-cpu", tmp_path / "m.onnx", tmp_path / "q.onnx", "static")


@pytest.fixture(scope="module")
def two_device_study(tmp_path_factory):
    """A three-trial study on ONNX Runtime and LiteRT whose export prunes gradually in two steps."""
    _available("tflite")
    from autoprune.core.config import load_config
    from autoprune.engine.executor import run_study

    gradual = {"steps": 2, "finetune": {"max_steps": 2, "batch_size": 32}}
    tmp = tmp_path_factory.mktemp("study")
    # the front holds trials measured faster than the dense model: heavily pruned plans of a model pruning speeds up
    config = write_config(
        tmp, devices=["onnxruntime-cpu", "tflite"], task_options=PRUNABLE_TASK, search_space=str(heavy_space(tmp)), budget={"trials": 3},
        export={"finetune": {"epochs": 0.5}, "iterative": gradual},
    )
    return run_study(load_config(config), progress=False)


@pytest.mark.tflite
def test_export_all_devices_writes_one_verified_model_per_device_with_an_index(two_device_study, tmp_path):
    from autoprune.deploy.export import export_all

    out = tmp_path / "deploy"
    index = export_all(two_device_study.path, out_dir=out, quantize="static", calibration_samples=32)
    assert [row["device"] for row in index["models"]] == ["onnxruntime-cpu", "tflite"]
    assert json.loads((out / "index.json").read_text()) == index
    assert "| onnxruntime-cpu |" in (out / "index.md").read_text()
    cards = {d: json.loads((out / d / "model_card.json").read_text()) for d in ("onnxruntime-cpu", "tflite")}
    for device, card in cards.items():
        suffix = ".onnx" if device == "onnxruntime-cpu" else ".tflite"
        assert (out / device / f"model{suffix}").stat().st_size == card["size_bytes"]
        assert card["parity"]["max_abs_diff"] < 1e-4 and card["parity"]["top1_agreement"] == 1.0
        assert card["iterative"]["steps"] == 2  # the study's gradual-pruning setting reached the export
        assert card["latency_ms_measured"] > 0 and card["latency_ms_dense_measured"] > 0 and card["latency_ms_predicted"] > 0
        assert card["speedup_realised_over_predicted"] == pytest.approx(
            (card["latency_ms_dense_measured"] / card["latency_ms_measured"]) / (card["latency_ms_dense"] / card["latency_ms_predicted"])
        )
        quant = card["quantized"]
        assert quant["mode"] == "static" and quant["calibration_samples"] == 32
        assert (out / device / quant["file"]).is_file() and quant["latency_ms_measured"] > 0
        assert quant["accuracy"] > card["accuracy"] - 0.1
    if cards["onnxruntime-cpu"]["plan_key"] == cards["tflite"]["plan_key"]:  # one member, fine-tuned once
        assert cards["onnxruntime-cpu"]["finetune"]["seconds"] == cards["tflite"]["finetune"]["seconds"]
        assert cards["onnxruntime-cpu"]["accuracy"] == cards["tflite"]["accuracy"]


@pytest.fixture
def agent_url(tmp_path):
    """A profiling agent started as its own process on loopback, with a token."""
    import subprocess
    import sys

    import autoprune.agent

    proc = subprocess.Popen(
        [sys.executable, autoprune.agent.__file__, "serve", "--port", "0", "--quiet", "--token", "tok"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert "serving on" in line, proc.stderr.read()[-2000:]
    yield line.split("serving on ", 1)[1].split()[0]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.tflite
def test_cli_export_measured_through_the_agent(two_device_study, agent_url, tmp_path):
    import subprocess
    import sys

    def export(token: str):
        return subprocess.run(
            [sys.executable, "-m", "autoprune.cli", "export", str(two_device_study.path), "--device", "onnxruntime-cpu",
             "--remote", agent_url, "--token", token, "--epochs", "0.1", "--out", str(tmp_path / "remote")],
            capture_output=True, text=True, timeout=600,
        )

    bad = export("nope")
    assert bad.returncode == 2 and "answered 401" in bad.stderr and "Traceback" not in bad.stderr
    done = export("tok")
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((tmp_path / "remote" / "model_card.json").read_text())
    assert card["measured_on"] == f"agent at {agent_url}" and card["file"] == "model.onnx"
    assert card["latency_ms_measured"] > 0 and card["latency_ms_dense_measured"] > 0


class _ReadsItsInput(torch.nn.Module):
    """Turns its input into NumPy: torch.export cannot follow it, TorchScript tracing takes it as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float(np.abs(x.detach().numpy()).max())


def _onnx_output(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_deployed_onnx_goes_through_torch_export_with_parity(tmp_path):
    pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript")
    from autoprune.latency.backends.onnxruntime import deploy_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5)).eval()
    x = torch.randn(1, 3, 6, 6)
    path, written = deploy_onnx(model, x, tmp_path / "model.onnx")
    assert written == {"exporter": "torch.onnx dynamo (torch.export)", "opset": 18}
    np.testing.assert_allclose(_onnx_output(path, x), model(x).detach().numpy(), atol=1e-5)


def test_a_model_torch_export_cannot_take_falls_back_and_says_why(tmp_path, caplog):
    from autoprune.latency.backends.onnxruntime import deploy_onnx

    model, x = _ReadsItsInput().eval(), torch.randn(1, 3, 8, 8)
    with caplog.at_level("WARNING", logger="autoprune"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns that the NumPy value becomes a constant
        path, written = deploy_onnx(model, x, tmp_path / "model.onnx")
    assert written["exporter"] == "torch.onnx TorchScript (fallback)" and written["opset"] == 17
    assert written["fallback_reason"] and "\x1b" not in written["fallback_reason"]
    assert any("ONNX export through torch.export failed" in m for m in caplog.messages)
    np.testing.assert_allclose(_onnx_output(path, x), model(x).detach().numpy(), atol=1e-5)
