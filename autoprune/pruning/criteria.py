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
- ``fisher``: Optimal Brain Damage with the diagonal empirical Fisher as the Hessian,
  ``1/2 * E[g^2] * w^2`` (LeCun et al., 1990; Theis et al., 2018).
- ``snip``: connection sensitivity ``|w * g|`` (Lee et al., 2019), taken per calibration batch.
- ``grasp``: gradient-signal preservation, ``w * (H g)`` by double backpropagation (Wang et
  al., 2020): a weight whose removal would shrink the gradient flow most scores highest.
- ``activation``: mean absolute activation of a channel over calibration batches (as it
  enters the next layers); per weight, ``|w|`` times the mean absolute activation of its
  input channel (the rule of Wanda, Sun et al., 2023).
- ``apoz``: share of non-zero activations of a channel (one minus APoZ, Hu et al., 2016);
  channels and neurons only.

``fisher``, ``snip`` and ``grasp`` compute one saliency per weight over the whole model once
(kept in ``.grad``, so Torch-Pruning slices it along with the weights when channels go) and
score a channel as the sum of its group's saliencies. ``activation`` and ``apoz`` record
the inputs of every convolution and linear layer, again after each structural change.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoprune.core.errors import AutopruneError
from autoprune.core.registry import Registry

CRITERIA: Registry[Callable[[], tp.importance.Importance]] = Registry("criterion", "autoprune.criteria")

#: Criteria that read ``.grad``: a plan using them needs calibration data.
GRADIENT_CRITERIA = frozenset({"taylor", "fisher", "snip", "grasp"})
#: Criteria that read the activations of calibration batches (forward passes only).
ACTIVATION_CRITERIA = frozenset({"activation", "apoz"})
#: Attribute holding ``(mean |x|, share of non-zero x)`` per input channel of a layer.
INPUT_STATS = "_autoprune_input_stats"


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


@CRITERIA.register("fisher")
def fisher() -> tp.importance.Importance:
    """Optimal Brain Damage with a diagonal empirical Fisher: ``1/2 * E[g^2] * w^2``, summed per group.

    Cost: one forward and backward pass per calibration *sample* (``batches x batch_size``
    passes of one sample each), since the Fisher is the mean of per-sample squared gradients.
    """
    return SaliencyImportance()


@CRITERIA.register("snip")
def snip() -> tp.importance.Importance:
    """Connection sensitivity ``|w * g|`` per weight, averaged over calibration batches, summed per group.

    Unlike ``taylor`` the absolute value is taken per batch, so a weight whose gradient
    changes sign between batches is not cancelled out. Cost: one forward and backward pass
    per calibration batch.
    """
    return SaliencyImportance()


@CRITERIA.register("grasp")
def grasp() -> tp.importance.Importance:
    """Gradient-signal preservation ``w * (H g)``, summed per group; the lowest sum goes first.

    GraSP removes the weights with the highest ``-w * (H g)`` (their removal reduces the
    gradient norm least); this is its negation, so low still means "remove". Scores are
    signed. Cost: one forward and backward pass per calibration batch for ``g``, then one
    forward pass and a double backward (about three times a backward) per batch for ``H g``.
    """
    return SaliencyImportance()


@CRITERIA.register("activation")
def activation() -> tp.importance.Importance:
    """Mean absolute activation of each channel where it enters the next layers.

    Cost: one forward pass per calibration batch (the example input without calibration
    data), repeated after each structural change so later units see the pruned network.
    """
    return InputActivationImportance(statistic=0)


@CRITERIA.register("apoz")
def apoz() -> tp.importance.Importance:
    """Share of non-zero activations of each channel (one minus the average percentage of zeros).

    Channels and neurons only. Cost: as ``activation``, one forward pass per calibration batch.
    """
    return InputActivationImportance(statistic=1)


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

    def iter_batches(self) -> Iterator[Any]:
        """The first ``batches`` batches of the seeded loader."""
        for i, batch in enumerate(self.loader()):
            if i >= self.batches:
                return
            yield batch

    def accumulate_gradients(self, model: nn.Module) -> None:
        """Set ``.grad`` of every parameter to the loss gradient summed over the batches."""
        with _eval_mode(model):
            model.zero_grad(set_to_none=True)
            for batch in self.iter_batches():
                self.loss(model, batch).backward()

    def inputs(self) -> torch.Tensor:
        """One batch of model inputs (the first element of a batch)."""
        return _batch_inputs(next(iter(self.loader())))

    def input_batches(self) -> list[torch.Tensor]:
        """The model inputs of every calibration batch."""
        return [_batch_inputs(batch) for batch in self.iter_batches()]


OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)
IN_HANDLERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels, tp.prune_depthwise_conv_in_channels)
LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _batch_inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Gradients and activations are taken in eval mode: BatchNorm statistics stay untouched."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def split_samples(batch: Any) -> list[Any]:
    """A batch of tensors (a tensor, tuple, list or dict of them) as a list of one-sample batches."""
    if isinstance(batch, torch.Tensor):
        return [batch[i : i + 1] for i in range(len(batch))]
    if isinstance(batch, dict):
        parts = {k: split_samples(v) for k, v in batch.items()}
        return [dict(zip(parts, values)) for values in zip(*parts.values())]
    if isinstance(batch, (tuple, list)):
        return [type(batch)(values) for values in zip(*(split_samples(v) for v in batch))]
    raise AutopruneError(f"criterion 'fisher' needs per-sample gradients; cannot split a batch of type {type(batch).__name__}")


def _set_saliency(params: list[nn.Parameter], scores: dict[nn.Parameter, torch.Tensor]) -> None:
    for p in params:
        p.grad = scores[p] if p in scores else None


def fisher_saliency(model: nn.Module, calibration: Calibration) -> None:
    """Set ``.grad`` of every parameter to ``1/2 * mean(g_i^2) * w^2`` over calibration samples ``i``."""
    params = trainable(model)
    squares = {p: torch.zeros_like(p) for p in params}
    samples = 0
    with _eval_mode(model):
        for batch in calibration.iter_batches():
            for sample in split_samples(batch):
                grads = torch.autograd.grad(calibration.loss(model, sample), params, allow_unused=True)
                for p, g in zip(params, grads):
                    if g is not None:
                        squares[p] += g.detach() ** 2
                samples += 1
    _set_saliency(params, {p: 0.5 * sq / max(samples, 1) * p.detach() ** 2 for p, sq in squares.items()})


