"""How a training batch is drawn: images of each class, references of the target class, flips."""

from __future__ import annotations

import torch


def augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random flips and (square images) transposition of a whole batch."""
    flips = torch.rand(3, generator=rng)
    if flips[0] < 0.5:
        x = x.flip(-1)
    if flips[1] < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2] and flips[2] < 0.5:
        x = x.transpose(-1, -2)
    return x


def class_pools(labels: torch.Tensor, n_classes: int) -> list[torch.Tensor]:
    """The row indices of each class, one tensor per class (empty for a class without images)."""
    return [torch.nonzero(labels == k).flatten() for k in range(n_classes)]


def sample_from_pools(pools: list[torch.Tensor], classes: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One random index per entry of ``classes`` from that class's pool."""
    out = torch.empty_like(classes)
    u = torch.rand(classes.shape[0], generator=rng)
    for k, pool in enumerate(pools):
        rows = classes == k
        if bool(rows.any()):
            out[rows] = pool[(u[rows] * pool.numel()).long().clamp_max(pool.numel() - 1)]
    return out
