"""Per-channel test against zero of a signed per-image quantity (single-channel DAC, Shapley values).

Question: "does channel k contribute, on average over units, more (or less) than nothing?"
Images are averaged per unit (well, or plate; see :func:`chanstat.stats.test_channels`), a
one-sample test per channel runs on the unit means, and Holm's adjustment runs over the
channels of each group.

**Skewed unit means.** Shapley values are right-skewed; the one-sample t alone rejected a true
null .15-.30 of the time at 4-12 wells in the audit. The default ``test="robust"`` reports the
largest of four p-values: the t-test's, an exact studentised sign-flip test's (exact when the
unit means are symmetric about 0, all ``2^n`` sign patterns up to 12 units), an equal-tailed
bootstrap-t's and a bootstrap of Hall's (1992) skewness-corrected t (both correct for
skewness to second order). A rejection needs all four; the price is that below
6 units the sign-flip p-value cannot fall below ``2 / 2^n`` (.125 at 4 units): with 4 or 5
units no channel is declared different from 0, which is what so few units support without
assuming symmetry (one-sided, the floor is ``1 / 2^n``: 1/16 = .0625 at 4 units, still above
.05). **Error controlled:** the type I error of each channel's test (Holm: the family-wise error
over the group's channels), measured (2000 studies per cell, alpha .05, right-skewed
lognormal unit means with mean 0): <= .045 at 6-24 units for skewness up to 1.8; at skewness
6.2, .073 / .074 / .081 / .054 at 6 / 8 / 12 / 24 units (.082-.097 without the Hall-t
bootstrap; .12-.17 for the t-test alone). No test of a mean is exact for every skewed
distribution (Bahadur and Savage 1956): a sample of 6-12 units that misses the long right tail
looks like a sample with a negative mean, and nothing in it says otherwise; the table's note
flags channels whose unit means have sample skewness >= 1. ``analyses/calibration.py`` part
(f) gives the measured rates. ``test="t"`` or
``"sign_flip"`` give one of them alone. The t-interval of each channel's mean is given too (a
channel named in advance; the simultaneous interval covers all channels together).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats as sps

from chanstat.stats.bootstrap import simultaneous_interval
from chanstat.stats.design import (
    ALL,
    DEFAULT_PADJUST,
    N_BOOT,
    PLATE_COLUMN,
    WELL_COLUMNS,
    as_tuple,
    build_groups,
    drop_incomplete,
    resolve_unit,
)
from chanstat.stats.dominance import _sign_patterns, _t_stat, t_interval
from chanstat.stats.padjust import adjust, check_padjust

ALTERNATIVES = ("two-sided", "greater", "less")
TESTS = ("robust", "t", "sign_flip")


def _boot_t_p(x: np.ndarray, alternative: str, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Bootstrap-t p-value of "mean = 0" per column of ``x`` (n_units, C): resample units,
    ``t* = (mean* - mean) / se*`` (rounding-level se* dropped); two-sided p is equal-tailed."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    se = x.std(axis=0, ddof=1) / np.sqrt(n)
    xb = x[rng.integers(0, n, size=(n_boot, n))]
    se_b = xb.std(axis=1, ddof=1) / np.sqrt(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        tb = (xb.mean(axis=1) - mean) / se_b
        t = mean / se
    tb[~np.isfinite(tb) | (se_b <= 1e-6 * se)] = np.nan
    ok = np.isfinite(tb)
    count = np.maximum(ok.sum(axis=0), 1)
    low = ((tb <= t) & ok).sum(axis=0) / count
    high = ((tb >= t) & ok).sum(axis=0) / count
    p = {"greater": high, "less": low}.get(alternative, np.minimum(1.0, 2 * np.minimum(low, high)))
    return np.where(np.isfinite(t), p, np.nan)


def _hall_t(x: np.ndarray, mu: np.ndarray | float, axis: int = 0) -> np.ndarray:
    """Hall's (1992) skewness-corrected studentised mean, ``sqrt(n)(u + g u^2/3 + g^2 u^3/27 + g/(6n))``
    with ``u = (mean - mu) / sd`` and ``g`` the sample skewness; monotone in ``u``."""
    n = x.shape[axis]
    m = x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, ddof=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.mean(((x - m) / sd) ** 3, axis=axis)
        u = (np.squeeze(m, axis) - mu) / np.squeeze(sd, axis)
    return np.sqrt(n) * (u + g * u**2 / 3 + g**2 * u**3 / 27 + g / (6 * n))


def _boot_hall_p(x: np.ndarray, alternative: str, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Bootstrap p-value of "mean = 0" per column of ``x`` (n_units, C) on Hall's transformed t
    (:func:`_hall_t`; the bootstrap calibrates what the transformation leaves); equal-tailed."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    obs = _hall_t(x, 0.0)
    xb = x[rng.integers(0, n, size=(n_boot, n))]
    tb = _hall_t(xb, x.mean(axis=0), axis=1)
    sd_b = xb.std(axis=1, ddof=1)
    tb[~np.isfinite(tb) | (sd_b <= 1e-6 * x.std(axis=0, ddof=1))] = np.nan
    ok = np.isfinite(tb)
    count = np.maximum(ok.sum(axis=0), 1)
    low = ((tb <= obs) & ok).sum(axis=0) / count
    high = ((tb >= obs) & ok).sum(axis=0) / count
    p = {"greater": high, "less": low}.get(alternative, np.minimum(1.0, 2 * np.minimum(low, high)))
    return np.where(np.isfinite(obs), p, np.nan)


def _sign_flip_p(x: np.ndarray, alternative: str, n_flips: int = 9999, seed: int = 0) -> np.ndarray:
    """Studentised sign-flip p-value of "mean = 0" per column of ``x`` (n_units, C).

    All ``2^n`` sign patterns up to 12 units (exact under symmetry about 0), else ``n_flips``
    random patterns with the identity included.
    """
    n = x.shape[0]
    signs = _sign_patterns(n, n_flips, np.random.default_rng(seed))  # (B, n), identity first
    t = _t_stat(signs[:, :, None] * x[None], axis=1)  # (B, C)
    t = np.nan_to_num(t, nan=0.0, posinf=1e300, neginf=-1e300)
    obs = t[0]
    if alternative == "greater":
        return (t >= obs - 1e-12 * np.abs(obs)).mean(axis=0)
    if alternative == "less":
        return (t <= obs + 1e-12 * np.abs(obs)).mean(axis=0)
    return (np.abs(t) >= np.abs(obs) * (1 - 1e-12)).mean(axis=0)


COLUMNS = (
    "channel",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "simultaneous_ci_low",
    "simultaneous_ci_high",
    "statistic",
    "df",
    "test_used",
    "p_value",
    "p_adj",
    "p_adj_method",
    "multiplicity_scope",
    "alternative",
    "unit",
    "n_units",
    "n_samples",
    "pseudo_replicates",
    "warning",
    "note",
)


def test_against_zero(
    table: pd.DataFrame,
    value: str = "shapley",
    channel: str = "channel",
    sample: str = "sample",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    by: Sequence[str] = ("method",),
    unit: str = "auto",
    breakdown: str | None = "transition",
    *,
    alternative: str = "two-sided",
    test: str = "robust",
    n_boot: int = N_BOOT,
    seed: int = 0,
    padjust: str = DEFAULT_PADJUST,
    ci: float = 0.95,
    pseudo_replicates: bool = False,
) -> pd.DataFrame:
    """One-sample t-test of each channel's unit-mean ``value`` against 0, Holm over channels.

    Parameters
    ----------
    table : tidy table, one row per sample and channel (e.g. channel Shapley values, or
        single-channel DAC scores with a ``channel`` column).
    value : the signed quantity (default ``"shapley"``).
    channel, sample, well, plate, by, unit, breakdown : as :func:`chanstat.stats.test_channels`
        (samples with a NaN value are dropped with a warning and a count).
    alternative : ``"two-sided"`` (default), ``"greater"`` (contributes positively) or ``"less"``.
    test : ``"robust"`` (default; the largest of the t, sign-flip and bootstrap-t p-values),
        ``"t"`` or ``"sign_flip"``.
    n_boot, seed : bootstrap-t resamples and seed (``test="robust"``).
    padjust : adjustment over the channels of each group (default Holm).
    ci : level of the t-intervals.
    pseudo_replicates : the units are pseudo-replicates (spatial blocks of one field).

    Returns
    -------
    DataFrame, one row per group and channel: the ``by`` and ``breakdown`` columns, then
    ``channel``; ``mean``, ``sd`` (over units); ``ci_low``, ``ci_high`` (t-interval);
    ``simultaneous_ci_low``/``high`` (all channels of the group together: bootstrap of the max
    studentised deviation, never narrower than Bonferroni t); ``statistic``
    (t), ``df`` (n_units - 1), ``p_value``; ``p_adj`` (``padjust`` over the group's channels),
    ``p_adj_method``, ``multiplicity_scope``; ``alternative``; ``unit``, ``n_units``,
    ``n_samples``, ``pseudo_replicates``, ``warning``, ``note``.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}; got {test!r}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}; got {alternative!r}")
    check_padjust(padjust)
    by = as_tuple(by)
    if isinstance(table, pd.DataFrame) and value in table.columns and sample in table.columns:
        table, _ = drop_incomplete(table, value, sample, [c for c in by if c in table.columns], who="test_against_zero")
    unit_warning = (
        resolve_unit(table, unit, as_tuple(well), plate, "test_against_zero")[1]
        if isinstance(table, pd.DataFrame)
        else ""
    )
    if unit_warning:
        warnings.warn(f"test_against_zero: {unit_warning}", stacklevel=2)
    groups = build_groups(
        table,
        value,
        channel,
        sample,
        as_tuple(well),
        plate,
        by,
        unit,
        breakdown,
        who="test_against_zero",
        min_channels=1,
    )
    rng = np.random.default_rng(seed)
    rows = []
    for group in groups:
        x = group.values
        n, c = x.shape
        mean, low, high = t_interval(x, ci=ci)
        _, s_low, s_high, _ = simultaneous_interval(x, ci, n_boot, rng)
        sd = x.std(axis=0, ddof=1) if n > 1 else np.full(c, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(sd > 0, mean / (sd / np.sqrt(n)), np.nan)
        if alternative == "two-sided":
            p = 2 * sps.t.sf(np.abs(t), n - 1)
        elif alternative == "greater":
            p = sps.t.sf(t, n - 1)
        else:
            p = sps.t.cdf(t, n - 1)
        p = np.where(np.isfinite(t), p, np.nan)
        if test in ("robust", "sign_flip") and n >= 2:
            p_flip = _sign_flip_p(x, alternative)
            if test == "robust":
                p_boot = _boot_t_p(x, alternative, n_boot=n_boot, seed=seed) if n >= 3 and n_boot else p
                p_hall = _boot_hall_p(x, alternative, n_boot=n_boot, seed=seed + 1) if n >= 3 and n_boot else p
                p = np.where(np.isfinite(p), np.fmax(np.fmax(np.fmax(p, p_flip), p_boot), p_hall), np.nan)
            else:
                p = p_flip
        p_adj = adjust(p, padjust)
        note = "" if n >= 2 else f"only {n} {group.unit}: no test"
        with np.errstate(invalid="ignore", divide="ignore"):
            skew = np.mean(((x - mean) / sd) ** 3, axis=0) if n >= 3 else np.full(c, np.nan)
        for j, name in enumerate(group.channels):
            rows.append(
                {
                    **group.keys,
                    "channel": name,
                    "mean": mean[j],
                    "sd": sd[j],
                    "ci_low": low[j],
                    "ci_high": high[j],
                    "simultaneous_ci_low": s_low[j],
                    "simultaneous_ci_high": s_high[j],
                    "statistic": t[j],
                    "df": float(n - 1),
                    "p_value": p[j],
                    "p_adj": p_adj[j],
                    "p_adj_method": padjust,
                    "multiplicity_scope": f"{padjust} over {int(np.isfinite(p).sum())} channels of the group",
                    "alternative": alternative,
                    "test_used": test,
                    "unit": group.unit,
                    "n_units": n,
                    "n_samples": group.sample_values.shape[0],
                    "pseudo_replicates": bool(pseudo_replicates),
                    "warning": unit_warning,
                    "note": (
                        "PSEUDO-REPLICATES, n = 1 field: blocks of one field are not a sample of wells, so no "
                        "p-value (effect sizes only); "
                        if pseudo_replicates
                        else ""
                    )
                    + note
                    + (
                        f"{'; ' if note else ''}unit means skewed (skewness {skew[j]:.2g}): no test of a mean is "
                        f"exact for every skewed distribution; see README 'Calibration' for measured rates"
                        if np.isfinite(skew[j]) and abs(skew[j]) >= 1 and not pseudo_replicates
                        else ""
                    ),
                }
            )
    out = pd.DataFrame(rows)
    if pseudo_replicates and len(out):
        out[["p_value", "p_adj"]] = np.nan
    if breakdown and breakdown not in out.columns:
        out.insert(len(by), breakdown, ALL)
    lead = [c for c in out.columns if c not in COLUMNS]
    return out[lead + list(COLUMNS)]


cast(Any, test_against_zero).__test__ = False  # not a pytest test, despite the name
