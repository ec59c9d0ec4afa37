"""Attention-head units and the ``head`` granularity.

A ``heads`` unit is one attention module; its ``channels`` are its heads. Pruning removes
whole heads: the query, key and value projections lose the heads' output rows and the
output projection loses the matching input columns, so every tensor really shrinks.

Supported modules:

- Hugging Face BERT-style self-attention (``query``/``key``/``value`` linear layers,
  ``attention_head_size``, ``num_attention_heads``; BERT, RoBERTa, MiniLM and kin); the
  output projection is found through the dependency graph.
- ``torch.nn.MultiheadAttention``: replaced on pruning by :class:`PrunedMultiheadAttention`,
  the same computation with separate, smaller projections (``nn.MultiheadAttention``
  requires its inner width to equal the embedding width).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from autoprune.core.errors import AutopruneError
from autoprune.pruning.criteria import weight_scores
from autoprune.pruning.granularity import (
    ORDER_HEADS,
    PruneContext,
    kept_channels,
    register_granularity,
)
from autoprune.pruning.units import Unit


def is_bert_attention(module: nn.Module) -> bool:
    return (
        all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value"))
        and isinstance(getattr(module, "attention_head_size", None), int)
        and isinstance(getattr(module, "num_attention_heads", None), int)
    )


def is_multihead_attention(module: nn.Module) -> bool:
    return isinstance(module, (nn.MultiheadAttention, PrunedMultiheadAttention))


def head_units(model: nn.Module, channel_units: Iterable[Unit]) -> list[Unit]:
    """One ``heads`` unit per attention module of ``model``.

    For BERT-style attention the dependency-graph unit coupling the query, key and value
    outputs tells the output projection (its consumer).
    """
    by_layer = {layer: u for u in channel_units for layer in u.layers}
    units = []
    for name, module in model.named_modules():
        if is_bert_attention(module):
            q, k, v = (f"{name}.{n}" for n in ("query", "key", "value"))
            coupled = by_layer.get(q)
            if coupled is None or not coupled.consumers:
                continue
            units.append(Unit(name, "heads", module.num_attention_heads, (q, k, v), tuple(coupled.consumers)))
        elif isinstance(module, nn.MultiheadAttention):
            units.append(Unit(name, "heads", module.num_heads, (name,), (f"{name}.out_proj",)))
    return units


def head_slices(total: int, size: int, heads: Iterable[int]) -> torch.Tensor:
    """Row indices of ``heads`` in a projection of ``total`` rows made of heads of ``size``."""
    idx = [h * size + i for h in heads for i in range(size)]
    if total % size:
        raise AutopruneError(f"projection of {total} rows is not a whole number of heads of size {size}")
    return torch.tensor(idx, dtype=torch.long)


def _shrink_linear(layer: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep rows (``dim=0``, outputs) or columns (``dim=1``, inputs) ``idx`` of a linear layer, in place."""
    if hasattr(layer, "weight_orig"):
        raise AutopruneError("a masked layer cannot lose heads: fold its masks first (autoprune.pruning.granularity.fold_masks)")
    layer.weight = _select(layer.weight, dim, idx)
    if dim == 0 and layer.bias is not None:
        layer.bias = _select(layer.bias, 0, idx)
    if dim == 0:
        layer.out_features = len(idx)
    else:
        layer.in_features = len(idx)


def _select(param: nn.Parameter, dim: int, idx: torch.Tensor) -> nn.Parameter:
    """A new parameter of the entries ``idx`` along ``dim``, its gradient sliced alike (for Taylor scores)."""
    new = nn.Parameter(param.detach().index_select(dim, idx).clone(), requires_grad=param.requires_grad)
    if param.grad is not None:
        new.grad = param.grad.index_select(dim, idx).clone()
    return new


