"""The device-backend interface: export a model to the runtime's format, run it, time it.

A backend is registered by name in :data:`BACKENDS`; a device profile names one.
Timing is shared here so every backend measures the same way: warm-up, then
``repeats`` timed calls, reported as median and spread.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from autoprune.core.registry import Registry
from autoprune.latency.timing import LatencyStats, Runner, time_runner


@contextmanager
def unfused_attention() -> Iterator[None]:
    """Keep ``nn.TransformerEncoder(Layer)`` and ``nn.MultiheadAttention`` off PyTorch's fused fast path.

    In eval mode without gradients PyTorch runs them as one fused operator
    (``aten::_transformer_encoder_layer_fwd``, ``aten::_native_multi_head_attention``) that
    no exporter translates; with the fast path off they run as the matrix products, softmax
    and layer norms an exported model is made of. The previous setting is restored after.
    """
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


class Backend(ABC):
    """A runtime that executes exported models on a device."""

    name: str = ""
    #: File suffix of the exported artefact, e.g. ``.onnx``.
    suffix: str = ""

    def available(self) -> tuple[bool, str]:
        """Whether this backend can run here, and if not, why (missing package, no GPU)."""
        return True, ""

    @abstractmethod
    def export(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
        """Write ``model`` (eval mode, masks folded) in the runtime's format to ``path``."""

    def deploy(self, model: torch.nn.Module, example_input: torch.Tensor, path: Path) -> tuple[Path, dict[str, Any]]:
        """Write the model users deploy, and say how it was written (recorded in the model card).

        By default the same as :meth:`export`; a backend whose preferred exporter is too slow
        to run on every search trial uses it here.
        """
        return self.export(model, example_input, path), {}

    @abstractmethod
    def load(self, path: Path, threads: int = 1) -> Runner:
        """Load an exported file and return a function mapping an input array to the output."""

    def versions(self) -> dict[str, str]:
        """Versions of the runtime libraries, recorded in profiles and model cards."""
        return {}

    def measure(
        self, path: Path, example_input: np.ndarray, threads: int = 1, warmup: int = 10, repeats: int = 50
    ) -> LatencyStats:
        """Time an exported file on this backend."""
        return time_runner(self.load(path, threads), example_input, warmup, repeats)


BACKENDS: Registry[type[Backend]] = Registry("device backend", "autoprune.backends")


def get_backend(name: str) -> Backend:
    """Instantiate a registered backend by name."""
    return BACKENDS.get(name)()
