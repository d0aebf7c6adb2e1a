"""Mask strategies: how attribution maps become the masks of a DAC curve.

A strategy is a declarative record in `STRATEGIES` (add one with `register_strategy`), not a
branch in the engine. It says

- whether it needs one map per image channel (``channel_resolved``),
- whether the channels' magnitudes are combined into one map (``combine_channels``; the
  combined mask is pasted into every channel),
- whether all planes of a sample are ranked together (``rank_jointly``) or each plane alone,
- whether the planes form one curve (masks differ per channel, one DAC) or one curve each
  (``curve_per_plane``; the other channels stay counterfactual).

The four built-in strategies:

============== ======== ======== ======== ===========================================
name           combine  jointly  per      answers
============== ======== ======== ======== ===========================================
aggregate      yes      --       no       published behaviour: one mask for all channels
joint          no       yes      no       (channel, pixel) elements ranked together
per_channel    no       no       no       every channel gets the same share of the mask
single_channel no       no       yes      how much of the decision channel k alone carries
============== ======== ======== ======== ===========================================

``per_channel`` normalises each channel on its own: with the value schedule every channel is
thresholded at the same level of its own normalised map, with the rank schedule at the same
quantile (the same fraction of its pixels).

`build_layout` turns maps into a `MaskLayout`: closed rank maps plus per-step cut-offs, from
which any step's mask is one comparison (see `chanstat.dacscore.thresholds` for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from chanstat.dacscore.morphology import GaussianBlur, grey_closing
from chanstat.dacscore.thresholds import element_ranks, selection_counts


@dataclass(frozen=True)
class MaskStrategy:
    """How maps are ranked, thresholded and pasted (see the module docstring)."""

    name: str
    description: str
    channel_resolved: bool
    combine_channels: bool = False
    rank_jointly: bool = False
    curve_per_plane: bool = False


STRATEGIES: dict[str, MaskStrategy] = {}


def register_strategy(strategy: MaskStrategy, overwrite: bool = False) -> MaskStrategy:
    """Add a strategy to the registry (``overwrite`` to replace one of the same name)."""
    if strategy.name in STRATEGIES and not overwrite:
        raise ValueError(f"a mask strategy named {strategy.name!r} is already registered")
    if strategy.combine_channels and (strategy.rank_jointly or strategy.curve_per_plane):
        raise ValueError(
            "a strategy that combines channels has a single plane: rank_jointly/curve_per_plane make no sense"
        )
    STRATEGIES[strategy.name] = strategy
    return strategy


for _strategy in (
    MaskStrategy(
        "aggregate",
        "channels combined (sum of |a|) into one map; one mask pasted into every channel",
        channel_resolved=False,
        combine_channels=True,
    ),
    MaskStrategy(
        "joint",
        "all (channel, pixel) elements normalised and ranked together; masks differ per channel",
        channel_resolved=True,
        rank_jointly=True,
    ),
    MaskStrategy(
        "per_channel",
        "each channel normalised on its own and thresholded at the same level / fraction",
        channel_resolved=True,
    ),
    MaskStrategy(
        "single_channel",
        "only channel k is masked, the others stay counterfactual: one curve per channel",
        channel_resolved=True,
        curve_per_plane=True,
    ),
):
    register_strategy(_strategy)


def get_strategy(name: str | MaskStrategy) -> MaskStrategy:
    if isinstance(name, MaskStrategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"unknown DAC strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def check_strategies(strategy: str | Sequence[str]) -> list[MaskStrategy]:
    """Validate ``strategy`` (a name or a list of names); duplicates are dropped, order kept."""
    names = [strategy] if isinstance(strategy, (str, MaskStrategy)) else list(strategy)
    if not names:
        raise ValueError("no DAC strategy given")
    out: list[MaskStrategy] = []
    for name in names:
        s = get_strategy(name)
        if s.name not in [o.name for o in out]:
            out.append(s)
    return out


class Items:
    """A batch of (sample, curve, step) mask indices, sorted by sample and curve.

    ``runs()`` yields ``(first, last, sample, curve)`` for every stretch of items sharing a
    sample and curve, so per-sample tensors are used by broadcasting rather than copied per item.
    """

    def __init__(self, sample: np.ndarray, curve: np.ndarray, step: np.ndarray, device):
        self.sample = np.asarray(sample, dtype=np.int64)
        self.curve = np.asarray(curve, dtype=np.int64)
        self.step = np.asarray(step, dtype=np.int64)
        self.sample_t = torch.as_tensor(self.sample, device=device)
        self.curve_t = torch.as_tensor(self.curve, device=device)
        self.step_t = torch.as_tensor(self.step, device=device)

    def __len__(self) -> int:
        return len(self.sample)

    def runs(self):
        if not len(self):
            return
        key = self.sample * (int(self.curve.max()) + 1) + self.curve
        starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
        stops = np.r_[starts[1:], len(key)]
        for first, last in zip(starts.tolist(), stops.tolist()):
            yield first, last, int(self.sample[first]), int(self.curve[first])


@dataclass
class MaskLayout:
    """Every mask of one strategy for a batch of samples, in compressed form.

    The mask of sample ``i``, curve ``j``, step ``s`` is
    ``closed[i, j] >= cutoffs[i, j, :, s]`` (per plane), already closed.

    Attributes
    ----------
    strategy : MaskStrategy
    closed : torch.Tensor, shape (N, K, G, H, W)
        Grey-level closed rank maps; ``K`` curves per sample with ``G`` planes each.
    cutoffs : torch.Tensor, shape (N, K, G, S)
        Rank cut-off per plane and step (``S = steps + 1``).
    counts : numpy.ndarray, shape (N, K, S), int64
        Elements on in each closed mask; non-decreasing in ``s``, from 0 to ``mask_elements``.
    mask_elements : int
        Elements of one curve's mask (``G * H * W``); mask size = counts / mask_elements.
    thresholds : numpy.ndarray, shape (S,)
    plane_counts : numpy.ndarray, shape (N, K, G, S), int64
        Elements on per plane (``counts`` is their sum over ``G``).
    curve_channels : list of int or None
        Image channel of each curve (``curve_per_plane``), None when a curve spans all planes.
    """

    strategy: MaskStrategy
    closed: torch.Tensor
    cutoffs: torch.Tensor
    counts: np.ndarray
    mask_elements: int
    thresholds: np.ndarray
    curve_channels: list[int] | None
    plane_counts: np.ndarray | None = None

    @property
    def n_curves(self) -> int:
        return self.closed.shape[1]

    @property
    def full_mask_is_real(self) -> bool:
        """Whether a full mask pastes the whole real image (so its score needs no forward pass)."""
        return not self.strategy.curve_per_plane

    def masks(self, items: "Items") -> torch.Tensor:
        """Binary closed masks of a batch of (sample, curve, step) items, float (B, G, H, W).

        Items of one (sample, curve) share its closed map, which is compared with each item's
        cut-off by broadcasting (no per-item copy of the map).
        """
        n, k, g, h, w = self.closed.shape
        out = torch.empty((len(items), g, h, w), dtype=torch.float32, device=self.closed.device)
        cut = self.cutoffs[items.sample_t, items.curve_t, :, items.step_t]  # (B, G)
        for first, last, sample, curve in items.runs():
            torch.ge(self.closed[sample, curve], cut[first:last, :, None, None], out=out[first:last])
        return out

    def smoothed(self, masks: torch.Tensor, items: "Items", blur: GaussianBlur) -> torch.Tensor:
        """Blur the planes of ``masks`` (from `masks`) in place and return them.

        Empty and full planes are their own blur (mirrored borders), so only the partial
        ones go through the Gaussian.
        """
        if blur.identity:
            return masks
        g, h, w = masks.shape[1:]
        if self.plane_counts is None:
            return blur(masks)
        on = self.plane_counts[items.sample, items.curve, :, items.step]  # (B, G)
        partial = np.flatnonzero(((on > 0) & (on < h * w)).reshape(-1))
        if len(partial) == masks.shape[0] * g:
            return blur(masks)
        if len(partial):
            planes = masks.view(-1, h, w)
            index = torch.as_tensor(partial, device=masks.device)
            planes[index] = blur(planes[index])
        return masks

    def hybrids(
        self,
        weights: torch.Tensor,
        items: "Items",
        counterfactual: torch.Tensor,
        difference: torch.Tensor,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """``h = m * x + (1 - m) * x' = x' + m * (x - x')`` for a batch of smoothed masks, into ``out``.

        ``weights`` (B, G, H, W); ``counterfactual`` and ``difference`` (N, C, H, W) with
        ``difference = real - counterfactual``; ``out`` (B, C, H, W), float32, in any memory
        format (a slice of a larger batch whose other rows hold other strategies' hybrids).
        Combined maps (G = 1) broadcast over the channels; ``curve_per_plane`` pastes into
        the curve's channel only.
        """
        for first, last, sample, curve in items.runs():
            if self.strategy.curve_per_plane:
                assert self.curve_channels is not None  # set exactly when curve_per_plane
                channel = self.curve_channels[curve]
                out[first:last] = counterfactual[sample]
                out[first:last, channel].addcmul_(weights[first:last, 0], difference[sample, channel])
            else:
                torch.addcmul(counterfactual[sample], weights[first:last], difference[sample], out=out[first:last])
        return out

    def smoothed_masks(self, step: np.ndarray, blur: GaussianBlur, n_channels: int, batch: int = 64) -> np.ndarray:
        """The pasted (closed, blurred) mask of one step per sample and curve, as stored masks.

        Parameters
        ----------
        step : numpy.ndarray, shape (N, K), int
            Step per sample and curve; negative entries give NaN masks (no such step).

        Returns
        -------
        numpy.ndarray, float32
            (N, 1, H, W) for combined maps, (N, C, H, W) otherwise (for ``curve_per_plane``
            channel k holds the mask of channel k's own curve).
        """
        n, k, g, h, w = self.closed.shape
        planes_out = g if not self.strategy.curve_per_plane else n_channels
        out = np.full((n, planes_out, h, w), np.nan, dtype=np.float32)
        sample, curve = np.nonzero(step >= 0)
        for start in range(0, len(sample), batch):
            part = slice(start, start + batch)
            items = Items(sample[part], curve[part], step[sample[part], curve[part]], self.closed.device)
            weights = self.smoothed(self.masks(items), items, blur).cpu().numpy()
            if self.strategy.curve_per_plane:
                out[sample[part], np.asarray(self.curve_channels)[curve[part]]] = weights[:, 0]
            else:
                out[sample[part]] = weights
        return out


def combine_channels(magnitudes: torch.Tensor) -> torch.Tensor:
    """One map per image: the sum of the channels' magnitudes, shape (N, 1, H, W)."""
    return magnitudes.sum(dim=1, keepdim=True)


def build_layout(
    strategy: MaskStrategy,
    magnitudes: torch.Tensor,
    schedule: str,
    steps: int,
    element: np.ndarray | None,
) -> MaskLayout:
    """Rank, count and close the maps of one strategy.

    Parameters
    ----------
    strategy : MaskStrategy
    magnitudes : torch.Tensor, shape (N, C, H, W) or (N, 1, H, W), >= 0
        Attribution magnitudes ``|a|`` on the device.
    schedule : {"value", "rank", "adaptive"}
    steps : int >= 2
    element : flat structuring element of the closing, or None for no closing.
    """
    n, n_maps, h, w = magnitudes.shape
    planes = combine_channels(magnitudes) if strategy.combine_channels else magnitudes
    g = planes.shape[1]
    if strategy.rank_jointly:
        groups = planes.reshape(n, g * h * w)
    else:
        groups = planes.reshape(n * g, h * w)
    counts_selected, thresholds = selection_counts(groups, schedule, steps)
    ranks = element_ranks(groups)
    n_elements = groups.shape[1]
    cutoffs = (n_elements - counts_selected).to(ranks.dtype)  # select rank >= P - n
    n_steps = cutoffs.shape[1]
    if strategy.rank_jointly:
        cutoffs = cutoffs[:, None, :].expand(n, g, n_steps)
    else:
        cutoffs = cutoffs.reshape(n, g, n_steps)
    closed = grey_closing(ranks.reshape(n * g, h, w), element)

    # elements on in every closed mask: sort each closed plane once, then count with one search
    ordered, _ = torch.sort(closed.reshape(n * g, h * w), dim=1)
    on = h * w - torch.searchsorted(ordered, cutoffs.reshape(n * g, n_steps).contiguous(), right=False)
    on = on.reshape(n, g, n_steps)

    if strategy.curve_per_plane:
        shape = (n, g, 1)
        curve_channels = list(range(g))
        counts = on
    else:
        shape = (n, 1, g)
        curve_channels = None
        counts = on.sum(dim=1, keepdim=True)
    return MaskLayout(
        strategy=strategy,
        closed=closed.reshape(*shape, h, w),
        cutoffs=cutoffs.reshape(*shape, n_steps).contiguous(),
        counts=counts.cpu().numpy().astype(np.int64),
        plane_counts=on.reshape(*shape, n_steps).cpu().numpy().astype(np.int64),
        mask_elements=shape[2] * h * w,
        thresholds=thresholds,
        curve_channels=curve_channels,
    )