def _head_scores(ctx: PruneContext, projections: list[nn.Linear], output: nn.Linear, heads: int, size: int, criterion: str) -> torch.Tensor:
    """Per-head score: the criterion summed over the head's rows of Q/K/V and columns of the output."""
    total = torch.zeros(heads)
    for layer in projections:
        total += weight_scores(ctx, layer, criterion).reshape(heads, size, -1).sum(dim=(1, 2))
    total += weight_scores(ctx, output, criterion).reshape(output.out_features, heads, size).sum(dim=(0, 2))
    return total


@register_granularity("head", structural=True, description="remove whole attention heads (Q/K/V rows and output columns)", kinds=("heads",), order=ORDER_HEADS)
def _head(ctx: PruneContext, unit: Unit, ratio: float, criterion: str, multiple: int) -> None:
    module = ctx.layer(unit.name)
    target = kept_channels(unit.channels, ratio)
    if is_bert_attention(module):
        current, size = module.num_attention_heads, module.attention_head_size
        projections = [module.query, module.key, module.value]
        output = ctx.layer(unit.consumers[0])
    elif is_multihead_attention(module):
        if isinstance(module, nn.MultiheadAttention):
            module = PrunedMultiheadAttention.from_module(module)
            ctx.model.set_submodule(unit.name, module)
        current, size = module.num_heads, module.head_dim
        projections = [module.q_proj, module.k_proj, module.v_proj]
        output = module.out_proj
    else:
        raise AutopruneError(f"unit {unit.name!r}: {type(module).__name__} is not a supported attention module")
    if current <= target:
        return
    scores = _head_scores(ctx, projections, output, current, size, criterion)
    keep = sorted(torch.argsort(scores, descending=True)[:target].tolist())
    idx = head_slices(current * size, size, keep)
    for layer in projections:
        _shrink_linear(layer, idx, 0)
    _shrink_linear(output, idx, 1)
    if is_bert_attention(module):
        module.num_attention_heads = target
        module.all_head_size = target * size
    else:
        module.keep_heads(keep)
    ctx.changed()


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate projections whose inner width may be any number of heads.

    Same call signature and outputs (``(output, weights or None)``), batch-first or not.
    ``kept`` maps its heads to the original module's, so 3-D attention masks given per
    original head still apply.
    """

    _qkv_same_embed_dim = False  # keeps nn.TransformerEncoderLayer off its fused fast path
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, kdim: int, vdim: int, batch_first: bool, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self.original_heads = num_heads
        self.register_buffer("kept", torch.arange(num_heads), persistent=False)

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> "PrunedMultiheadAttention":
        if mha.bias_k is not None or mha.add_zero_attn:
            raise AutopruneError("head pruning does not support nn.MultiheadAttention with add_bias_kv or add_zero_attn")
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.kdim, mha.vdim, mha.batch_first, mha.dropout, bias)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.split(e)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for proj, weight, i in zip((new.q_proj, new.k_proj, new.v_proj), weights, range(3)):
                proj.weight.copy_(weight)
                if bias:
                    proj.bias.copy_(mha.in_proj_bias[i * e : (i + 1) * e])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        if mha._qkv_same_embed_dim and mha.in_proj_weight.grad is not None:  # keep calibration gradients for Taylor scores
            for proj, grad in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_weight.grad.split(e)):
                proj.weight.grad = grad.clone()
            new.out_proj.weight.grad = None if mha.out_proj.weight.grad is None else mha.out_proj.weight.grad.clone()
            if bias and mha.in_proj_bias.grad is not None:
                for proj, grad in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.grad.split(e)):
                    proj.bias.grad = grad.clone()
        return new.train(mha.training)

    def keep_heads(self, keep: list[int]) -> None:
        """Record that only heads ``keep`` (indices into the current heads) remain."""
        self.kept = self.kept[torch.tensor(keep, dtype=torch.long)]
        self.num_heads = len(keep)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        source = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, length, h, d).transpose(1, 2)
        k = self.k_proj(key).view(n, source, h, d).transpose(1, 2)
        v = self.v_proj(value).view(n, source, h, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(n, self.original_heads, length, source).index_select(1, self.kept)
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(n, 1, 1, source)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = nn.functional.dropout(weights, self.dropout)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, h * d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, (weights if batched else weights.squeeze(0))
