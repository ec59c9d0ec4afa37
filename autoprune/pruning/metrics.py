"""Size and compute of a (possibly masked) model: parameters left and MACs executed."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from autoprune.pruning.granularity import refresh_masks


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not zero, counting masked weights through their masks."""
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            effective = getattr(module, name[: -len("_orig")]) if name.endswith("_orig") else param
            total += int(torch.count_nonzero(effective.detach()))
    return total


def macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass as a dense runtime executes it.

    Zeros left by sparse granularities are still executed by dense kernels, so they count.
    """
    refresh_masks(model, example_input)
    with torch.no_grad():
        ops, _ = tp.utils.count_ops_and_params(model, example_input)
    return int(ops)
