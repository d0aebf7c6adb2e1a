"""Unit-level tests and intervals: dominance (intersection-union), t-intervals, Hotelling T^2,
plate x channel heterogeneity. Plain functions on a (n_units, C) matrix of unit means.

**Dominance.** Channel k dominates when its mean unit-level value (share or contribution)
exceeds every other channel's. It is tested as an intersection-union test (IUT; Berger 1982):
reject "k is not the largest" only if every pairwise test "k > j" rejects; the IUT p-value is
the largest pairwise p-value and needs no multiplicity correction. The pairwise test is a
paired t on the unit-mean differences ``x_k - x_j`` (``pairwise="t"``, default: usable from 3
units, calibrated when the unit means are roughly normal, which averaging images makes
them) or a studentised sign-flip permutation test (``pairwise="sign_flip"``: exact for any
symmetric distribution, but its smallest p-value is ``2 / 2^n``, so it cannot reject below
6 units at alpha 0.05). Every pairwise p-value is **two-sided with the direction of the
observed difference** (twice the one-sided p): the events "k is named dominant" are disjoint
over k, and under a tie of the two leading channels each has probability alpha / 2, so the
probability of naming *some* channel when none dominates stays <= alpha although the
candidate channel is chosen from the data. At most one channel can pass.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats as sps

from chanstat.stats.compositional import DEFAULT_ZERO_DELTA, closure, ilr
from chanstat.vocabulary import ALPHA, CI

PAIRWISE = ("t", "sign_flip")
_EXACT_FLIPS = 12  # up to 2^12 sign patterns enumerated; beyond, random flips


def _t_stat(d: np.ndarray, axis: int = 0) -> np.ndarray:
    """One-sample t of ``d`` along ``axis`` (units).

    Without spread the t is +-inf when the mean is not 0 (every unit agrees: e.g. all mass
    in one channel) and NaN when every difference is 0.
    """
    n = d.shape[axis]
    mean = d.mean(axis=axis)
    sd = d.std(axis=axis, ddof=1)
    # spread below rounding noise of the mean counts as none
    flat = sd <= 1e-12 * np.maximum(np.abs(mean), 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = mean / (sd / np.sqrt(n))
    return np.where(flat, np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, np.nan)), t)


def _sign_patterns(n: int, n_flips: int, rng: np.random.Generator) -> np.ndarray:
    if n <= _EXACT_FLIPS:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # identity first
    return np.vstack([np.ones(n), rng.choice((1.0, -1.0), size=(n_flips - 1, n))])


def pairwise_greater(
    values: np.ndarray, pairwise: str = "t", n_flips: int = 9999, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Paired tests "channel i > channel j" for every ordered pair.

    Parameters
    ----------
    values : ndarray (n_units, C), unit means.
    pairwise : ``"t"`` (paired t on differences, n - 1 df) or ``"sign_flip"`` (studentised
        sign-flip permutation test; exact enumeration up to 12 units, else ``n_flips`` random
        sign patterns).

    Returns
    -------
    t : ndarray (C, C), paired t statistic of ``x_i - x_j`` (NaN on the diagonal or without spread).
    p : ndarray (C, C), ``min(1, 2 x one-sided p)`` of "i > j" (NaN on the diagonal; 1 when
        the differences are all 0; NaN with fewer than 2 units).
    """
    if pairwise not in PAIRWISE:
        raise ValueError(f"pairwise must be one of {PAIRWISE}; got {pairwise!r}")
    x = np.asarray(values, dtype=float)
    n, c = x.shape
    if n < 2:
        return np.full((c, c), np.nan), np.full((c, c), np.nan)
    d = x[:, :, None] - x[:, None, :]  # (n, C, C)
    t = _t_stat(d)
    if pairwise == "t":
        p_one = sps.t.sf(t, n - 1)
    else:
        signs = _sign_patterns(n, n_flips, np.random.default_rng(seed))  # (B, n)
        flipped = _t_stat(signs[:, :, None, None] * d[None], axis=1)  # (B, C, C)
        with np.errstate(invalid="ignore"):
            p_one = (np.nan_to_num(flipped, nan=-np.inf, posinf=np.inf, neginf=-np.inf) >= t[None]).mean(axis=0)
    p = np.minimum(1.0, 2 * p_one)
    p = np.where(np.isnan(t), 1.0, p)  # every difference 0: no evidence either way
    np.fill_diagonal(p, np.nan)
    return t, p


def dominance(values: np.ndarray, *, alpha: float = ALPHA, pairwise: str = "t", seed: int = 0) -> dict:
    """Intersection-union test of "channel k has the largest mean" for every k.

    Returns
    -------
    dict with ``p_iut`` (C,) (largest pairwise p of each channel against all others),
    ``candidate`` (index with the smallest IUT p; ties: the larger mean), ``p_value`` (its IUT
    p), ``dominant`` (candidate index when ``p_value < alpha``, else -1), ``t`` and ``p``
    (C, C) from :func:`pairwise_greater`, ``means`` (C,).
    """
    x = np.asarray(values, dtype=float)
    means = x.mean(axis=0)
    t, p = pairwise_greater(x, pairwise=pairwise, seed=seed)
    with np.errstate(invalid="ignore"):
        p_iut = (
            np.nanmax(np.where(np.eye(len(means), dtype=bool), -np.inf, p), axis=1)
            if len(x) >= 2
            else np.full(len(means), np.nan)
        )
    order = np.lexsort((-means, np.nan_to_num(p_iut, nan=2.0)))
    candidate = int(order[0])
    p_value = float(p_iut[candidate])
    return {
        "p_iut": p_iut,
        "candidate": candidate,
        "p_value": p_value,
        "dominant": candidate if np.isfinite(p_value) and p_value < alpha else -1,
        "t": t,
        "p": p,
        "means": means,
    }


