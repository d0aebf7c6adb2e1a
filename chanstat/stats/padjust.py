"""The one p-value adjustment of chanstat (statistics and CellProfiler sides alike).

Benjamini-Hochberg and Benjamini-Yekutieli come from :func:`scipy.stats.false_discovery_control`;
Holm and Bonferroni are their closed forms (a sort and a running maximum). statsmodels'
``multipletests`` gives the same numbers (a test checks all four against it) but runs a full
garbage collection on every call, ~80 ms, which the statistics stage paid dozens of times per
run. NaN p-values stay NaN and are not counted in the family. Torch-free.
"""

from __future__ import annotations

import numpy as np

from chanstat.vocabulary import PADJUST as PADJUST_DEFAULT

#: accepted ``padjust`` names -> the method (statsmodels' names)
PADJUST = {
    "holm": "holm",
    "bonferroni": "bonferroni",
    "bh": "fdr_bh",
    "fdr_bh": "fdr_bh",
    "by": "fdr_by",
    "fdr_by": "fdr_by",
    "none": None,
}


def check_padjust(padjust: str) -> str:
    """``padjust`` itself, or a ValueError naming the accepted values."""
    if padjust not in PADJUST:
        raise ValueError(f"padjust must be one of {sorted(PADJUST)}; got {padjust!r}")
    return padjust


def adjust(p_values, method: str | None = None, *, padjust: str = PADJUST_DEFAULT) -> np.ndarray:
    """Adjusted p-values of one family.

    Parameters
    ----------
    p_values : array-like (n,), p-values in [0, 1]; NaN entries are left out of the family
        and stay NaN.
    method : the same as ``padjust``, given by position (``adjust(p, "bh")``); overrides it.
    padjust : ``"holm"`` (family-wise, default), ``"bonferroni"``, ``"bh"``/``"fdr_bh"``
        (Benjamini-Hochberg q-values), ``"by"``/``"fdr_by"`` (Benjamini-Yekutieli, any
        dependence) or ``"none"``.

    Returns
    -------
    ndarray (n,) of adjusted p-values (NaN where the input is NaN).
    """
    method = PADJUST[check_padjust(padjust if method is None else method)]
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    out[ok] = p[ok] if method is None else _ADJUSTERS[method](p[ok])
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down: the k-th smallest p times (m - k + 1), made monotone, capped at 1."""
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def _fdr(method: str):
    from scipy.stats import false_discovery_control

    return lambda p: false_discovery_control(p, method=method)


_ADJUSTERS = {
    "holm": _holm,
    "bonferroni": lambda p: np.minimum(p * p.size, 1.0),
    "fdr_bh": _fdr("bh"),
    "fdr_by": _fdr("by"),
}
