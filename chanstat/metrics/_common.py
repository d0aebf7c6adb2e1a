"""Input checks and channel "views" shared by the localisation and faithfulness metrics.

A *view* is the set of elements a per-channel figure is computed over: ``"all"`` is every
(channel, pixel) element of an image, channel ``k`` is the pixels of plane ``k`` only. A
channel-agnostic map (N, 1, H, W) is broadcast to every channel, so its ``"all"`` view repeats
the same plane C times and its channel-``k`` view is that plane; rows computed from such a map
carry ``channel_resolved = False``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from chanstat.tensors import ALL


def as_bool_tensor(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (N, 1, H, W); got {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if t.is_floating_point() and not torch.all((t == 0) | (t == 1)):
            raise ValueError(f"{name} must be binary (bool or 0/1); got values other than 0 and 1")
        t = t != 0
    return t


def check_maps_masks(maps: torch.Tensor, masks: torch.Tensor) -> tuple[int, int, int, int]:
    """Shape contract: same N, H, W; maps and masks each have C or 1 planes.

    Returns (N, C, H, W) with C the larger of the two channel counts.
    """
    if maps.shape[0] != masks.shape[0] or maps.shape[2:] != masks.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must agree in N, H and W")
    cm, ck = maps.shape[1], masks.shape[1]
    if cm != ck and 1 not in (cm, ck):
        raise ValueError(
            f"maps have {cm} channels and masks {ck}: they must match, or one of them must have 1 "
            "(a channel-agnostic map or a mask shared by every channel)"
        )
    n, _, h, w = maps.shape
    return n, max(cm, ck), h, w


def views(n_channels: int, names: Sequence[str]) -> list[tuple[str, int | None]]:
    """[("all", None), (name_0, 0), ...]."""
    return [(ALL, None)] + [(names[k], k) for k in range(n_channels)]


def view_flat(x: torch.Tensor, channel: int | None, n_channels: int) -> torch.Tensor:
    """Elements of a view as (N, E): every (channel, pixel) for ``None``, plane ``channel`` else.

    A tensor with one plane is broadcast to ``n_channels`` planes first.
    """
    if channel is None:
        if x.shape[1] == 1 and n_channels > 1:
            x = x.expand(-1, n_channels, -1, -1)
        return x.reshape(x.shape[0], -1)
    plane = 0 if x.shape[1] == 1 else channel
    return x[:, plane].reshape(x.shape[0], -1)


def minmax_per_sample(v: torch.Tensor) -> torch.Tensor:
    """Rescale every row of (N, E) to [0, 1]; constant rows become 0 (per sample, never per batch)."""
    lo = v.amin(dim=1, keepdim=True)
    hi = v.amax(dim=1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (v - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(v))
