"""The declarative search space: per unit pattern, which granularities, ratios and
criteria the controller may choose; which units are never pruned.

A YAML file holds :class:`SearchSpace`; :meth:`SearchSpace.resolve` binds it to a model's
units, checking that every pattern matches something.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from autoprune.core.errors import ConfigError
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.yamlio import load_model
from autoprune.pruning.units import Unit


class RatioRange(BaseModel):
    """Pruning ratios from ``low`` to ``high`` inclusive, on a grid of ``step`` (or continuous if null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(0.0, ge=0, lt=1)
    high: float = Field(..., ge=0, lt=1)
    step: Optional[float] = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> "RatioRange":
        if self.low > self.high:
            raise ValueError(f"`low <= high` must hold, but got (low={self.low}, high={self.high})")
        if self.step is not None:
            span = self.high - self.low
            steps = round(span / self.step)
            if abs(steps * self.step - span) > 1e-4:  # a samplers' grid would end short of high, or shift
                raise ValueError(
                    f"`step` must divide `high - low` so that the grid lands on both ends, but step={self.step} does not divide "
                    f"{span:g} (low={self.low}, high={self.high}); a step of {span / max(steps, 1):.4g} does "
                    "(step defaults to 0.1; step: null makes the range continuous)"
                )
        return self

    def grid(self) -> list[float]:
        """The allowed ratios when ``step`` is set."""
        if self.step is None:
            return [self.low, self.high]
        n = int(round((self.high - self.low) / self.step))
        return [round(min(self.low + i * self.step, self.high), 6) for i in range(n + 1)]


class Rule(BaseModel):
    """Choices for the units whose name (or any of whose layers) matches ``match``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: Union[str, list[str]] = "*"
    granularities: list[str] = Field(default_factory=lambda: ["channel"], min_length=1)
    pruning_ratio: RatioRange = RatioRange(low=0.0, high=0.7, step=0.1)
    criteria: list[str] = Field(default_factory=lambda: ["l1"], min_length=1)
    channel_multiple: int = Field(1, ge=1, description="round kept channel counts to a multiple of this")
    required: bool = Field(True, description="a rule that matches no unit of the model is an error; false lets a shared space offer e.g. depth units to models that have them")

    @property
    def patterns(self) -> list[str]:
        return [self.match] if isinstance(self.match, str) else list(self.match)

    @field_validator("granularities")
    @classmethod
    def _known_granularities(cls, value: list[str]) -> list[str]:
        from autoprune.pruning.granularity import GRANULARITIES

        unknown = [g for g in value if g not in GRANULARITIES]
        if unknown:
            raise ValueError(f"unknown granularity {unknown[0]!r}; known: {', '.join(GRANULARITIES.names())}")
        return value

    @field_validator("criteria")
    @classmethod
    def _known_criteria(cls, value: list[str]) -> list[str]:
        from autoprune.pruning.criteria import CRITERIA

        unknown = [c for c in value if c not in CRITERIA]
        if unknown:
            raise ValueError(f"unknown criterion {unknown[0]!r}; known: {', '.join(CRITERIA.names())}")
        return value

    def matches(self, unit: Unit) -> bool:
        """The unit's name or a layer matches, and every granularity offered applies to its kind."""
        from autoprune.pruning.granularity import GRANULARITIES

        if not all(unit.kind in GRANULARITIES.get(g).kinds for g in self.granularities):
            return False
        return any(fnmatch.fnmatchcase(unit.name, p) or any(fnmatch.fnmatchcase(l, p) for l in unit.layers) for p in self.patterns)


@dataclass(frozen=True)
class UnitSpace:
    """The choices open to one unit, once the space is bound to a model."""

    unit: Unit
    rule: Rule


class SearchSpace(BaseModel):
    """Rules are tried in order; the first that matches a unit decides its choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=lambda: [Rule()], min_length=1)
    protect: list[str] = Field(default_factory=lambda: ["stem", "classifier"], description="never pruned")
    _source: str = PrivateAttr(default="<search space>")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SearchSpace":
        """Read and validate a search-space YAML file."""
        space = load_model(cls, Path(path))
        space._source = str(path)
        return space

    @property
    def source(self) -> str:
        return self._source

    def resolve(self, units: list[Unit]) -> dict[str, UnitSpace]:
        """Bind to a model's units: unit name -> its choices; a required rule matching nothing is an error."""
        bound: dict[str, UnitSpace] = {}
        for i, rule in enumerate(self.rules):
            hits = [u for u in units if rule.matches(u)]
            if not hits and rule.required:
                known = ", ".join(u.name for u in units[:12]) + (" ..." if len(units) > 12 else "")
                raise ConfigError(f"{self.source}: rules[{i}].match {rule.match!r} matches no prunable unit; units are: {known}")
            for unit in hits:
                bound.setdefault(unit.name, UnitSpace(unit, rule))
        return {u.name: bound[u.name] for u in units if u.name in bound}


def random_choice(unit_space: UnitSpace, rng: np.random.Generator) -> UnitChoice:
    """A uniformly random choice for one unit within its rule."""
    rule = unit_space.rule
    granularity = rule.granularities[rng.integers(len(rule.granularities))]
    criterion = rule.criteria[rng.integers(len(rule.criteria))]
    if rule.pruning_ratio.step is None:
        ratio = float(rng.uniform(rule.pruning_ratio.low, rule.pruning_ratio.high))
    else:
        grid = rule.pruning_ratio.grid()
        ratio = grid[rng.integers(len(grid))]
    return UnitChoice(granularity, ratio, criterion)


def random_plan(space: Mapping[str, UnitSpace], rng: np.random.Generator) -> Plan:
    """A plan drawn uniformly from the space, unit by unit."""
    return Plan.from_dict({name: random_choice(us, rng) for name, us in space.items()})
