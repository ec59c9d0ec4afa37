"""Importance criteria: score each channel of a coupled group; the lowest are removed.

A criterion is registered by name and built as a Torch-Pruning importance object (a
callable on a group returning one score per channel, aggregated over the group's layers).
"""
from __future__ import annotations

from typing import Callable

import torch_pruning as tp

from .registry import Registry

CRITERIA: Registry[Callable[[], tp.importance.Importance]] = Registry("criterion")


@CRITERIA.register("l1")
def l1() -> tp.importance.Importance:
    """Sum of absolute weights over the group (Li et al., 2017)."""
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean")


@CRITERIA.register("l2")
def l2() -> tp.importance.Importance:
    """Euclidean norm of the group's weights."""
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")


@CRITERIA.register("random")
def random() -> tp.importance.Importance:
    """Random scores: the control every criterion should beat."""
    return tp.importance.RandomImportance()
