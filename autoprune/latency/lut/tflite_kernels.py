""".tflite kernel models written from converted templates, without a conversion per key.

Converting a model with litert-torch takes one to two seconds however small it is, and
a search space yields hundreds of kernel keys. A kernel's converted graph does not depend
on its channel counts, though, only on its structure (operator, kernel, stride, padding,
activation, spatial size, and whether a channel count is one, which turns a convolution
into a depthwise one). So each structure is converted once with sentinel channel counts,
and every key of that structure is written by renaming the sentinels in tensor shapes,
integer constants and operator options, and filling the weight buffer with the weights of
the key's own kernel model (zeros in its sparsity pattern included). The result loads in LiteRT and is checked to have the key's shapes.
"""
from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from autoprune.core.errors import AutopruneError
from autoprune.latency.backends import Backend
from autoprune.latency.lut.kernel_key import KernelKey
from autoprune.latency.lut.kernels import kernel_model, kernel_weight

_PRIMES = [p for p in range(37, 400) if all(p % d for d in range(2, int(p**0.5) + 1))]
_FLOAT32, _INT32 = 0, 2  # TensorType codes of the TFLite schema


def _structure(key: KernelKey) -> tuple:
    """What decides a kernel's converted graph besides its channel counts."""
    return (key.op, key.h, key.w, key.kernel, key.stride, key.padding, key.groups if key.op == "conv" else 0, key.act, key.cin == 1, key.cout == 1)


def _sentinels(key: KernelKey, batch_size: int) -> tuple[int, int]:
    """Two primes that no other dimension of the kernel's graph can equal."""
    taken = {batch_size, key.h, key.w, key.kernel, key.stride}
    taken |= {key.h + 2 * key.padding + d for d in range(-1, 3)} | {key.w + 2 * key.padding + d for d in range(-1, 3)}
    floor = max(taken) + 3
    free = [p for p in _PRIMES if p > floor and p != key.h * key.w]
    if len(free) < 2:
        raise AutopruneError(f"kernel {key.id}: no sentinel channel counts for a template")
    return free[0], free[1]


#: Ops whose converted graphs are written from templates; others (concatenation, transposes,
#: attention, layer norm, gates) are converted key by key.
TEMPLATED_OPS = ("conv", "dwconv", "linear", "add", "gpool", "maxpool", "avgpool", "reshape", "bn", "act")


def templatable(key: KernelKey) -> bool:
    """Grouped (not depthwise) convolutions, linear layers over rows of tokens and ops outside
    :data:`TEMPLATED_OPS` are converted directly."""
    if key.op not in TEMPLATED_OPS or key.op == "linear" and key.h * key.w > 1:
        return False
    return not (key.op == "conv" and key.groups != 1)


class TFLiteKernelWriter:
    """Writes the .tflite file of any kernel key, converting one template per structure."""

    def __init__(self, backend: Backend, batch_size: int = 1) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self._templates: dict[tuple, tuple[KernelKey, bytes]] = {}
        self.conversions = 0

    def _template(self, key: KernelKey) -> tuple[KernelKey, bytes]:
        structure = _structure(key)
        if structure not in self._templates:
            a, b = _sentinels(key, self.batch_size)
            cin = 1 if key.cin == 1 else a
            cout = 1 if key.cout == 1 else b
            template = key.dense().with_channels(cin, cout)
            model, x = kernel_model(template, self.backend.name, self.batch_size)
            with tempfile.TemporaryDirectory(prefix="autoprune-tfl-") as tmp:
                from autoprune.latency.lut.measure import export

                path = export(self.backend, model, x, Path(tmp) / "template.tflite")
                self._templates[structure] = (template, path.read_bytes())
            self.conversions += 1
        return self._templates[structure]

    def write(self, key: KernelKey, path: Path) -> tuple[Path, np.ndarray]:
        """Write ``key``'s kernel model to ``path``; returns it and an input for it."""
        model, x = kernel_model(key, self.backend.name, self.batch_size)
        if not templatable(key):
            from autoprune.latency.lut.measure import export

            return export(self.backend, model, x, path), x.numpy()
        template, content = self._template(key)
        with torch.no_grad():
            expected = tuple(model(x).shape)
        mapping = {template.cin: key.cin, template.cout: key.cout}
        mapping = {k: v for k, v in mapping.items() if k != 1}
        weight = kernel_weight(model)
        patched = patch_model(content, mapping, None if weight is None else weight.numpy(), seed=zlib.crc32(key.id.encode()))
        _check(patched, key, tuple(x.shape), expected)
        path = Path(path)
        path.write_bytes(patched)
        return path, x.numpy()


