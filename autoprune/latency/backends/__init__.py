"""Device backends: export a model to a runtime's format, run it and time it."""
from autoprune.latency.backends import (
    onnxruntime,  # noqa: F401  (registers onnxruntime-cpu, onnxruntime-cuda)
    tflite,  # noqa: F401  (registers tflite)
    torch_backend,  # noqa: F401  (registers torch-cpu, torch-cuda)
)
from autoprune.latency.backends.base import BACKENDS, Backend, get_backend, unfused_attention
from autoprune.latency.timing import LatencyStats, Runner, time_runner

__all__ = ["BACKENDS", "Backend", "LatencyStats", "Runner", "get_backend", "time_runner", "unfused_attention"]
