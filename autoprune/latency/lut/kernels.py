"""Stand-alone models of one kernel each, built from a key, for timing on a device.

Each kernel runs in a model of its own, framed the way the runtime sees it inside a whole
network: LiteRT works in channels-last, so its kernel models take and return NHWC
tensors (litert-torch then emits the bare operator, with no layout transposes around it,
as inside a converted network); ONNX Runtime works on the NCHW interface. Batch norm is
folded into the convolution's bias as every runtime does; sparse keys get weights with
that fraction of zeros in that pattern, so whether sparsity pays off is measured, not
assumed.
"""
from __future__ import annotations

import re
import zlib
from typing import Callable, Optional

import torch
from torch import nn

from autoprune.core.errors import AutopruneError
from autoprune.core.registry import Registry
from autoprune.latency.lut.kernel_key import KernelKey

#: Device backend -> activation layout its kernel models use at their interface.
CHANNELS_LAST_BACKENDS = {"tflite"}
#: Transformer kernel ops: their models take ``(batch, seq, hidden)`` tensors, or token ids
#: for ``embed``, and are built by :func:`autoprune.latency.lut.transformer.kernel_module`.
SEQUENCE_OPS = ("embed", "attention", "ffn")
#: Ops applied to each row of ``h`` rows of ``cin`` features: their models take ``(batch, h, cin)``
#: (``linear`` with ``h = 1`` takes ``(batch, cin)``), in every layout.
TOKEN_OPS = ("linear", "layernorm", "mha")

KernelBuilder = Callable[[KernelKey], nn.Module]
#: Kernel op name -> function building a module that runs that kernel alone.
KERNEL_BUILDERS: Registry[KernelBuilder] = Registry("kernel op")

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "none": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def _act(name: str) -> nn.Module:
    try:
        return _ACTS[name]()
    except KeyError:
        raise AutopruneError(f"no activation {name!r} for kernel models; known: {', '.join(_ACTS)}") from None


def _sparsify(layer: nn.Module, key: KernelKey, generator: torch.Generator) -> None:
    """Zero ``key.sparsity`` of ``layer.weight`` in ``key.pattern`` (random positions for unstructured)."""
    if key.sparsity <= 0:
        return
    weight = layer.weight.data
    scores = torch.rand(weight.shape, generator=generator)
    nm = re.fullmatch(r"(\d+):(\d+)", key.pattern)
    block = re.fullmatch(r"block(\d+)x(\d+)", key.pattern)
    if nm:
        from autoprune.pruning.sparse import nm_mask

        weight.mul_(nm_mask(scores, int(nm.group(1)), int(nm.group(2))))
    elif block:
        from autoprune.pruning.sparse import block_mask

        weight.mul_(block_mask(scores, key.sparsity, int(block.group(1)), int(block.group(2))))
    else:
        n_zero = int(round(key.sparsity * weight.numel()))
        weight.view(-1)[torch.argsort(scores.flatten())[:n_zero]] = 0.0


def _seeded(key: KernelKey) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(key.id.encode()))


def kernel_layer(key: KernelKey) -> nn.Module:
    """The conv or linear layer of a weighted key, its weights sparse as the key says."""
    if key.op == "linear":
        layer: nn.Module = nn.Linear(key.cin, key.cout)
    else:
        layer = nn.Conv2d(key.cin, key.cout, key.kernel, key.stride, key.padding, groups=key.groups, bias=True)
    _sparsify(layer, key, _seeded(key))
    return layer


def kernel_weight(model: nn.Module) -> Optional[torch.Tensor]:
    """The weight of a kernel model's conv or linear layer, if it has one."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return module.weight.detach()
    return None


@KERNEL_BUILDERS.register("conv")
@KERNEL_BUILDERS.register("dwconv")
@KERNEL_BUILDERS.register("linear")
def _weighted(key: KernelKey) -> nn.Module:
    return nn.Sequential(kernel_layer(key), _act(key.act))


class _AddConstant(nn.Module):
    """``x + c`` for a constant ``c`` of the same shape: an element-wise add of two tensors."""

    def __init__(self, shape: tuple[int, ...], act: str) -> None:
        super().__init__()
        self.register_buffer("other", torch.randn(shape))
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.other)


@KERNEL_BUILDERS.register("add")
def _add(key: KernelKey) -> nn.Module:
    return _AddConstant((1, key.cin, key.h, key.w), key.act)


class _Concat(nn.Module):
    """The input concatenated along channels with ``parts - 1`` constant tensors, ``channels`` in all."""

    def __init__(self, channels: int, h: int, w: int, parts: int) -> None:
        super().__init__()
        parts = max(2, min(parts, channels))
        self.first = channels - (parts - 1) * (channels // parts)
        self.others = nn.ParameterList(nn.Parameter(torch.randn(1, channels // parts, h, w)) for _ in range(parts - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *self.others], dim=1)


@KERNEL_BUILDERS.register("concat")
def _concat(key: KernelKey) -> nn.Module:
    return _Concat(key.cin, key.h, key.w, key.kernel or 2)


class _Multiply(nn.Module):
    """``x * g`` for a constant ``g`` of the input's shape (``mul``) or one value per channel (``scale``)."""

    def __init__(self, shape: tuple[int, ...], act: str) -> None:
        super().__init__()
        self.register_buffer("other", torch.rand(shape) + 0.5)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * self.other)


@KERNEL_BUILDERS.register("mul")
def _mul(key: KernelKey) -> nn.Module:
    return _Multiply((1, key.cin, key.h, key.w), key.act)


