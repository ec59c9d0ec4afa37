"""Search: the trial context, the one trial function, the controllers, stopping, and the local executor.

The Ray Tune executor is :mod:`autoprune.search.ray_executor` (it imports ray).
"""
from autoprune.search.context import build_context, dense_baseline
from autoprune.search.controllers import CONTROLLERS, Controller, Proposal
from autoprune.search.executor import open_study, run_study
from autoprune.search.trial import TrialContext, prune, run_trial

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
