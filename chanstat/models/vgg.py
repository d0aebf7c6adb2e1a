"""A VGG-style classifier for any number of input channels."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class VGGClassifier(nn.Module):
    """Conv-ReLU blocks with max pooling, global average pooling and a linear head.

    Every ReLU is its own non-inplace module so DeepLift and guided backpropagation can hook
    them; global pooling makes the network accept any H and W (no H == W assumption).

    Parameters
    ----------
    in_channels : number of stains C.
    n_classes : number of classes.
    widths : output channels of each block; each block halves H and W.
    convs_per_block : convolutions per block.
    dropout : dropout before the final linear layer.
    batch_norm : add BatchNorm after each convolution. Off by default: with the small,
        well-grouped training sets of a screen, running statistics lag the batch statistics
        and eval-mode accuracy collapses.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_block: int = 2,
        dropout: float = 0.2,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 2:
            raise ValueError(f"need in_channels >= 1 and n_classes >= 2; got {in_channels}, {n_classes}")
        self.config: dict[str, Any] = dict(
            in_channels=int(in_channels),
            n_classes=int(n_classes),
            widths=[int(w) for w in widths],
            convs_per_block=int(convs_per_block),
            dropout=float(dropout),
            batch_norm=bool(batch_norm),
        )
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            for _ in range(convs_per_block):
                conv = nn.Conv2d(prev, width, 3, padding=1, bias=not batch_norm)
                layers += [conv, nn.BatchNorm2d(width), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]
                prev = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(prev, n_classes))
        # Per-channel standardisation lives inside the model so attributions stay in the
        # units of the images the user passes in.
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def set_input_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and standard deviation subtracted/divided before the first layer."""
        c = self.in_channels
        self.input_mean: torch.Tensor
        self.input_std: torch.Tensor
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6).reshape(1, c, 1, 1))

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, widths[-1])."""
        mean, std = self.get_buffer("input_mean"), self.get_buffer("input_std")
        return self.flatten(self.pool(self.features((x - mean) / std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"model expects input (N, {self.in_channels}, H, W); got {tuple(x.shape)}")
        return self.classifier(self.embed(x))


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` of a model: the usual layer for Grad-CAM and friends."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no nn.Conv2d layer; pass layer= explicitly")
    return convs[-1]


def expected_channels(model: nn.Module) -> int | None:
    """Number of input channels a model takes (first Conv2d), or None if unknown."""
    declared = getattr(model, "in_channels", None)
    if isinstance(declared, int):
        return declared
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None
