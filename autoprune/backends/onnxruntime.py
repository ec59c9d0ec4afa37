"""ONNX Runtime backends: CPU (the default device) and CUDA."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendUnavailableError
from .base import BACKENDS, Backend, Runner


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Export with the TorchScript-based exporter (fast, no onnxscript needed), opset 17."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated but fast and complete for CNNs
        torch.onnx.export(
            model,
            (example_input,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
            dynamo=False,
        )
    return path


@BACKENDS.register("onnxruntime-cpu")
class OnnxRuntimeCPU(Backend):
    """ONNX Runtime, CPU execution provider, intra-op threads set by the device profile."""

    name = "onnxruntime-cpu"
    suffix = ".onnx"
    provider = "CPUExecutionProvider"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        if self.provider not in ort.get_available_providers():
            return False, f"ONNX Runtime has no {self.provider} here (providers: {ort.get_available_providers()})"
        return True, ""

    def export(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
        return export_onnx(model, example_input, path)

    def load(self, path: Path, threads: int = 1) -> Runner:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name!r}: {why}")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=[self.provider])
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: x})[0]

        return run

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "torch": torch.__version__}


@BACKENDS.register("onnxruntime-cuda")
class OnnxRuntimeCUDA(OnnxRuntimeCPU):
    """ONNX Runtime with the CUDA execution provider (needs onnxruntime-gpu and a GPU)."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