def tflite_layout(weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A PyTorch conv/linear weight in the layout of the TFLite tensor of ``shape``:
    OHWI for convolutions, 1HWO for depthwise ones, OI for fully connected layers."""
    if weight.ndim == 4:
        weight = weight.transpose(1, 2, 3, 0) if shape[0] == 1 and weight.shape[1] == 1 else weight.transpose(0, 2, 3, 1)
    if tuple(weight.shape) != tuple(shape):
        raise AutopruneError(f"weight of shape {weight.shape} does not fit the TFLite tensor of shape {shape}")
    return np.ascontiguousarray(weight, dtype=np.float32)


def patch_model(content: bytes, mapping: dict[int, int], weight: Optional[np.ndarray] = None, seed: int = 0) -> bytes:
    """``content`` with every dimension in ``mapping`` renamed and constant buffers refilled:
    the largest float constant with ``weight`` (PyTorch layout), the others at random."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    rng = np.random.default_rng(seed)
    rename = np.vectorize(lambda d: mapping.get(int(d), int(d)), otypes=[np.int32])
    refilled: set[int] = set()
    largest: Optional[tuple[int, int, tuple[int, ...]]] = None
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            if tensor.shape is not None and len(tensor.shape):
                tensor.shape = rename(np.asarray(tensor.shape))
            if tensor.shapeSignature is not None and len(tensor.shapeSignature):
                tensor.shapeSignature = rename(np.asarray(tensor.shapeSignature))
            buffer = model.buffers[tensor.buffer] if tensor.buffer else None
            if buffer is None or buffer.data is None or len(buffer.data) == 0 or tensor.buffer in refilled:
                continue
            refilled.add(tensor.buffer)
            size = int(np.prod(tensor.shape)) if tensor.shape is not None else 1
            if tensor.type == _FLOAT32:
                values = (rng.standard_normal(size) * 0.1).astype(np.float32)
                buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
                if largest is None or size > largest[1]:
                    largest = (tensor.buffer, size, tuple(int(d) for d in tensor.shape))
            elif tensor.type == _INT32:
                values = np.frombuffer(bytes(bytearray(buffer.data)), dtype=np.int32)
                buffer.data = np.frombuffer(rename(values).astype(np.int32).tobytes(), dtype=np.uint8)
        for op in graph.operators:
            _rename_options(op.builtinOptions, mapping)
    if weight is not None and largest is not None:
        model.buffers[largest[0]].data = np.frombuffer(tflite_layout(weight, largest[2]).tobytes(), dtype=np.uint8)
    builder = flatbuffers.Builder(max(1024, len(content) * 2))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _rename_options(options: Any, mapping: dict[int, int]) -> None:
    if options is None:
        return
    for name, value in vars(options).items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in mapping:
            setattr(options, name, mapping[int(value)])
        elif isinstance(value, (list, np.ndarray)) and len(value) and all(isinstance(v, (int, np.integer)) for v in value):
            setattr(options, name, [mapping.get(int(v), int(v)) for v in value])


def _check(content: bytes, key: KernelKey, in_shape: tuple, out_shape: tuple) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    got_in = tuple(int(d) for d in interpreter.get_input_details()[0]["shape"])
    got_out = tuple(int(d) for d in interpreter.get_output_details()[0]["shape"])
    if got_in != in_shape or got_out != out_shape:
        raise AutopruneError(
            f"kernel {key.id}: the .tflite written from its template has input {got_in} / output {got_out}, "
            f"expected {in_shape} / {out_shape}"
        )
