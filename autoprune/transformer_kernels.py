"""Latency-table keys for transformer kernels: attention and FFN blocks at every shape a
search space can produce, measured in small models of their own.

A BERT-style layer runs as two kernels whose cost depends on what pruning leaves:

- ``attention``: Q/K/V projections, scaled dot-product attention, output projection, residual
  add and LayerNorm, keyed by sequence length, hidden size and the number of heads kept
  (``width = heads x head_dim``);
- ``ffn``: the intermediate dense layer, GELU, the output dense layer, residual add and
  LayerNorm, keyed by sequence length, hidden size and FFN neurons kept.

:func:`space_keys` enumerates the keys a search space can produce (head counts from the head
units' ratio grids, neuron counts from the FFN units' grids and channel multiples);
:func:`model_keys` reads the keys of a (pruned) model; :class:`TransformerTable` predicts a
model's latency as ``fixed + scale x (sum of its kernels)``, both fitted on a few measured
models (embeddings, masks and pooling are the fixed part; what kernels timed alone miss is
the scale). A removed layer contributes nothing.
"""
from __future__ import annotations

import csv
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from .backends import get_backend
from .granularity import kept_channels
from .heads import is_bert_attention
from .search_space import UnitSpace


@dataclass(frozen=True, order=True)
class TransformerKey:
    """One attention or FFN kernel configuration (batch 1)."""

    op: str
    seq: int
    hidden: int
    width: int
    heads: int = 0

    @property
    def id(self) -> str:
        extra = f"-h{self.heads}" if self.op == "attention" else ""
        return f"{self.op}-s{self.seq}-d{self.hidden}-w{self.width}{extra}"


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every BERT-style layer: a module with ``attention.self`` and ``intermediate.dense``."""
    found = []
    for name, module in model.named_modules():
        attention = getattr(getattr(module, "attention", None), "self", None)
        intermediate = getattr(getattr(module, "intermediate", None), "dense", None)
        if attention is not None and is_bert_attention(attention) and isinstance(intermediate, nn.Linear):
            found.append((name, module))
    return found


def model_keys(model: nn.Module, seq: int) -> list[TransformerKey]:
    """The kernels a (pruned) BERT-style model runs at sequence length ``seq``, in order."""
    keys = []
    for _, layer in _layers(model):  # a removed layer is a SkippedBlock: not listed
        attention = layer.attention.self
        hidden = attention.query.in_features
        heads = attention.num_attention_heads
        keys.append(TransformerKey("attention", seq, hidden, heads * attention.attention_head_size, heads))
        keys.append(TransformerKey("ffn", seq, hidden, layer.intermediate.dense.out_features))
    return keys


def space_keys(model: nn.Module, space: Mapping[str, UnitSpace], seq: int) -> list[TransformerKey]:
    """Every attention and FFN key some plan of ``space`` produces for the dense ``model``."""
    keys: set[TransformerKey] = set(model_keys(model, seq))
    for name, layer in _layers(model):
        attention = layer.attention.self
        hidden, size = attention.query.in_features, attention.attention_head_size
        heads_space = space.get(f"{name}.attention.self")
        if heads_space is not None and "head" in heads_space.rule.granularities:
            for ratio in _ratios(heads_space):
                heads = kept_channels(heads_space.unit.channels, ratio)
                keys.add(TransformerKey("attention", seq, hidden, heads * size, heads))
        ffn_space = space.get(f"{name}.intermediate.dense")
        if ffn_space is not None and {"neuron", "channel"} & set(ffn_space.rule.granularities):
            for ratio in _ratios(ffn_space):
                keys.add(TransformerKey("ffn", seq, hidden, kept_channels(ffn_space.unit.channels, ratio, ffn_space.rule.channel_multiple)))
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
    """A BERT layer's feed-forward block: dense, GELU, dense, residual, LayerNorm."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.intermediate, self.output = nn.Linear(hidden, width), nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.output(nn.functional.gelu(self.intermediate(x))) + x)


