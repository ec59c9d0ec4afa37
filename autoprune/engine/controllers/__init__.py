"""Search controllers behind one ask/tell interface, registered by name."""
from autoprune.engine.controllers import (  # noqa: F401  (register random, uniform, global, evolution, knapsack, nsga2, tpe, rl)
    baselines,
    evolution,
    knapsack,
    optuna_samplers,
    rl,
)
from autoprune.engine.controllers.base import CONTROLLERS, Controller, Proposal
from autoprune.pruning.space import random_choice, random_plan

__all__ = ["CONTROLLERS", "Controller", "Proposal", "random_choice", "random_plan"]
