"""Int8 post-training quantization of an exported model file, after pruning.

Two modes, for both exported formats:

* ``dynamic``: weights stored as int8, activations quantized on the fly (ONNX Runtime's
  ``quantize_dynamic``; LiteRT's dynamic-range recipe ``dynamic_wi8_afp32`` of
  ai-edge-quantizer). Needs no data.
* ``static``: weights and activations int8 with ranges calibrated on samples of the
  task's training data (ONNX Runtime's ``quantize_static`` in QDQ format, per-channel
  int8 weights, uint8 activations, MinMax calibration; LiteRT full-integer through
  ai-edge-quantizer's ``static_wi8_ai8`` recipe, whose model takes and returns int8
  tensors, which :func:`load_quantized` converts with the tensors' scales).

Other backends (PyTorch) have no int8 path here and raise a clear error. Accuracy is
re-measured through the quantized file itself with :func:`file_metric`.
"""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autoprune.core.errors import AutopruneError
from autoprune.latency.backends import Runner, get_backend

QUANT_MODES = ("dynamic", "static")
#: Backend name -> how each mode is done there (recorded in model cards).
METHODS = {
    "onnxruntime": {
        "dynamic": "onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic uint8 activations)",
        "static": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration)",
    },
    "tflite": {
        "dynamic": "ai-edge-quantizer recipe dynamic_wi8_afp32 (int8 weights, dynamic-range activations)",
        "static": "ai-edge-quantizer recipe static_wi8_ai8 (full integer: int8 weights, activations and model input/output)",
    },
}


def _family(backend: str) -> str:
    if backend.startswith("onnxruntime"):
        return "onnxruntime"
    if backend == "tflite":
        return "tflite"
    raise AutopruneError(f"int8 quantization is available for onnxruntime-* and tflite devices, not backend {backend!r}")


def method(backend: str, mode: str) -> str:
    """How ``mode`` quantization is done for ``backend``: a sentence for the model card."""
    if mode not in QUANT_MODES:
        raise AutopruneError(f"quantization mode must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    return METHODS[_family(backend)][mode]


def calibration_batches(data: Dataset, samples: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """``samples`` inputs drawn without replacement from ``data``, stacked into batches of the
    device's batch size (a short last batch is dropped, since exported models have a fixed batch)."""
    if samples < batch_size:
        raise AutopruneError(f"calibration needs at least one batch: samples={samples} < batch_size={batch_size}")
    n = min(samples, len(data))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    xs = torch.stack([data[i][0] for i in idx]).numpy()
    return [xs[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def quantize_file(backend: str, float_path: Path, out_path: Path, mode: str, calibration: Sequence[np.ndarray] = ()) -> Path:
    """Write an int8 version of the exported ``float_path`` to ``out_path``; ``calibration``
    (input batches) is required for ``static``."""
    family = _family(backend)
    method(backend, mode)
    if mode == "static" and not calibration:
        raise AutopruneError("static quantization needs calibration batches from the task's data")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if family == "onnxruntime":
        return _quantize_onnx(Path(float_path), out_path, mode, calibration)
    return _quantize_tflite(Path(float_path), out_path, mode, calibration)


def _quantize_onnx(float_path: Path, out_path: Path, mode: str, calibration: Sequence[np.ndarray]) -> Path:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="autoprune-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))  # shape inference + graph cleanup, as ONNX Runtime recommends
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(prepared),
                str(out_path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    return out_path


def _quantize_tflite(float_path: Path, out_path: Path, mode: str, calibration: Sequence[np.ndarray]) -> Path:
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as err:
        raise AutopruneError(f"LiteRT quantization needs ai-edge-quantizer (pip install ai-edge-quantizer): {err}") from err
    from ai_edge_litert.interpreter import Interpreter

    chosen = recipe.dynamic_wi8_afp32() if mode == "dynamic" else recipe.static_wi8_ai8()
    qt = quantizer.Quantizer(str(float_path), chosen)
    # ai-edge-quantizer reports progress on stdout and stderr; a library call stays quiet.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = None
        if qt.need_calibration:
            signatures = Interpreter(model_path=str(float_path)).get_signature_list()
            if len(signatures) != 1:
                raise AutopruneError(f"{float_path}: expected one signature to calibrate, found {sorted(signatures)}")
            (key, io_names), = signatures.items()
            (input_name,) = io_names["inputs"]
            result = qt.calibrate({key: [{input_name: batch} for batch in calibration]}, num_threads=1)
        qt.quantize(result, enable_progress_report=False).export_model(str(out_path), overwrite=True)
    return out_path


def load_quantized(backend: str, path: Path, threads: int = 1) -> Runner:
    """Run a quantized file with float input and output, like the float export.

    Full-integer ``.tflite`` models take and return int8 tensors: the input is quantized
    and the output dequantized with the scales stored in the file.
    """
    if _family(backend) == "onnxruntime":
        return get_backend(backend).load(path, threads)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    in_dtype = inp["dtype"]

    def run(x: np.ndarray) -> np.ndarray:
        if np.issubdtype(in_dtype, np.integer):
            info = np.iinfo(in_dtype)
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=in_dtype))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        return (y.astype(np.float32) - out_zero) * out_scale if np.issubdtype(y.dtype, np.integer) else y

    return run


class RunnerModule(nn.Module):
    """An exported file seen as a PyTorch module, so the task's own metric can score it.

    The file has a fixed batch size; inputs are fed in chunks of it, the last one padded.
    """

    def __init__(self, run: Runner, batch_size: int) -> None:
        super().__init__()
        self.run = run
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.detach().cpu().numpy().astype(np.float32)
        outs = []
        for start in range(0, len(xs), self.batch_size):
            chunk = xs[start : start + self.batch_size]
            short = self.batch_size - len(chunk)
            if short:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            outs.append(np.asarray(self.run(chunk))[: self.batch_size - short])
        return torch.from_numpy(np.concatenate(outs))


def file_metric(run: Runner, batch_size: int, metric: Callable[[nn.Module, Dataset], float], data: Dataset) -> float:
    """The task's metric computed through an exported file instead of the PyTorch model."""
    value = float(metric(RunnerModule(run, batch_size), data))
    if not math.isfinite(value):
        raise AutopruneError(f"the metric through the exported file is {value}")
    return value


def describe(backend: str, path: Path) -> dict[str, Any]:
    """Input and output dtypes of an exported file (int8 I/O marks a full-integer model)."""
    if _family(backend) == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return {"input_dtype": session.get_inputs()[0].type, "output_dtype": session.get_outputs()[0].type}
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return {
        "input_dtype": np.dtype(interpreter.get_input_details()[0]["dtype"]).name,
        "output_dtype": np.dtype(interpreter.get_output_details()[0]["dtype"]).name,
    }
