"""Trial records: one evaluated plan per record, the study's source of truth (one JSON line each)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from autoprune.core.plan import Plan

#: Record states. A stopped trial was cut short by multi-fidelity stopping (see autoprune.engine.stopping).
COMPLETE, FAILED, STOPPED = "complete", "failed", "stopped"


@dataclass
class TrialResult:
    """One evaluated plan: the record a study keeps, one JSON line per trial."""

    number: int
    plan: dict[str, Any]
    plan_key: str
    state: str = COMPLETE
    accuracy: Optional[float] = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_source: dict[str, str] = field(default_factory=dict)  # per device: "lut" (lookup table) or "measured"
    params: Optional[int] = None
    macs: Optional[int] = None
    finetune_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None  # the exception, one line
    traceback: Optional[str] = None  # the full traceback of a failed trial
    trial_id: Optional[int] = None
    controller: Optional[str] = None
    cached: bool = False
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialResult":
        return cls(**data)

    def flat(self) -> dict[str, Any]:
        """One row for a table: latencies and timings spread into columns."""
        row = {k: v for k, v in self.to_dict().items() if k not in ("latency_ms", "latency_source", "timings", "plan", "traceback")}
        row.update({f"latency_ms.{d}": v for d, v in self.latency_ms.items()})
        row.update({f"latency_source.{d}": v for d, v in self.latency_source.items()})
        row.update({f"time_s.{k}": v for k, v in self.timings.items()})
        row["mean_ratio"] = Plan.from_dict(self.plan).mean_ratio()
        return row
