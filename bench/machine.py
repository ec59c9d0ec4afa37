"""The machine a benchmark ran on, written beside every result."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata

from autoprune.latency.devices import cpu_model


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """CPU model, core count, load, OS, and the versions of the libraries that set the timings."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "load_1min_at_start": f"{load:.2f}",
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for package in ("autoprune", "torch", "torch-pruning", "onnxruntime", "ai-edge-litert", "litert-torch", "optuna", "ray"):
        info[package] = _version(package)
    return info


def machine_markdown() -> str:
    """The machine description as a markdown list."""
    return "\n".join(f"- {k}: {v}" for k, v in machine_info().items())
