"""Are the channel maps of one image even different? Spearman correlation between channel maps."""
from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from tqdm.auto import tqdm

_CHUNK_ELEMENTS = 8_000_000  # pixels x channels x images ranked at once


def channel_map_correlations(attributions: np.ndarray, absolute: bool = True) -> np.ndarray:
    """Spearman correlation between every pair of channel maps of every image.

    Parameters
    ----------
    attributions : ndarray (N, C, H, W)
    absolute : correlate ``|a|`` (where the attribution is large, whatever its sign; what masks
        and thresholds see) instead of the signed maps.

    Returns
    -------
    ndarray (N, C, C): Pearson correlation of the within-map ranks (ties get average ranks, as
    ``scipy.stats.spearmanr``). NaN for a pair involving a constant map.
    """
    a = np.asarray(attributions)
    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1).astype(np.float64)
    if absolute:
        flat = np.abs(flat)
    ranks = sps.rankdata(flat, axis=-1)
    ranks -= ranks.mean(axis=-1, keepdims=True)
    norm = np.sqrt((ranks**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = ranks / norm[..., None]
        unit[norm == 0] = np.nan
    rho = np.einsum("ncp,ndp->ncd", unit, unit)
    return np.clip(rho, -1.0, 1.0)


def _similarity_one(a: np.ndarray, channels: list[str], method: str, absolute: bool, per_image: bool, progress: bool, sample_ids) -> pd.DataFrame:
    a = np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"attributions for {method!r} must have shape (N, C, H, W); got {a.shape}")
    n, c = a.shape[:2]
    if c < 2:
        raise ValueError(f"attributions for {method!r} have {c} channel: map similarity needs at least 2 channels")
    if len(channels) != c:
        raise ValueError(f"{len(channels)} channel names given for {c} channels in {method!r}")
    if not np.isfinite(a).all():
        raise ValueError(f"attributions for {method!r} hold NaN/inf values")
    per = max(1, _CHUNK_ELEMENTS // max(1, a[0].size))
    rho = np.empty((n, c, c))
    for start in tqdm(range(0, n, per), desc=f"map similarity {method}", disable=not progress):
        rho[start : start + per] = channel_map_correlations(a[start : start + per], absolute=absolute)
    pairs = list(combinations(range(c), 2))
    ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids)
    if per_image:
        return pd.DataFrame(
            {
                "method": method,
                "sample": np.repeat(ids, len(pairs)),
                "channel_a": np.tile([channels[i] for i, _ in pairs], n),
                "channel_b": np.tile([channels[j] for _, j in pairs], n),
                "rho": rho[:, [i for i, _ in pairs], [j for _, j in pairs]].ravel(),
            }
        )
    rows = []
    for i, j in pairs:
        values = rho[:, i, j]
        ok = values[np.isfinite(values)]
        rows.append(
            {
                "method": method,
                "channel_a": channels[i],
                "channel_b": channels[j],
                "mean": float(ok.mean()) if ok.size else np.nan,
                "sd": float(ok.std(ddof=1)) if ok.size > 1 else np.nan,
                "median": float(np.median(ok)) if ok.size else np.nan,
                "n": int(ok.size),
                "n_undefined": int(values.size - ok.size),
            }
        )
    return pd.DataFrame(rows)


def map_similarity(
    attributions: np.ndarray | Mapping[str, np.ndarray],
    channels: Sequence[str],
    method: str | None = None,
    absolute: bool = True,
    per_image: bool = False,
    sample_ids: Sequence | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """How similar are the channel maps within an image? Spearman correlation per channel pair.

    For every image, the maps of channels a and b are compared pixel by pixel with Spearman's
    rank correlation; the per-image correlations are summarised per channel pair. Values near 1
    mean the channels' maps highlight the same pixels (channel resolution adds little);
    values near 0 mean they point at different places.

    Parameters
    ----------
    attributions : ndarray (N, C, H, W) or dict method -> ndarray (N, C, H, W)
    channels : channel names, length C.
    method : name for an array input (default ``"attribution"``).
    absolute : compare ``|a|`` (default) rather than signed maps.
    per_image : return the per-image correlations instead of the summary.
    sample_ids : ids for the ``sample`` column of per-image output (default 0..N-1).
    progress : show a progress bar.

    Returns
    -------
    DataFrame. Summary (default): ``method``, ``channel_a``, ``channel_b``, ``mean``, ``sd``,
    ``median`` (of the per-image Spearman rho), ``n`` (images with a defined rho),
    ``n_undefined`` (images where one of the maps is constant). Per image: ``method``,
    ``sample``, ``channel_a``, ``channel_b``, ``rho``.
    """
    channels = [str(c) for c in channels]
    if isinstance(attributions, Mapping):
        if method is not None:
            raise ValueError("pass `method` only with a single array; a dict's keys name the methods")
        if not attributions:
            raise ValueError("no attributions given (empty dict)")
        items = list(attributions.items())
    else:
        items = [(method or "attribution", attributions)]
    return pd.concat(
        [_similarity_one(a, channels, str(name), absolute, per_image, progress, sample_ids) for name, a in items],
        ignore_index=True,
    )
