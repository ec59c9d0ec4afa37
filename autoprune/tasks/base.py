"""Tasks: a model, its training and validation data, and the metric to keep high.

A task is any ``module:function`` returning a :class:`Task`; the built-ins are registered by
name. Built-ins train their dense model once and cache it (see :func:`cache_dir`), so a
study starts from a trained network as a user's own task would.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from autoprune.core.errors import AutopruneError, ConfigError, UnknownNameError
from autoprune.core.registry import Registry
from autoprune.tasks.models import MODELS
from autoprune.training.placement import model_device

Metric = Callable[[nn.Module, Dataset], float]
Loss = Callable[[nn.Module, Any], torch.Tensor]


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier on ``(x, y)`` pairs."""
    model.eval()
    correct = total = 0
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    with torch.no_grad():
        device = model_device(model)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def cross_entropy(model: nn.Module, batch: Any) -> torch.Tensor:
    """Classification loss on an ``(x, y)`` batch."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@dataclass
class Task:
    """What a study prunes and how it scores it.

    ``metric`` is maximised (accuracy by default); ``loss`` drives fine-tuning;
    ``example_input`` has batch size 1 and fixes the input shape for tracing and latency.
    """

    name: str
    model: nn.Module
    train: Dataset
    val: Dataset
    example_input: torch.Tensor
    metric: Metric = accuracy
    loss: Loss = cross_entropy
    metric_name: str = "accuracy"
    info: dict = field(default_factory=dict)


TASKS: Registry[Callable[..., Task]] = Registry("task", "autoprune.tasks")


def task_function(spec: str, options: Optional[dict[str, Any]] = None) -> Callable[..., Task]:
    """The function behind a task name or ``module:function`` path, checked against
    ``options`` (its keyword arguments) without running it."""
    if ":" in spec:
        module_name, _, func_name = spec.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"task {spec!r}: cannot import {func_name!r} from module {module_name!r} ({err})") from err
        if not callable(func):
            raise ConfigError(f"task {spec!r}: {func_name!r} in module {module_name!r} is not a function")
    else:
        try:
            func = TASKS.get(spec)
        except UnknownNameError as err:
            raise UnknownNameError(f"task: {err}") from None
    if options is not None:
        try:
            inspect.signature(func).bind(**options)
        except TypeError as err:
            raise ConfigError(f"task {spec!r}: bad task_options {options} ({err})") from None
        except ValueError:
            pass  # no signature to check (a builtin); calling it will tell
    return func


def load_task(spec: str, **options: Any) -> Task:
    """Build a task from a registered name or a ``module:function`` path."""
    func = task_function(spec)
    try:
        task = func(**options)
    except TypeError as err:
        raise ConfigError(f"task {spec!r}: bad task_options {options} ({err})") from err
    if not isinstance(task, Task):
        raise ConfigError(f"task {spec!r} returned {type(task).__name__}, expected autoprune.Task")
    return task


def cache_dir() -> Path:
    """Where trained dense models are cached: ``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``."""
    return Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))


def train_dense(
    model: nn.Module, train: Dataset, val: Dataset, key: str, epochs: int, lr: float = 0.05, batch_size: int = 64
) -> nn.Module:
    """Train ``model`` from scratch once (cosine-annealed SGD) and cache the weights under ``key``."""
    path = cache_dir() / "dense" / f"{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    from autoprune.core.recipes import FinetuneRecipe
    from autoprune.training.loop import finetune

    recipe = FinetuneRecipe(epochs=epochs, lr=lr, batch_size=batch_size, schedule="cosine")
    finetune(model, train, recipe, cross_entropy, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model.eval()


def _dense_key(*parts: Any) -> str:
    digest = hashlib.sha1(repr((parts, torch.__version__)).encode()).hexdigest()[:10]
    return f"{parts[0]}-{parts[1]}-{digest}"


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    as_ds = lambda idx: TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return as_ds(train), as_ds(val)


@TASKS.register("digits")
def digits(model: str = "resnet", epochs: int = 30, seed: int = 0) -> Task:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download): the embedded default."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    x = x[:, None]
    y = data.target.astype(np.int64)
    train, val = _split(x, y, 0.2, seed)
    net = MODELS.get(model)(in_channels=1, num_classes=10)
    torch.manual_seed(seed)
    net = train_dense(net, train, val, _dense_key("digits", model, epochs, seed), epochs)
    return Task(f"digits/{model}", net, train, val, torch.from_numpy(x[:1]), info={"dataset": "sklearn digits"})


FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # where Debian's dataset-fashion-mnist installs


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise AutopruneError(f"{path}: not an unsigned-byte IDX file (header {raw[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    raise AutopruneError(
        f"Fashion-MNIST file {stem}[.gz] not found under {root}; install Debian's dataset-fashion-mnist "
        "(apt-get install -y dataset-fashion-mnist) or pass task_options.data_dir"
    )


@TASKS.register("fashion-mnist")
def fashion_mnist(
    model: str = "resnet20",
    data_dir: Optional[str] = None,
    epochs: int = 8,
    train_size: Optional[int] = None,
    val_size: Optional[int] = 2000,
    seed: int = 0,
    validation: str = "test",
) -> Task:
    """Fashion-MNIST (28x28, 10 classes) read from IDX files.

    ``val_size`` takes a fixed subset as the validation set so a short fine-tune is scored
    quickly; ``train_size`` likewise subsamples the training split. ``validation`` says
    where that subset comes from: ``test`` (the official test split) or ``train`` (held out
    of the training split and left out of the task's training data, so a search that
    selects on it leaves the test split untouched for reporting; the dense model is the
    same either way, trained on the whole training split, as NetAdapt's holdout set is).
    """
    if validation not in ("test", "train"):
        raise ConfigError(f"task_options.validation: expected 'test' or 'train', got {validation!r}")
    if validation == "train" and not val_size:
        raise ConfigError("task_options.validation: 'train' needs a val_size (the images held out of the training split)")
    candidates = [Path(data_dir)] if data_dir else [Path(d) for d in FASHION_MNIST_DIRS if Path(d).exists()]
    if not candidates:
        raise AutopruneError(
            "Fashion-MNIST not found in " + ", ".join(FASHION_MNIST_DIRS)
            + "; install Debian's dataset-fashion-mnist or pass task_options.data_dir"
        )
    root = candidates[0]
    images = {part: read_idx(_find_idx(root, f"{part}-images-idx3-ubyte")) for part in ("train", "t10k")}
    labels = {part: read_idx(_find_idx(root, f"{part}-labels-idx1-ubyte")) for part in ("train", "t10k")}
    rng = np.random.default_rng(seed)

    def prepare(part: str, size: Optional[int]) -> TensorDataset:
        x = (images[part].astype(np.float32) / 255.0 - 0.286) / 0.353
        y = labels[part].astype(np.int64)
        if size is not None and size < len(x):
            idx = np.sort(rng.permutation(len(x))[:size])
            x, y = x[idx], y[idx]
        return TensorDataset(torch.from_numpy(x[:, None].copy()), torch.from_numpy(y.copy()))

    train, val = prepare("train", train_size), prepare("t10k", val_size)
    if validation == "train" and val_size >= len(train):
        raise ConfigError(f"task_options.val_size: {val_size} leaves none of the {len(train)} training images to train on")
    net = MODELS.get(model)(in_channels=1, num_classes=10)
    torch.manual_seed(seed)
    net = train_dense(net, train, val, _dense_key("fashion-mnist", model, epochs, train_size, seed), epochs)
    if validation == "train":
        held = np.random.default_rng(seed + 1).permutation(len(train))
        keep, out = np.sort(held[val_size:]), np.sort(held[:val_size])
        x, y = train.tensors
        train, val = TensorDataset(x[keep], y[keep]), TensorDataset(x[out], y[out])
    return Task(f"fashion-mnist/{model}", net, train, val, train[0][0][None].clone(), info={"dataset": str(root)})
