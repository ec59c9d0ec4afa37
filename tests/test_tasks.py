"""Built-in tasks and user tasks given as module:function."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.core.errors import AutopruneError, ConfigError, UnknownNameError
from autoprune.tasks.base import FASHION_MNIST_DIRS, Task, load_task, read_idx


def test_digits_task_trains_a_useful_dense_model_and_caches_it(tiny_resnet_task, tmp_path):
    task = tiny_resnet_task
    assert task.example_input.shape == (1, 1, 8, 8)
    assert len(task.train) + len(task.val) == 1797
    assert task.metric(task.model, task.val) > 0.5  # 3 epochs of a tiny net: far above chance (0.1)
    again = load_task("digits", model="resnet-tiny", epochs=3)  # from the cache: identical weights
    for a, b in zip(task.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_idx_reader_round_trip(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in data.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + data.tobytes())
    assert np.array_equal(read_idx(path), data)
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(AutopruneError, match="not an unsigned-byte IDX file"):
        read_idx(bad)


@pytest.mark.skipif(not any(Path(d).is_dir() for d in FASHION_MNIST_DIRS), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_reads_the_real_idx_files():
    task = load_task("fashion-mnist", model="resnet-tiny", epochs=3, train_size=2000, val_size=500)
    assert task.example_input.shape == (1, 1, 28, 28)
    assert len(task.train) == 2000 and len(task.val) == 500
    assert task.metric(task.model, task.val) > 0.5  # chance is 0.1


@pytest.mark.skipif(not any(Path(d).is_dir() for d in FASHION_MNIST_DIRS), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_validation_held_out_of_the_training_split_keeps_the_dense_model():
    test = load_task("fashion-mnist", model="resnet-tiny", epochs=3, train_size=2000, val_size=500)
    held = load_task("fashion-mnist", model="resnet-tiny", epochs=3, train_size=2000, val_size=500, validation="train")
    assert len(held.train) == 1500 and len(held.val) == 500
    rows = lambda ds: {tuple(x.flatten()[::7].tolist()) for x, _ in ds}  # noqa: E731
    assert rows(held.train) | rows(held.val) == rows(test.train) and not rows(held.train) & rows(held.val)
    assert all(torch.equal(a, b) for a, b in zip(held.model.state_dict().values(), test.model.state_dict().values()))
    with pytest.raises(ConfigError, match="task_options.validation"):
        load_task("fashion-mnist", model="resnet-tiny", validation="holdout")


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(AutopruneError, match="dataset-fashion-mnist"):
        load_task("fashion-mnist", data_dir=str(tmp_path))


def make_user_task(scale: float = 1.0) -> Task:
    """A user's task: a linear classifier on random blobs."""
    torch.manual_seed(0)
    x = torch.randn(64, 4) * scale
    y = (x[:, 0] > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    return Task("blobs", torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), data, data, x[:1])


def test_user_task_by_module_path():
    task = load_task("tests.test_tasks:make_user_task", scale=2.0)
    assert task.name == "blobs"
    with pytest.raises(ConfigError, match="cannot import 'nope'"):
        load_task("tests.test_tasks:nope")
    with pytest.raises(ConfigError, match="bad task_options"):
        load_task("tests.test_tasks:make_user_task", colour="red")
    with pytest.raises(UnknownNameError, match="unknown task 'imagenet'; known: .*digits"):
        load_task("imagenet")
