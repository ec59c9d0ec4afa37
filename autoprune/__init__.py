"""autoprune: hardware-aware automated pruning search.

Search per-layer pruning ratio and granularity, score candidates on accuracy after a short
fine-tune and on latency per target device, keep a Pareto front per device, export the best
model per device::

    import autoprune

    study = autoprune.search("study.yaml")          # or a Config, or a dict of its keys
    study.front(device="onnxruntime-cpu", max_latency_ms=0.2)   # a pandas DataFrame
    result = study.export("onnxruntime-cpu", max_latency_ms=0.2)
    study = autoprune.load_study("runs/study")      # a study written earlier
"""
import os
from importlib import import_module
from typing import Any

from autoprune import _moved

__version__ = "0.1.0"

# ONNX Runtime writes a device id and a telemetry database under ~/.cache when it is first
# imported unless this is set; autoprune leaves nothing behind and reports nothing. A
# user's explicit setting wins (it must be made before onnxruntime is imported).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

#: Public name -> submodule. Imported on first use, so ``python -m autoprune.agent`` on a
#: device without torch does not import it.
_LAZY = {
    "search": "api", "Study": "api", "load_study": "api", "ExportResult": "deploy.export",
    "Config": "core.config", "load_config": "core.config",
    "AutopruneError": "core.errors", "ConfigError": "core.errors",
    "Plan": "core.plan", "UnitChoice": "core.plan",
    "TrialResult": "core.records",
    "TASKS": "tasks", "Task": "tasks", "load_task": "tasks",
    "run_trial": "engine.trial",
}

_moved.install()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AutopruneError",
    "Config",
    "ConfigError",
    "ExportResult",
    "Plan",
    "Study",
    "TASKS",
    "Task",
    "TrialResult",
    "UnitChoice",
    "__version__",
    "load_config",
    "load_study",
    "load_task",
    "run_trial",
    "search",
]
