"""PyTorch eager backends (CPU and CUDA): the baseline every other runtime is compared with.

The artefact is a ``torch.export`` program saved as ``.pt2`` and run with
``torch.export.load(path).module()``. It is chosen over TorchScript because it is the
maintained serialisation path (TorchScript is deprecated), exports ordinary CNNs
(conv, batch norm in eval mode, depthwise conv, residual adds, pooling, linear) without
changes, and loads without the model's Python class. The program is exported on CPU so
the file is portable; the CUDA backend moves it with ``move_to_device_pass`` at load time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoprune.core.errors import BackendUnavailableError
from autoprune.latency.backends.base import BACKENDS, Backend, unfused_attention
from autoprune.latency.timing import LatencyStats, Runner


def export_pt2(model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Export ``model`` in eval mode with ``torch.export`` and save it as a ``.pt2`` archive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with unfused_attention():
        program = torch.export.export(model, (example_input.detach().cpu(),))
    torch.export.save(program, str(path))
    return path


@BACKENDS.register("torch-cpu")
class TorchCPU(Backend):
    """PyTorch eager on CPU; intra-op threads set by the device profile while the runner runs."""

    name = "torch-cpu"
    suffix = ".pt2"

    def export(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
        return export_pt2(model, example_input, path)

    def load(self, path: Path, threads: int = 1) -> Runner:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name!r}: {why}")
        module = torch.export.load(str(path)).module()

        def run(x: np.ndarray) -> np.ndarray:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                return module(torch.as_tensor(x)).numpy()

        return run

    def measure(
        self, path: Path, example_input: np.ndarray, threads: int = 1, warmup: int = 10, repeats: int = 50
    ) -> LatencyStats:
        """Time as the base class does, then give the caller back its own torch thread count."""
        previous = torch.get_num_threads()
        try:
            return super().measure(path, example_input, threads, warmup, repeats)
        finally:
            torch.set_num_threads(previous)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}


@BACKENDS.register("torch-cuda")
class TorchCUDA(Backend):
    """PyTorch eager on the current CUDA device; timings include the host-device copies."""

    name = "torch-cuda"
    suffix = ".pt2"

    def available(self) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            return False, "no CUDA device: torch.cuda.is_available() is False"
        return True, ""

    def export(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
        return export_pt2(model, example_input, path)

    def load(self, path: Path, threads: int = 1) -> Runner:
        """``threads`` is accepted for interface symmetry; GPU execution does not use it."""
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name!r}: {why}")
        from torch.export.passes import move_to_device_pass

        device = torch.device("cuda")
        module = move_to_device_pass(torch.export.load(str(path)), device).module()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = module(torch.as_tensor(x).to(device))
                torch.cuda.synchronize(device)
                return out.cpu().numpy()

        return run

    def versions(self) -> dict[str, str]:
        found = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
        if torch.cuda.is_available():
            found["device"] = torch.cuda.get_device_name()
        return found
