"""Device backends: export a model to a runtime's format, run it and time it."""
from .base import BACKENDS, Backend, LatencyStats, Runner, get_backend, time_runner
from . import onnxruntime  # noqa: F401  (registers onnxruntime-cpu, onnxruntime-cuda)
from . import tflite  # noqa: F401  (registers tflite)
from . import torch_backend  # noqa: F401  (registers torch-cpu, torch-cuda)

__all__ = ["BACKENDS", "Backend", "LatencyStats", "Runner", "get_backend", "time_runner"]
