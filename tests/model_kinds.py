"""The kinds of model users bring, as factories (importable from a config: ``model_kinds:<kind>``).

Each factory takes ``in_channels`` and ``n_classes`` and returns a module in eval mode with
seeded weights. :data:`MODEL_KINDS` is the registry the tests (and the end-to-end matrix)
iterate over, so a new kind joins every test by being added here.
"""
from __future__ import annotations

import torch
from torch import nn

from chanstat.models import VGGClassifier
from chanstat.models.resnet import resnet18


class _Small(nn.Module):
    """A small convolutional classifier whose forward output shape is chosen by ``returns``."""

    def __init__(self, in_channels: int, n_outputs: int, returns: str = "tensor") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, n_outputs)
        self.returns = returns

    def forward(self, x):
        features = torch.flatten(self.pool(self.act(self.conv(x))), 1)
        logits = self.head(features)
        if self.returns == "tuple":
            return logits, features
        if self.returns == "dict":
            return {"features": features, "logits": logits}
        return logits


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


def vgg(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    return _seeded(lambda: VGGClassifier(in_channels, n_classes, widths=[8, 16]))


def resnet(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    """torchvision-style ResNet-18 (one ReLU module called twice per block), narrow for speed."""
    return _seeded(lambda: resnet18(in_channels, n_classes, width=8, small_input=True))


def one_logit(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    return _seeded(lambda: _Small(in_channels, 1))


def tuple_output(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    return _seeded(lambda: _Small(in_channels, n_classes, "tuple"))


def dict_output(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    return _seeded(lambda: _Small(in_channels, n_classes, "dict"))


def half(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    """bfloat16 weights (CPU kernels exist for it; float16 convolutions are GPU-only in places)."""
    return _seeded(lambda: _Small(in_channels, n_classes)).to(torch.bfloat16)


def torchscript(in_channels: int = 5, n_classes: int = 2) -> nn.Module:
    model = _seeded(lambda: _Small(in_channels, n_classes))
    return torch.jit.trace(model, torch.zeros(2, in_channels, 16, 16))


MODEL_KINDS = {
    "vgg": vgg, "resnet": resnet, "one_logit": one_logit, "tuple_output": tuple_output,
    "dict_output": dict_output, "half": half, "torchscript": torchscript,
}