@KERNEL_BUILDERS.register("scale")
def _scale(key: KernelKey) -> nn.Module:
    return _Multiply((1, key.cin, 1, 1), key.act)


class _Permute(nn.Module):
    """The input's non-batch dimensions permuted (``order``), materialised as a runtime does."""

    def __init__(self, order: tuple[int, ...]) -> None:
        super().__init__()
        self.order = (0, *order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.order).contiguous()


@KERNEL_BUILDERS.register("transpose")
def _transpose(key: KernelKey) -> nn.Module:
    order = tuple(int(d) for d in str(key.kernel))
    if sorted(order) not in ([1, 2], [1, 2, 3]):
        raise AutopruneError(f"kernel {key.id}: 'kernel' must hold a permutation of the non-batch dimensions, got {key.kernel}")
    return nn.Sequential(_Unflatten(key), _Permute(order)) if len(order) == 2 else _Permute(order)


class _Unflatten(nn.Module):
    """``(batch, c, h, 1)`` as the 3-D ``(batch, c, h)`` tensor a 3-D kernel takes."""

    def __init__(self, key: KernelKey) -> None:
        super().__init__()
        self.c, self.h = key.cin, key.h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.c, self.h)


class _ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view as (groups, channels / groups), transpose, flatten back."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, c, h, w)


@KERNEL_BUILDERS.register("shuffle")
def _shuffle(key: KernelKey) -> nn.Module:
    return _ChannelShuffle(key.groups)


class _Slice(nn.Module):
    """The first ``count`` elements of the flattened input (indexing a tensor, as a ViT takes its class token)."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.count]


@KERNEL_BUILDERS.register("slice")
def _slice(key: KernelKey) -> nn.Module:
    return _Slice(key.cout)


class _Mean(nn.Module):
    """A mean over the given dimensions of a ``(batch, c, h, w)`` tensor."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dims)


@KERNEL_BUILDERS.register("mean")
def _mean(key: KernelKey) -> nn.Module:
    return _Mean(tuple(int(d) for d in str(key.kernel)))


@KERNEL_BUILDERS.register("layernorm")
def _layernorm(key: KernelKey) -> nn.Module:
    return nn.LayerNorm(key.cin)


class _MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s computation (self-attention) as it exports: Q/K/V projections to
    ``heads x head_dim``, softmax(QK^T/sqrt(d))V, and the output projection back to ``hidden``."""

    def __init__(self, hidden: int, heads: int, width: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(hidden, 3 * width)
        self.out = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        q, k, v = (t.reshape(n, s, self.heads, self.head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        weights = (q @ k.transpose(-1, -2) / self.head_dim**0.5).softmax(-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, s, self.heads * self.head_dim))


@KERNEL_BUILDERS.register("mha")
def _mha(key: KernelKey) -> nn.Module:
    return _MultiheadAttention(key.cin, max(key.groups, 1), key.cout)


@KERNEL_BUILDERS.register("gpool")
def _gpool(key: KernelKey) -> nn.Module:
    return nn.AdaptiveAvgPool2d(1)


@KERNEL_BUILDERS.register("apool")
def _apool(key: KernelKey) -> nn.Module:
    return nn.AdaptiveAvgPool2d(key.kernel)


@KERNEL_BUILDERS.register("maxpool")
def _maxpool(key: KernelKey) -> nn.Module:
    return nn.MaxPool2d(key.kernel, key.stride, key.padding)


@KERNEL_BUILDERS.register("avgpool")
def _avgpool(key: KernelKey) -> nn.Module:
    return nn.AvgPool2d(key.kernel, key.stride, key.padding)


@KERNEL_BUILDERS.register("reshape")
def _reshape(key: KernelKey) -> nn.Module:
    return nn.Flatten(1)


@KERNEL_BUILDERS.register("bn")
def _bn(key: KernelKey) -> nn.Module:
    bn = nn.BatchNorm2d(key.cin)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return nn.Sequential(bn, _act(key.act))


@KERNEL_BUILDERS.register("act")
def _activation(key: KernelKey) -> nn.Module:
    return _act(key.act)


class ChannelsLast(nn.Module):
    """Take and return channels-last tensors around a channels-first module."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x.permute(0, 3, 1, 2) if x.dim() == 4 else x)
        return y.permute(0, 2, 3, 1) if y.dim() == 4 else y


def kernel_model(key: KernelKey, backend: str, batch_size: int = 1) -> tuple[nn.Module, torch.Tensor]:
    """A model running ``key`` alone on ``backend`` and an input for it (eval mode, no grad)."""
    if key.op in SEQUENCE_OPS:
        from autoprune.latency.lut.transformer import kernel_module

        module, x = kernel_module(key, batch_size)
        for p in module.parameters():
            p.requires_grad_(False)
        return module, x
    if key.op not in KERNEL_BUILDERS:
        raise AutopruneError(f"kernel {key.id}: no kernel model for op {key.op!r}; known: {', '.join(KERNEL_BUILDERS.names())}")
    torch.manual_seed(0)
    module = KERNEL_BUILDERS.get(key.op)(key).eval()
    if key.op in TOKEN_OPS:
        x = torch.randn(batch_size, key.cin) if key.op == "linear" and key.h * key.w == 1 else torch.randn(batch_size, key.h * key.w, key.cin)
    elif backend in CHANNELS_LAST_BACKENDS:
        x = torch.randn(batch_size, key.h, key.w, key.cin)
        module = ChannelsLast(module)
    else:
        x = torch.randn(batch_size, key.cin, key.h, key.w)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), x
