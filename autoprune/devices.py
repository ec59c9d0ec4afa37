"""Device profiles: a named folder under ``device_profiles/`` saying which runtime runs the
model, with how many threads, at which batch size and dtype, plus its latency table."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError
from .yamlio import load_model

PROFILE_FILE = "device.yaml"


def cpu_model() -> str:
    """This machine's CPU model as the OS names it (``/proc/cpuinfo``), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class DeviceProfile(BaseModel):
    """What a device is: the backend that runs models on it and how it is timed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    backend: str = Field(..., description="a registered device backend, e.g. onnxruntime-cpu")
    threads: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1)
    dtype: Literal["float32"] = "float32"
    warmup: int = Field(20, ge=0, description="untimed runs before timing")
    repeats: int = Field(100, ge=1, description="timed runs; the median is reported")
    local: bool = Field(True, description="the device is this machine, so missing table keys can be measured on demand")
    description: str = ""
    _path: Optional[Path] = None

    @property
    def path(self) -> Optional[Path]:
        return self._path


def profiles_dir() -> Path:
    """``$AUTOPRUNE_PROFILES``, else ``./device_profiles``, else the folder shipped beside the package."""
    env = os.environ.get("AUTOPRUNE_PROFILES")
    if env:
        return Path(env)
    here = Path.cwd() / "device_profiles"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "device_profiles"


def load_device(name: str, root: Optional[Path] = None) -> DeviceProfile:
    """Read ``device_profiles/NAME/device.yaml``; an unknown name lists the profiles that exist."""
    root = Path(root) if root else profiles_dir()
    path = root / name / PROFILE_FILE
    if not path.is_file():
        known = sorted(p.parent.name for p in root.glob(f"*/{PROFILE_FILE}")) if root.is_dir() else []
        raise ConfigError(f"device {name!r}: no profile at {path}; profiles in {root}: {', '.join(known) or 'none'}")
    profile = load_model(DeviceProfile, path)
    if profile.name != name:
        raise ConfigError(f"{path}: name: must equal the folder name {name!r} (got {profile.name!r})")
    from .backends import BACKENDS

    if profile.backend not in BACKENDS:
        raise ConfigError(f"{path}: backend: unknown device backend {profile.backend!r}; known: {', '.join(BACKENDS.names())}")
    profile._path = path.parent
    return profile
