"""Channel share intervals over units of replication, and the cluster bootstrap helpers.

Share intervals are **t-intervals on unit means** (mean +- t_{n-1} sd / sqrt(n)): the audit
behind issue 16 found the percentile bootstrap over wells covering 84-86 % at 6 wells
(nominal 95 %), because a percentile bootstrap ignores the n - 1 in the variance and the t
quantile. ``analyses/calibration.py`` prints the t-interval's coverage per design.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from chanstat.stats.design import ALL, PLATE_COLUMN, WELL_COLUMNS, as_tuple, build_groups, drop_incomplete, resolve_unit
from chanstat.stats.dominance import dominance, t_interval

_CHUNK_ELEMENTS = 4_000_000  # resamples x units per chunk: bounds memory for image-level bootstraps


def check_n_boot(n_boot) -> int:
    """``n_boot`` as an int >= 0, or a ValueError (``-1`` is an error, not "no bootstrap")."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0 (0 skips resampling); got {n_boot!r}")
    return int(n_boot)


def bootstrap_unit_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``values`` (n_units, C) over ``n_boot`` resamples of the units with replacement.

    Each resample draws n_units units with replacement; returns (n_boot, C). Drawn as
    multinomial counts so memory is (chunk, n_units) rather than (n_boot, n_units, C).
    """
    check_n_boot(n_boot)
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    if n_boot == 0 or n == 0:
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


def studentized_interval(values: np.ndarray, ci: float, n_boot: int, rng: np.random.Generator):
    """Studentised (bootstrap-t) interval of each column's mean over units (rows).

    Resamples units, computes ``t* = (mean* - mean) / se*`` and returns
    ``(mean, mean - q_hi se, mean - q_lo se)`` with q the t* quantiles (resamples with se* = 0
    are dropped). Falls back to the t-interval for a column whose t* are all undefined.
    """
    x = np.asarray(values, dtype=float)
    n = x.shape[0]
    mean = x.mean(axis=0)
    se = x.std(axis=0, ddof=1) / np.sqrt(n)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb = x[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        tb = (xb.mean(axis=1) - mean) / (xb.std(axis=1, ddof=1) / np.sqrt(n))
    tb[~np.isfinite(tb)] = np.nan
    tail = (1 - ci) / 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q_lo, q_hi = np.nanquantile(tb, [tail, 1 - tail], axis=0)
    _, t_low, t_high = t_interval(x, ci)
    low = np.where(np.isfinite(q_hi), mean - q_hi * se, t_low)
    high = np.where(np.isfinite(q_lo), mean - q_lo * se, t_high)
    return mean, low, high


#: below this many units the simultaneous (Bonferroni) interval uses t quantiles: the extreme
#: bootstrap-t quantiles it needs are too noisy with fewer distinct resamples
MIN_UNITS_BOOT_SIMULTANEOUS = 6


def share_intervals(values: np.ndarray, ci: float, interval: str, n_boot: int, rng: np.random.Generator):
    """Marginal and simultaneous intervals of each column's mean over units (rows).

    Returns ``(mean, low, high, simultaneous_low, simultaneous_high, used)`` with ``used`` the
    method of the marginal interval (``"boot_t"`` from 3 units with ``n_boot > 0``, else
    ``"t"``); the simultaneous one is Bonferroni over the columns, bootstrap-t from
    :data:`MIN_UNITS_BOOT_SIMULTANEOUS` units, t below.
    """
    x = np.asarray(values, dtype=float)
    n, c = x.shape
    boot = interval == "boot_t" and n_boot > 0
    if boot and n >= 3:
        mean, low, high = studentized_interval(x, ci, n_boot, rng)
        used = "boot_t"
    else:
        mean, low, high = t_interval(x, ci)
        used = "t"
    if boot and n >= MIN_UNITS_BOOT_SIMULTANEOUS:
        _, s_low, s_high = studentized_interval(x, 1 - (1 - ci) / c, n_boot, rng)
    else:
        _, s_low, s_high = t_interval(x, ci, simultaneous=True)
    return mean, low, high, s_low, s_high, used


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
    ci: float = 0.95,
    alpha: float = 0.05,
    pseudo_replicates: bool = False,
    interval: str = "boot_t",
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean share of each channel over units, with a calibrated interval and a simultaneous interval.

    Images are averaged per unit (``unit="auto"``: plates from 6 plates on, else wells; see
    :func:`chanstat.stats.test_channels`); samples with a NaN value are dropped with a
    warning. ``ci_low``/``ci_high`` is the t-interval of one channel's mean (for a channel
    named in advance); ``simultaneous_ci_low``/``high`` are Bonferroni t-intervals over the C
    channels, which cover all channels together, so use them for a channel picked from the
    data (the largest, the dominant one).

    Parameters
    ----------
    mass : DataFrame, tidy, one row per sample and channel (e.g. from :func:`channel_mass`).
    value, channel, sample : column names of the summarised value, the channel and the sample id.
    well, plate, unit : unit of replication, as in :func:`chanstat.stats.test_channels`.
    by : columns that split the table into separate analyses (default: one per method).
    breakdown : column whose levels get their own rows besides the pooled ``"all"`` rows
        (default ``"transition"``); ignored when absent or all missing.
    ci : confidence level.
    alpha : level of the dominance test behind the ``dominant`` column.
    interval : ``"boot_t"`` (default: studentised bootstrap over units, ``n_boot`` resamples;
        it corrects the skewness of unit-mean shares: 94.5 % coverage at 6 wells with a
        well-level log-sd of 1, where the t-interval covers 92 %) or ``"t"`` (t-interval).
        With fewer than 3 units or ``n_boot=0`` the t-interval is used; the simultaneous
        interval uses t quantiles below 6 units (see :func:`share_intervals`).
    n_boot, seed : resamples and seed of the studentised bootstrap.
    pseudo_replicates : the units are pseudo-replicates (spatial blocks of one field).

    Returns
    -------
    DataFrame with the ``by`` columns, the ``breakdown`` column (``"all"`` for pooled rows) and

    ``channel``
        channel name.
    ``mean``
        mean over units of the unit-mean ``value``.
    ``ci_low``, ``ci_high``
        interval of ``mean`` (NaN with one unit).
    ``interval``
        ``"boot_t"`` or ``"t"``: the marginal interval used.
    ``simultaneous_ci_low``, ``simultaneous_ci_high``
        Bonferroni interval over the channels of the group.
    ``rank``
        1 for the channel with the highest mean (descriptive).
    ``dominant``
        True only for the channel the dominance test names at ``alpha``.
    ``unit``, ``n_units``, ``n_samples``, ``pseudo_replicates``, ``warning``
        unit of replication, counts, pseudo-replicate flag, unit warning (``""`` if none).
    """
    if interval not in ("boot_t", "t"):
        raise ValueError(f"interval must be 'boot_t' or 't'; got {interval!r}")
    check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    by = as_tuple(by)
    if isinstance(mass, pd.DataFrame) and value in mass.columns and sample in mass.columns:
        mass, _ = drop_incomplete(mass, value, sample, [c for c in by if c in mass.columns], who="channel_share_ci")
    unit_warning = resolve_unit(mass, unit, as_tuple(well), plate, "channel_share_ci")[1] if isinstance(mass, pd.DataFrame) else ""
    groups = build_groups(
        mass, value, channel, sample, as_tuple(well), plate, by, unit, breakdown, who="channel_share_ci"
    )
    rows = []
    for group in groups:
        means, low, high, s_low, s_high, used = share_intervals(group.values, ci, interval, n_boot, rng)
        winner = dominance(group.values, alpha=alpha)["dominant"] if group.n_units >= 3 else -1
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
                    "interval": used,
                    "simultaneous_ci_low": s_low[j],
                    "simultaneous_ci_high": s_high[j],
                    "rank": int(ranks[j]),
                    "dominant": bool(j == winner),
                    "unit": group.unit,
                    "n_units": group.n_units,
                    "n_samples": group.sample_values.shape[0],
                    "pseudo_replicates": bool(pseudo_replicates),
                    "warning": unit_warning,
                }
            )
    out = pd.DataFrame(rows)
    if breakdown and breakdown not in out.columns:
        out.insert(len(by), breakdown, ALL)
    return out
