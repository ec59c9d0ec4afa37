"""Kernel keys: one fused kernel configuration, the primary key of a latency table row."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

#: Weight sparsity is keyed in buckets of this width (fraction of zero weights).
SPARSITY_STEP = 0.1


#: Ops without weights, whose output channels are their input channels.
WEIGHTLESS_OPS = ("add", "gpool", "apool", "maxpool", "avgpool", "bn", "act", "concat", "mul", "scale", "transpose", "shuffle", "layernorm")


@dataclass(frozen=True, order=True)
class KernelKey:
    """One fused kernel configuration: what a latency table row is measured for.

    ``cin, h, w`` is the input (channels, height, width; ``h = w = 1`` for a linear layer's
    vector input); ``cout`` the output channels (features for ``linear``, elements for
    ``reshape``); ``sparsity`` the fraction of zero weights, rounded to :data:`SPARSITY_STEP`.
    """

    op: str
    cin: int
    h: int
    w: int
    cout: int
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    act: str = "none"
    sparsity: float = 0.0
    pattern: str = ""

    @property
    def id(self) -> str:
        """A readable, unique string: the table's primary key."""
        text = f"{self.op}:{self.cin}x{self.h}x{self.w}>{self.cout}"
        if self.kernel:
            text += f":k{self.kernel}s{self.stride}p{self.padding}g{self.groups}"
        if self.op in ("attention", "mha"):
            text += f":heads{self.groups}"
        if self.act != "none":
            text += f":{self.act}"
        if self.sparsity or self.pattern:
            text += f":sp{self.sparsity:g}"
            if self.pattern and self.pattern != "unstructured":
                text += f"/{self.pattern}"
        return text

    def with_channels(self, cin: int, cout: int) -> "KernelKey":
        """The same kernel with other channel counts, keeping what couples them (depthwise
        groups follow the channels, a reshape's output follows its input)."""
        if self.op == "dwconv":
            return replace(self, cin=cin, cout=cin, groups=cin)
        if self.op == "reshape":
            return replace(self, cin=cin, cout=cin * self.h * self.w)
        if self.op in WEIGHTLESS_OPS:
            return replace(self, cin=cin, cout=cin)
        return replace(self, cin=cin, cout=cout)

    def dense(self) -> "KernelKey":
        """The same kernel with dense weights."""
        return replace(self, sparsity=0.0, pattern="")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KernelKey":
        out: dict[str, Any] = {}
        for name in (f.name for f in fields(cls)):
            if name in data:
                value = data[name]
                if name in ("op", "act", "pattern"):
                    out[name] = "" if value is None else str(value)
                else:
                    out[name] = float(value) if name == "sparsity" else int(value)
        return cls(**out)


@dataclass(frozen=True)
class Kernel:
    """A kernel of a particular model: its key, the layer it was read from (if any), and the
    kernels producing its inputs (indices into the model's kernel list, -1 for the model input)."""

    key: KernelKey
    layer: Optional[str] = None
    inputs: tuple[int, ...] = ()


def weight_bytes(key: KernelKey, itemsize: int = 4) -> int:
    """Bytes of weights and bias a kernel reads (stored dense, whatever their sparsity)."""
    if key.op in ("conv", "dwconv"):
        return itemsize * (key.cout * (key.cin // max(key.groups, 1)) * key.kernel * key.kernel + key.cout)
    if key.op == "linear":
        return itemsize * (key.cout * key.cin + key.cout)
    if key.op in ("attention", "mha"):  # Q, K, V (hidden -> width) and the output projection (width -> hidden)
        return itemsize * (4 * key.cin * key.cout + 3 * key.cout + key.cin)
    if key.op == "ffn":  # hidden -> width -> hidden
        return itemsize * (2 * key.cin * key.cout + key.cout + key.cin)
    return 0


def weight_mb(kernels: list["Kernel"]) -> float:
    """Megabytes of weights a network's kernels read on every call."""
    return sum(weight_bytes(k.key) for k in kernels) / 1e6
