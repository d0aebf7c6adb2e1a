"""Statistics on matrices: Friedman, repeated-measures ANOVA, paired tests, p-value adjustment.

Plain NumPy/SciPy implementations (vectorised where it matters for simulation studies); the
test suite checks each against scipy.stats, pingouin and statsmodels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from chanstat.stats.compositional import ilr_basis
from chanstat.stats.padjust import adjust


@dataclass(frozen=True)
class FriedmanResult:
    q: np.ndarray  # chi-square statistic (tie-corrected), as scipy.stats.friedmanchisquare
    p_chisq: np.ndarray
    kendall_w: np.ndarray
    f: np.ndarray  # Iman-Davenport F
    df1: np.ndarray
    df2: np.ndarray
    p_f: np.ndarray


def friedman(values: np.ndarray) -> FriedmanResult:
    """Friedman test of equal location across columns, blocks in rows.

    Parameters
    ----------
    values : ndarray (..., n, k)
        n blocks (units) by k treatments (channels); leading axes are independent data sets
        (used by simulation studies to test many data sets at once).

    Returns
    -------
    FriedmanResult with arrays of shape ``values.shape[:-2]``: the tie-corrected chi-square
    statistic ``q`` and its p-value (k - 1 df), Kendall's W = q / (n (k - 1)) (corrected for
    ties, as pingouin), and the Iman-Davenport F = W (n - 1) / (1 - W) with
    df1 = k - 1 - 2 / n and df2 = (n - 1) df1 (Marozzi 2014: better calibrated than the
    chi-square approximation for few blocks). With W = 1 (every block ranks the treatments the
    same way) F is infinite and ``p_f`` is the chi-square p-value. NaN when every block is all
    ties.
    """
    x = np.asarray(values, dtype=float)
    n, k = x.shape[-2:]
    ranks = sps.rankdata(x, axis=-1)
    rank_sums = ranks.sum(axis=-2)
    # t^3 - t summed over tie groups = sum over elements of (t_element^2 - 1)
    tie_sizes = (x[..., :, None] == x[..., None, :]).sum(axis=-1)
    ties = (tie_sizes**2 - 1).sum(axis=(-1, -2))
    denom = n * n * k * (k * k - 1) - n * ties
    with np.errstate(invalid="ignore", divide="ignore"):
        w = (12 * (rank_sums**2).sum(axis=-1) - 3 * n * n * k * (k + 1) ** 2) / denom
        w = np.where(denom > 0, w, np.nan)
        q = n * (k - 1) * w
        p_chisq = sps.chi2.sf(q, k - 1)
        f = w * (n - 1) / (1 - w)
        df1 = np.full_like(w, k - 1 - 2 / n)
        df2 = (n - 1) * df1
        # perfect concordance (W = 1) makes F infinite and its p-value 0: report the (finite,
        # conservative) chi-square p-value instead
        p_f = np.where(w >= 1, p_chisq, sps.f.sf(f, df1, df2)) if n > 1 else np.full_like(w, np.nan)
    return FriedmanResult(
        q=q, p_chisq=p_chisq, kendall_w=w, f=f, df1=df1, df2=df2, p_f=np.where(np.isnan(w), np.nan, p_f)
    )


@dataclass(frozen=True)
class RMAnovaResult:
    f: float
    df1: float
    df2: float
    p: float  # uncorrected
    eps_gg: float  # Greenhouse-Geisser epsilon
    p_gg: float
    partial_eta_squared: float
    generalized_eta_squared: float
    mauchly_w: float
    mauchly_chi2: float
    mauchly_df: float
    mauchly_p: float


def rm_anova(values: np.ndarray) -> RMAnovaResult:
    """One-way repeated-measures ANOVA (subjects in rows, levels in columns).

    Includes the Greenhouse-Geisser epsilon (from the double-centred covariance of the levels)
    with the corrected p-value, and Mauchly's test of sphericity (chi-square approximation with
    the second-order correction used by R's ``mauchly.test``). Mauchly's statistic is NaN
    when n - 1 < k - 1 (singular covariance) and 1 for k = 2. Without residual variance (an
    exactly additive table) F is infinite and both p-values are NaN.
    """
    y = np.asarray(values, dtype=float)
    n, k = y.shape
    grand = y.mean()
    col = y.mean(axis=0)
    row = y.mean(axis=1)
    ss_effect = n * ((col - grand) ** 2).sum()
    ss_subject = k * ((row - grand) ** 2).sum()
    resid = y - row[:, None] - col[None, :] + grand
    ss_error = (resid**2).sum()
    if ss_error <= 1e-12 * (ss_effect + ss_error + ss_subject):
        ss_error = 0.0  # rounding noise of an exactly additive table: no residual variance
    df1, df2 = k - 1, (n - 1) * (k - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (ss_effect / df1) / (ss_error / df2)
        p = float(sps.f.sf(f, df1, df2))
    cov = np.cov(y, rowvar=False, ddof=1) if n > 1 else np.full((k, k), np.nan)
    cov_dc = cov - cov.mean(axis=0, keepdims=True) - cov.mean(axis=1, keepdims=True) + cov.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = float(np.trace(cov_dc) ** 2 / ((k - 1) * (cov_dc**2).sum())) if k > 2 else 1.0
        p_gg = float(sps.f.sf(f, df1 * eps, df2 * eps))
    if ss_error == 0:  # F is infinite or undefined: no p-value
        p = p_gg = np.nan
    # Mauchly's test on orthonormal contrasts
    pdim = k - 1
    if k == 2:
        mw, mchi2, mdf, mp = 1.0, 0.0, 0.0, 1.0
    elif n - 1 < pdim or not np.isfinite(cov).all():
        mw = mchi2 = mdf = mp = np.nan
    else:
        basis = ilr_basis(k)
        t = basis.T @ cov @ basis
        sign, logdet = np.linalg.slogdet(t)
        log_w = logdet - pdim * np.log(np.trace(t) / pdim) if sign > 0 else -np.inf
        mw = float(np.exp(log_w))
        rho = 1 - (2 * pdim**2 + pdim + 2) / (6 * pdim * (n - 1))
        mchi2 = float(-(n - 1) * rho * log_w)
        mdf = pdim * (pdim + 1) / 2 - 1
        # second-order term of the chi-square approximation (Anderson 2003), as R's mauchly.test
        w2 = (
            (pdim + 2)
            * (pdim - 1)
            * (pdim - 2)
            * (2 * pdim**3 + 6 * pdim**2 + 3 * k + 2)
            / (288 * ((n - 1) * pdim * rho) ** 2)
        )
        p1, p2 = sps.chi2.sf(mchi2, mdf), sps.chi2.sf(mchi2, mdf + 4)
        mp = float(p1 + w2 * (p2 - p1))
    total = ss_effect + ss_error
    return RMAnovaResult(
        f=float(f),
        df1=float(df1),
        df2=float(df2),
        p=p,
        eps_gg=eps,
        p_gg=p_gg,
        partial_eta_squared=float(ss_effect / total) if total > 0 else np.nan,
        generalized_eta_squared=float(ss_effect / (total + ss_subject)) if total + ss_subject > 0 else np.nan,
        mauchly_w=mw,
        mauchly_chi2=mchi2,
        mauchly_df=mdf,
        mauchly_p=mp,
    )


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014) of paired differences.

    ``(R+ - R-) / (R+ + R-)`` with R+/R- the rank sums of |d| of the positive/negative
    differences; zero differences are dropped. In [-1, 1]; NaN when all differences are 0.
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return np.nan
    r = sps.rankdata(np.abs(d))
    return float((r[d > 0].sum() - r[d < 0].sum()) / r.sum())


@dataclass(frozen=True)
class PairedResult:
    statistic: float
    p: float
    effect_size: float
    n: int


def wilcoxon_paired(a: np.ndarray, b: np.ndarray) -> PairedResult:
    """Wilcoxon signed-rank test of ``a - b`` with the matched-pairs rank-biserial correlation.

    Zero differences are dropped (``zero_method="wilcox"``). The p-value is exact for up to 50
    pairs without ties or zeros (scipy's default, as pingouin); otherwise it is the normal
    approximation with tie and continuity corrections, as R's ``wilcox.test`` (scipy would run
    a permutation test, which costs ~1 s per pair).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0 or np.all(d == 0):
        return PairedResult(np.nan, np.nan if d.size == 0 else 1.0, np.nan, int(d.size))
    nonzero = np.abs(d[d != 0])
    tied = nonzero.size < d.size or np.unique(nonzero).size < nonzero.size
    res = sps.wilcoxon(d, correction=True, method="asymptotic" if tied or d.size > 50 else "auto")
    return PairedResult(float(res.statistic), float(res.pvalue), rank_biserial(d), int(d.size))


def paired_t(a: np.ndarray, b: np.ndarray) -> PairedResult:
    """Paired t-test of ``a - b`` with Cohen's d_z = mean(d) / sd(d) as effect size."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = d.size
    if n < 2:
        return PairedResult(np.nan, np.nan, np.nan, n)
    sd = d.std(ddof=1)
    if sd == 0:
        return PairedResult(np.nan, np.nan, np.nan, n)
    t = d.mean() / (sd / np.sqrt(n))
    return PairedResult(float(t), float(2 * sps.t.sf(abs(t), n - 1)), float(d.mean() / sd), n)


def adjust_holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (NaN-aware); see :func:`chanstat.stats.padjust.adjust`."""
    return adjust(p, "holm")


def adjust_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (NaN-aware); see :func:`chanstat.stats.padjust.adjust`."""
    return adjust(p, "bh")
