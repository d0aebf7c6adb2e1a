"""A ResNet-18 in plain PyTorch, laid out like torchvision's, for any number of input channels.

Users of chanstat often bring a torchvision ResNet. torchvision's wheels do not load beside
the pinned CPU torch, so this module gives the same architecture (He et al. 2016: basic
blocks of two 3x3 convolutions, ``[2, 2, 2, 2]`` blocks of widths 64-512, global average
pooling, one linear head) with torchvision's attribute names (``conv1``, ``bn1``, ``relu``,
``maxpool``, ``layer1`` ... ``layer4``, ``avgpool``, ``fc``), including its habit of calling one
``ReLU`` module twice per block -- the case DeepLift needs :func:`unshared_nonlinearities
<chanstat.attribution.modelstate.unshared_nonlinearities>` for.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)  # called twice per forward, as in torchvision
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with basic blocks.

    Parameters
    ----------
    in_channels : int
        Image channels C (five for Cell Painting).
    n_classes : int
        Output scores K.
    blocks : sequence of int
        Blocks per stage (``(2, 2, 2, 2)``: ResNet-18).
    width : int
        Channels of the first stage; each later stage doubles them.
    small_input : bool
        For crops of ~32-96 px: a 3x3 stem without max pooling instead of the 7x7/2 stem and
        3x3/2 pooling meant for 224 px photographs.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1 or width < 1 or not blocks:
            raise ValueError(
                f"ResNet needs in_channels, n_classes, width >= 1 and blocks; got {in_channels}, "
                f"{n_classes}, {width}, {list(blocks)}"
            )
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, planes = [], width
        for i, n_blocks in enumerate(blocks):
            out_planes = width * 2**i
            layer = [BasicBlock(planes, out_planes, stride=1 if i == 0 else 2)]
            layer += [BasicBlock(out_planes, out_planes) for _ in range(int(n_blocks) - 1)]
            stages.append(nn.Sequential(*layer))
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(in_channels: int = 5, n_classes: int = 2, width: int = 64, small_input: bool = False) -> ResNet:
    """ResNet-18 (``[2, 2, 2, 2]`` basic blocks) for ``in_channels``-channel images."""
    return ResNet(in_channels, n_classes, (2, 2, 2, 2), width=width, small_input=small_input)
