"""Per-channel variances of a units x channels table (the log-ratio comparisons of :mod:`chanstat.stats.best`)."""

from __future__ import annotations

import numpy as np


def flat_floor(x: np.ndarray) -> float:
    """Spread below this counts as none (rounding level of the values)."""
    scale = float(np.nanmax(np.abs(x))) if x.size else 1.0
    return 1e-9 * max(scale, 1e-300)


def channel_variances(y: np.ndarray, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel variances of a units x channels table and the variance (with df) of each pair difference.

    Model: ``y[u, k] = a[u] + b[k] + e[u, k]`` with independent ``e[., k]`` of variance
    ``v[k]`` (the unit effect ``a`` holds the closure, so log-ratios fit it). The pair
    variances ``s2[k, j] = var_u(y[:, k] - y[:, j])`` estimate ``v[k] + v[j]``; ``v`` is their
    generalised least-squares fit, iterated, with the normal-theory covariance of the pair
    variances (``cov(s2_p, s2_q) = 2 cov(d_p, d_q)^2 / (n - 1)``), which is the REML fit of
    the model. A channel's variance therefore borrows from every pair it is in, but a noisy
    channel does not inflate (nor a quiet one deflate) the variance of pairs it is not in.

    Returns
    -------
    ``(var, df)``, each (C, C): ``var[k, j] = v[k] + v[j]`` (the variance of one unit's
    difference of k and j) and its Satterthwaite degrees of freedom (between ``n - 1`` and
    ``(n - 1)(C - 1)``), evaluated at the fitted ``v``.
    """
    n, n_c = y.shape
    iu = np.triu_indices(n_c, 1)
    n_p = len(iu[0])
    design = np.zeros((n_p, n_c))
    design[np.arange(n_p), iu[0]] = 1.0
    design[np.arange(n_p), iu[1]] = 1.0
    signed = design.copy()
    signed[np.arange(n_p), iu[1]] = -1.0
    s2 = (y[:, iu[0]] - y[:, iu[1]]).var(axis=0, ddof=1)
    floor = max(float(s2.min()), flat_floor(y) ** 2) / 40
    ridge = 1e-10 * float(s2.mean() ** 2 + 1e-300) * np.eye(n_p)

    def normal_matrix(v: np.ndarray) -> np.ndarray:
        return np.linalg.inv(2 * ((signed * v) @ signed.T) ** 2 / (n - 1) + ridge)

    v = np.full(n_c, max(float(s2.mean()) / 2, floor))
    for _ in range(max_iter):
        w = normal_matrix(v)
        new = np.maximum(np.linalg.solve(design.T @ w @ design, design.T @ w @ s2), floor)
        done = bool(np.all(np.abs(new - v) <= 1e-6 * np.abs(v)))
        v = new
        if done:
            break
    cov = np.linalg.inv(design.T @ normal_matrix(v) @ design)
    var = v[:, None] + v[None, :]
    dg = np.diag(cov)
    var_var = dg[:, None] + dg[None, :] + 2 * cov
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.clip(2 * var**2 / np.maximum(var_var, 1e-300), n - 1, (n - 1) * (n_c - 1))
    return var, np.nan_to_num(df, nan=float(n - 1))


def design_df(n: int, n_c: int) -> float:
    """Degrees of freedom of ``v[k] + v[j]`` from :func:`channel_variances` when the channels' variances are equal.

    ``2 (n - 1)(C - 1) / (C + 1)``: ``n - 1`` for 3 channels (the fit is then exact: each pair's
    own variance), ``4 (n - 1) / 3`` for 5. Fixed by the design (units, channels), not by the data.
    The Satterthwaite df at the *fitted* variances is biased low at few units (the fitted
    variances scatter more than the true ones, and a scattered set of variances reads as fewer
    df: median 3.6 instead of 4 at 4 units and equal variances); the floor
    ``max(Satterthwaite, design_df)`` (``variance="channel_df"``) removes that bias where it
    costs power and leaves the df of a noisy pair (above the floor) as it was.
    """
    if n < 2 or n_c < 2:
        return 0.0
    return 2.0 * (n - 1) * (n_c - 1) / (n_c + 1)
