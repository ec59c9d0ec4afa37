"""LiteRT (TensorFlow Lite) backend: the on-device CPU runtime of Android and embedded Linux.

Export converts PyTorch to ``.tflite`` with litert-torch
(``litert_torch.convert(model, (example_input,)).export(path)``), which traces the model
with ``torch.export`` and lowers it through StableHLO. litert-torch keeps the PyTorch
NCHW layout at the model interface (it inserts the NHWC transposes inside the graph), so
the runner takes and returns the same arrays as the PyTorch model; export checks this.

Load uses ``ai_edge_litert.interpreter.Interpreter`` with the default op resolver, which
applies LiteRT's default XNNPACK delegate; ``num_threads`` sets its thread pool.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from autoprune.core.errors import AutopruneError, BackendUnavailableError
from autoprune.latency.backends.base import BACKENDS, Backend, unfused_attention
from autoprune.latency.timing import Runner

#: Import name -> distribution name of the two packages this backend needs.
_PACKAGES = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}
_PROGRESS_ENV = "LITERT_TORCH_SHOW_PROGRESS"


def _import_problem(module: str) -> str:
    """Why ``module`` cannot be imported, or ``""`` if it can."""
    dist = _PACKAGES[module]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == module:
            return f"{dist} is not installed (pip install {dist}, or pip install 'autoprune[tflite]')"
        return f"{dist} is installed but failed to import: {exc}"
    except ImportError as exc:
        return f"{dist} is installed but failed to import: {exc}"
    return ""


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence litert-torch's per-stage progress lines on stdout unless the user asked for them.

    litert-torch reads the environment variable on every call, so scoping it here keeps
    a search that converts hundreds of candidates from flooding the terminal.
    """
    if _PROGRESS_ENV in os.environ:
        yield
        return
    os.environ[_PROGRESS_ENV] = "n"
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_ENV, None)


@BACKENDS.register("tflite")
class TFLite(Backend):
    """LiteRT interpreter on CPU with the XNNPACK delegate, threads set by the device profile."""

    name = "tflite"
    suffix = ".tflite"

    def available(self) -> tuple[bool, str]:
        problems = [p for p in (_import_problem(m) for m in _PACKAGES) if p]
        return (False, "; ".join(problems)) if problems else (True, "")

    def _require(self, module: str) -> None:
        """Raise :class:`BackendUnavailableError` if ``module`` cannot be imported."""
        problem = _import_problem(module)
        if problem:
            raise BackendUnavailableError(f"backend {self.name!r}: {problem}")

    def export(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
        self._require("litert_torch")
        self._require("ai_edge_litert")
        import litert_torch
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        with torch.no_grad():
            expected_out = tuple(model(example_input).shape)
        with _quiet_progress(), unfused_attention():
            content = litert_torch.convert(model, (example_input,)).model_content()
        interpreter = Interpreter(
            model_content=content, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        got_in = tuple(int(d) for d in interpreter.get_input_details()[0]["shape"])
        got_out = tuple(int(d) for d in interpreter.get_output_details()[0]["shape"])
        if got_in != tuple(example_input.shape) or got_out != expected_out:
            raise AutopruneError(
                f"litert-torch changed the model interface: input {got_in} / output {got_out}, "
                f"PyTorch has {tuple(example_input.shape)} / {expected_out}; "
                "this litert-torch version does not keep the NCHW layout (0.10.0 does; pin it)"
            )
        path.write_bytes(content)
        return path

    def load(self, path: Path, threads: int = 1) -> Runner:
        """Only ai-edge-litert is needed here, so a device without litert-torch can still time models."""
        self._require("ai_edge_litert")
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        out_index = interpreter.get_output_details()[0]["index"]
        in_index, in_shape, in_dtype = inp["index"], tuple(int(d) for d in inp["shape"]), inp["dtype"]

        def run(x: np.ndarray) -> np.ndarray:
            if x.shape != in_shape:
                raise ValueError(f"{path}: expects input shape {in_shape} (NCHW), got {x.shape}")
            interpreter.set_tensor(in_index, np.ascontiguousarray(x, dtype=in_dtype))
            interpreter.invoke()
            return interpreter.get_tensor(out_index)

        return run

    def versions(self) -> dict[str, str]:
        found = {"torch": torch.__version__}
        for dist in _PACKAGES.values():
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = "not installed"
        return found
