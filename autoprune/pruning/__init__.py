"""Pruning: prunable units from the dependency graph, granularities, criteria, plans applied.

Knows nothing of the search: a plan comes in, a pruned model goes out.
"""
from autoprune.pruning import depth, heads, sparse  # noqa: F401  (register the layer, head and sparse granularities)
from autoprune.pruning.apply import apply_plan
from autoprune.pruning.criteria import CRITERIA, Calibration
from autoprune.pruning.granularity import (
    GRANULARITIES,
    PruneContext,
    fold_masks,
    register_granularity,
    sparsity,
)
from autoprune.pruning.metrics import macs, nonzero_params
from autoprune.pruning.space import Rule, SearchSpace, UnitSpace, random_plan
from autoprune.pruning.structure import search_units
from autoprune.pruning.units import Unit, prunable_units

__all__ = [
    "CRITERIA",
    "Calibration",
    "GRANULARITIES",
    "PruneContext",
    "Rule",
    "SearchSpace",
    "Unit",
    "UnitSpace",
    "apply_plan",
    "fold_masks",
    "macs",
    "nonzero_params",
    "prunable_units",
    "random_plan",
    "register_granularity",
    "search_units",
    "sparsity",
]
