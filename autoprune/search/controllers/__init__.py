"""Search controllers behind one ask/tell interface, registered by name."""
from autoprune.pruning.space import random_choice, random_plan
from autoprune.search.controllers import (  # noqa: F401  (register random, uniform, evolution, knapsack, nsga2, tpe, rl)
    baselines,
    evolution,
    knapsack,
    optuna_samplers,
    rl,
)
from autoprune.search.controllers.base import CONTROLLERS, Controller, Proposal

__all__ = ["CONTROLLERS", "Controller", "Proposal", "random_choice", "random_plan"]
