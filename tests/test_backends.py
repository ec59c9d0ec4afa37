"""Real round trips through every registered device backend: export, run, compare with PyTorch, time.

Backends that cannot run here skip with their own reason; nothing is mocked. The one
deliberately unavailable backend is made so by blocking its package in ``sys.modules``,
which is how Python itself reports a missing package.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.core.errors import BackendUnavailableError
from autoprune.latency.backends import BACKENDS, Backend, get_backend

torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """Conv-bn-relu, depthwise conv-bn with a residual add, adaptive pool, linear head."""

    def __init__(self, in_ch: int = 3, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(y + self.dw(y))
        return self.fc(torch.flatten(self.pool(y), 1))


class FeatureMap(nn.Module):
    """Returns a 4-D NCHW feature map, so a layout change at the output would show."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _seeded(model: nn.Module) -> nn.Module:
    """Random weights and non-trivial batch-norm statistics, in eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _input(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _marks(name: str) -> list[pytest.MarkDecorator]:
    marks = []
    if name == "tflite":
        marks.append(pytest.mark.tflite)
    if "cuda" in name:
        marks.append(pytest.mark.gpu)
    return marks


def _available(name: str) -> Backend:
    backend = get_backend(name)
    ok, why = backend.available()
    if not ok:
        pytest.skip(f"{name}: {why}")
    return backend


def _roundtrip(backend: Backend, model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Export, load and run once; assert the output equals PyTorch's in shape and value."""
    with torch.no_grad():
        expected = model(x).numpy()
    out_path = backend.export(model, x, path)
    assert out_path.is_file() and out_path.stat().st_size > 0
    got = backend.load(out_path, threads=1)(x.numpy())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    return out_path


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in BACKENDS.names()])
def test_export_run_measure_matches_torch(name: str, tmp_path: Path) -> None:
    backend = _available(name)
    x = _input(1, 3, 16, 16)
    path = _roundtrip(backend, _seeded(TinyCNN()), x, tmp_path / f"tiny{backend.suffix}")

    stats = backend.measure(path, x.numpy(), threads=1, warmup=2, repeats=10)
    assert math.isfinite(stats.median_ms) and stats.median_ms > 0
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.repeats == 10
    versions = backend.versions()
    assert versions and all(isinstance(v, str) and v for v in versions.values())


@pytest.mark.parametrize("name", BACKENDS.names())
def test_unavailable_backend_says_why(name: str, tmp_path: Path) -> None:
    backend = get_backend(name)
    ok, why = backend.available()
    if ok:
        pytest.skip(f"{name} is available here")
    assert why
    with pytest.raises(BackendUnavailableError, match=name) as info:
        backend.load(tmp_path / f"model{backend.suffix}")
    assert why in str(info.value)


def test_missing_litert_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = get_backend("tflite")
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    ok, why = backend.available()
    assert not ok and "litert-torch is not installed" in why and "pip install" in why
    with pytest.raises(BackendUnavailableError, match="litert-torch is not installed"):
        backend.export(TinyCNN(), _input(1, 3, 16, 16), tmp_path / "m.tflite")

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(BackendUnavailableError, match="ai-edge-litert is not installed"):
        backend.load(tmp_path / "m.tflite")


@pytest.mark.tflite
def test_tflite_repeated_conversions_keep_nchw(tmp_path: Path) -> None:
    backend = _available("tflite")
    _roundtrip(backend, _seeded(FeatureMap()), _input(1, 1, 8, 8), tmp_path / "a.tflite")
    _roundtrip(backend, _seeded(TinyCNN(in_ch=1)), _input(1, 1, 8, 8), tmp_path / "b.tflite")


def test_torch_cpu_measure_restores_caller_threads(tmp_path: Path) -> None:
    backend = _available("torch-cpu")
    x = _input(1, 1, 8, 8)
    path = backend.export(_seeded(TinyCNN(in_ch=1)), x, tmp_path / "m.pt2")
    before = torch.get_num_threads()
    backend.measure(path, x.numpy(), threads=before + 1, warmup=1, repeats=3)
    assert torch.get_num_threads() == before
