"""Operations on attribution maps: combining channels and per-sample normalisation.

Both work on ``torch.Tensor`` or ``numpy.ndarray`` and return the same kind. Normalisation is
always computed **per sample** (optionally per sample and channel), never across the batch, so a
map does not change when other images are added to its batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

#: how -> reduction over the channel axis (dim 1), keeping the dimension.
AGGREGATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda a: a.mean(dim=1, keepdim=True),
    "sum": lambda a: a.sum(dim=1, keepdim=True),
    "max": lambda a: a.amax(dim=1, keepdim=True),
    "abs_mean": lambda a: a.abs().mean(dim=1, keepdim=True),
    "abs_sum": lambda a: a.abs().sum(dim=1, keepdim=True),
    "abs_max": lambda a: a.abs().amax(dim=1, keepdim=True),
}


def _to_tensor(maps, name: str = "maps") -> tuple[torch.Tensor, bool]:
    is_numpy = isinstance(maps, np.ndarray)
    if not is_numpy and not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray; got {type(maps).__name__}")
    t = torch.from_numpy(maps) if is_numpy else maps
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t, is_numpy


def _back(t: torch.Tensor, is_numpy: bool):
    return t.numpy() if is_numpy else t


def aggregate_channels(maps, how: str):
    """Combine the channel maps of each image into one map.

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
    how : {"mean", "sum", "max", "abs_mean", "abs_sum", "abs_max"}
        ``"mean"``/``"sum"``/``"max"`` reduce the signed values over channels; the ``abs_``
        variants take absolute values first (``abs_mean`` is the channel-averaged magnitude the
        published Cell Painting code used).

    Returns
    -------
    Same type as ``maps``, shape (N, 1, H, W). A single-channel input gives its own values
    (``abs_*``: their absolute values).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown channel aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    t, is_numpy = _to_tensor(maps)
    if t.ndim != 4:
        raise ValueError(f"maps must have shape (N, C, H, W); got {tuple(t.shape)}")
    return _back(AGGREGATIONS[how](t), is_numpy)


def _reduce_dims(t: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    first = 2 if per_channel else 1
    if t.ndim <= first:
        raise ValueError(
            f"maps of shape {tuple(t.shape)} have no axes to normalise over"
            + (" per channel (need (N, C, ...))" if per_channel else "")
        )
    return tuple(range(first, t.ndim))


def _flat(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """(N, ...) -> (groups, elements) where a group is one sample (or one sample-channel)."""
    lead = t.shape[:2] if per_channel else t.shape[:1]
    return t.reshape(int(np.prod(lead)), -1)


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where den == 0 (an all-zero map stays all zero)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _max_abs(t: torch.Tensor, per_channel: bool, **_) -> torch.Tensor:
    flat = _flat(t, per_channel)
    scale = flat.abs().amax(dim=1, keepdim=True)
    return _safe_divide(flat, scale).reshape(t.shape)


def _min_max(t: torch.Tensor, per_channel: bool, **_) -> torch.Tensor:
    flat = _flat(t, per_channel)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    return _safe_divide(flat - lo, hi - lo).reshape(t.shape)


def cumulative_mass_threshold(values: torch.Tensor, mass: float = 0.98) -> torch.Tensor:
    """Per row, the smallest |value| at which the ascending cumulative sum of |values| reaches
    ``mass`` of the row total.

    Parameters
    ----------
    values : torch.Tensor, shape (G, M)
    mass : float in (0, 1]

    Returns
    -------
    torch.Tensor, shape (G, 1): the threshold; elements above it carry at most ``1 - mass``
    of the total absolute attribution. 0 for all-zero rows.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must lie in (0, 1]; got {mass}")
    sorted_abs, _ = values.abs().sort(dim=1)
    # float64 cumulative sums: a float32 running total over 10^5 pixels drifts by more than 2%
    # of the mass for long-tailed maps
    cum = sorted_abs.to(torch.float64).cumsum(dim=1)
    goal = cum[:, -1:] * mass
    index = torch.searchsorted(cum, goal).clamp(max=values.shape[1] - 1)
    return sorted_abs.gather(1, index)


def _percentile(t: torch.Tensor, per_channel: bool, mass: float = 0.98, **_) -> torch.Tensor:
    flat = _flat(t, per_channel)
    scale = cumulative_mass_threshold(flat, mass)
    return _safe_divide(flat, scale).clamp(-1.0, 1.0).reshape(t.shape)


#: how -> normaliser(tensor, per_channel, **options)
NORMALIZATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "max_abs": _max_abs,
    "percentile": _percentile,
    "min_max": _min_max,
}


def normalize(maps, how: str = "max_abs", per_channel: bool = False, mass: float = 0.98):
    """Scale attribution maps, each sample on its own.

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray, shape (N, C, H, W) (any (N, ...) works)
    how : {"max_abs", "percentile", "min_max"}
        - ``"max_abs"``: divide by the largest |value|; result in [-1, 1] (signed maps keep
          their sign, non-negative maps land in [0, 1]).
        - ``"percentile"``: the robust rule of the Cell Painting follow-up (and of Captum's
          visualisation): sort |values| ascending, take the value at which the cumulative sum
          reaches ``mass`` (98 %) of the total, divide by it and clip to [-1, 1]. A few extreme
          pixels then do not squash the rest of the map.
        - ``"min_max"``: ``(a - min) / (max - min)``; result in [0, 1].
        All-zero (or constant, for ``min_max``) maps become all zero.
    per_channel : bool
        Normalise every (sample, channel) map on its own instead of the whole sample jointly.
    mass : float
        Cumulative-mass fraction for ``"percentile"``.

    Returns
    -------
    Same type and shape as ``maps``, float.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {how!r}; choose one of {', '.join(NORMALIZATIONS)}")
    t, is_numpy = _to_tensor(maps)
    _reduce_dims(t, per_channel)
    if t.shape[0] == 0:
        return _back(t.clone(), is_numpy)
    if not torch.isfinite(t).all():
        raise ValueError("maps contain NaN or infinite values; cannot normalise")
    return _back(NORMALIZATIONS[how](t, per_channel, mass=mass).to(t.dtype), is_numpy)
