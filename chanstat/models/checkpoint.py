"""Saving and loading chanstat's own classifiers (``model.pt``); users' models load through
:mod:`chanstat.models.adapter`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from chanstat.models.vgg import VGGClassifier

ARCHITECTURES = {"vgg": VGGClassifier}


@dataclass
class Checkpoint:
    model: nn.Module
    channels: list[str]
    classes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path, model: nn.Module, channels: Sequence[str], classes: Sequence[str], **extra
) -> Path:
    """Write ``model.pt``: architecture name and arguments, weights, channel and class names."""
    if not isinstance(model, VGGClassifier):
        raise TypeError("save_checkpoint stores chanstat architectures; save user models with torch.save / TorchScript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "architecture": "vgg",
            "arguments": model.config,
            "state_dict": state,
            "channels": list(channels),
            "classes": list(classes),
            "extra": extra,
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path, device=None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`; the model is in eval mode."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    arch = blob.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in {path}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](**blob["arguments"])
    model.load_state_dict(blob["state_dict"])
    model.to(device or "cpu").eval()
    return Checkpoint(
        model=model, channels=list(blob["channels"]), classes=list(blob["classes"]), extra=blob.get("extra", {})
    )
