"""Where autoprune's files live: the data shipped inside the package (built-in search spaces,
reference device profiles) and the user's own writable data folder.

Shipped data is read with :mod:`importlib.resources` and never written: an installed
package may sit in a read-only location, and a reference table describes the machine it was
measured on, not the user's. What a user measures goes into :func:`user_profiles_dir`.
"""
from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

#: Folders of package data; in a source checkout they are the repository's top-level folders.
SEARCH_SPACES, DEVICE_PROFILES = "search_spaces", "device_profiles"


def shipped_dir(kind: str) -> Path:
    """The shipped folder ``kind`` (:data:`SEARCH_SPACES` or :data:`DEVICE_PROFILES`).

    An installed wheel holds it inside the package (``autoprune/<kind>``); an editable
    install or a source checkout on ``sys.path`` reads the repository's top-level folder.
    """
    inside = resources.files("autoprune").joinpath(kind)
    if inside.is_dir():
        return Path(str(inside))
    return Path(str(resources.files("autoprune"))).parent / kind


def user_data_dir() -> Path:
    """The per-user data folder of autoprune: ``$XDG_DATA_HOME/autoprune`` (default
    ``~/.local/share/autoprune``), ``~/Library/Application Support/autoprune`` on macOS,
    ``%LOCALAPPDATA%\\autoprune`` on Windows."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "autoprune"


def user_profiles_dir() -> Path:
    """Where the user's device profiles live (and new tables are written):
    ``$AUTOPRUNE_PROFILES``, else ``device_profiles`` in :func:`user_data_dir`."""
    env = os.environ.get("AUTOPRUNE_PROFILES")
    return Path(env).expanduser() if env else user_data_dir() / DEVICE_PROFILES


def builtin_search_spaces() -> list[str]:
    """Names of the shipped search spaces (``search_space: NAME`` in a config)."""
    return sorted(p.stem for p in shipped_dir(SEARCH_SPACES).glob("*.yaml"))
