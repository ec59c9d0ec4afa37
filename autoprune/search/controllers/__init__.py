"""Search controllers behind one ask/tell interface, registered by name."""
from autoprune.search.controllers.base import CONTROLLERS, Controller, Proposal, random_choice, random_plan
from autoprune.search.controllers import baselines, evolution, knapsack, optuna_samplers, rl  # noqa: F401  (register random, uniform, evolution, knapsack, nsga2, tpe, rl)

__all__ = ["CONTROLLERS", "Controller", "Proposal", "random_choice", "random_plan"]
