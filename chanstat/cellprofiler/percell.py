"""Which CellProfiler features go with where the classifier looks, cell by cell?

Each cell's attribution mass per compartment and channel (the ``objects`` table of
:func:`~chanstat.decompose.compartment_mass`) is joined to its per-object CellProfiler
features. Cells of a well are not independent replicates, so the test runs at the well level:
within every well the Spearman correlation of each feature with each mass target is computed
across the well's cells; the well correlations are then tested against 0 with a one-sample t
test over wells, and p-values are adjusted over the **whole table** (every feature x
compartment x channel test at once: one family, so the table-wide false discovery rate is
what ``q_value`` controls).

**Object size.** Summed attribution mass grows with the object's area, and so do many
CellProfiler features (area, integrated intensity, ...): with ``value="mass"`` even a random
attribution map is "linked" to every size feature. The default is therefore the attribution
*density* (mass per pixel), and the correlation is a *partial* Spearman correlation given the
cell's area (``adjust_area=True``: ranks of feature and target are residualised on the rank of
the cell's area within the well before correlating).

This module does not import torch.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from chanstat.stats.padjust import adjust, check_padjust

LINK_COLUMNS = [
    "feature",
    "compartment",
    "channel",
    "estimate",
    "ci_low",
    "ci_high",
    "statistic",
    "p_value",
    "q_value",
    "n_wells",
    "n_cells",
]
VALUES = ("mass", "density")


def _mass_wide(object_mass: pd.DataFrame, on: Sequence[str], value: str, compartments, channels) -> pd.DataFrame:
    """One row per cell (the ``on`` keys), one column per (compartment, channel) target."""
    om = object_mass
    if compartments is not None:
        om = om[om["compartment"].isin(list(compartments))]
    if channels is not None:
        om = om[om["channel"].isin(list(channels))]
    if om.empty:
        raise ValueError("object_mass holds no row for the chosen compartments and channels")
    om = om[om["cell"] > 0]  # nuclei outside every cell belong to no per-cell row
    v = om["mass"] / om["area"] if value == "density" else om["mass"]
    wide = om.assign(_v=v.to_numpy()).pivot_table(
        index=list(on), columns=["compartment", "channel"], values="_v", aggfunc="sum", observed=True
    )
    return wide


def _cell_area(object_mass: pd.DataFrame, on: Sequence[str]) -> pd.Series:
    """Area of each cell (index: the ``on`` keys): the ``cells`` compartment, else the largest one."""
    om = object_mass[object_mass["cell"] > 0]
    per = om.groupby([*on, "compartment"], observed=True)["area"].max().unstack("compartment")
    return per["cells"] if "cells" in per.columns else per.max(axis=1)


def _residual_ranks(block: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Ranks of each column minus their least-squares fit on the rank of ``area`` (within one well).

    The correlation of two such residual columns is the partial Spearman correlation given the area.
    """
    ranks = stats.rankdata(block, axis=0)
    ranks[:, np.isnan(block).any(axis=0)] = np.nan
    a = stats.rankdata(area[:, 0])
    a = a - a.mean()
    denom = float(a @ a)
    centred = ranks - ranks.mean(axis=0)
    if denom <= 0:
        return centred
    return centred - np.outer(a, (a @ np.nan_to_num(centred)) / denom)


def _ranked_standardised(block: np.ndarray, rank: bool = True) -> np.ndarray:
    """Columns ranked (ties averaged; ``rank=False``: used as they are) and scaled to zero mean
    and unit norm; NaN where a column is constant or holds a NaN."""
    if not rank:
        centred = block - block.mean(axis=0)
        norm = np.sqrt((centred**2).sum(axis=0))
        tol = 1e-9 * np.sqrt(block.shape[0]) * max(1.0, float(np.nanmax(np.abs(block))) if block.size else 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(norm > tol, centred / np.where(norm > 0, norm, 1.0), np.nan)
    ranks = stats.rankdata(block, axis=0)
    ranks[:, np.isnan(block).any(axis=0)] = np.nan
    centred = ranks - ranks.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / np.where(norm > 0, norm, 1.0), np.nan)


