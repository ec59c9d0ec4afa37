"""Tasks: a model, its data and its metric (built-in ones train their dense model once and cache it)."""
from autoprune.tasks.zoo import prepare_torchvision

prepare_torchvision()  # before anything (transformers too) imports a torchvision whose C extension cannot load

from autoprune.tasks import text  # noqa: E402,F401  (registers the "minilm" task)
from autoprune.tasks.base import (  # noqa: E402
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
from autoprune.tasks.models import MODELS  # noqa: E402
from autoprune.tasks.zoo import import_torchvision, torchvision_model  # noqa: E402

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
    "import_torchvision",
    "prepare_torchvision",
    "torchvision_model",
]
