"""Search: the trial context, the one trial function, the controllers, stopping, and the local executor.

The Ray Tune executor is :mod:`autoprune.engine.ray_executor` (it imports ray).
"""
from autoprune.engine.context import build_context, dense_baseline
from autoprune.engine.controllers import CONTROLLERS, Controller, Proposal
from autoprune.engine.executor import open_study, run_study
from autoprune.engine.trial import TrialContext, prune, run_trial

__all__ = [
    "CONTROLLERS",
    "Controller",
    "Proposal",
    "TrialContext",
    "build_context",
    "dense_baseline",
    "open_study",
    "prune",
    "run_study",
    "run_trial",
]
