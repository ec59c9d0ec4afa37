"""A plan: for each prunable unit, the granularity, pruning ratio and criterion to apply.

Plain data: frozen, hashable, and round-trips through JSON, so controllers, the local
executor and Ray workers pass it around freely. Units absent from a plan are left dense.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

RATIO_DECIMALS = 6


@dataclass(frozen=True)
class UnitChoice:
    """What to do to one unit. ``pruning_ratio`` is the fraction removed, in [0, 1)."""

    granularity: str
    pruning_ratio: float
    criterion: str = "l1"

    def __post_init__(self) -> None:
        if not 0.0 <= self.pruning_ratio < 1.0:
            raise ValueError(f"`0 <= pruning_ratio < 1` must hold, but got pruning_ratio={self.pruning_ratio}")
        object.__setattr__(self, "pruning_ratio", round(float(self.pruning_ratio), RATIO_DECIMALS))

    @property
    def active(self) -> bool:
        """Whether this choice changes the network at all."""
        return self.pruning_ratio > 0 and self.granularity != "none"

    def to_dict(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "pruning_ratio": self.pruning_ratio, "criterion": self.criterion}


@dataclass(frozen=True)
class Plan:
    """Unit name -> :class:`UnitChoice`, stored sorted so equal plans hash equal."""

    choices: tuple[tuple[str, UnitChoice], ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        """Build from ``{unit: {"granularity": .., "pruning_ratio": .., "criterion": ..}}``."""
        items = []
        for unit, choice in data.items():
            items.append((str(unit), choice if isinstance(choice, UnitChoice) else UnitChoice(**choice)))
        return cls(tuple(sorted(items)))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    @classmethod
    def uniform(cls, units: list[str], pruning_ratio: float, granularity: str = "channel", criterion: str = "l1") -> "Plan":
        """The same choice for every unit: the uniform-pruning baseline."""
        return cls.from_dict({u: UnitChoice(granularity, pruning_ratio, criterion) for u in units})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {unit: choice.to_dict() for unit, choice in self.choices}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        """A short content hash: equal plans (ignoring inactive entries) share a key."""
        active = {u: c.to_dict() for u, c in self.choices if c.active}
        return hashlib.sha1(json.dumps(active, sort_keys=True).encode()).hexdigest()[:16]

    def __getitem__(self, unit: str) -> UnitChoice:
        for name, choice in self.choices:
            if name == unit:
                return choice
        raise KeyError(unit)

    def __iter__(self) -> Iterator[tuple[str, UnitChoice]]:
        return iter(self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def mean_ratio(self) -> float:
        """Average pruning ratio over the plan's units (a quick summary for tables)."""
        return sum(c.pruning_ratio for _, c in self.choices) / len(self.choices) if self.choices else 0.0
