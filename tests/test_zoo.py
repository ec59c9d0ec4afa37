"""torchvision's classification zoo beside the CPU torch: import, build, and what the
latency tables, the export and the pruning make of a fast subset of it."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

if importlib.util.find_spec("torchvision") is None:
    pytest.skip("torchvision is not installed (pip install 'autoprune[test]')", allow_module_level=True)


def test_torchvision_imports_in_a_fresh_process_and_builds_a_model() -> None:
    code = (
        "import autoprune.tasks, torch, torchvision\n"
        "from autoprune.tasks.zoo import torchvision_model\n"
        "m = torchvision_model('mobilenet_v3_small', num_classes=7).eval()\n"
        "print(tuple(m(torch.randn(1, 3, 32, 32)).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 7)"


def test_detection_ops_without_the_extension_fail_with_torchvision_s_own_error() -> None:
    from autoprune.tasks.zoo import import_torchvision

    torchvision = import_torchvision()
    if torchvision.extension._has_ops():
        pytest.skip("torchvision's C extension loads here: nms has a kernel")
    with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


def test_unknown_model_names_the_known_ones() -> None:
    from autoprune.core.errors import ConfigError
    from autoprune.tasks.zoo import torchvision_model

    with pytest.raises(ConfigError, match="'fasterrcnn_resnet50_fpn': not an image classification model; known: .*resnet18"):
        torchvision_model("fasterrcnn_resnet50_fpn")
