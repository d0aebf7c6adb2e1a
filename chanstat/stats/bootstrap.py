"""Cluster bootstrap over units of replication (wells by default)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from chanstat.stats.design import ALL, WELL_COLUMNS, PLATE_COLUMN, as_tuple, build_groups

_CHUNK_ELEMENTS = 4_000_000  # resamples x units per chunk: bounds memory for image-level bootstraps


def bootstrap_unit_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``values`` (n_units, C) over ``n_boot`` resamples of the units with replacement.

    Each resample draws n_units units with replacement; returns (n_boot, C). Drawn as
    multinomial counts so memory is (chunk, n_units) rather than (n_boot, n_units, C).
    """
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    if n_boot <= 0 or n == 0:
        return np.empty((0, values.shape[1]))
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = np.empty((n_boot, values.shape[1]))
    probabilities = np.full(n, 1.0 / n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        counts = rng.multinomial(n, probabilities, size=stop - start)
        out[start:stop] = counts @ values / n
    return out


def percentile_interval(draws: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap draws (axis 0); NaN when there are no draws."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci}")
    if draws.shape[0] == 0:
        nan = np.full(draws.shape[1:], np.nan)
        return nan, nan.copy()
    tail = (1 - ci) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return low, high


def channel_share_ci(
    mass: pd.DataFrame,
    value: str = "share",
    channel: str = "channel",
    sample: str = "sample",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    by: Sequence[str] = ("method",),
    unit: str = "auto",
    breakdown: str | None = "transition",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean share of each channel with a bootstrap confidence interval that resamples wells.

    Images are first averaged per unit (well by default, see :func:`chanstat.stats.test_channels`),
    then units are resampled with replacement; the interval is the percentile interval of the
    resampled means. Plates are not resampled separately, so with few plates the interval does
    not include plate-to-plate variation.

    Parameters
    ----------
    mass : DataFrame, tidy, one row per sample and channel (e.g. from :func:`channel_mass`).
    value, channel, sample : column names of the summarised value, the channel and the sample id.
    well : columns that together identify a well (wells are nested in plates).
    plate : plate column (only needed for ``unit="plate"``).
    by : columns that split the table into separate analyses (default: one per method).
    unit : ``"auto"`` (= ``"well"``), ``"well"``, ``"plate"`` or ``"image"`` (samples independent).
    breakdown : column whose levels get their own rows besides the pooled ``"all"`` rows
        (default ``"transition"``); ignored when absent or all missing.
    n_boot : bootstrap resamples (0 skips the intervals).
    ci : confidence level.
    seed : seed of the resampling.

    Returns
    -------
    DataFrame with the ``by`` columns, the ``breakdown`` column (``"all"`` for pooled rows) and

    ``channel``
        channel name.
    ``mean``
        mean over units of the unit-mean ``value``.
    ``ci_low``, ``ci_high``
        percentile bootstrap interval of ``mean`` (NaN with one unit or ``n_boot=0``).
    ``prob_dominant``
        fraction of resamples in which this channel has the highest mean (NaN without resamples).
    ``rank``
        1 for the channel with the highest mean.
    ``dominant``
        True for rank 1.
    ``unit``, ``n_units``, ``n_samples``
        unit of replication, number of units and of samples behind the row.
    """
    by = as_tuple(by)
    groups = build_groups(
        mass, value, channel, sample, as_tuple(well), plate, by, unit, breakdown, who="channel_share_ci"
    )
    rng = np.random.default_rng(seed)
    rows = []
    for group in groups:
        means = group.values.mean(axis=0)
        draws = bootstrap_unit_means(group.values, n_boot if group.n_units > 1 else 0, rng)
        low, high = percentile_interval(draws, ci)
        if draws.shape[0]:
            winners = np.bincount(draws.argmax(axis=1), minlength=len(group.channels)) / draws.shape[0]
        else:
            winners = np.full(len(group.channels), np.nan)
        order = np.argsort(-means, kind="stable")
        ranks = np.empty(len(means), dtype=int)
        ranks[order] = np.arange(1, len(means) + 1)
        for j, name in enumerate(group.channels):
            rows.append(
                {
                    **group.keys,
                    "channel": name,
                    "mean": means[j],
                    "ci_low": low[j],
                    "ci_high": high[j],
                    "prob_dominant": winners[j],
                    "rank": int(ranks[j]),
                    "dominant": bool(ranks[j] == 1),
                    "unit": group.unit,
                    "n_units": group.n_units,
                    "n_samples": group.sample_values.shape[0],
                }
            )
    out = pd.DataFrame(rows)
    if breakdown and breakdown not in out.columns:
        out.insert(len(by), breakdown, ALL)
    return out
