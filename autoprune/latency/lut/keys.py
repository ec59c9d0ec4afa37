"""Kernel keys: the fused operations a runtime executes, read off a (pruned) PyTorch model.

Runtimes do not execute PyTorch modules one by one: ONNX Runtime and XNNPACK fold batch
norm into the convolution and fuse the activation that follows; residual adds carry their
activation. A latency table keyed by modules misses that (nn-Meter's observation), so the
model is traced with ``torch.fx``, shapes are propagated from the example input, and nodes
are grouped into kernels:

* ``conv`` / ``dwconv``: a convolution, its batch norm and its activation (``dwconv`` when
  every channel is its own group);
* ``linear``: a linear layer and its activation;
* ``add``: an element-wise add of two tensors and its activation;
* ``gpool`` (global average pool), ``pool`` (max/avg pool), ``reshape`` (flatten, view),
  ``concat``, ``bn`` and ``act`` when they stand alone;
* ``embed``, ``attention`` and ``ffn`` for BERT-style encoders, which are not traced but read
  layer by layer (:mod:`autoprune.latency.lut.transformer`).

A key holds the input shape (channels, height, width), output channels, kernel, stride,
padding, groups, fused activation, and the weights' sparsity bucket and pattern
(unstructured, N:M, blocks): masked or zeroed weights get their own keys, because whether
a runtime runs them faster must be measured, not assumed.
"""
from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from autoprune.core.errors import AutopruneError
from autoprune.latency.lut.kernel_key import (  # noqa: F401  (re-exported)
    SPARSITY_STEP,
    WEIGHTLESS_OPS,
    Kernel,
    KernelKey,
    weight_bytes,
    weight_mb,
)