def attribution_feature_link(
    object_mass: pd.DataFrame,
    features: pd.DataFrame,
    *,
    feature_columns: Sequence[str] | None = None,
    on: Mapping[str, str] | None = None,
    well: str | Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    compartments: Sequence[str] | None = ("nuclei", "cytoplasm", "cells"),
    channels: Sequence[str] | None = None,
    value: str = "density",
    min_cells: int = 3,
    ci: float = 0.95,
    padjust: str = "bh",
    adjust_area: bool = True,
) -> pd.DataFrame:
    """Relate each cell's attribution mass to its CellProfiler features, tested over wells.

    Parameters
    ----------
    object_mass : DataFrame
        ``.objects`` of :func:`~chanstat.decompose.compartment_mass`: ``compartment, cell,
        channel, mass, area`` plus the key columns named in ``on``.
    features : DataFrame
        Per-cell CellProfiler features, one row per cell, with the key columns and the well
        column(s) (e.g. the output of :func:`chanstat.cellprofiler.measure_synthetic`, or a
        real per-cell table).
    feature_columns : list of str, optional
        Features to test (default: :func:`chanstat.cellprofiler.feature_columns` of ``features``).
    on : dict of object_mass column to features column
        How a cell is matched. Default ``{"sample": "Metadata_ImageNumber", "cell":
        "Metadata_ObjectNumber"}`` (what ``measure_synthetic`` writes). For a CellProfiler
        export use e.g. ``{"Metadata_ImageNumber": "Metadata_ImageNumber", "cell":
        "Metadata_Cells_Number_Object_Number"}``.
    well : str or list of str
        Column(s) of ``features`` (or ``object_mass``) naming the well, the unit of replication.
    compartments, channels : list of str, optional
        Mass targets to test (default every compartment of the objects table; every channel).
    value : {"density", "mass"}
        Correlate the mass per pixel of the object (mass / area; default), or the summed mass
        (which grows with the object's size).
    min_cells : int
        Wells with fewer matched cells than this give no correlation.
    ci : float
        Level of the t interval of the mean well correlation.
    padjust : {"bh", "by", "holm", "bonferroni", "none"}
        Adjustment over the whole table (all features, compartments and channels together).
    adjust_area : bool
        Partial correlation given the cell's area (the ``cells`` compartment's area, else the
        largest compartment's), computed on within-well ranks.

    Returns
    -------
    DataFrame, one row per feature, compartment and channel (``LINK_COLUMNS``):
    ``estimate`` (mean over wells of the within-well Spearman correlation), ``ci_low``,
    ``ci_high`` (t interval; NaN with fewer than 2 wells), ``statistic`` (one-sample t over
    wells), ``p_value`` (two-sided), ``q_value``, ``n_wells`` (wells with a defined
    correlation), ``n_cells`` (cells in those wells). With one well the estimate is that well's
    correlation and the test is missing.
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {list(VALUES)}; got {value!r}")
    check_padjust(padjust)
    for name, df in (("object_mass", object_mass), ("features", features)):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame; got {type(df).__name__}")
    on = dict({"sample": "Metadata_ImageNumber", "cell": "Metadata_ObjectNumber"} if on is None else on)
    for left, right in on.items():
        if left not in object_mass.columns:
            raise KeyError(f"object_mass lacks the key column {left!r} named in `on`")
        if right not in features.columns:
            raise KeyError(
                f"features lacks the key column {right!r} named in `on` (has e.g. {list(features.columns[:8])})"
            )
    missing = [c for c in ("compartment", "cell", "channel", "mass", "area") if c not in object_mass.columns]
    if missing:
        raise KeyError(f"object_mass lacks column(s) {missing}; pass compartment_mass(...).objects")
    wells = [well] if isinstance(well, str) else list(well)
    if feature_columns is None:
        from chanstat.cellprofiler import feature_columns as cp_features

        feature_columns = [c for c in cp_features(features.columns) if pd.api.types.is_numeric_dtype(features[c])]
    feature_columns = [str(c) for c in feature_columns]
    absent = [c for c in feature_columns if c not in features.columns]
    if absent:
        raise KeyError(f"features lacks feature column(s) {absent[:5]}")
    if not feature_columns:
        raise ValueError("no numeric feature column to test")

    wide = _mass_wide(object_mass, list(on), value, compartments, channels)
    targets = list(wide.columns)
    wide.columns = [f"__t{k}" for k in range(len(targets))]
    if adjust_area:
        wide["__area"] = _cell_area(object_mass, list(on)).reindex(wide.index).to_numpy(float)
    wide = wide.reset_index().rename(columns=on)
    keep = (
        list(on.values())
        + [w for w in wells if w not in on.values()]
        + [c for c in feature_columns if c not in on.values()]
    )
    right = features.loc[:, list(dict.fromkeys(keep))]
    missing_wells = [w for w in wells if w not in right.columns]
    if missing_wells:
        raise KeyError(f"features lacks the well column(s) {missing_wells}")
    joined = wide.merge(right, on=list(on.values()), how="inner", validate="one_to_one")
    if joined.empty:
        raise ValueError(f"no cell of object_mass matches a row of features on {on}")
    t_cols = [f"__t{k}" for k in range(len(targets))]

    rho_wells, cells_wells = [], []
    for _, group in joined.groupby(wells, sort=True, observed=True):
        if len(group) < min_cells:
            continue
        f_block = group[feature_columns].to_numpy(dtype=float)
        t_block = group[t_cols].to_numpy(dtype=float)
        if adjust_area:
            area = group[["__area"]].to_numpy(dtype=float)
            f_block, t_block = _residual_ranks(f_block, area), _residual_ranks(t_block, area)
        f = _ranked_standardised(f_block, rank=not adjust_area)
        t = _ranked_standardised(t_block, rank=not adjust_area)
        rho_wells.append(f.T @ t)  # (features, targets); NaN where either side is constant
        cells_wells.append(len(group))
    n_f, n_t = len(feature_columns), len(targets)
    if rho_wells:
        rho = np.stack(rho_wells)  # (wells, features, targets)
        defined = np.isfinite(rho)
        n_wells = defined.sum(axis=0)
        n_cells = np.tensordot(np.asarray(cells_wells), defined, axes=(0, 0))
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (no well defines rho) stay NaN
            estimate = (
                np.nanmean(np.where(defined, rho, np.nan), axis=0) if defined.any() else np.full((n_f, n_t), np.nan)
            )
            sd = np.nanstd(np.where(defined, rho, np.nan), axis=0, ddof=1)
            se = sd / np.sqrt(n_wells)
            statistic = np.where(n_wells >= 2, estimate / se, np.nan)
            statistic[(n_wells >= 2) & (se == 0)] = np.nan  # identical correlations in every well: no t
        dof = np.maximum(n_wells - 1, 1)
        p_value = np.where(np.isfinite(statistic), 2 * stats.t.sf(np.abs(statistic), dof), np.nan)
        half = stats.t.ppf(0.5 + ci / 2, dof) * se
        ci_low = np.where(n_wells >= 2, estimate - half, np.nan)
        ci_high = np.where(n_wells >= 2, estimate + half, np.nan)
    else:
        nan = np.full((n_f, n_t), np.nan)
        estimate = statistic = p_value = ci_low = ci_high = nan
        n_wells = n_cells = np.zeros((n_f, n_t), np.int64)
    # one family: the whole table (a per-(compartment, channel) family let the table-wide
    # false discovery rate reach .48 under the null with 15 families)
    q_value = adjust(np.ravel(p_value), padjust).reshape(n_f, n_t)
    out = pd.DataFrame(
        {
            "feature": pd.array(np.repeat(np.asarray(feature_columns, dtype=object), n_t), dtype="string"),
            "compartment": pd.array([targets[j][0] for _ in range(n_f) for j in range(n_t)], dtype="string"),
            "channel": pd.array([targets[j][1] for _ in range(n_f) for j in range(n_t)], dtype="string"),
            "estimate": np.ravel(estimate),
            "ci_low": np.ravel(ci_low),
            "ci_high": np.ravel(ci_high),
            "statistic": np.ravel(statistic),
            "p_value": np.ravel(p_value),
            "q_value": q_value.ravel(),
            "n_wells": np.ravel(n_wells).astype(np.int64),
            "n_cells": np.ravel(n_cells).astype(np.int64),
        }
    )
    return out
