"""Importance criteria: score channels, heads, blocks or weights; the lowest are removed.

A criterion is registered by name and built as a Torch-Pruning importance object (a
callable on a group returning one score per channel, aggregated over the group's coupled
layers with ``group_reduction="mean"``). Granularities that score finer or coarser items
(weights, attention heads, residual blocks) use :func:`weight_scores`, the same criterion
applied per weight and summed over the item.

- ``l1`` / ``l2``: weight magnitude (Li et al., 2017).
- ``taylor``: first-order Taylor, ``|weight x gradient|`` with gradients of the task's loss
  accumulated over a few training batches (Molchanov et al., 2019); needs a
  :class:`Calibration`.
- ``bn-scale``: the BatchNorm scale after the channel (network slimming, Liu et al., 2017);
  per weight, the magnitude with that BatchNorm folded in.
- ``random``: the control every criterion should beat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import AutopruneError
from .registry import Registry

CRITERIA: Registry[Callable[[], tp.importance.Importance]] = Registry("criterion", "autoprune.criteria")

#: Criteria that read ``.grad``: a plan using them needs calibration data.
GRADIENT_CRITERIA = frozenset({"taylor"})


@CRITERIA.register("l1")
def l1() -> tp.importance.Importance:
    """Sum of absolute weights over the group (Li et al., 2017)."""
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean")


@CRITERIA.register("l2")
def l2() -> tp.importance.Importance:
    """Euclidean norm of the group's weights."""
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")


@CRITERIA.register("taylor")
def taylor() -> tp.importance.Importance:
    """First-order Taylor expansion of the loss change, ``|w * dL/dw|``, summed per channel."""
    return tp.importance.GroupTaylorImportance(group_reduction="mean")


@CRITERIA.register("bn-scale")
def bn_scale() -> tp.importance.Importance:
    """Absolute BatchNorm scale of each channel (network slimming)."""
    return tp.importance.BNScaleImportance(group_reduction="mean")


@CRITERIA.register("random")
def random() -> tp.importance.Importance:
    """Random scores: the control every criterion should beat."""
    return tp.importance.RandomImportance()


@dataclass(frozen=True)
class Calibration:
    """A few training batches and the task's loss: what gradient-based criteria need.

    ``batches`` batches of ``batch_size`` samples, drawn with ``seed`` so a plan's scores
    are reproducible. Gradients are taken in eval mode (BatchNorm statistics untouched).
    """

    data: Dataset
    loss: Callable[[nn.Module, Any], torch.Tensor]
    batches: int = 4
    batch_size: int = 32
    seed: int = 0

    def loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True, generator=generator)

    def accumulate_gradients(self, model: nn.Module) -> None:
        """Set ``.grad`` of every parameter to the loss gradient summed over the batches."""
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for i, batch in enumerate(self.loader()):
                if i >= self.batches:
                    break
                self.loss(model, batch).backward()
        model.train(was_training)

    def inputs(self) -> torch.Tensor:
        """One batch of model inputs (the first element of a batch)."""
        batch = next(iter(self.loader()))
        return batch[0] if isinstance(batch, (tuple, list)) else batch


def weight_scores(ctx: Any, layer: nn.Module, criterion: str, param: str = "weight") -> torch.Tensor:
    """One score per element of ``layer.<param>`` (masks applied); summed over items by callers.

    ``bn-scale`` per weight is the weight's magnitude once the following BatchNorm is folded
    into it (``|w| * |gamma| / sqrt(var + eps)``), so it ranks weights as the deployed model sees them.

    Weights already zeroed by a mask score lowest, so re-applying a plan keeps them pruned.
    """
    weight = getattr(layer, param).detach()
    if criterion == "l1":
        return weight.abs()
    if criterion == "l2":
        return weight.pow(2)
    if criterion == "random":
        scores = torch.rand(weight.shape)
        scores[weight == 0] = -1.0
        return scores
    if criterion == "taylor":
        ctx.ensure_gradients(criterion)
        orig = getattr(layer, param + "_orig", None)
        grad = (orig if orig is not None else getattr(layer, param)).grad
        if grad is None:
            raise AutopruneError(f"criterion 'taylor': layer {type(layer).__name__} got no gradient from the calibration loss")
        return (weight * grad.detach()).abs()
    if criterion == "bn-scale":
        bn = following_batchnorm(ctx.model, layer)
        if bn is None or bn.weight is None:
            raise AutopruneError(f"criterion 'bn-scale' needs a BatchNorm right after each layer it scores; {type(layer).__name__} {tuple(weight.shape)} has none")
        scale = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).abs()
        return weight.abs() * scale.view(-1, *([1] * (weight.dim() - 1)))
    CRITERIA.get(criterion)  # an unknown name lists the known ones
    raise AutopruneError(f"criterion {criterion!r} has no per-weight form")


def following_batchnorm(model: nn.Module, layer: nn.Module) -> nn.modules.batchnorm._BatchNorm | None:
    """The BatchNorm that directly follows ``layer`` in module order and normalises its outputs, if any."""
    leaves = [m for m in model.modules() if not list(m.children())]
    for i, module in enumerate(leaves[:-1]):
        if module is layer:
            bn = leaves[i + 1]
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.num_features == layer.weight.shape[0]:
                return bn
            return None
    return None
