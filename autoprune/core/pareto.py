"""The Pareto front as a plain function over plain points."""
from __future__ import annotations

import numpy as np


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Which rows of ``points`` (n x k, every column minimised) no other row dominates.

    Row a dominates row b when a <= b everywhere and a < b somewhere. Duplicates of a
    non-dominated point are all kept.
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be 2-D (n x k), got shape {points.shape}")
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        others = points
        dominated = np.all(others <= points[i], axis=1) & np.any(others < points[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both columns minimised) and bounded by ``reference``."""
    pts = np.asarray(points, dtype=float)
    pts = pts[np.all(pts < np.asarray(reference), axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    pts = pts[np.argsort(pts[:, 0])]
    area, prev_y = 0.0, reference[1]
    for x, y in pts:
        if y < prev_y:
            area += (reference[0] - x) * (prev_y - y)
            prev_y = y
    return area