_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Hardtanh: "relu6"}
_ACT_FUNCTIONS = {
    torch.relu: "relu",
    nn.functional.relu: "relu",
    nn.functional.relu6: "relu6",
    nn.functional.hardswish: "hardswish",
    nn.functional.silu: "silu",
    torch.sigmoid: "sigmoid",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
_IDENTITY_METHODS = {"contiguous", "size", "dim"}


def sparsity_bucket(fraction: float) -> float:
    """``fraction`` of zero weights rounded to the nearest :data:`SPARSITY_STEP`."""
    return round(round(float(fraction) / SPARSITY_STEP) * SPARSITY_STEP, 6)


def zero_mask(module: nn.Module) -> torch.Tensor:
    """Where a conv/linear layer's weights are zero, through its pruning mask when it has one."""
    mask = getattr(module, "weight_mask", None)
    weight = mask if isinstance(mask, torch.Tensor) else module.weight
    return weight.detach() == 0


#: Block shapes (output rows x reduction columns) recognised, largest first.
BLOCKS = ((8, 8), (4, 4), (2, 2), (1, 8), (8, 1), (1, 4), (4, 1), (1, 2), (2, 1))
#: Group sizes M of N:M patterns recognised.
NM_GROUPS = (4, 8, 16)


def sparsity_pattern(zero: torch.Tensor) -> str:
    """How the zeros of a weight are laid out: ``""`` (none), ``"N:M"`` (the same number of zeros
    in every M consecutive input channels), ``"blockHxW"`` (whole blocks of the matrix with
    output rows and input channels innermost, as sparse kernels see it), else ``"unstructured"``."""
    if not bool(zero.any()):
        return ""
    rows = zero.shape[0]
    matrix = zero.movedim(1, -1).reshape(rows, -1) if zero.dim() > 2 else zero
    cols = matrix.shape[1]
    for m in NM_GROUPS:
        if cols % m == 0 and cols >= m:
            counts = matrix.reshape(rows, cols // m, m).sum(-1)
            if bool((counts == counts.flatten()[0]).all()) and 0 < int(counts.flatten()[0]) < m:
                return f"{m - int(counts.flatten()[0])}:{m}"
    for h, w in BLOCKS:
        if rows % h == 0 and cols % w == 0 and rows * cols > h * w:
            blocks = matrix.reshape(rows // h, h, cols // w, w).float().mean(dim=(1, 3))
            if bool(((blocks == 0) | (blocks == 1)).all()):
                return f"block{h}x{w}"
    return "unstructured"


def weight_sparsity(module: nn.Module) -> tuple[float, str]:
    """(sparsity bucket, pattern) of a conv/linear layer's weight."""
    zero = zero_mask(module)
    bucket = sparsity_bucket(float(zero.float().mean()))
    return bucket, (sparsity_pattern(zero) if bucket > 0 else "")


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """``model`` as an fx graph with every node's output shape attached."""
    try:
        graph = fx.symbolic_trace(model)
    except Exception as err:
        raise AutopruneError(
            f"cannot trace {type(model).__name__} with torch.fx to read its kernels ({err}); "
            "use `latency: measured` for this model"
        ) from err
    with torch.no_grad():
        ShapeProp(graph).propagate(example_input)
    return graph


def extract_kernels(model: nn.Module, example_input: torch.Tensor) -> list[Kernel]:
    """The kernels a runtime executes for ``model``, in execution order.

    ``example_input`` has batch size one; shapes in keys leave the batch out. A BERT-style
    encoder's kernels are its embeddings and each layer's attention and FFN
    (:func:`autoprune.latency.lut.transformer.model_kernels`).
    """
    from autoprune.latency.lut.transformer import is_transformer, model_kernels

    if is_transformer(model):
        return model_kernels(model, example_input)
    was_training = model.training
    model.eval()
    try:
        graph = trace(model, example_input)
    finally:
        model.train(was_training)
    modules = dict(graph.named_modules())
    fused: set[fx.Node] = set()
    kernels: list[Kernel] = []
    made_by: dict[fx.Node, int] = {}
    for node in graph.graph.nodes:
        args = _tensor_args(node)
        if node.op == "placeholder":
            made_by[node] = -1
            continue
        if node in fused or node.op in ("output", "get_attr"):
            if args and args[0] in made_by:
                made_by[node] = made_by[args[0]]
            continue
        kernel = _kernel_of(node, modules, fused)
        if kernel is None:
            if args and args[0] in made_by:
                made_by[node] = made_by[args[0]]
            continue
        inputs = tuple(dict.fromkeys(made_by.get(a, -1) for a in args))
        made_by[node] = len(kernels)
        kernels.append(replace(kernel, inputs=inputs))
    return kernels


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    """The node's arguments that are nodes (lists, as for ``torch.cat``, flattened)."""
    out: list[fx.Node] = []
    for arg in node.args:
        for item in arg if isinstance(arg, (list, tuple)) else (arg,):
            if isinstance(item, fx.Node) and item.op != "get_attr":
                out.append(item)
    return out


def _shape(node: Any) -> Optional[tuple[int, ...]]:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an activation shape without its batch dimension."""
    rest = shape[1:]
    if len(rest) == 3:
        return rest
    if len(rest) == 1:
        return rest[0], 1, 1
    if len(rest) == 2:
        return rest[0], rest[1], 1
    raise AutopruneError(f"unsupported activation shape {shape} for a latency key (expected 2-D, 3-D or 4-D)")


def _activation(node: fx.Node, modules: dict[str, nn.Module]) -> Optional[str]:
    if node.op == "call_module":
        module = modules[node.target]
        for cls, name in _ACT_MODULES.items():
            if type(module) is cls:
                if cls is nn.Hardtanh and (module.min_val, module.max_val) != (0.0, 6.0):
                    return None
                return name
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        return _ACT_FUNCTIONS[node.target]
    if node.op == "call_method" and node.target in _ACT_METHODS:
        return _ACT_METHODS[node.target]
    return None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _absorb_activation(node: fx.Node, modules: dict[str, nn.Module], fused: set[fx.Node]) -> str:
    user = _only_user(node)
    if user is not None and _activation(user, modules):
        fused.add(user)
        return _activation(user, modules) or "none"
    return "none"


def _pair(value: Any) -> int:
    """A square kernel/stride/padding as one int; non-square ones are not keyed."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise AutopruneError(f"non-square kernel, stride or padding {tuple(value)} is not supported by latency tables")
        return int(value[0])
    return int(value)


def _kernel_of(node: fx.Node, modules: dict[str, nn.Module], fused: set[fx.Node]) -> Optional[Kernel]:
    out_shape = _shape(node)
    if node.op == "call_module":
        module = modules[node.target]
        in_shape = _shape(node.args[0]) if node.args else None
        if isinstance(module, _IDENTITY_MODULES):
            return None
        if isinstance(module, nn.Conv2d):
            cin, h, w = _chw(in_shape)
            user = _only_user(node)
            if user is not None and user.op == "call_module" and isinstance(modules[user.target], nn.BatchNorm2d):
                fused.add(user)
                act = _absorb_activation(user, modules, fused)
            else:
                act = _absorb_activation(node, modules, fused)
            if _pair(module.dilation) != 1:
                raise AutopruneError(f"layer {node.target!r}: dilated convolutions are not supported by latency tables")
            depthwise = module.groups == cin and module.out_channels == cin and cin > 1
            key = KernelKey(
                "dwconv" if depthwise else "conv", cin, h, w, module.out_channels, _pair(module.kernel_size),
                _pair(module.stride), _padding(module), module.groups, act, *weight_sparsity(module),
            )
            return Kernel(key, str(node.target))
        if isinstance(module, nn.Linear):
            cin, h, w = _chw(in_shape)
            act = _absorb_activation(node, modules, fused)
            sparsity, pattern = weight_sparsity(module)
            return Kernel(KernelKey("linear", cin, h, w, module.out_features, act=act, sparsity=sparsity, pattern=pattern), str(node.target))
        if isinstance(module, nn.AdaptiveAvgPool2d) and _pair(module.output_size) == 1:
            return Kernel(KernelKey("gpool", *_with_cout(in_shape)))
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            op = "maxpool" if isinstance(module, nn.MaxPool2d) else "avgpool"
            c, h, w = _chw(in_shape)
            return Kernel(KernelKey(op, c, h, w, c, _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)))
        if isinstance(module, nn.Flatten):
            return _reshape(in_shape)
        if isinstance(module, nn.BatchNorm2d):
            return Kernel(KernelKey("bn", *_with_cout(in_shape), act=_absorb_activation(node, modules, fused)))
        if _activation(node, modules):
            return Kernel(KernelKey("act", *_with_cout(in_shape), act=_activation(node, modules) or "none"))
        raise AutopruneError(f"layer {node.target!r}: no latency key for {type(module).__name__}; use `latency: measured` for this model")
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS or node.op == "call_method" and node.target in ("add", "add_"):
        tensors = [a for a in node.args if isinstance(a, fx.Node) and _shape(a) is not None]
        if len(tensors) == 2:
            return Kernel(KernelKey("add", *_with_cout(out_shape), act=_absorb_activation(node, modules, fused)))
    if node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS or node.op == "call_method" and node.target in _RESHAPE_METHODS:
        return _reshape(_shape(node.args[0]))
    if node.op == "call_function" and node.target is torch.cat:
        parts = [_shape(a) for a in node.args[0]]
        c, h, w = _chw(out_shape)
        return Kernel(KernelKey("concat", c, h, w, c, kernel=len(parts)))
    if node.op == "call_method" and node.target in _IDENTITY_METHODS or out_shape is None:
        return None
    act = _activation(node, {})
    if act:
        return Kernel(KernelKey("act", *_with_cout(_shape(node.args[0])), act=act))
    name = getattr(node.target, "__name__", str(node.target))
    raise AutopruneError(f"node {node.name!r} ({name}): no latency key for this operation; use `latency: measured` for this model")


def _padding(conv: nn.Conv2d) -> int:
    if conv.padding == "valid":
        return 0
    if conv.padding == "same":
        return _pair(conv.kernel_size) // 2
    return _pair(conv.padding)


def _with_cout(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    c, h, w = _chw(shape)
    return c, h, w, c


def _reshape(in_shape: tuple[int, ...]) -> Kernel:
    c, h, w = _chw(in_shape)
    return Kernel(KernelKey("reshape", c, h, w, c * h * w))


def architecture(kernels: list[Kernel], model: nn.Module, example_input: torch.Tensor) -> tuple[str, str]:
    """(signature, family) of a model: the signature is its kernel sequence without channel
    counts or sparsity, shared by every channel-pruned variant; the family is its class,
    input shape and the names of its top-level modules, shared also by variants with other
    depths (removed blocks keep their names) but not by unrelated models of one class (two
    ``nn.Sequential`` models on the same input)."""
    import hashlib

    layout = [(k.key.op, k.key.h, k.key.w, k.key.kernel, k.key.stride, k.key.padding, k.key.act) for k in kernels]  # no channels, no sparsity
    digest = hashlib.sha1(repr(layout).encode()).hexdigest()[:12]
    children = hashlib.sha1(",".join(name for name, _ in model.named_children()).encode()).hexdigest()[:6]
    family = f"{type(model).__name__}@{'x'.join(str(d) for d in example_input.shape[1:])}~{children}"
    return f"{family}/{len(kernels)}k-{digest}", family