def kernel_module(key: TransformerKey) -> tuple[nn.Module, torch.Tensor]:
    """A model running only ``key``'s kernel, and its input."""
    torch.manual_seed(0)
    if key.op == "attention":
        module: nn.Module = AttentionKernel(key.hidden, key.heads, key.width // key.heads)
    elif key.op == "ffn":
        module = FFNKernel(key.hidden, key.width)
    else:
        raise ValueError(f"unknown transformer kernel op {key.op!r}; known: attention, ffn")
    return module.eval(), torch.randn(1, key.seq, key.hidden)


def measure_key(key: TransformerKey, backend_name: str, threads: int = 1, warmup: int = 10, repeats: int = 50) -> float:
    """Median milliseconds of ``key``'s kernel model on a device backend."""
    backend = get_backend(backend_name)
    module, x = kernel_module(key)
    with tempfile.TemporaryDirectory(prefix="autoprune-kernel-") as tmp:
        path = backend.export(module, x, Path(tmp) / f"kernel{backend.suffix}")
        return backend.measure(path, x.numpy(), threads, warmup, repeats).median_ms


@dataclass
class TransformerTable:
    """Measured kernel latencies of one backend, plus the calibrated fixed part of a model."""

    backend: str
    latency_ms: dict[TransformerKey, float] = field(default_factory=dict)
    fixed_ms: float = 0.0
    scale: float = 1.0

    def measure(self, keys: Iterable[TransformerKey], threads: int = 1, warmup: int = 10, repeats: int = 50) -> None:
        """Measure the keys the table lacks."""
        for key in keys:
            if key not in self.latency_ms:
                self.latency_ms[key] = measure_key(key, self.backend, threads, warmup, repeats)

    def kernels_ms(self, model: nn.Module, seq: int) -> float:
        keys = model_keys(model, seq)
        self.measure(keys)
        return sum(self.latency_ms[k] for k in keys)

    def calibrate(self, measured: Iterable[tuple[nn.Module, float]], seq: int) -> None:
        """Fit ``measured ~ fixed + scale x kernels`` on a few (model, measured ms) pairs.

        Kernels timed alone miss what runs between them (embeddings, masks, pooling, layout
        changes) and how the whole model behaves in cache; one pair sets only ``scale``
        (the fixed part stays 0), two or more set both by least squares.
        """
        pairs = [(self.kernels_ms(model, seq), ms) for model, ms in measured]
        if not pairs:
            raise ValueError("calibration needs at least one (model, measured_ms) pair")
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(pairs) == 1 or max(xs) - min(xs) < 1e-9:
            self.fixed_ms, self.scale = 0.0, sum(ys) / sum(xs)
            return
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        scale = sum((x - mean_x) * (y - mean_y) for x, y in pairs) / sum((x - mean_x) ** 2 for x in xs)
        fixed = mean_y - scale * mean_x
        if fixed < 0 or scale <= 0:  # no room for a fixed part: a pure scale fits best
            fixed, scale = 0.0, sum(x * y for x, y in pairs) / sum(x * x for x in xs)
        self.fixed_ms, self.scale = fixed, scale

    def predict(self, model: nn.Module, seq: int) -> float:
        """Predicted milliseconds of ``model`` at sequence length ``seq``."""
        return self.fixed_ms + self.scale * self.kernels_ms(model, seq)

    def save(self, path: Path) -> None:
        """One CSV row per key (``fixed`` and ``scale`` rows hold the calibration)."""
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["op", "seq", "hidden", "width", "heads", "latency_ms"])
            writer.writeheader()
            writer.writerow({"op": "fixed", "seq": 0, "hidden": 0, "width": 0, "heads": 0, "latency_ms": self.fixed_ms})
            writer.writerow({"op": "scale", "seq": 0, "hidden": 0, "width": 0, "heads": 0, "latency_ms": self.scale})
            for key, ms in sorted(self.latency_ms.items()):
                writer.writerow({**asdict(key), "latency_ms": ms})

    @classmethod
    def load(cls, path: Path, backend: str) -> "TransformerTable":
        table = cls(backend)
        with open(path) as f:
            for row in csv.DictReader(f):
                if row["op"] == "fixed":
                    table.fixed_ms = float(row["latency_ms"])
                elif row["op"] == "scale":
                    table.scale = float(row["latency_ms"])
                else:
                    key = TransformerKey(row["op"], int(row["seq"]), int(row["hidden"]), int(row["width"]), int(row["heads"]))
                    table.latency_ms[key] = float(row["latency_ms"])
        return table


def sequence_length(example_input: torch.Tensor) -> int:
    """The sequence length of a ``(batch, seq)`` token-id input."""
    return int(example_input.shape[1])


def keys_for(model: nn.Module, space: Optional[Mapping[str, UnitSpace]], example_input: torch.Tensor) -> list[TransformerKey]:
    """:func:`space_keys` when a space is given, else the dense model's own keys."""
    seq = sequence_length(example_input)
    return space_keys(model, space, seq) if space is not None else model_keys(model, seq)
