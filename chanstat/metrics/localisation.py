"""Localisation of attribution maps against ground-truth masks, per channel and overall.

Every figure is computed for the view ``"all"`` (all (channel, pixel) elements of an image) and
for every channel ``k`` alone (map plane k against mask plane k). Maps are min-max normalised
**per sample and per view** before thresholding (never across the batch), so a map's scores do
not depend on which other images are evaluated with it.

Metrics
-------
PxAP
    Pixel average precision (Choe et al., "Evaluating weakly supervised object localization
    methods right", CVPR 2020): the normalised map values of foreground and background
    elements are histogrammed into ``thresholds`` equal bins over [0, 1], accumulated over
    the whole set; at bin threshold ``t_j = j / thresholds`` an element is predicted
    foreground when its bin is >= j; precision/recall at every threshold give
    ``AP = sum_j P_j (R_j - R_{j+1})`` (recall rises from 0 at the top threshold to 1 at
    the bottom one), reported in percent. The mask itself scores 100; a map independent of
    the mask scores about the foreground fraction (in percent).
Dice, mIoU
    From the same pooled histograms: at each threshold the pooled true/false positives and
    negatives give Dice of the foreground and mIoU = mean of the foreground and background
    IoU. The threshold is chosen on the validation images (``split``) by maximising each
    metric there (the middle of the best range when several thresholds tie), and the metric
    is reported on the test images at that threshold.
Pointing game
    Fraction of images whose map maximum lies on the mask (dilated by ``pointing_tolerance``
    pixels in H and W); images with an empty mask in the view are skipped.
Relevance mass
    Share of positive relevance inside the mask, ``sum(R+ * mask) / sum(R+)``, mean over
    images (Arras et al., "CLEVR-XAI", 2022); with ``transform="absolute"`` ``R+ = |R|``.
Relevance rank
    With ``K`` = mask size, the fraction of the ``K`` highest-ranked elements that lie in the
    mask, mean over images (Arras et al. 2022).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from chanstat.metrics._common import as_bool_tensor, check_maps_masks, minmax_per_sample, view_flat, views
from chanstat.tensors import as_images, channel_names, device_of, transform_maps


def _subsets_from_split(split, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (N,) validation and test selections from ``split`` (see :func:`localisation`)."""
    if split is None:
        everything = np.ones(n, bool)
        return everything, everything
    if isinstance(split, (float, int)) and not isinstance(split, bool):
        frac = float(split)
        if not 0 < frac < 1:
            raise ValueError(f"split as a fraction must lie in (0, 1); got {split}")
        if n < 2:
            raise ValueError("a validation/test split needs at least 2 images; pass split=None")
        n_val = min(n - 1, max(1, int(round(frac * n))))
        order = np.random.default_rng(seed).permutation(n)
        val = np.zeros(n, bool)
        val[order[:n_val]] = True
        return val, ~val
    arr = np.asarray(split)
    if arr.shape != (n,):
        raise ValueError(f"split must be a fraction, None, or an array of shape ({n},); got shape {arr.shape}")
    if arr.dtype == bool:
        val = arr.copy()
    elif arr.dtype.kind in "OUT":
        labels = arr.astype(str)
        bad = sorted(set(labels) - {"val", "test"})
        if bad:
            raise ValueError(f"split labels must be 'val' or 'test'; got {bad}")
        val = labels == "val"
    else:
        raise ValueError("split array must be boolean (True = validation) or hold 'val'/'test' strings")
    if not val.any() or val.all():
        raise ValueError("split must put at least one image in validation and one in test")
    return val, ~val


class _Accumulator:
    """Pooled histograms and per-image sums for one view, over batches."""

    def __init__(self, thresholds: int, n_subsets: int) -> None:
        self.fg = np.zeros((n_subsets, thresholds), np.int64)
        self.bg = np.zeros((n_subsets, thresholds), np.int64)
        self.point_hits = 0
        self.point_n = 0
        self.mass_sum = 0.0
        self.mass_n = 0
        self.rank_sum = 0.0
        self.rank_n = 0


