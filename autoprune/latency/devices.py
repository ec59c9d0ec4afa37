"""Device profiles: a named folder ``NAME/`` saying which runtime runs the model, with how
many threads, at which batch size and dtype, plus its latency table.

Profiles are looked up in the user's profile folder first (``$AUTOPRUNE_PROFILES``, else a
per-user data folder), then among the reference profiles shipped with autoprune. Shipped
profiles are never written: tables are written into the user's folder (see
:func:`writable_profile`)."""
from __future__ import annotations

import logging
import platform
import shutil
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from autoprune.core.errors import ConfigError
from autoprune.core.paths import DEVICE_PROFILES, shipped_dir, user_profiles_dir
from autoprune.core.yamlio import load_model

PROFILE_FILE = "device.yaml"
#: The latency table files of a profile (see :mod:`autoprune.latency.lut.table`).
TABLE_FILES = ("latency_table.csv", "latency_table.yaml")

log = logging.getLogger(__name__)


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


def profile_roots() -> list[Path]:
    """Folders searched for ``NAME/device.yaml``, first match wins: the user's profiles
    (:func:`autoprune.core.paths.user_profiles_dir`), then the reference profiles shipped with autoprune."""
    return [user_profiles_dir(), shipped_dir(DEVICE_PROFILES)]


def load_device(name: str, root: Optional[Path] = None) -> DeviceProfile:
    """Read ``NAME/device.yaml`` from ``root``, else from the first of :func:`profile_roots`
    that has it; an unknown name lists the profiles that exist."""
    roots = [Path(root)] if root else profile_roots()
    path = next((r / name / PROFILE_FILE for r in roots if (r / name / PROFILE_FILE).is_file()), None)
    if path is None:
        known = sorted({p.parent.name for r in roots if r.is_dir() for p in r.glob(f"*/{PROFILE_FILE}")})
        looked = " and ".join(str(r) for r in roots)
        raise ConfigError(f"device {name!r}: no profile {name}/{PROFILE_FILE} in {looked}; known devices: {', '.join(known) or 'none'}")
    profile = load_model(DeviceProfile, path)
    if profile.name != name:
        raise ConfigError(f"{path}: name: must equal the folder name {name!r} (got {profile.name!r})")
    from autoprune.latency.backends import BACKENDS

    if profile.backend not in BACKENDS:
        raise ConfigError(f"{path}: backend: unknown device backend {profile.backend!r}; known: {', '.join(BACKENDS.names())}")
    profile._path = path.parent
    return profile


def is_shipped(device: DeviceProfile) -> bool:
    """Whether the profile was read from the reference profiles shipped with autoprune (read-only)."""
    shipped = shipped_dir(DEVICE_PROFILES).resolve()
    return device.path is not None and device.path.resolve().parent == shipped


def writable_profile(device: DeviceProfile, with_table: bool) -> DeviceProfile:
    """The device's profile in the user's folder, where tables may be written.

    A shipped profile is copied there first: its ``device.yaml`` always, its latency table
    too when ``with_table`` (keys measured on demand extend a copy of the reference table;
    a new profiling run starts a table of this machine's own). A user profile is returned as is.
    """
    if not is_shipped(device):
        return device
    target = user_profiles_dir() / device.name
    if not (target / PROFILE_FILE).is_file():
        target.mkdir(parents=True, exist_ok=True)
        files = [PROFILE_FILE] + (list(TABLE_FILES) if with_table else [])
        for file in files:
            if (device.path / file).is_file():
                shutil.copyfile(device.path / file, target / file)
        log.info("device %r: copied the shipped profile to %s", device.name, target)
    return load_device(device.name, target.parent)
