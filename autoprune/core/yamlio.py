"""Loading YAML files into pydantic models with errors that name the file and the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from autoprune.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file (None when it is empty); a missing file, bytes that are not UTF-8
    or a syntax error name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}); YAML files are UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None


def key_path(loc: tuple) -> str:
    """``("rules", 1, "match")`` -> ``rules[1].match``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_message(path: Path | str, err: ValidationError) -> str:
    """One line per problem: ``file: key: what was expected``."""
    lines = []
    for e in err.errors():
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        value = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e.get('input')!r})"
        lines.append(f"{path}: {key_path(e['loc'])}: {msg}{value}")
    return "; ".join(lines)


def load_model(model: type[M], path: Path) -> M:
    """Read ``path`` and validate it as ``model``; every error names the file and key."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of {model.__name__} keys")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {model.__name__} keys at the top level, got {type(data).__name__} {data!r}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(path, err)) from None