def snip_saliency(model: nn.Module, calibration: Calibration) -> None:
    """Set ``.grad`` of every parameter to ``mean_b |w * g_b|`` over calibration batches ``b``."""
    params = trainable(model)
    total = {p: torch.zeros_like(p) for p in params}
    batches = 0
    with _eval_mode(model):
        for batch in calibration.iter_batches():
            grads = torch.autograd.grad(calibration.loss(model, batch), params, allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    total[p] += (p.detach() * g.detach()).abs()
            batches += 1
    _set_saliency(params, {p: t / max(batches, 1) for p, t in total.items()})


def grasp_saliency(model: nn.Module, calibration: Calibration) -> None:
    """Set ``.grad`` of every parameter to ``w * (H g)``, ``g`` the mean calibration gradient.

    ``H g`` is the gradient of ``g(w) . g`` (``g`` held constant), one double backward per batch.
    """
    params = trainable(model)
    with _eval_mode(model):
        batches = list(calibration.iter_batches())
        mean_grad = [torch.zeros_like(p) for p in params]
        for batch in batches:
            grads = torch.autograd.grad(calibration.loss(model, batch), params, allow_unused=True)
            for acc, g in zip(mean_grad, grads):
                if g is not None:
                    acc += g.detach() / len(batches)
        hg = {p: torch.zeros_like(p) for p in params}
        for batch in batches:
            grads = torch.autograd.grad(calibration.loss(model, batch), params, create_graph=True, allow_unused=True)
            dot = sum((g * c).sum() for g, c in zip(grads, mean_grad) if g is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue  # a model linear in its weights has no curvature: H g is zero
            for p, h in zip(params, torch.autograd.grad(dot, params, allow_unused=True)):
                if h is not None:
                    hg[p] += h.detach() / len(batches)
    _set_saliency(params, {p: p.detach() * h for p, h in hg.items()})


#: How each gradient criterion fills ``.grad``.
GRADIENT_FILLERS: dict[str, Callable[[nn.Module, Calibration], None]] = {
    "taylor": lambda model, calibration: calibration.accumulate_gradients(model),
    "fisher": fisher_saliency,
    "snip": snip_saliency,
    "grasp": grasp_saliency,
}


def _in_channels(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.in_features


def activations_current(model: nn.Module) -> bool:
    """Whether input statistics were recorded and still match every recorded layer's input channels."""
    recorded = [(m, getattr(m, INPUT_STATS)) for m in model.modules() if isinstance(m, LAYER_TYPES) and hasattr(m, INPUT_STATS)]
    return bool(recorded) and all(stats[0].numel() == _in_channels(m) for m, stats in recorded)


def record_input_activations(model: nn.Module, inputs: list[torch.Tensor]) -> None:
    """Store on each conv/linear layer the mean ``|x|`` and the share of non-zero ``x`` per input channel."""
    sums: dict[nn.Module, list[torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        x = x.movedim(1, -1) if isinstance(module, nn.modules.conv._ConvNd) else x
        x = x.reshape(-1, x.shape[-1])
        acc = sums.setdefault(module, [torch.zeros(x.shape[-1]), torch.zeros(x.shape[-1]), 0])
        acc[0] += x.abs().sum(0).float().cpu()
        acc[1] += (x != 0).sum(0).float().cpu()
        acc[2] += x.shape[0]

    layers = [m for m in model.modules() if isinstance(m, LAYER_TYPES)]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for m in layers:
        if m in sums:
            total, nonzero, count = sums[m]
            setattr(m, INPUT_STATS, (total / max(count, 1), nonzero / max(count, 1)))


def clear_input_activations(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, INPUT_STATS):
            delattr(m, INPUT_STATS)


def _grad_of(layer: nn.Module, param: str = "weight") -> torch.Tensor | None:
    """``.grad`` of ``layer.<param>``, or of ``<param>_orig`` when a pruning mask wraps it."""
    orig = getattr(layer, param + "_orig", None)
    grad = (orig if orig is not None else getattr(layer, param)).grad
    return None if grad is None else grad.detach()


class SaliencyImportance(tp.importance.GroupMagnitudeImportance):
    """Sum over a group of the per-weight saliency held in ``.grad`` (``fisher``, ``snip``, ``grasp``).

    Output channels of conv/linear layers, input channels of the layers that read them and
    BatchNorm scales all contribute, as in Torch-Pruning's Taylor and Hessian importances.
    No normalisation: ``grasp`` scores are signed.
    """

    def __init__(self) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer=None)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        scores, root = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, handler = dep.target.module, dep.handler
            if isinstance(layer, LAYER_TYPES):
                s = _grad_of(layer)
                if s is None:
                    continue
                if getattr(layer, "transposed", False):
                    s = s.transpose(0, 1)
                if handler in OUT_HANDLERS:
                    local = s[idxs].flatten(1).sum(1)
                elif handler in IN_HANDLERS and handler is not tp.prune_depthwise_conv_in_channels:
                    local = s.transpose(0, 1).flatten(1).sum(1)
                    groups = getattr(layer, "groups", 1)
                    if groups > 1 and local.numel() * groups == layer.in_channels:
                        local = local.repeat(groups)
                    local = local[idxs]
                else:
                    continue
            elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and handler == tp.prune_batchnorm_out_channels and layer.affine:
                s = _grad_of(layer)
                if s is None:
                    continue
                local = s[idxs]
            else:
                continue
            scores.append(local)
            root.append(group[i].root_idxs)
        if not scores:
            return None
        return self._reduce(scores, root)


class InputActivationImportance(tp.importance.GroupMagnitudeImportance):
    """A channel's activation statistic where layers of its group read it as input.

    ``statistic`` 0 is the mean absolute activation, 1 the share of non-zero activations;
    the statistics are recorded by :func:`record_input_activations`.
    """

    def __init__(self, statistic: int) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer=None)
        self.statistic = statistic

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        scores, root = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, handler = dep.target.module, dep.handler
            stats = getattr(layer, INPUT_STATS, None)
            if handler not in IN_HANDLERS or stats is None:
                continue
            scores.append(stats[self.statistic][idxs])
            root.append(group[i].root_idxs)
        if not scores:
            return None
        return self._reduce(scores, root)


def _input_channel_scale(layer: nn.Module, per_channel: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``per_channel`` (one value per input channel) broadcast to ``weight``'s shape."""
    if isinstance(layer, nn.Linear):
        return per_channel.view(*([1] * (weight.dim() - 1)), -1)
    groups = layer.groups
    out, per_group = weight.shape[0], weight.shape[1]
    channel = (torch.arange(out) // (out // groups))[:, None] * per_group + torch.arange(per_group)[None, :]
    return per_channel[channel].view(out, per_group, *([1] * (weight.dim() - 2)))


def weight_scores(ctx: Any, layer: nn.Module, criterion: str, param: str = "weight") -> torch.Tensor:
    """One score per element of ``layer.<param>`` (masks applied); summed over items by callers.

    ``bn-scale`` per weight is the weight's magnitude once the following BatchNorm is folded
    into it (``|w| * |gamma| / sqrt(var + eps)``), so it ranks weights as the deployed model sees them.

    ``fisher``, ``snip`` and ``grasp`` return the per-weight saliency; ``activation`` is
    ``|w|`` times the mean absolute activation of the weight's input channel (Wanda's rule);
    ``apoz`` has no per-weight form and is refused.

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
    if criterion in GRADIENT_CRITERIA:
        ctx.ensure_gradients(criterion)
        grad = _grad_of(layer, param)
        if grad is None:
            raise AutopruneError(f"criterion {criterion!r}: layer {type(layer).__name__} got no gradient from the calibration loss")
        if criterion == "taylor":
            return (weight * grad).abs()
        return torch.where(weight == 0, grad.min() - 1.0, grad)
    if criterion == "activation":
        ctx.ensure_activations()
        stats = getattr(layer, INPUT_STATS, None)
        if stats is None or param != "weight":
            raise AutopruneError(f"criterion 'activation': layer {type(layer).__name__} {tuple(weight.shape)} saw no input from the calibration batches")
        return weight.abs() * _input_channel_scale(layer, stats[0], weight)
    if criterion == "apoz":
        raise AutopruneError("criterion 'apoz' scores whole channels or neurons; for unstructured, N:M, block, head or layer pruning use 'activation'")
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
