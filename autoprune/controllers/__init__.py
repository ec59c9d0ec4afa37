"""Search controllers behind one ask/tell interface, registered by name."""
from .base import CONTROLLERS, Controller, Proposal, random_choice, random_plan
from . import baselines, optuna_samplers  # noqa: F401  (register random, uniform, nsga2, tpe)

__all__ = ["CONTROLLERS", "Controller", "Proposal", "random_choice", "random_plan"]
