"""Results: the study directory (records, config, baseline, Optuna storage), the Pareto front and its queries.

The report's plots are in :mod:`autoprune.results.report` (it imports matplotlib).
"""
from autoprune.results.front import device_front, front, select_member
from autoprune.results.study import Study

__all__ = [
    "Study",
    "device_front",
    "front",
    "select_member",
]
