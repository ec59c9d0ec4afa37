"""ONNX Runtime backends: CPU (the default device) and CUDA."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.core.errors import BackendUnavailableError
from autoprune.latency.backends.base import BACKENDS, Backend, unfused_attention
from autoprune.latency.timing import Runner

log = logging.getLogger(__name__)


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Export with the TorchScript-based exporter, opset 17: what the search times on every
    trial, because it takes a tenth of the time of the ``torch.export``-based one (0.44 s
    against 3-8 s for a small CNN here) and gives the same graph for these CNNs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad(), unfused_attention(), warnings.catch_warnings():
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


def deploy_onnx(model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> tuple[Path, dict[str, Any]]:
    """Export with the exporter PyTorch maintains (``torch.onnx.export(..., dynamo=True)``,
    through ``torch.export``), opset 18; a model it cannot take (or no ``onnxscript``) falls
    back to the TorchScript exporter, and the returned notes say so and why."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        with torch.no_grad(), unfused_attention():
            torch.onnx.export(
                model, (example_input,), str(path), input_names=["input"], output_names=["output"],
                opset_version=18, dynamo=True, external_data=False, verbose=False,
            )
        return path, {"exporter": "torch.onnx dynamo (torch.export)", "opset": 18}
    except Exception as err:  # noqa: BLE001  (any failure of the new exporter falls back, and is recorded)
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # the exporter colours its messages
        reason = f"{type(err).__name__}: {message.splitlines()[0] if message else ''}"
        log.warning("ONNX export through torch.export failed (%s); using the TorchScript exporter", reason)
        path.unlink(missing_ok=True)
        return export_onnx(model, example_input, path), {"exporter": "torch.onnx TorchScript (fallback)", "opset": 17, "fallback_reason": reason}


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

    def deploy(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> tuple[Path, dict[str, Any]]:
        return deploy_onnx(model, example_input, path)

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
