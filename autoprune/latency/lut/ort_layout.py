"""ONNX Runtime's blocked (NCHWc) layout: which kernels run in it and what reorders cost.

On x86 ONNX Runtime rewrites convolutions whose channel counts suit its blocked kernels
into NCHWc convolutions, inserts ``ReorderInput``/``ReorderOutput`` nodes where a
tensor passes between blocked and plain kernels, and folds a residual add (and its
activation) into the blocked convolution that feeds it. A kernel timed alone therefore
pays reorders at its model's input and output that it does not pay inside a network, and
a network pays reorders between kernels that no kernel pays alone.

:func:`probe` reads a kernel model's optimized graph (does it reorder its input, its
output?) and, from ONNX Runtime's own profiler, the share of its time spent in each
reorder. :func:`network_sum` then sums a network's kernels as the runtime runs them:
each kernel without its own reorders and call overhead, the residual adds that fold into
the convolution feeding them for free, and a reorder wherever a blocked tensor meets a
plain kernel.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autoprune.latency.lut.kernel_key import Kernel

BLOCKED, PLAIN = "nchwc", "nchw"
#: Kernels that run in whatever layout their input arrives in (ONNX Runtime has NCHWc pools).
ADAPTIVE_OPS = ("gpool", "maxpool", "avgpool")
#: Columns this module adds to a table row.
COLUMNS = ("layout_in", "layout_out", "reorder_in_ms", "reorder_out_ms")


def probe(path: Path, x: np.ndarray, threads: int = 1, runs: int = 40) -> dict[str, Any]:
    """Layouts at a kernel model's input and output and the fraction of its node time spent
    reordering each (``reorder_in_frac``, ``reorder_out_frac``)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="autoprune-ort-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
        ops = [node.op_type for node in onnx.load(str(Path(tmp) / "optimized.onnx")).graph.node]
    durations: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            durations[event["args"].get("op_name", "")].append(float(event["dur"]))
    # drop the first runs (warm-up); microsecond ticks, so take the mean rather than the median
    means = {op: float(np.mean(v[len(v) // 4 :])) + 0.5 for op, v in durations.items() if v}
    total = sum(means.values()) or 1.0
    return {
        "layout_in": BLOCKED if "ReorderInput" in ops else PLAIN,
        "layout_out": BLOCKED if "ReorderOutput" in ops else PLAIN,
        "reorder_in_frac": means.get("ReorderInput", 0.0) / total if "ReorderInput" in ops else 0.0,
        "reorder_out_frac": means.get("ReorderOutput", 0.0) / total if "ReorderOutput" in ops else 0.0,
    }


def row_columns(info: Mapping[str, Any], median_ms: float, overhead_ms: float) -> dict[str, Any]:
    """The table columns from a probe and the kernel's timed median."""
    work = max(median_ms - overhead_ms, 0.0)
    return {
        "layout_in": info["layout_in"],
        "layout_out": info["layout_out"],
        "reorder_in_ms": work * info["reorder_in_frac"],
        "reorder_out_ms": work * info["reorder_out_frac"],
    }


def _num(row: Mapping[str, Any], name: str) -> float:
    value = row.get(name)
    return float(value) if value not in (None, "") else 0.0


def network_sum(kernels: Sequence[Kernel], rows: Mapping[str, Mapping[str, Any]], overhead_ms: float = 0.0) -> float:
    """Sum of a network's kernels in milliseconds, with its layouts as ONNX Runtime runs them.

    Each row's time loses the per-call ``overhead_ms`` of the runtime, so a kernel that
    disappears into another (a folded add) takes nothing with it.
    """
    consumers: dict[int, list[int]] = defaultdict(list)
    for i, kernel in enumerate(kernels):
        for p in kernel.inputs:
            consumers[p].append(i)
    layout_in: list[str] = []
    layout_out: list[str] = []
    total = 0.0
    for i, kernel in enumerate(kernels):
        row = rows[kernel.key.id]
        cost = max(float(row["median_ms"]) - overhead_ms, 0.0) - _num(row, "reorder_in_ms") - _num(row, "reorder_out_ms")
        lin, lout = row.get("layout_in") or PLAIN, row.get("layout_out") or PLAIN
        producers = [p for p in kernel.inputs if p >= 0]
        if kernel.key.op in ADAPTIVE_OPS and producers:
            lin = lout = layout_out[producers[0]]
        elif kernel.key.op == "add":
            folded = _folds_into(kernel, kernels, layout_out, consumers, i)
            if folded is not None:
                cost, lin, lout = 0.0, folded, folded
        layout_in.append(lin)
        layout_out.append(lout)
        total += cost
    last = len(kernels) - 1
    for p in [-1, *range(len(kernels))]:
        layout = PLAIN if p < 0 else layout_out[p]
        users = consumers.get(p, [])
        if layout == BLOCKED and (p == last or any(layout_in[c] == PLAIN for c in users)):
            total += _num(rows[kernels[p].key.id], "reorder_out_ms")
        if layout == PLAIN and any(layout_in[c] == BLOCKED for c in users):
            total += max(_num(rows[kernels[c].key.id], "reorder_in_ms") for c in users if layout_in[c] == BLOCKED)
    return total


def _folds_into(add: Kernel, kernels: Sequence[Kernel], layout_out: list[str], consumers: Mapping[int, list[int]], index: int) -> str | None:
    """The layout of the convolution a residual add (and its activation) folds into, if any.

    ONNX Runtime folds an add into a convolution without activation that only feeds it: a
    plain convolution takes any other operand, a blocked one only a blocked operand.
    """
    for p in add.inputs:
        if p < 0:
            continue
        producer = kernels[p].key
        if producer.op not in ("conv", "dwconv") or producer.act != "none" or consumers.get(p) != [index]:
            continue
        others = [q for q in add.inputs if q != p]
        if layout_out[p] == PLAIN or all(q >= 0 and layout_out[q] == BLOCKED for q in others):
            return layout_out[p]
    return None
