"""Built-in CNNs: a ResNet-style network (residual adds couple channels across blocks)
and a MobileNetV2-style one (depthwise convolutions, inverted residuals).

Both take any input size and channel count, so one definition serves the 8x8 digits and
28x28 Fashion-MNIST tasks. Tiny widths are registered too, to keep tests fast.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from autoprune.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "autoprune.models")


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, act=False)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a stem, three stages of ``depth`` basic blocks, pool, classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), depth: int = 3) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, widths[0])
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, width in enumerate(widths):
            for i in range(depth):
                blocks.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2-style network: stem, inverted-residual stages, 1x1 head conv, pool, classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        stages: Sequence[tuple[int, int, int]] = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (64, 2, 1)),
        stem: int = 16,
        head: int = 128,
        expand: int = 4,
    ) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, stem)
        blocks: list[nn.Module] = []
        cin = stem
        for width, repeats, stride in stages:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, width, stride if i == 0 else 1, 1 if cin == stem and not blocks else expand))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


@MODELS.register("resnet")
def resnet(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """ResNet-20 layout (3 stages x 3 blocks), widths 32/64/128."""
    return ResNet(in_channels, num_classes, widths=(32, 64, 128), depth=3)


@MODELS.register("resnet20")
def resnet20(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The classic ResNet-20 (widths 16/32/64)."""
    return ResNet(in_channels, num_classes, widths=(16, 32, 64), depth=3)


@MODELS.register("mobilenetv2")
def mobilenetv2(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A MobileNetV2-style network sized for 8x8 to 32x32 inputs."""
    return MobileNetV2(in_channels, num_classes)


@MODELS.register("resnet-tiny")
def resnet_tiny(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """Two stages of one block: for tests."""
    return ResNet(in_channels, num_classes, widths=(8, 16), depth=1)


@MODELS.register("mobilenetv2-tiny")
def mobilenetv2_tiny(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """Three small inverted-residual blocks: for tests."""
    return MobileNetV2(in_channels, num_classes, stages=((8, 1, 1), (16, 2, 2)), stem=8, head=32, expand=2)
