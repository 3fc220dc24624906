"""The benchmarks' PyTorch peer: full pre-activation ResNets written plainly (paper Fig. 4(e)).

The same architecture as `keras_resnet_v2.ResNet(depth)` with the defaults: CIFAR bottleneck
units with the stride on the first 1x1 conv, ImageNet bottleneck units with the stride on the
3x3, a 1x1 projection (reading the pre-activated input) where the shape changes, BN-ReLU after
the last unit. `benchmarks/train.py` checks that the parameter counts agree with the Keras model.
"""

from __future__ import annotations

import torch
from torch import nn

# depth -> (family, units per stage); the Keras package's depth tables, for the depths benchmarked.
DEPTHS = {20: ("cifar_basic", (3, 3, 3)), 164: ("cifar", (18, 18, 18)), 1001: ("cifar", (111, 111, 111)),
          50: ("imagenet", (3, 4, 6, 3))}
WIDTHS = {"cifar_basic": (16, 32, 64), "cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # Keras momentum 0.9


class PreActBottleneck(nn.Module):
    """x_{l+1} = x_l + F(x_l), F = conv1x1, conv3x3, conv1x1 each after BN-ReLU (Eqn. 3)."""

    def __init__(self, in_channels: int, width: int, stride: int, stride_conv: int):
        super().__init__()
        out = 4 * width
        strides = [stride if i == stride_conv else 1 for i in range(3)]
        self.bn1, self.conv1 = _bn(in_channels), nn.Conv2d(in_channels, width, 1, strides[0], bias=False)
        self.bn2, self.conv2 = _bn(width), nn.Conv2d(width, width, 3, strides[1], 1, bias=False)
        self.bn3, self.conv3 = _bn(width), nn.Conv2d(width, out, 1, strides[2], bias=False)
        self.project = (nn.Conv2d(in_channels, out, 1, stride, bias=False)
                        if stride != 1 or in_channels != out else None)

    def forward(self, x):
        activated = torch.relu(self.bn1(x))
        shortcut = x if self.project is None else self.project(activated)
        y = self.conv1(activated)
        y = self.conv2(torch.relu(self.bn2(y)))
        y = self.conv3(torch.relu(self.bn3(y)))
        return shortcut + y


class PreActBasic(nn.Module):
    """x_{l+1} = x_l + F(x_l), F = two 3x3 convs each after BN-ReLU (ResNet-20/110's unit, Fig. 4(e))."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = _bn(in_channels), nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = _bn(width), nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.project = (nn.Conv2d(in_channels, width, 1, stride, bias=False)
                        if stride != 1 or in_channels != width else None)

    def forward(self, x):
        activated = torch.relu(self.bn1(x))
        shortcut = x if self.project is None else self.project(activated)
        return shortcut + self.conv2(torch.relu(self.bn2(self.conv1(activated))))


class PreActResNet(nn.Module):
    def __init__(self, depth: int, classes: int):
        super().__init__()
        family, units = DEPTHS[depth]
        widths = WIDTHS[family]
        if family.startswith("cifar"):
            self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            stride_conv = 0
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1))
            stride_conv = 1
        blocks, channels = [], widths[0]
        for stage, (width, n) in enumerate(zip(widths, units, strict=True)):
            for unit in range(n):
                stride = 2 if stage > 0 and unit == 0 else 1
                if family == "cifar_basic":
                    blocks.append(PreActBasic(channels, width, stride))
                    channels = width
                else:
                    blocks.append(PreActBottleneck(channels, width, stride, stride_conv))
                    channels = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.post_bn = _bn(channels)
        self.fc = nn.Linear(channels, classes)
        for module in self.modules():  # the authors' init: He normal over fan-out
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = torch.relu(self.post_bn(x))
        return self.fc(x.mean((2, 3)))
