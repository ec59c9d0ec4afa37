"""Tasks: a model, its data and its metric (built-in ones train their dense model once and cache it)."""
from autoprune.tasks import text  # noqa: F401  (registers the "minilm" task)
from autoprune.tasks.base import (
    FASHION_MNIST_DIRS,
    TASKS,
    Task,
    accuracy,
    cache_dir,
    cross_entropy,
    digits,
    fashion_mnist,
    load_task,
    read_idx,
    train_dense,
)
from autoprune.tasks.models import MODELS

__all__ = [
    "FASHION_MNIST_DIRS",
    "MODELS",
    "TASKS",
    "Task",
    "accuracy",
    "cache_dir",
    "cross_entropy",
    "digits",
    "fashion_mnist",
    "load_task",
    "read_idx",
    "train_dense",
]
