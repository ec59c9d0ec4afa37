"""Where tensors live: the device a recipe asks for, a model's device, batches moved to it.

Fine-tuning and scoring run where the recipe's ``device`` says (a CUDA GPU when there is
one, by default); pruning, latency and export always work on a CPU copy.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.core.errors import AutopruneError


def resolve_device(spec: str) -> torch.device:
    """The torch device a recipe's ``device`` names; ``auto`` is the first CUDA GPU when there is one."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AutopruneError(f"finetune.device: {spec!r} asks for a CUDA GPU, but torch finds none (torch {torch.__version__}); use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AutopruneError(f"finetune.device: {spec!r} names GPU {device.index}, but torch finds {torch.cuda.device_count()}")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or tuples, lists and dicts of them) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