def t_interval(
    values: np.ndarray, *, ci: float = CI, simultaneous: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of each column with a t-interval over units (n - 1 df).

    ``simultaneous=True`` gives Bonferroni intervals (level ``1 - (1 - ci) / C`` each) that
    cover all C means together with probability >= ``ci``, so the interval of a channel picked
    from the data (e.g. the dominant one) keeps its coverage.

    Returns ``(mean, low, high)``, each (C,); the bounds are NaN with fewer than 2 units.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci}")
    x = np.asarray(values, dtype=float)
    n, c = x.shape
    mean = x.mean(axis=0)
    if n < 2:
        nan = np.full(c, np.nan)
        return mean, nan, nan.copy()
    tail = (1 - ci) / 2 / (c if simultaneous else 1)
    half = sps.t.ppf(1 - tail, n - 1) * x.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def hotelling_ilr(values: np.ndarray, delta: float = DEFAULT_ZERO_DELTA) -> dict:
    """Hotelling's T^2 of "mean ILR coordinate = 0" (equal channels) on unit-mean compositions.

    ``T^2 = n ybar' S^-1 ybar`` on the ILR coordinates (C - 1) of each unit's closed
    composition; ``F = (n - p) / (p (n - 1)) T^2`` on (p, n - p) df, p = C - 1. Exact under
    multivariate normal coordinates; needs n > p. Effect size: Aitchison distance of the mean
    from the uniform composition, ``||ybar||``.
    """
    y = ilr(closure(values), delta=delta)
    n, p = y.shape
    out = {
        "t2": np.nan,
        "f": np.nan,
        "df1": float(p),
        "df2": float(n - p),
        "p_value": np.nan,
        "distance": float(np.linalg.norm(y.mean(axis=0))),
    }
    if n <= p:
        return out
    mean = y.mean(axis=0)
    cov = np.cov(y, rowvar=False, ddof=1).reshape(p, p)
    try:
        t2 = float(n * mean @ np.linalg.solve(cov, mean))
    except np.linalg.LinAlgError:
        return out
    if not np.isfinite(t2) or np.linalg.cond(cov) > 1e12:
        return out
    f = (n - p) / (p * (n - 1)) * t2
    out.update(t2=t2, f=f, p_value=float(sps.f.sf(f, p, n - p)))
    return out


def _between_within(y: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Pseudo-F (between-plate over within-plate sum of squares) for each label matrix.

    y (n, q); onehot (B, n, g). Returns (B,).
    """
    sizes = onehot.sum(axis=1)  # (B, g)
    sums = np.einsum("bng,nq->bgq", onehot, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (sums**2 / sizes[..., None]).sum(axis=(1, 2)) - (y.sum(axis=0) ** 2).sum() / y.shape[0]
        within = (y**2).sum() - (sums**2 / sizes[..., None]).sum(axis=(1, 2))
        return between / within


def plate_heterogeneity(
    values: np.ndarray,
    plates: np.ndarray,
    n_perm: int = 999,
    seed: int = 0,
    delta: float = DEFAULT_ZERO_DELTA,
    compositional: bool = True,
) -> dict:
    """Permutation test of plate x channel heterogeneity: do the plates differ in composition?

    Statistic: between-plate over within-plate sum of squares of the units' ILR coordinates
    (``compositional=False``: of the raw values, for signed contributions); null: units
    exchangeable across plates (labels permuted, plate sizes kept). p = (1 + #{perm >= obs}) /
    (1 + n_perm). Needs 2+ plates and more units than plates.

    Returns dict ``statistic``, ``p_value``, ``n_plates``, ``n_perm``.
    """
    codes = np.unique(np.asarray(plates), return_inverse=True)[1].ravel()
    g = int(codes.max()) + 1 if codes.size else 0
    out = {"statistic": np.nan, "p_value": np.nan, "n_plates": g, "n_perm": 0}
    if g < 2 or len(codes) <= g:
        return out
    y = ilr(closure(values), delta=delta) if compositional else np.asarray(values, dtype=float)
    y = y - y.mean(axis=0)
    rng = np.random.default_rng(seed)
    labels = np.vstack([codes, np.array([rng.permutation(codes) for _ in range(n_perm)])])
    onehot = (labels[:, :, None] == np.arange(g)).astype(float)
    stat = _between_within(y, onehot)
    if not np.isfinite(stat[0]):
        return out
    p = (1 + np.sum(stat[1:] >= stat[0] - 1e-12)) / (1 + n_perm)
    out.update(statistic=float(stat[0]), p_value=float(p), n_perm=n_perm)
    return out
