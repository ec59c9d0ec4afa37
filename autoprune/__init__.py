"""autoprune: hardware-aware automated pruning search.

Search per-layer pruning ratio and granularity, score candidates on accuracy after a short
fine-tune and on latency per target device, keep a Pareto front per device, export the best
model per device.
"""
from .config import Config, load_config
from .errors import AutopruneError, ConfigError
from .plan import Plan, UnitChoice
from .tasks import TASKS, Task, load_task
from .trial import TrialResult, run_trial

__version__ = "0.1.0"

__all__ = [
    "AutopruneError",
    "Config",
    "ConfigError",
    "Plan",
    "TASKS",
    "Task",
    "TrialResult",
    "UnitChoice",
    "__version__",
    "load_config",
    "load_task",
    "run_trial",
]
