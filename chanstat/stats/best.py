"""Which channel carries the largest share? A confidence set for the best channel.

Multiple comparisons with the best (MCB; Hsu 1981, 1996), on unit means (wells or plates).

**The test scale.** Shares are compared as *log-ratios*: each unit's composition is closed,
zeros get a multiplicative replacement, and ``y[u, k] = log share[u, k]``; the difference of
two channels is then the paired log-ratio ``log(share_k / share_j)``, which is unbounded and
close to normal even where the shares themselves are bounded and skewed. Signed quantities
(Shapley values, single-channel DAC scores) are compared on their own scale.

**The variance.** The variance of a pair's log-ratio difference is what decides calibration at
the hardest null (two channels tied on top), and channels differ in it: a noisier tied pair
makes a variance pooled over all channels too small for that pair (measured naming rate
.12-.16), while many small, noisy channels (Dirichlet-like shares) make it too large for the
pair that matters (conservative, power lost). ``variance="channel_df"`` (default) and
``"channel"`` fit one variance per channel, ``v[k]``, with ``var(log share_k - log share_j) =
v[k] + v[j]`` (unit effects hold the closure), by generalised least squares on all pair
variances (:func:`channel_variances`, the REML fit of the heteroscedastic two-way model). The
tied pair's variance therefore comes from the pairs that contain those channels, not from the
others: calibrated whether the tied pair is noisier, quieter or alike. ``"channel"`` refers
each comparison to t on its Satterthwaite degrees of freedom evaluated at the fitted variances
(``n - 1`` to ``(n - 1)(C - 1)``); at few units these are biased low (fitted variances scatter
more than the true ones, and scattered variances read as fewer df: median 3.6 instead of 4 at 4
units and equal variances), which costs power. ``"channel_df"`` uses ``max(Satterthwaite,
design_df)``, :func:`~chanstat.stats.best_variance.design_df` ``= 2 (n - 1)(C - 1) / (C + 1)``
being the exact df of ``v[k] + v[j]`` when the channels' variances are equal (fixed by units and
channels, not by the data; ``n - 1`` for 3 channels, ``4 (n - 1) / 3`` for 5). Measured (2000
studies per cell, 5 channels, lognormal, t3 and Dirichlet shares): naming rate at the hardest
null <= .055 at 4-24 units (the worst cell, lognormal at 8 units, .054 +- .0025 over four seeds),
also with the tied pair twice as noisy as the rest or half as noisy; power at .45 vs 4 x .1375
within .03 of the fixed-channel paired t at ``alpha / 2`` at 4, 6 and 12 units, except
Dirichlet shares at 4 units (.25 against .33: the log-ratio of small Dirichlet shares is skewed
and noisy, and no calibrated log-ratio variance we tried recovers it). Shares themselves
(``scale="raw"``) do not fit the additive model: the two tied top shares of a unit are
negatively correlated (together they fill it), so ``v[k] + v[j]`` is 1.5-1.6 times too small
for that pair and a channel is named .10-.14 of the time at the hardest null; the share-scale
paired t with each pair's own variance is the alpha/2 reference itself (so it would close the
Dirichlet gap: .33 at 4 units) but names a noisier tied pair .053-.067 of the time at 3-6 units
(its share differences are bimodal: one of the pair fills the unit, then the other). ``variance="pooled"`` estimates one residual variance from the units x channels
table (``(n - 1)(C - 1)`` df: more power when the channels' log-ratio variances are equal,
anti-conservative when the contending pair is noisier than the rest). ``variance="pair"`` uses
each pair's own variance (``n - 1`` df); ``variance="max"`` the larger of the pair's and the
pooled variance.

**Which error is controlled** (``error``):

``"naming"`` (default)
    every pairwise comparison is one-sided at ``alpha / 2``. A channel is *named* only when
    it beats every other channel; the events "k is named" are disjoint, so when the largest
    share is tied between two channels (the hardest case), the probability of naming either
    of them is <= ``alpha``; a channel whose share is below another's is named with
    probability <= ``alpha / 2``. The set excludes a truly best channel with probability
    <= ``alpha / 2`` per channel that is close to it.
``"mcb"``
    Hsu's MCB guarantee: with probability >= 1 - ``alpha`` the set holds every channel with
    the largest mean and every gap interval covers (one-sided comparisons at
    ``alpha / (C - 1)``, Bonferroni, conservative).

The gap intervals on the **share scale** (``gap_ci_low``, ``gap_ci_high``) are Hsu's
constrained MCB intervals of ``mean_k - max_{j != k} mean_j`` from paired t on the shares
(Bonferroni over the C - 1 comparisons: simultaneous at 1 - ``alpha``); the interval that
decides membership is ``log_ratio_ci_low`` / ``log_ratio_ci_high`` (test scale: ``in_set``
holds exactly when ``log_ratio_ci_high > 0``). The two scales give one answer: the share-scale
interval of a channel outside the set is cut at 0 from above, that of the named channel at 0
from below (the exclusion is the log-ratio test's, so these bounds hold at the test's level).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats as sps

from chanstat.stats.best_variance import channel_variances, design_df, flat_floor
from chanstat.stats.compositional import (
    DEFAULT_ZERO_DELTA,
    closure,
    multiplicative_replacement,
)
from chanstat.stats.design import (
    ALL,
    DEFAULT_PADJUST,
    PLATE_COLUMN,
    WELL_COLUMNS,
    as_tuple,
    build_groups,
    count_plates,
    drop_incomplete,
)
from chanstat.stats.dominance import plate_heterogeneity
from chanstat.stats.padjust import adjust
from chanstat.vocabulary import ALPHA

ERRORS = ("naming", "mcb")
VARIANCES = ("channel_df", "channel", "pooled", "pair", "max")
#: the per-channel variance models (fitted by :func:`channel_variances`)
CHANNEL_VARIANCES = ("channel_df", "channel")
#: attribution methods that use a counterfactual (the default primary method is the first of these present)
DISCRIMINATIVE_PREFIX = "d_"

COLUMNS = (
    "method",
    "role",
    "transition",
    "quantity",
    "channel",
    "estimate",
    "gap",
    "gap_ci_low",
    "gap_ci_high",
    "in_set",
    "named_channel",
    "set_label",
    "unit",
    "n_units",
    "scope",
    "alpha",
    "p_value",
    "p_adj",
    "note",
    "log_ratio_gap",
    "log_ratio_ci_low",
    "log_ratio_ci_high",
    "test_scale",
    "variance",
    "error",
    "df",
    "plate_x_channel_p",
    "n_plates",
)

#: ``unit="auto"`` uses plates as units from this many plates on
MIN_PLATES = 2

_QUANTITY = {"share": "share", "shapley": "shapley", "dac": "dac"}


def _hsu(d: np.ndarray, se: np.ndarray, c: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hsu's constrained MCB intervals and the set, from pair differences ``d[k, j] = m_k - m_j``.

    Returns ``(low, high, in_set)``, each (C,). ``in_set[k]``: no channel beats k by more
    than ``c`` standard errors. ``high = max(0, min_j (d_kj + c se_kj))``; ``low = 0`` for the
    only member of the set, else ``min(0, min_{j in set, j != k} (d_kj - c se_kj))``.
    """
    n_c = d.shape[0]
    c = np.broadcast_to(np.asarray(c, dtype=float), (n_c, n_c))
    off = ~np.eye(n_c, dtype=bool)
    upper = np.where(off, d + c * se, np.inf).min(axis=1)
    in_set = ~(upper <= 0)  # NaN (no spread information) keeps a channel in
    high = np.maximum(upper, 0.0)
    low = np.zeros(n_c)
    members = np.flatnonzero(in_set)
    for k in range(n_c):
        others = [j for j in members if j != k]
        if len(members) == 1 and members[0] == k:
            low[k] = 0.0
        elif others:
            low[k] = min(0.0, float(np.min(d[k, others] - c[k, others] * se[k, others])))
        else:
            low[k] = float(np.min(np.where(off[k], d[k] - c[k] * se[k], np.inf)))
    return low, high, in_set


