"""Are the channel maps of one image even different? Spearman correlation between channel maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as sps
from tqdm.auto import tqdm

_CHUNK_ELEMENTS = 8_000_000  # pixels x channels x images ranked at once


def channel_map_correlations(maps: np.ndarray, transform: str = "absolute") -> np.ndarray:
    """Spearman correlation between every pair of channel maps of every image.

    Parameters
    ----------
    maps : ndarray (N, C, H, W)
    transform : ``"absolute"`` (default): correlate ``|a|`` (where the attribution is large,
        whatever its sign; what masks and thresholds see); ``"signed"``: the maps as they are.

    Returns
    -------
    ndarray (N, C, C): Pearson correlation of the within-map ranks (ties get average ranks, as
    ``scipy.stats.spearmanr``). NaN for a pair involving a constant map.
    """
    a = np.asarray(maps)
    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1).astype(np.float64)
    if transform == "absolute":
        flat = np.abs(flat)
    ranks = sps.rankdata(flat, axis=-1)
    ranks -= ranks.mean(axis=-1, keepdims=True)
    norm = np.sqrt((ranks**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = ranks / norm[..., None]
        unit[norm == 0] = np.nan
    rho = np.einsum("ncp,ndp->ncd", unit, unit)
    return np.clip(rho, -1.0, 1.0)


def _similarity_one(
    a: np.ndarray, channels: list[str], method: str, transform: str, per_image: bool, progress: bool, samples
) -> pd.DataFrame:
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
        rho[start : start + per] = channel_map_correlations(a[start : start + per], transform=transform)
    pairs = list(combinations(range(c), 2))
    ids = np.arange(n) if samples is None else np.asarray(samples)
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
    maps: np.ndarray | Mapping[str, np.ndarray],
    channels: Sequence[str],
    method: str | None = None,
    transform: str = "absolute",
    per_image: bool = False,
    samples: Sequence | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """How similar are the channel maps within an image? Spearman correlation per channel pair.

    For every image, the maps of channels a and b are compared pixel by pixel with Spearman's
    rank correlation; the per-image correlations are summarised per channel pair. Values near 1
    mean the channels' maps highlight the same pixels (channel resolution adds little);
    values near 0 mean they point at different places.

    Parameters
    ----------
    maps : ndarray (N, C, H, W) or dict method -> ndarray (N, C, H, W)
    channels : channel names, length C.
    method : name for an array input (default ``"attribution"``).
    transform : ``"absolute"`` (default: compare ``|a|``) or ``"signed"`` (the maps as they are).
    per_image : return the per-image correlations instead of the summary.
    samples : ids for the ``sample`` column of per-image output (default 0..N-1).
    progress : show a progress bar.

    Returns
    -------
    DataFrame. Summary (default): ``method``, ``channel_a``, ``channel_b``, ``mean``, ``sd``,
    ``median`` (of the per-image Spearman rho), ``n`` (images with a defined rho),
    ``n_undefined`` (images where one of the maps is constant). Per image: ``method``,
    ``sample``, ``channel_a``, ``channel_b``, ``rho``.
    """
    channels = [str(c) for c in channels]
    if transform not in ("absolute", "signed"):
        raise ValueError(f"transform must be 'absolute' or 'signed'; got {transform!r}")
    if isinstance(maps, Mapping):
        if method is not None:
            raise ValueError("pass `method` only with a single array; a dict's keys name the methods")
        if not maps:
            raise ValueError("no attribution maps given (empty dict)")
        items = list(maps.items())
    else:
        items = [(method or "attribution", maps)]
    return pd.concat(
        [_similarity_one(a, channels, str(name), transform, per_image, progress, samples) for name, a in items],
        ignore_index=True,
    )
