"""Latency-table kernels of BERT-style encoders: the embeddings, and an attention and an FFN
kernel per layer, at every shape a search space can produce.

A BERT-style layer runs as two kernels whose cost depends on what pruning leaves, keyed as
:class:`autoprune.latency.lut.keys.KernelKey` rows of the device's one latency table:

- ``attention``: Q/K/V projections, scaled dot-product attention, output projection, residual
  add and LayerNorm; ``cin`` = hidden size, ``h`` = sequence length, ``cout`` = the width
  kept (``heads x head_dim``), ``groups`` = the heads kept;
- ``ffn``: the intermediate dense layer, GELU, the output dense layer, residual add and
  LayerNorm; ``cin`` = hidden size, ``h`` = sequence length, ``cout`` = FFN neurons kept;
- ``embed``, once per model: token and position embeddings, LayerNorm, and the masked mean
  pooling of a sentence encoder; ``cin`` = vocabulary size, ``cout`` = hidden size. It is the
  part no pruning touches.

A removed layer (:class:`autoprune.pruning.depth.SkippedBlock`) contributes no kernels. Sparse
granularities keep these shapes and are looked up as the dense kernels. The device's
calibration (:class:`autoprune.latency.lut.table.Calibration`) turns the kernel sum into the model's
latency, as for convolutional networks.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from autoprune.latency.lut.kernel_key import Kernel, KernelKey
from autoprune.pruning.granularity import kept_channels
from autoprune.pruning.heads import is_bert_attention
from autoprune.pruning.space import UnitSpace


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every BERT-style layer: a module with ``attention.self`` and ``intermediate.dense``."""
    found = []
    for name, module in model.named_modules():
        attention = getattr(getattr(module, "attention", None), "self", None)
        intermediate = getattr(getattr(module, "intermediate", None), "dense", None)
        if attention is not None and is_bert_attention(attention) and isinstance(intermediate, nn.Linear):
            found.append((name, module))
    return found


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` holds BERT-style layers (and is keyed by this module's kernels)."""
    return bool(_layers(model))


def _word_embeddings(model: nn.Module) -> nn.Embedding | None:
    for module in model.modules():
        words = getattr(module, "word_embeddings", None)
        if isinstance(words, nn.Embedding):
            return words
    return None


def sequence_length(example_input: torch.Tensor) -> int:
    """The sequence length of a ``(batch, seq)`` token-id input."""
    return int(example_input.shape[1])


def attention_key(seq: int, hidden: int, heads: int, head_dim: int) -> KernelKey:
    return KernelKey("attention", hidden, seq, 1, heads * head_dim, groups=heads)


def ffn_key(seq: int, hidden: int, width: int) -> KernelKey:
    return KernelKey("ffn", hidden, seq, 1, width)


def model_kernels(model: nn.Module, example_input: torch.Tensor) -> list[Kernel]:
    """The kernels a (pruned) BERT-style model runs on ``example_input``'s sequence length, in order."""
    seq = sequence_length(example_input)
    kernels: list[Kernel] = []
    words = _word_embeddings(model)
    if words is not None:
        kernels.append(Kernel(KernelKey("embed", words.num_embeddings, seq, 1, words.embedding_dim), None, (-1,)))
    for name, layer in _layers(model):  # a removed layer is a SkippedBlock: not listed
        attention = layer.attention.self
        hidden = attention.query.in_features
        key = attention_key(seq, hidden, attention.num_attention_heads, attention.attention_head_size)
        kernels.append(Kernel(key, f"{name}.attention.self", (len(kernels) - 1,)))
        kernels.append(Kernel(ffn_key(seq, hidden, layer.intermediate.dense.out_features), f"{name}.intermediate.dense", (len(kernels) - 1,)))
    return kernels


def space_keys(model: nn.Module, space: Mapping[str, UnitSpace], example_input: torch.Tensor) -> list[KernelKey]:
    """Every kernel key some plan of ``space`` produces for the dense ``model``, sorted."""
    seq = sequence_length(example_input)
    keys: set[KernelKey] = {k.key for k in model_kernels(model, example_input)}
    for name, layer in _layers(model):
        attention = layer.attention.self
        hidden, size = attention.query.in_features, attention.attention_head_size
        heads_space = space.get(f"{name}.attention.self")
        if heads_space is not None and "head" in heads_space.rule.granularities:
            for ratio in _ratios(heads_space):
                keys.add(attention_key(seq, hidden, kept_channels(heads_space.unit.channels, ratio), size))
        ffn_space = space.get(f"{name}.intermediate.dense")
        if ffn_space is not None and {"neuron", "channel"} & set(ffn_space.rule.granularities):
            for ratio in _ratios(ffn_space):
                keys.add(ffn_key(seq, hidden, kept_channels(ffn_space.unit.channels, ratio, ffn_space.rule.channel_multiple)))
    return sorted(keys)


def _ratios(space: UnitSpace) -> list[float]:
    r = space.rule.pruning_ratio
    if r.step is not None:
        return r.grid()
    n = max(1, space.unit.channels)
    return [i / n for i in range(n) if r.low <= i / n <= r.high]


class AttentionKernel(nn.Module):
    """Self-attention as a BERT layer runs it: projections, softmax(QK^T/sqrt(d))V, output, residual, LayerNorm."""

    def __init__(self, hidden: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        width = heads * head_dim
        self.query, self.key, self.value = nn.Linear(hidden, width), nn.Linear(hidden, width), nn.Linear(hidden, width)
        self.output = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        split = lambda t: t.view(n, s, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = (q @ k.transpose(-1, -2) / self.head_dim**0.5).softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(n, s, self.heads * self.head_dim)
        return self.norm(self.output(out) + x)


class FFNKernel(nn.Module):
    """A BERT layer's feed-forward block: dense, GELU (ReLU for ``relu``, as ``nn.TransformerEncoderLayer``'s
    default), dense, residual, LayerNorm."""

    def __init__(self, hidden: int, width: int, act: str = "none") -> None:
        super().__init__()
        self.intermediate, self.output = nn.Linear(hidden, width), nn.Linear(width, hidden)
        self.act = nn.ReLU() if act == "relu" else nn.GELU()
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.output(self.act(self.intermediate(x))) + x)


class EmbedKernel(nn.Module):
    """What a sentence encoder runs outside its layers: token + position + type embeddings,
    LayerNorm, the padding mask, and the masked mean pooling with normalisation."""

    def __init__(self, vocab: int, hidden: int, seq: int) -> None:
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(seq, hidden)
        self.token_type = nn.Parameter(torch.randn(hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(self.token_type.dtype)
        hidden = self.norm(self.words(ids) + self.positions.weight[: ids.shape[1]] + self.token_type)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def kernel_module(key: KernelKey, batch_size: int = 1) -> tuple[nn.Module, torch.Tensor]:
    """A model running only ``key``'s kernel, and its input."""
    torch.manual_seed(0)
    if key.op == "attention":
        module: nn.Module = AttentionKernel(key.cin, key.groups, key.cout // key.groups)
    elif key.op == "ffn":
        module = FFNKernel(key.cin, key.cout, key.act)
    elif key.op == "embed":
        ids = torch.randint(1, key.cin, (batch_size, key.h))
        return EmbedKernel(key.cin, key.cout, key.h).eval(), ids
    else:
        raise ValueError(f"kernel {key.id}: not a transformer kernel op; known: attention, ffn, embed")
    return module.eval(), torch.randn(batch_size, key.h, key.cin)
