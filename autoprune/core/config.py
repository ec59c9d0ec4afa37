"""The study configuration: one YAML file, validated up front, saved in the study directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from autoprune.core.errors import ConfigError
from autoprune.core.recipes import FinetuneRecipe, IterativeSchedule
from autoprune.core.yamlio import load_model, read_yaml, validation_message

OBJECTIVES = {"accuracy": "maximize", "latency_ms": "minimize", "params": "minimize", "macs": "minimize"}


class Budget(BaseModel):
    """When the search stops: after ``trials`` trials in all, or ``timeout_s`` seconds of this run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: Optional[int] = Field(40, ge=1, description="total trials, counting those of earlier runs")
    timeout_s: Optional[float] = Field(None, gt=0, description="wall-clock limit of one run")

    @model_validator(mode="after")
    def _some_limit(self) -> "Budget":
        if self.trials is None and self.timeout_s is None:
            raise ValueError("set `trials`, `timeout_s` or both")
        return self


class ExportOptions(BaseModel):
    """The longer fine-tune an exported model gets, and the quality bound it is checked against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    finetune: FinetuneRecipe = FinetuneRecipe(epochs=5, lr=0.01)
    iterative: Optional[IterativeSchedule] = Field(None, description="prune in steps with fine-tuning between (cubic schedule); null = one shot")
    max_class_drop: Optional[float] = Field(
        None, gt=0, lt=1, description="flag an exported classifier whose worst class lost more accuracy than this (0..1) against the dense model; null = never"
    )


class Stopping(BaseModel):
    """Multi-fidelity stopping: a trial reports accuracy at intermediate fine-tune steps and is
    stopped when, at the same step, another trial beats it on every objective by a margin
    (see :mod:`autoprune.engine.stopping`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rungs: list[float] = Field(default_factory=lambda: [0.25, 0.5], min_length=1, description="fractions of the fine-tune's steps at which accuracy is reported")
    accuracy_margin: float = Field(0.02, gt=0, lt=1, description="how much more accurate the other trial must be")
    latency_margin: float = Field(0.0, ge=0, lt=1, description="how much faster (fraction) it must be on every device")

    @field_validator("rungs")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value) or sorted(set(value)) != value:
            raise ValueError(f"`0 < rung < 1`, increasing, must hold for every rung, but got rungs={value}")
        return value


class Config(BaseModel):
    """A study: what to prune, where it must run fast, and how to search."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("study", description="the study's name (also the Optuna study name)")
    task: str = Field("digits", description="a built-in task name or module:function")
    task_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the task function")
    search_space: str = Field("cnn_channel_full", description="a built-in search space by name, or a search-space YAML file")
    devices: list[str] = Field(default_factory=lambda: ["onnxruntime-cpu"], min_length=1, description="device profiles: the user's, else the shipped ones")
    latency: Literal["auto", "lut", "measured"] = Field("auto", description="lookup table when the device has one, else measure")
    objectives: list[str] = Field(default_factory=lambda: ["accuracy", "latency_ms"], min_length=2)
    controller: str = Field("nsga2", description="a registered controller (checked when the search starts: see autoprune.engine.controllers)")
    controller_options: dict[str, Any] = Field(default_factory=dict)
    budget: Budget = Budget()
    finetune: FinetuneRecipe = FinetuneRecipe()
    export: ExportOptions = ExportOptions()
    study_dir: str = Field("runs/study", description="where the study's records, database and exports live")
    seed: int = 0
    storage: Optional[str] = Field(None, description="Optuna storage URL (e.g. postgresql://host/db); null = SQLite in the study_dir")
    stopping: Optional[Stopping] = Field(None, description="stop hopeless trials at intermediate fine-tune steps; null = never")
    min_accuracy: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="trials below this accuracy stay off the front and the report")
    max_accuracy_drop: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="likewise, trials more than this below the dense model's accuracy")
    _base: Optional[Path] = PrivateAttr(None)

    @property
    def base(self) -> Optional[Path]:
        """The folder of the file this config was read from, for relative paths."""
        return self._base

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
        if "accuracy" not in value:
            raise ValueError("objectives must include 'accuracy'")
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def search_space_path(self) -> Path:
        """The search-space file: as given, else beside the config, else a built-in space."""
        return resolve_file(self.search_space, self.base, "search_spaces")


def resolve_file(name: str, base: Optional[Path], shipped: str) -> Path:
    """Find a file given relative to the working directory or the config's folder, else a
    file shipped with autoprune in the package data folder ``shipped``, by name (``cnn_channel``)
    or by its path in the source tree (``search_spaces/cnn_channel.yaml``).

    A name found nowhere is returned as given, for the caller's not-found error.
    """
    from autoprune.core.paths import shipped_dir

    candidates = [Path(name)]
    if base is not None:
        candidates.append(base / name)
    root = shipped_dir(shipped)
    file = Path(name).name
    candidates += [root / file, root / f"{file}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    return Path(name)


def validate_config(data: dict[str, Any], source: str = "config") -> Config:
    """A config from its keys (the Python API's dict); errors name ``source`` and the key."""
    from pydantic import ValidationError

    from autoprune.core.yamlio import validation_message

    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(source, err)) from None


def load_config(path: str | Path, **overrides: Any) -> Config:
    """Read and validate a study config; ``overrides`` replace top-level keys (CLI flags)."""
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data, dict) and not data:
        raise ConfigError(f"{path}: no keys; a study config names at least its task, search_space and devices (see README, 'The study config')")
    config = load_model(Config, path)
    if overrides:
        try:
            config = Config.model_validate({**config.model_dump(), **overrides})
        except ValidationError as err:
            raise ConfigError(f"{validation_message(path, err)} (from the command line)") from None
    config._base = path.resolve().parent
    return config