def _test_values(x: np.ndarray, scale: str, delta: float) -> np.ndarray:
    return np.log(multiplicative_replacement(closure(x), delta=delta)) if scale == "log" else x


def pooled_variance(values: np.ndarray, scale: str = "log", delta: float = DEFAULT_ZERO_DELTA) -> tuple[float, float]:
    """Residual variance of the units x channels table on the test scale, and its df ``(n-1)(C-1)``."""
    y = _test_values(np.asarray(values, dtype=float), scale, delta)
    n, n_c = y.shape
    if n < 2:
        return np.nan, 0.0
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0) + y.mean()
    df = (n - 1) * (n_c - 1)
    return float((resid**2).sum() / df), float(df)


def squeeze_prior(variances: np.ndarray, dfs: np.ndarray) -> tuple[float, float]:
    """Empirical-Bayes prior ``(s0^2, d0)`` of many residual variances (Smyth 2004, limma's ``fitFDist``).

    Method of moments on ``log s^2``: ``d0 = 2 trigamma^-1(var(e) - mean trigamma(d/2))``;
    ``d0 = inf`` (complete pooling) when the variances vary no more than sampling alone makes
    them; ``d0 = 0`` (no moderation) with fewer than 3 usable variances.
    """
    from scipy import special

    s2 = np.asarray(variances, dtype=float)
    d = np.asarray(dfs, dtype=float)
    ok = np.isfinite(s2) & (s2 > 0) & (d > 0)
    if ok.sum() < 3:
        return np.nan, 0.0
    s2, d = s2[ok], d[ok]
    e = np.log(s2) - special.digamma(d / 2) + np.log(d / 2)
    emean = float(e.mean())
    evar = float(e.var(ddof=1) - special.polygamma(1, d / 2).mean())
    if evar <= 1e-8:
        return float(np.exp(emean)), np.inf
    y = 0.5 + 1 / evar  # Newton iteration for trigamma^-1 (Smyth)
    for _ in range(50):
        tri = special.polygamma(1, y)
        step = tri * (1 - tri / evar) / special.polygamma(2, y)
        y = y + step
        if abs(step) < 1e-10 * y:
            break
    d0 = 2 * float(y)
    return float(np.exp(emean + special.digamma(d0 / 2) - np.log(d0 / 2))), d0


