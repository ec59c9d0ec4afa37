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
* ``gpool`` (global average pool, also as ``mean`` over height and width), ``apool`` (adaptive
  average pool to ``kernel`` x ``kernel``), ``maxpool`` /
  ``avgpool``, ``reshape`` (flatten, view), ``concat``, ``bn`` and ``act`` when they stand alone;
* ``mul`` (element-wise product of same-shaped tensors, or by a constant) and ``scale`` (a
  tensor times a per-channel gate, as squeeze-and-excitation ends);
* ``transpose`` (transpose, permute; ``kernel`` holds the permutation of the non-batch
  dimensions as digits) and ``shuffle`` (ShuffleNet's channel shuffle, ``groups`` groups);
* ``slice`` (indexing a tensor, as a ViT takes its class token), ``mean`` (over the dimensions
  ``kernel`` lists, as a ViT pools its tokens) and ``layernorm``;
* token-wise ops (``linear``, ``layernorm``, ``mha``) key ``cin`` as the feature size and ``h``
  as the number of rows it applies to (``h = w = 1`` for a single vector);
* ``mha`` for ``nn.MultiheadAttention`` (``cout`` = heads x head width kept, ``groups`` =
  heads), and ``attention`` + ``ffn`` per ``nn.TransformerEncoderLayer``;
* ``embed``, ``attention`` and ``ffn`` for BERT-style encoders, which are not traced but read
  layer by layer (:mod:`autoprune.latency.lut.transformer`).

A key holds the input shape (channels, height, width), output channels, kernel, stride,
padding, groups, fused activation, and the weights' sparsity bucket and pattern
(unstructured, N:M, blocks): masked or zeroed weights get their own keys, because whether
a runtime runs them faster must be measured, not assumed.
"""
from __future__ import annotations

import math
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

_ACT_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
    nn.Hardtanh: "relu6", nn.Hardsigmoid: "hardsigmoid", nn.GELU: "gelu", nn.Tanh: "tanh",
}
_ACT_FUNCTIONS = {
    torch.relu: "relu",
    nn.functional.relu: "relu",
    nn.functional.relu6: "relu6",
    nn.functional.hardswish: "hardswish",
    nn.functional.hardsigmoid: "hardsigmoid",
    nn.functional.silu: "silu",
    nn.functional.gelu: "gelu",
    torch.sigmoid: "sigmoid",
    nn.functional.sigmoid: "sigmoid",
    torch.tanh: "tanh",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_TRANSPOSE_FUNCTIONS = {torch.transpose, torch.permute}
_TRANSPOSE_METHODS = {"transpose", "permute"}
_GPOOL_FUNCTIONS = {nn.functional.adaptive_avg_pool2d, torch.mean}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_IDENTITY_METHODS = {"contiguous", "size", "dim", "expand", "expand_as"}


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


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping attention modules whole: they are keyed as kernels of their own."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_attention(m) or super().is_leaf_module(m, module_qualified_name)


def _is_attention(module: nn.Module) -> bool:
    from autoprune.pruning.heads import is_multihead_attention

    return is_multihead_attention(module) or isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder))


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """``model`` as an fx graph with every node's output shape attached."""
    try:
        graph = fx.GraphModule(model, _Tracer().trace(model))
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
        found = _kernel_of(node, modules, fused)
        if found is None:
            if args and args[0] in made_by:
                made_by[node] = made_by[args[0]]
            continue
        inputs = tuple(dict.fromkeys(made_by.get(a, -1) for a in args))
        for kernel in found if isinstance(found, list) else [found]:  # a transformer encoder is a chain of kernels
            made_by[node] = len(kernels)
            kernels.append(replace(kernel, inputs=inputs))
            inputs = (made_by[node],)
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
    if len(rest) > 3:  # leading dimensions folded into the channels (ShuffleNet's grouped view)
        return math.prod(rest[:-2]), rest[-2], rest[-1]
    if len(rest) == 3:
        return rest
    if len(rest) == 1:
        return rest[0], 1, 1
    if len(rest) == 2:
        return rest[0], rest[1], 1
    raise AutopruneError(f"unsupported activation shape {shape} for a latency key (expected at least 2-D)")


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


def _kernel_of(node: fx.Node, modules: dict[str, nn.Module], fused: set[fx.Node]) -> Optional[Kernel | list[Kernel]]:
    out_shape = _shape(node)
    if node.op == "call_module":
        module = modules[node.target]
        in_shape = _shape(node.args[0]) if node.args else None
        if isinstance(module, _IDENTITY_MODULES):
            return None
        if _is_attention(module):
            return _attention_kernels(module, str(node.target), in_shape)
        if isinstance(module, nn.LayerNorm):
            return _layernorm(in_shape, math.prod(module.normalized_shape))
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
            act = _absorb_activation(node, modules, fused)
            sparsity, pattern = weight_sparsity(module)
            rows = math.prod(in_shape[1:-1])
            return Kernel(KernelKey("linear", module.in_features, rows, 1, module.out_features, act=act, sparsity=sparsity, pattern=pattern), str(node.target))
        if isinstance(module, nn.AdaptiveAvgPool2d) and _pair(module.output_size) == 1:
            return Kernel(KernelKey("gpool", *_with_cout(in_shape)))
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return Kernel(KernelKey("apool", *_with_cout(in_shape), kernel=_pair(module.output_size)))
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
    if out_shape is None or _is_identity_function(node):
        return None  # arithmetic on sizes, assertions; what only acts in training
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS or node.op == "call_method" and node.target in ("add", "add_"):
        tensors = [a for a in node.args if isinstance(a, fx.Node) and _shape(a) is not None]
        if len(tensors) == 2:
            return Kernel(KernelKey("add", *_with_cout(out_shape), act=_absorb_activation(node, modules, fused)))
    if node.op == "call_function" and node.target in _MUL_FUNCTIONS or node.op == "call_method" and node.target in ("mul", "mul_"):
        return _mul(node, out_shape, modules, fused)
    if node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS or node.op == "call_method" and node.target in _RESHAPE_METHODS:
        return _reshape(_shape(node.args[0]))
    if node.op == "call_function" and node.target in _TRANSPOSE_FUNCTIONS or node.op == "call_method" and node.target in _TRANSPOSE_METHODS:
        return _transpose(node)
    if _is_gpool(node):
        return Kernel(KernelKey("gpool", *_with_cout(_shape(node.args[0]))))
    if node.op == "call_function" and node.target is torch.mean or node.op == "call_method" and node.target == "mean":
        return _mean(node)
    if node.op == "call_function" and node.target is nn.functional.layer_norm:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"]
        return _layernorm(_shape(node.args[0]), math.prod(normalized))
    if node.op == "call_function" and node.target is torch.cat:
        parts = [_shape(a) for a in node.args[0]]
        c, h, w = _chw(out_shape)
        return Kernel(KernelKey("concat", c, h, w, c, kernel=len(parts)))
    if node.op == "call_function" and node.target is operator.getitem:
        source = node.args[0]
        if not isinstance(source, fx.Node) or _shape(source) is None:
            return None  # an element of a tuple (attention's output and weights)
        c, h, w = _chw(_shape(source))
        return Kernel(KernelKey("slice", c, h, w, math.prod(out_shape[1:])))
    if node.op == "call_method" and node.target in _IDENTITY_METHODS or out_shape is None:
        return None
    act = _activation(node, {})
    if act:
        return Kernel(KernelKey("act", *_with_cout(_shape(node.args[0])), act=act))
    name = getattr(node.target, "__name__", str(node.target))
    raise AutopruneError(f"node {node.name!r} ({name}): no latency key for this operation; use `latency: measured` for this model")


def _is_identity_function(node: fx.Node) -> bool:
    """Dropout and stochastic depth (torchvision's), which do nothing in eval mode."""
    if node.op != "call_function":
        return False
    if node.target in (nn.functional.dropout, nn.functional.dropout1d, nn.functional.dropout2d):
        return True
    return getattr(node.target, "__name__", "") == "stochastic_depth" and str(getattr(node.target, "__module__", "")).startswith("torchvision.")


def _is_gpool(node: fx.Node) -> bool:
    """A global average pool written as a function: ``adaptive_avg_pool2d(x, 1)`` or a mean over height and width."""
    if node.op == "call_function" and node.target is nn.functional.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return _pair(size) == 1
    if node.op == "call_function" and node.target is torch.mean or node.op == "call_method" and node.target == "mean":
        shape = _shape(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        return shape is not None and len(shape) == 4 and {d % 4 for d in dims if isinstance(d, int)} == {2, 3}
    return False


def _mean(node: fx.Node) -> Kernel:
    """A mean over some non-batch dimensions (as a ViT pools its tokens); ``kernel`` holds them as digits."""
    shape = _shape(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if any(not isinstance(d, int) for d in dims) or len(shape) > 4 or 0 in {d % len(shape) for d in dims}:
        raise AutopruneError(f"node {node.name!r}: no latency key for a mean over dimensions {dims} of a {len(shape)}-D tensor")
    c, h, w = _chw(shape)
    return Kernel(KernelKey("mean", c, h, w, c, kernel=int("".join(str(d % len(shape)) for d in sorted(dims, key=lambda d: d % len(shape))))))


def _mul(node: fx.Node, out_shape: tuple[int, ...], modules: dict[str, nn.Module], fused: set[fx.Node]) -> Kernel:
    """``mul`` for same-shaped tensors or a constant factor, ``scale`` for a per-channel gate (squeeze-and-excitation)."""
    shapes = [_shape(a) for a in node.args if isinstance(a, fx.Node) and _shape(a) is not None]
    c, h, w = _chw(out_shape)
    gated = len(shapes) == 2 and any(math.prod(s) < math.prod(out_shape) for s in shapes)
    return Kernel(KernelKey("scale" if gated else "mul", c, h, w, c, act=_absorb_activation(node, modules, fused)))


def _transpose(node: fx.Node) -> Kernel:
    """``transpose`` keyed by its input and permutation, or ``shuffle`` for ShuffleNet's channel shuffle."""
    shape = _shape(node.args[0])
    rank = len(shape)
    order = list(range(rank))
    if node.target in ("permute", torch.permute):
        dims = node.args[1:] if node.target == "permute" else node.args[1]
        order = [int(d) % rank for d in (dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)]
    else:
        a, b = (int(d) % rank for d in node.args[1:3])
        order[a], order[b] = order[b], order[a]
    if order[0] != 0:
        raise AutopruneError(f"node {node.name!r}: a transpose that moves the batch dimension has no latency key")
    if rank == 5 and order == [0, 2, 1, 3, 4]:  # (n, groups, channels/groups, h, w) -> (n, channels/groups, groups, h, w)
        groups, per, h, w = shape[1:]
        return Kernel(KernelKey("shuffle", groups * per, h, w, groups * per, groups=groups))
    if rank not in (3, 4):
        raise AutopruneError(f"node {node.name!r}: no latency key for a {rank}-D transpose")
    c, h, w = _chw(shape)
    return Kernel(KernelKey("transpose", c, h, w, c, kernel=int("".join(str(d) for d in order[1:]))))


def _layernorm(in_shape: tuple[int, ...], normalized: int) -> Kernel:
    """Layer norm over the last ``normalized`` elements of each row."""
    return Kernel(KernelKey("layernorm", normalized, math.prod(in_shape[1:]) // normalized, 1, normalized))


def _attention_kernels(module: nn.Module, name: str, in_shape: tuple[int, ...]) -> list[Kernel]:
    """``mha`` for an attention module; ``attention`` and ``ffn`` per layer of a transformer encoder."""
    from autoprune.latency.lut.transformer import attention_key, ffn_key

    if isinstance(module, nn.TransformerEncoder):
        kernels = [k for i, layer in enumerate(module.layers) if isinstance(layer, nn.TransformerEncoderLayer)
                   for k in _attention_kernels(layer, f"{name}.layers.{i}", in_shape)]
        if module.norm is not None:
            kernels.append(replace(_layernorm(in_shape, math.prod(module.norm.normalized_shape)), layer=f"{name}.norm"))
        return kernels
    if isinstance(module, nn.TransformerEncoderLayer):
        attn = module.self_attn
        seq = in_shape[1] if attn.batch_first else in_shape[0]
        act = "relu" if module.activation_relu_or_gelu == 1 else "none"  # "none": GELU, as BERT's FFN
        return [
            Kernel(attention_key(seq, attn.embed_dim, attn.num_heads, attn.head_dim), f"{name}.self_attn"),
            Kernel(replace(ffn_key(seq, module.linear1.in_features, module.linear1.out_features), act=act), f"{name}.linear1"),
        ]
    seq = in_shape[1] if module.batch_first else in_shape[0]
    return [Kernel(KernelKey("mha", module.embed_dim, seq, 1, module.num_heads * module.head_dim, groups=module.num_heads), name)]


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
