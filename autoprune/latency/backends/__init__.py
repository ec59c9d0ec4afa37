"""Device backends: export a model to a runtime's format, run it and time it."""
from autoprune.latency.backends.base import BACKENDS, Backend, LatencyStats, Runner, get_backend, time_runner
from autoprune.latency.backends import onnxruntime  # noqa: F401  (registers onnxruntime-cpu, onnxruntime-cuda)
from autoprune.latency.backends import tflite  # noqa: F401  (registers tflite)
from autoprune.latency.backends import torch_backend  # noqa: F401  (registers torch-cpu, torch-cuda)

__all__ = ["BACKENDS", "Backend", "LatencyStats", "Runner", "get_backend", "time_runner"]
