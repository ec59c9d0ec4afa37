"""Core types, plain data: the config and its recipes, plans, trial records, objectives, errors, the registry.

Imports no framework (no torch, no Optuna): everything else builds on it.
"""
from autoprune.core.config import Config, load_config
from autoprune.core.errors import AutopruneError, ConfigError, UnknownNameError
from autoprune.core.objectives import Objective, build_objectives
from autoprune.core.plan import Plan, UnitChoice
from autoprune.core.recipes import Distillation, FinetuneRecipe, IterativeSchedule
from autoprune.core.records import COMPLETE, FAILED, STOPPED, TrialResult
from autoprune.core.registry import Registry

__all__ = [
    "AutopruneError",
    "COMPLETE",
    "Config",
    "ConfigError",
    "Distillation",
    "FAILED",
    "FinetuneRecipe",
    "IterativeSchedule",
    "Objective",
    "Plan",
    "Registry",
    "STOPPED",
    "TrialResult",
    "UnitChoice",
    "UnknownNameError",
    "build_objectives",
    "load_config",
]