def _accumulate(
    maps: torch.Tensor,
    masks: torch.Tensor,
    n_channels: int,
    names: Sequence[str],
    subsets: Sequence[np.ndarray],
    thresholds: int,
    transform: str,
    pointing_tolerance: int,
    extras: bool,
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> dict[str, _Accumulator]:
    if thresholds < 2:
        raise ValueError(f"thresholds must be >= 2; got {thresholds}")
    vws = views(n_channels, names)
    acc = {name: _Accumulator(thresholds, len(subsets)) for name, _ in vws}
    n = maps.shape[0]
    subset_t = torch.as_tensor(np.stack(subsets), device=device)  # (S, N)
    for start in tqdm(range(0, n, batch_size), desc="localisation", disable=not progress, leave=False):
        m = maps[start : start + batch_size].to(device)
        g = masks[start : start + batch_size].to(device)
        b = m.shape[0]
        m = transform_maps(m, transform)
        if extras and pointing_tolerance > 0:
            k = 2 * pointing_tolerance + 1
            g_point = F.max_pool2d(g.float(), k, stride=1, padding=pointing_tolerance) > 0
        else:
            g_point = g
        rows = torch.arange(b, device=device)
        for name, ch in vws:
            a = acc[name]
            v = view_flat(m, ch, n_channels)
            gv = view_flat(g, ch, n_channels)
            bins = (minmax_per_sample(v) * thresholds).long().clamp_(0, thresholds - 1)
            # Per-image histograms via one bincount with a row offset, then summed per subset.
            flat = bins + rows[:, None] * thresholds
            fg = torch.bincount(flat[gv], minlength=b * thresholds).view(b, thresholds)
            bg = torch.bincount(flat[~gv], minlength=b * thresholds).view(b, thresholds)
            for s_idx in range(subset_t.shape[0]):
                sel = subset_t[s_idx, start : start + b]
                a.fg[s_idx] += fg[sel].sum(dim=0).cpu().numpy()
                a.bg[s_idx] += bg[sel].sum(dim=0).cpu().numpy()
            if not extras:
                continue
            has_fg = gv.any(dim=1)
            # Pointing game: the single maximum of the map.
            gp = view_flat(g_point, ch, n_channels)
            top = v.argmax(dim=1, keepdim=True)
            hit = gp.gather(1, top).squeeze(1)
            a.point_hits += int((hit & has_fg).sum())
            a.point_n += int(has_fg.sum())
            # Relevance mass: positive relevance inside the mask over all positive relevance.
            r = v.clamp(min=0)
            total = r.sum(dim=1)
            inside = (r * gv).sum(dim=1)
            ok = has_fg & (total > 0)
            a.mass_sum += float((inside[ok] / total[ok]).sum())
            a.mass_n += int(ok.sum())
            # Relevance rank: share of the top-K elements (K = mask size) inside the mask.
            size = gv.sum(dim=1)
            order = torch.argsort(v, dim=1, descending=True, stable=True)
            cum = gv.gather(1, order).cumsum(dim=1)
            hits = cum.gather(1, (size - 1).clamp(min=0)[:, None]).squeeze(1)
            a.rank_sum += float((hits[has_fg].double() / size[has_fg].double()).sum())
            a.rank_n += int(has_fg.sum())
    return acc


def _ap_from_histograms(fg: np.ndarray, bg: np.ndarray) -> float:
    """Average precision (percent) from foreground/background histograms over ascending bins."""
    n_fg = fg.sum()
    if n_fg == 0:
        return float("nan")
    tp = np.cumsum(fg[::-1]).astype(float)  # predicted positive: bin >= j, j descending
    fp = np.cumsum(bg[::-1]).astype(float)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
    recall = tp / n_fg
    return float(100.0 * np.sum(precision * np.diff(np.concatenate([[0.0], recall]))))


def _confusion(fg: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN, TN at every threshold index j (predicted positive: bin >= j)."""
    tp = np.cumsum(fg[::-1])[::-1].astype(float)
    fp = np.cumsum(bg[::-1])[::-1].astype(float)
    fn = fg.sum() - tp
    tn = bg.sum() - fp
    return tp, fp, fn, tn


def _dice_curve(fg, bg) -> np.ndarray:
    tp, fp, fn, _ = _confusion(fg, bg)
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.full_like(tp, np.nan), where=den > 0)


def _miou_curve(fg, bg) -> np.ndarray:
    tp, fp, fn, tn = _confusion(fg, bg)
    den_fg = tp + fp + fn
    den_bg = tn + fp + fn
    iou_fg = np.divide(tp, den_fg, out=np.full_like(tp, np.nan), where=den_fg > 0)
    iou_bg = np.divide(tn, den_bg, out=np.full_like(tn, np.nan), where=den_bg > 0)
    return (iou_fg + iou_bg) / 2


def _pick(curve_val: np.ndarray, curve_test: np.ndarray, thresholds: int, has_fg: bool) -> tuple[float, float]:
    if not has_fg or np.all(np.isnan(curve_val)):
        return float("nan"), float("nan")
    # Ties are common (a clean map is perfect over a whole range of thresholds): take the middle
    # of the best range, which transfers to the test images better than its edge.
    best = np.flatnonzero(curve_val >= np.nanmax(curve_val) - 1e-12)
    j = int(best[len(best) // 2])
    return float(curve_test[j]), j / thresholds


def _prepare(maps, masks, channels):
    maps_t = as_images(maps, "maps", allow_empty=True)
    masks_t = as_bool_tensor(masks, "masks")
    n, c, _, _ = check_maps_masks(maps_t, masks_t)
    names = channel_names(channels, c)
    return maps_t, masks_t, n, c, names


def pxap(
    maps,
    masks,
    thresholds: int = 1000,
    channels: Sequence[str] | None = None,
    transform: str = "absolute",
    batch_size: int = 64,
    device=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Pixel average precision of maps against masks, per channel and overall.

    Parameters
    ----------
    maps : array or tensor, shape (N, C, H, W) or (N, 1, H, W)
        Attribution maps; a channel-agnostic (N, 1, H, W) map is broadcast to every channel.
    masks : array or tensor of bool, shape (N, C, H, W) or (N, 1, H, W)
        Ground-truth foreground; one plane is shared by every channel.
    thresholds : number of equal bins over the per-sample normalised map range [0, 1].
    channels : channel names (default ``"0"``, ``"1"``, ...).
    transform : ``"absolute"`` ranks elements by ``|map|`` (default), ``"positive"`` by its positive
        part, ``"signed"`` by the signed value (see :data:`chanstat.vocabulary.MASS_TRANSFORMS`).
    batch_size : images moved to ``device`` at a time.
    device : where to compute (default CPU); histograms are pooled over the whole set.

    Returns
    -------
    pandas.DataFrame
        One row per view: ``channel`` (``"all"`` = every (channel, pixel) element; else one
        channel's plane), ``channel_resolved`` (False when the map had one plane and was
        broadcast), ``pxap`` (percent; NaN when the view has no foreground),
        ``foreground_fraction``, ``n_images``, ``n_foreground``, ``n_background``.
    """
    maps_t, masks_t, n, c, names = _prepare(maps, masks, channels)
    dev = device_of(device)
    acc = _accumulate(
        maps_t, masks_t, c, names, [np.ones(n, bool)], thresholds, transform, 0, False, dev, batch_size, progress
    )
    resolved = maps_t.shape[1] == c
    rows = []
    for name, a in acc.items():
        fg, bg = a.fg[0], a.bg[0]
        total = fg.sum() + bg.sum()
        rows.append(
            dict(
                channel=name,
                channel_resolved=resolved,
                pxap=_ap_from_histograms(fg, bg),
                foreground_fraction=float(fg.sum() / total) if total else float("nan"),
                n_images=n,
                n_foreground=int(fg.sum()),
                n_background=int(bg.sum()),
            )
        )
    return pd.DataFrame(rows)


def localisation(
    maps,
    masks,
    split: float | Sequence | np.ndarray | None = 0.5,
    thresholds: int = 1000,
    channels: Sequence[str] | None = None,
    transform: str = "absolute",
    pointing_tolerance: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    device=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Localisation scores of maps against ground-truth masks, per channel and overall.

    Parameters
    ----------
    maps : array or tensor, shape (N, C, H, W) or (N, 1, H, W)
        Attribution maps; a channel-agnostic (N, 1, H, W) map is broadcast to every channel
        (its rows say ``channel_resolved = False``).
    masks : array or tensor of bool, shape (N, C, H, W) or (N, 1, H, W)
        Ground-truth foreground (e.g. ``ImageSet.signal_masks``).
    split : which images choose the Dice/mIoU threshold ("validation") and which report it
        ("test"). A fraction in (0, 1) puts that share of images, drawn with ``seed``, in
        validation; a boolean (N,) array marks validation images with True; an array of
        ``"val"``/``"test"`` strings does the same; ``None`` chooses and reports on all
        images (optimistic). The threshold-free metrics (PxAP, pointing game, relevance mass
        and rank) choose nothing and use every image.
    thresholds : bins over the per-sample normalised map range [0, 1] (PxAP, Dice, mIoU).
    channels : channel names (default ``"0"``, ``"1"``, ...).
    transform : ``"absolute"`` uses ``|map|`` for ranking, thresholds and relevance mass (default),
        ``"positive"`` its positive part, ``"signed"`` the signed map.
    pointing_tolerance : pixels (in H and W) by which the mask is dilated for the pointing game.
    seed : draws the validation images when ``split`` is a fraction.
    batch_size, device, progress : images per step, where to compute, show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per view with columns ``channel`` (``"all"`` or a channel name),
        ``channel_resolved``, ``n_images``, ``n_val``, ``n_test``, ``foreground_fraction``,
        ``pxap`` (percent), ``dice`` and ``dice_threshold``, ``miou`` and ``miou_threshold``
        (test value at the validation-best threshold on the normalised map; pooled over the
        elements of the test images), ``pointing_game``, ``relevance_mass``,
        ``relevance_rank`` (fractions in [0, 1]). Views without foreground give NaN.
    """
    maps_t, masks_t, n, c, names = _prepare(maps, masks, channels)
    if pointing_tolerance < 0:
        raise ValueError(f"pointing_tolerance must be >= 0; got {pointing_tolerance}")
    val, test = _subsets_from_split(split, n, seed)
    dev = device_of(device)
    subsets = [np.ones(n, bool), val, test]
    acc = _accumulate(
        maps_t,
        masks_t,
        c,
        names,
        subsets,
        thresholds,
        transform,
        int(pointing_tolerance),
        True,
        dev,
        batch_size,
        progress,
    )
    resolved = maps_t.shape[1] == c
    rows = []
    for name, a in acc.items():
        fg_all, bg_all = a.fg[0], a.bg[0]
        fg_val, bg_val = a.fg[1], a.bg[1]
        fg_test, bg_test = a.fg[2], a.bg[2]
        total = fg_all.sum() + bg_all.sum()
        val_has_fg = fg_val.sum() > 0
        test_has_fg = fg_test.sum() > 0
        dice, dice_t = _pick(
            _dice_curve(fg_val, bg_val), _dice_curve(fg_test, bg_test), thresholds, val_has_fg and test_has_fg
        )
        miou, miou_t = _pick(
            _miou_curve(fg_val, bg_val), _miou_curve(fg_test, bg_test), thresholds, val_has_fg and test_has_fg
        )
        rows.append(
            dict(
                channel=name,
                channel_resolved=resolved,
                n_images=n,
                n_val=int(val.sum()),
                n_test=int(test.sum()),
                foreground_fraction=float(fg_all.sum() / total) if total else float("nan"),
                pxap=_ap_from_histograms(fg_all, bg_all),
                dice=dice,
                dice_threshold=dice_t,
                miou=miou,
                miou_threshold=miou_t,
                pointing_game=a.point_hits / a.point_n if a.point_n else float("nan"),
                relevance_mass=a.mass_sum / a.mass_n if a.mass_n else float("nan"),
                relevance_rank=a.rank_sum / a.rank_n if a.rank_n else float("nan"),
            )
        )
    return pd.DataFrame(rows)
