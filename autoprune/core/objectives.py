"""Objectives: which numbers of a trial record the search trades off, and in which direction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from autoprune.core.config import OBJECTIVES
from autoprune.core.records import TrialResult


@dataclass(frozen=True)
class Objective:
    """One objective. ``device`` is set for per-device latency."""

    name: str
    direction: str
    device: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.name}.{self.device}" if self.device else self.name

    def value(self, result: TrialResult) -> float:
        if self.device is not None:
            return float(result.latency_ms[self.device])
        return float(getattr(result, self.name))

    @property
    def sign(self) -> float:
        """+1 to minimise as is, -1 to negate a maximised value."""
        return 1.0 if self.direction == "minimize" else -1.0


def build_objectives(names: Sequence[str], devices: Sequence[str]) -> list[Objective]:
    """Expand ``latency_ms`` into one objective per device."""
    out = []
    for name in names:
        if name == "latency_ms":
            out += [Objective(name, OBJECTIVES[name], d) for d in devices]
        else:
            out.append(Objective(name, OBJECTIVES[name]))
    return out


def values(result: TrialResult, objectives: Sequence[Objective]) -> list[float]:
    return [o.value(result) for o in objectives]
