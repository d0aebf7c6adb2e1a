"""The one p-value adjustment of chanstat (statistics and CellProfiler sides alike).

Wraps :func:`statsmodels.stats.multitest.multipletests` with one name map and NaN handling:
NaN p-values stay NaN and are not counted in the family. Torch-free.
"""
from __future__ import annotations

import numpy as np

#: accepted ``padjust`` names -> statsmodels method names
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


def adjust(p_values, padjust: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family.

    Parameters
    ----------
    p_values : array-like (n,), p-values in [0, 1]; NaN entries are left out of the family
        and stay NaN.
    padjust : ``"holm"`` (family-wise, default), ``"bonferroni"``, ``"bh"``/``"fdr_bh"``
        (Benjamini-Hochberg q-values), ``"by"``/``"fdr_by"`` (Benjamini-Yekutieli, any
        dependence) or ``"none"``.

    Returns
    -------
    ndarray (n,) of adjusted p-values (NaN where the input is NaN).
    """
    from statsmodels.stats.multitest import multipletests  # slow import, only when used

    method = PADJUST[check_padjust(padjust)]
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    if method is None:
        out[ok] = p[ok]
    else:
        out[ok] = multipletests(p[ok], method=method)[1]
    return out
