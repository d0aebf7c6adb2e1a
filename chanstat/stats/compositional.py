"""Compositional transforms for channel shares.

Channel shares of one sample sum to 1, so they live on a simplex: raising one share lowers the
others, and ordinary means/variances of shares mislead parametric models. The centred
log-ratio (CLR) maps a composition to real coordinates that sum to 0; the isometric log-ratio
(ILR) expresses the same point in an orthonormal basis of that (C - 1)-dimensional space, where
an isotropic Gaussian model is the natural null (Aitchison 1986; Egozcue et al. 2003).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_ZERO_DELTA = 1e-6


def closure(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rescale non-negative parts so they sum to 1 along ``axis``.

    Raises
    ------
    ValueError
        If ``x`` holds NaN/inf or negative values, or a composition sums to 0.
    """
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).all():
        raise ValueError(f"composition holds {int((~np.isfinite(x)).sum())} NaN/inf values")
    if (x < 0).any():
        raise ValueError(f"composition holds {int((x < 0).sum())} negative values; shares must be >= 0")
    total = x.sum(axis=axis, keepdims=True)
    if (total <= 0).any():
        raise ValueError(f"{int((total <= 0).sum())} compositions sum to 0; their shares are undefined")
    return x / total


def multiplicative_replacement(x: np.ndarray, delta: float = DEFAULT_ZERO_DELTA, axis: int = -1) -> np.ndarray:
    """Replace zero parts by ``delta`` and shrink the non-zero parts so each composition still sums to 1.

    This is the multiplicative replacement of Martín-Fernández et al. (2003): ratios between
    non-zero parts are unchanged, which is what log-ratio methods rely on.

    Parameters
    ----------
    x : array, compositions along ``axis`` (closed to 1 first).
    delta : value given to zero parts (a share, so between 0 and 1 / C).
    """
    x = closure(x, axis=axis)
    n_parts = x.shape[axis]
    if not 0 < delta < 1.0 / n_parts:
        raise ValueError(f"delta must lie in (0, 1/{n_parts}); got {delta}")
    zeros = x == 0
    if not zeros.any():
        return x
    n_zero = zeros.sum(axis=axis, keepdims=True)
    return np.where(zeros, delta, x * (1.0 - n_zero * delta))


def _clr_array(x: np.ndarray, axis: int, delta: float) -> np.ndarray:
    logs = np.log(multiplicative_replacement(x, delta=delta, axis=axis))
    return logs - logs.mean(axis=axis, keepdims=True)


def clr(
    data: np.ndarray | pd.DataFrame,
    value: str = "share",
    channel: str = "channel",
    sample: str | tuple[str, ...] = ("method", "sample"),
    axis: int = -1,
    delta: float = DEFAULT_ZERO_DELTA,
    out: str = "clr",
):
    """Centred log-ratio transform: ``clr(x)_c = log x_c - mean_j log x_j``.

    Works on an array (compositions along ``axis``) or on a tidy table (one row per sample and
    channel), in which case a column ``out`` is added. Zero parts are replaced first
    (:func:`multiplicative_replacement` with ``delta``), because ``log 0`` is undefined.

    Parameters
    ----------
    data : ndarray (..., C) or DataFrame
        Non-negative parts (shares or masses; they are closed to 1 first).
    value, channel : columns of ``data`` holding the part and its channel (table input).
    sample : column(s) identifying one composition (table input); columns not in ``data``
        are ignored, so the default also fits tables without a ``method`` column.
    axis : axis of the parts (array input).
    delta : replacement for zero shares.
    out : name of the added column (table input).

    Returns
    -------
    ndarray of the same shape (each composition sums to 0), or a copy of the table with column
    ``out``.
    """
    if not isinstance(data, pd.DataFrame):
        return _clr_array(np.asarray(data, dtype=float), axis=axis, delta=delta)
    keys = [sample] if isinstance(sample, str) else list(sample)
    keys = [k for k in keys if k in data.columns]
    for col in (value, channel):
        if col not in data.columns:
            raise KeyError(f"clr: column {col!r} not in the table (columns: {list(data.columns)})")
    if not keys:
        raise KeyError(f"clr: none of the sample columns {sample!r} is in the table")
    wide = data.pivot_table(index=keys, columns=channel, values=value, aggfunc="first", observed=True, sort=False)
    if wide.isna().any().any():
        raise ValueError(
            "clr: some samples lack a value for some channel (or hold NaN); every sample needs all channels"
        )
    counts = data.groupby(keys + [channel], observed=True, sort=False).size()
    if (counts > 1).any():
        first = counts[counts > 1].index[0]
        raise ValueError(
            f"clr: {dict(zip(keys + [channel], first))} appears more than once; pass the right `sample` columns"
        )
    transformed = pd.DataFrame(
        _clr_array(wide.to_numpy(float), axis=1, delta=delta), index=wide.index, columns=wide.columns
    )
    long = transformed.stack().rename(out).reset_index()
    result = data.drop(columns=[out], errors="ignore").merge(long, on=keys + [channel], how="left", sort=False)
    return result


def ilr_basis(n_parts: int) -> np.ndarray:
    """Orthonormal basis ``V`` (C, C - 1) of the zero-sum subspace (Helmert-type balances).

    ``ilr(x) = clr(x) @ V`` and ``clr(x) = ilr(x) @ V.T``.
    """
    if n_parts < 2:
        raise ValueError(f"an ILR basis needs at least 2 parts; got {n_parts}")
    basis = np.zeros((n_parts, n_parts - 1))
    for j in range(1, n_parts):
        # balance j contrasts the first j parts with part j
        basis[:j, j - 1] = 1.0 / j
        basis[j, j - 1] = -1.0
        basis[:, j - 1] *= np.sqrt(j / (j + 1.0))
    return basis


def ilr(x: np.ndarray, axis: int = -1, delta: float = DEFAULT_ZERO_DELTA) -> np.ndarray:
    """Isometric log-ratio coordinates, shape (..., C - 1) along ``axis``."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    coords = _clr_array(x, axis=-1, delta=delta) @ ilr_basis(x.shape[-1])
    return np.moveaxis(coords, -1, axis)
