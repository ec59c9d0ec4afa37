"""Multi-objective selection over trial records: non-dominated rank and crowding distance
(Deb et al., 2002), on objective values turned so that every column is minimised."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from autoprune.core.objectives import Objective
from autoprune.core.pareto import pareto_mask
from autoprune.core.records import COMPLETE, TrialResult


def minimised(result: TrialResult, objectives: Sequence[Objective]) -> np.ndarray:
    """The record's objective values, maximised ones negated."""
    return np.array([o.sign * o.value(result) for o in objectives], dtype=float)


def usable(result: TrialResult, objectives: Sequence[Objective]) -> bool:
    """Whether a record can be ranked: complete, with every objective present and finite."""
    if result.state != COMPLETE:
        return False
    try:
        return bool(np.all(np.isfinite(minimised(result, objectives))))
    except (KeyError, TypeError, ValueError):
        return False


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front number of each row (0 for the non-dominated rows, 1 for those next, ...)."""
    points = np.asarray(points, dtype=float)
    ranks = np.full(len(points), -1, dtype=int)
    left = np.arange(len(points))
    rank = 0
    while len(left):
        front = pareto_mask(points[left])
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    return ranks


def crowding_distances(points: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Crowding distance of each row within its front; each front's extremes get infinity."""
    points = np.asarray(points, dtype=float)
    distance = np.zeros(len(points))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        if len(members) <= 2:
            distance[members] = np.inf
            continue
        for k in range(points.shape[1]):
            values = points[members, k]
            order = members[np.argsort(values, kind="stable")]
            span = values.max() - values.min()
            distance[order[0]] = distance[order[-1]] = np.inf
            if span > 0:
                sorted_values = points[order, k]
                distance[order[1:-1]] += (sorted_values[2:] - sorted_values[:-2]) / span
    return distance