def mcb(
    values: np.ndarray,
    *,
    alpha: float = ALPHA,
    scale: str = "log",
    variance: str = "channel_df",
    error: str = "naming",
    delta: float = DEFAULT_ZERO_DELTA,
    prior: tuple[float, float] | None = None,
) -> dict:
    """Confidence set for the channel with the largest mean, on a (n_units, C) matrix of unit means.

    Parameters
    ----------
    values : ndarray (n_units, C), unit means (shares, or signed values).
    alpha : level; see the module docstring for the error each ``error`` controls.
    scale : ``"log"`` (log-ratios of closed compositions; values must be >= 0) or ``"raw"``.
    variance : ``"channel_df"`` (default), ``"channel"``, ``"pooled"``, ``"pair"`` or ``"max"`` (module docstring).
    error : ``"naming"`` or ``"mcb"``.
    delta : zero replacement before the log.
    prior : ``(s0^2, d0)`` from :func:`squeeze_prior` (screens: many transitions): the pooled
        variance is moderated to ``(d0 s0^2 + df s^2) / (d0 + df)`` on ``d0 + df`` degrees of
        freedom (``d0 = inf``: ``s0^2`` itself; limma's moderated t); with a prior,
        ``variance="channel_df"`` or ``"channel"`` uses this moderated pooled variance.

    Returns
    -------
    dict with ``means`` (C,) on the original scale, ``gap`` (C,) (mean minus the largest
    other mean), ``gap_low``, ``gap_high`` (share-scale Hsu intervals), ``in_set`` (C,) bool,
    ``test_gap``, ``test_low``, ``test_high`` (test scale), ``p_value`` (C,) (p of "k is the
    largest": the largest of its pairwise p-values, intersection-union), ``df`` (C,) (degrees
    of freedom of each channel's comparison with the best of the others), ``named`` (index or -1).
    """
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}; got {error!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}; got {variance!r}")
    if scale not in ("log", "raw"):
        raise ValueError(f"scale must be 'log' or 'raw'; got {scale!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    x = np.asarray(values, dtype=float)
    n, n_c = x.shape
    means = x.mean(axis=0)
    off = ~np.eye(n_c, dtype=bool)
    gap = means - np.array([np.max(means[off[k]]) for k in range(n_c)])
    nan = np.full(n_c, np.nan)
    out = {
        "means": means,
        "gap": gap,
        "gap_low": nan,
        "gap_high": nan.copy(),
        "in_set": np.ones(n_c, bool),
        "test_gap": nan.copy(),
        "test_low": nan.copy(),
        "test_high": nan.copy(),
        "p_value": nan.copy(),
        "df": np.nan,
        "named": -1,
    }
    if n < 2 or n_c < 2:
        return out
    y = _test_values(x, scale, delta)
    ym = y.mean(axis=0)
    d = ym[:, None] - ym[None, :]
    pair_var = (y[:, :, None] - y[:, None, :]).var(axis=0, ddof=1)
    resid = y - y.mean(axis=1, keepdims=True) - ym + ym.mean()
    df_pool = (n - 1) * (n_c - 1)
    pooled = 2 * float((resid**2).sum()) / df_pool
    moderated = prior is not None and prior[1] > 0 and np.isfinite(prior[0])
    if moderated and variance in CHANNEL_VARIANCES:
        variance = "pooled"  # moderation across transitions acts on the pooled variance
    if prior is not None and moderated:
        s0, d0 = prior
        if np.isinf(d0):
            pooled, df_pool = 2 * s0, 1e6
        else:
            pooled = 2 * (d0 * s0 + df_pool * pooled / 2) / (d0 + df_pool)
            df_pool = d0 + df_pool
    df: float | np.ndarray
    if variance in CHANNEL_VARIANCES and n > 2 and n_c > 2:
        var, df = channel_variances(y)
        if variance == "channel_df":
            df = np.maximum(df, design_df(n, n_c))
    elif variance in ("pooled", *CHANNEL_VARIANCES):
        var, df = np.full((n_c, n_c), pooled), float(df_pool)
    elif variance == "max":
        var, df = np.maximum(pair_var, pooled), float(df_pool)
    else:
        var, df = pair_var, float(n - 1)
    se = np.sqrt(np.maximum(var, flat_floor(y) ** 2) / n)
    level = alpha / 2 if error == "naming" else alpha / (n_c - 1)
    c = sps.t.ppf(1 - level, df)
    t = d / se
    low, high, in_set = _hsu(d, se, c)
    p_pair = sps.t.sf(t, df)  # one-sided "k > j"
    scale_p = 2.0 if error == "naming" else float(n_c - 1)
    p_value = np.minimum(1.0, scale_p * np.where(off, p_pair, -np.inf).max(axis=1))
    # share-scale simultaneous gap intervals: paired t per pair, Bonferroni over C - 1
    sd_raw = (x[:, :, None] - x[:, None, :]).std(axis=0, ddof=1)
    se_raw = np.sqrt(np.maximum(sd_raw**2, flat_floor(x) ** 2) / n)
    c_raw = float(sps.t.ppf(1 - alpha / (n_c - 1), n - 1))
    g_low, g_high, _ = _hsu(means[:, None] - means[None, :], se_raw, c_raw)
    test_gap = ym - np.array([np.max(ym[off[k]]) for k in range(n_c)])
    rival = np.array([int(np.argmax(np.where(off[k], ym, -np.inf))) for k in range(n_c)])
    df_k = np.broadcast_to(np.asarray(df, dtype=float), (n_c, n_c))[np.arange(n_c), rival]
    members = np.flatnonzero(in_set)
    out.update(
        gap_low=g_low,
        gap_high=g_high,
        in_set=in_set,
        test_gap=test_gap,
        test_low=low,
        test_high=high,
        p_value=p_value,
        df=df_k,
        named=int(members[0]) if len(members) == 1 else -1,
    )
    return out


def set_label(channels: Sequence[str], in_set: np.ndarray, means: np.ndarray) -> str:
    """``"Mito or ER"`` (members by decreasing mean), the channel itself when one, ``""`` when all."""
    members = [i for i in np.argsort(-np.asarray(means), kind="stable") if in_set[i]]
    if len(members) == len(channels):
        return ""
    return " or ".join(str(channels[i]) for i in members)


def default_primary(methods: Sequence[str]) -> str:
    """The first discriminative method (``d_*``) among ``methods``, else the first method."""
    methods = [str(m) for m in methods]
    return next((m for m in methods if m.startswith(DISCRIMINATIVE_PREFIX)), methods[0] if methods else "")


def best_channel(
    table: pd.DataFrame,
    value: str = "share",
    channel: str = "channel",
    sample: str = "sample",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    by: Sequence[str] = ("method",),
    unit: str = "auto",
    breakdown: str | None = "transition",
    *,
    alpha: float = ALPHA,
    quantity: str | None = None,
    primary_method: str | None = None,
    variance: str = "channel_df",
    error: str = "naming",
    padjust: str = DEFAULT_PADJUST,
    moderate: bool = False,
    pseudo_replicates: bool = False,
    n_perm: int = 999,
    seed: int = 0,
    delta: float = DEFAULT_ZERO_DELTA,
) -> pd.DataFrame:
    """Confidence set for the best channel, per method and transition (the ``best_channel`` table).

    Images are averaged per unit (see :func:`chanstat.stats.test_channels` for ``unit``,
    ``well``, ``plate``, ``by`` and ``breakdown``); :func:`mcb` runs on the unit means. A
    channel is *named* when the set holds that channel alone; otherwise the answer is the set
    (``set_label``, e.g. ``"Mito or ER"``; ``""`` when no channel is excluded).

    **Scope.** ``unit="auto"`` uses plates as units from 2 plates on (population scope: the
    pooled log-ratio variance of plate means holds the plate x channel variation, so the
    p-values are calibrated for the population of plates; with 2 plates the test has
    ``C - 1`` degrees of freedom and little power), and wells with one plate.
    ``"population"``: units are plates, or wells without plate information.
    ``"these plates"``: wells (or images) of known plates, e.g. ``unit="well"`` with 2-5
    plates: plate x channel effects are not averaged out, the answer is about these plates,
    and the plate x channel permutation test is given in ``plate_x_channel_p`` and the note.
    ``"one field"``: the units are pseudo-replicates of one field of view (spatial blocks):
    effect sizes only, ``p_value`` NaN, because blocks of one field are not a sample of wells.

    **Multiplicity.** ``p_adj`` is Holm (``padjust``) over the transitions of each method,
    quantity and channel (the pooled ``"all"`` row included). ``role`` is ``"primary"`` for
    ``primary_method`` (default: the first discriminative ``d_*`` method present, else the
    first method) and ``"exploratory"`` for every other method: no adjustment across methods
    is made, so only the primary method's rows carry the stated error rate.

    Parameters
    ----------
    table : tidy table, one row per sample and channel (``channel_mass``, Shapley values, DAC).
    value : the column compared (``"share"`` default; ``"shapley"``, ``"dac"``, ...).
    alpha : level (the error is ``error``'s; see :mod:`chanstat.stats.best`).
    quantity : label of ``value`` in the table (default: ``"share"``, ``"shapley"`` or ``"dac"``
        from ``value``, else ``value`` itself).
    primary_method : the method declared primary.
    variance, error : see :func:`mcb`.
    padjust : adjustment across transitions (default Holm).
    moderate : screens (many transitions against one control): moderate each transition's
        pooled variance towards the others' (empirical Bayes, :func:`squeeze_prior`, over the
        transitions of each ``by`` group, the pooled ``"all"`` row left out); only with
        ``variance="pooled"``.
    pseudo_replicates : units are spatial blocks of one field.
    n_perm, seed : permutations and seed of the plate x channel test.
    delta : zero replacement before log-ratios.

    Returns
    -------
    DataFrame, one row per (method, transition, channel): ``method``, ``role``,
    ``transition``, ``quantity``, ``channel``, ``estimate`` (mean over units), ``gap``
    (estimate minus the largest other estimate), ``gap_ci_low``, ``gap_ci_high``
    (simultaneous share-scale MCB interval), ``in_set``, ``named_channel`` (``""`` unless the
    set is one channel), ``set_label``, ``unit``, ``n_units``, ``scope``, ``alpha``,
    ``p_value`` (p of "this channel is the largest"; NaN for one field), ``p_adj``, ``note``;
    then ``log_ratio_gap``, ``log_ratio_ci_low``, ``log_ratio_ci_high`` (test scale),
    ``test_scale``, ``variance``, ``error``, ``df``, ``plate_x_channel_p``, ``n_plates``.
    """
    by = as_tuple(by)
    who = "best_channel"
    if isinstance(table, pd.DataFrame) and value in table.columns and sample in table.columns:
        table, _ = drop_incomplete(table, value, sample, [c for c in by if c in table.columns], who=who)
    if unit == "auto":
        # plates are the unit from 2 plates on (no jump at 6): the pooled log-ratio variance then
        # holds the plate x channel variation, with (plates - 1)(C - 1) degrees of freedom
        unit = "plate" if count_plates(table, plate) >= MIN_PLATES else "auto"
    groups = build_groups(table, value, channel, sample, as_tuple(well), plate, by, unit, breakdown, who=who)
    signed = bool((pd.to_numeric(table[value], errors="coerce") < 0).any())
    scale = "raw" if signed or value not in ("share",) and quantity not in ("share",) else "log"
    quantity = quantity or _QUANTITY.get(value, value)
    methods = list(dict.fromkeys(str(g.keys.get("method", ALL)) for g in groups))
    primary = primary_method if primary_method is not None else default_primary(methods)
    priors: dict[tuple, tuple[float, float]] = {}
    if moderate and variance in ("pooled", *CHANNEL_VARIANCES):
        fits: dict[tuple, list[tuple[float, float]]] = {}
        for group in groups:
            if breakdown and group.keys.get(breakdown, ALL) != ALL:
                key = tuple(v for k, v in group.keys.items() if k != breakdown)
                fits.setdefault(key, []).append(pooled_variance(group.values, scale, delta))
        priors = {key: squeeze_prior(*np.array(v).T) for key, v in fits.items()}
    rows = []
    for group in groups:
        key = tuple(v for k, v in group.keys.items() if k != breakdown)
        is_level = bool(breakdown) and group.keys.get(breakdown, ALL) != ALL
        res = mcb(
            group.values,
            alpha=alpha,
            scale=scale,
            variance=variance,
            error=error,
            delta=delta,
            prior=priors.get(key) if is_level else None,
        )
        n_plates = len(np.unique(group.sample_plate)) if group.sample_plate is not None else 0
        notes = []
        if pseudo_replicates:
            scope = "one field"
            notes.append(
                "n = 1 field: the units are blocks of one field of view, not a sample of wells; effect sizes "
                "only, no p-value"
            )
        elif group.unit in ("well", "image") and n_plates >= 1:
            scope = "these plates"
            notes.append(
                f"{group.unit}s of {n_plates} plate(s) as units: the answer describes these plates, not the "
                f"population of plates"
            )
        else:
            scope = "population"
        het = np.nan
        if scope == "these plates" and n_plates >= 2 and group.n_units > n_plates:
            plate_of_unit = group.unit_plate
            assert plate_of_unit is not None  # n_plates >= 2 means group.sample_plate is set
            het = plate_heterogeneity(
                group.values, plate_of_unit, n_perm=n_perm, seed=seed, compositional=scale == "log"
            )["p_value"]
            notes.append(f"plate x channel test p = {het:.3g}")
        if group.n_units < 2:
            notes.append(f"only {group.n_units} {group.unit}: no set")
        if is_level and priors.get(key, (np.nan, 0.0))[1] > 0:
            notes.append(f"variance moderated across transitions (empirical Bayes, prior df {priors[key][1]:.3g})")
        method = str(group.keys.get("method", ALL))
        label = set_label(group.channels, res["in_set"], res["means"])
        named = group.channels[res["named"]] if res["named"] >= 0 else ""
        p_value = np.full(len(group.channels), np.nan) if pseudo_replicates else res["p_value"]
        # one answer on both scales: a channel outside the set has gap <= 0, the named one gap >= 0
        g_low = np.where(
            res["named"] == np.arange(len(group.channels)), np.maximum(res["gap_low"], 0.0), res["gap_low"]
        )
        g_high = np.where(res["in_set"], res["gap_high"], np.minimum(res["gap_high"], 0.0))
        for j, name in enumerate(group.channels):
            rows.append(
                {
                    **{k: v for k, v in group.keys.items()},
                    "method": method,
                    "role": "primary" if method == primary else "exploratory",
                    "transition": str(group.keys.get(breakdown, ALL)) if breakdown else ALL,
                    "quantity": quantity,
                    "channel": str(name),
                    "estimate": float(res["means"][j]),
                    "gap": float(res["gap"][j]),
                    "gap_ci_low": float(g_low[j]),
                    "gap_ci_high": float(g_high[j]),
                    "in_set": bool(res["in_set"][j]),
                    "named_channel": named,
                    "set_label": label,
                    "unit": group.unit,
                    "n_units": int(group.n_units),
                    "scope": scope,
                    "alpha": float(alpha),
                    "p_value": float(p_value[j]),
                    "p_adj": np.nan,
                    "note": "; ".join(notes),
                    "log_ratio_gap": float(res["test_gap"][j]),
                    "log_ratio_ci_low": float(res["test_low"][j]),
                    "log_ratio_ci_high": float(res["test_high"][j]),
                    "test_scale": "log-ratio" if scale == "log" else "raw",
                    "variance": variance,
                    "error": error,
                    "df": float(np.broadcast_to(res["df"], (len(group.channels),))[j]),
                    "plate_x_channel_p": float(het),
                    "n_plates": n_plates,
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    family = ["method", "quantity", "channel", *[c for c in by if c != "method"]]
    out["p_adj"] = out.groupby(family, sort=False, observed=True)["p_value"].transform(
        lambda p: adjust(p.to_numpy(float), padjust)
    )
    n_tr = out.groupby(family, sort=False, observed=True)["transition"].transform("nunique")
    out["note"] = [f"{n}{'; ' if n else ''}p_adj: {padjust} over {k} transition(s)" for n, k in zip(out["note"], n_tr)]
    extra = [c for c in out.columns if c not in COLUMNS]
    return out[list(COLUMNS) + extra].reset_index(drop=True)


cast(Any, best_channel).__test__ = False
