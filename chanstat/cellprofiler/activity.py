"""Phenotypic activity: is a perturbation distinguishable from the controls at all?

Before asking which channel carries a difference, the field asks whether there is one: a
perturbation is *active* when its replicate profiles retrieve each other ahead of the control
profiles. Each replicate is a query; its other replicates are the positives and the control
profiles the negatives; ranking all of them by similarity to the query gives an average
precision (AP). The mean over the replicates is the mean average precision (mAP); its p-value
comes from a null of APs with the same numbers of positives and negatives drawn at random
ranks (copairs, the library JUMP used to choose compounds for attribution). p-values are
adjusted over all perturbations (:mod:`chanstat.stats.padjust`). Torch-free.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from chanstat.stats.padjust import adjust, check_padjust

ACTIVITY_COLUMNS = (
    "perturbation",
    "n_replicates",
    "n_controls",
    "mean_average_precision",
    "p_value",
    "p_adj",
    "p_adj_method",
    "active",
)


def activity(
    profiles: pd.DataFrame,
    perturbation: str | Sequence[str] = "Metadata_broad_sample",
    control: str | Sequence[str] = "DMSO",
    features: Sequence[str] | None = None,
    same_plate: bool = False,
    distance: str = "cosine",
    null_size: int = 10000,
    *,
    alpha: float = 0.05,
    padjust: str = "bh",
    seed: int = 0,
) -> pd.DataFrame:
    """Phenotypic activity (mAP against controls) of every perturbation of a profile table.

    Parameters
    ----------
    profiles : one row per well (or replicate): ``Metadata_*`` columns and numeric features
        (e.g. a normalised, feature-selected pycytominer profile table).
    perturbation : column(s) naming the perturbation (e.g. ``["Metadata_broad_sample",
        "Metadata_mmoles_per_liter"]`` for compound x dose).
    control : value(s) of the (first) perturbation column marking the negative controls.
    features : feature columns; default every numeric column not starting with ``Metadata_``.
    same_plate : compare each replicate only with controls of its own plate (``Metadata_Plate``).
    distance : copairs distance (``"cosine"``, ``"euclidean"``, ``"correlation"``, ...).
    null_size : draws of the permutation null per (positives, negatives) count.
    alpha : an adjusted p-value below it makes a perturbation ``active``.
    padjust : ``"bh"`` (default, as in the field), ``"holm"``, ``"bonferroni"``, ``"by"``, ``"none"``.
    seed : seed of the null draws.

    Returns
    -------
    DataFrame, one row per perturbation with at least two replicates, sorted by p-value:
    ``perturbation`` (the values joined by ``" · "`` when there are several columns; the columns
    themselves are kept too), ``n_replicates``, ``n_controls``, ``mean_average_precision``,
    ``p_value``, ``p_adj``, ``p_adj_method``, ``active``.

    Raises
    ------
    ValueError
        Missing columns, no controls, no perturbation with replicates, features with missing
        values, bad ``alpha`` / ``padjust``.
    """
    from copairs.map import average_precision, mean_average_precision

    check_padjust(padjust)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    if not isinstance(profiles, pd.DataFrame) or profiles.empty:
        raise ValueError("profiles must be a non-empty DataFrame (one row per well)")
    keys = [perturbation] if isinstance(perturbation, str) else list(perturbation)
    missing = [k for k in keys + (["Metadata_Plate"] if same_plate else []) if k not in profiles.columns]
    if missing:
        raise ValueError(
            f"profiles lack columns {missing}; Metadata columns are "
            f"{[c for c in profiles.columns if str(c).startswith('Metadata_')][:12]}"
        )
    if features is None:
        features = [
            c
            for c in profiles.columns
            if not str(c).startswith("Metadata_") and pd.api.types.is_numeric_dtype(profiles[c])
        ]
    features = list(features)
    absent = [f for f in features if f not in profiles.columns]
    if absent or not features:
        raise ValueError(f"feature columns {absent[:8] or '(none)'} are not in the profiles")
    values = profiles[features].to_numpy(dtype=float)
    gaps = [f for f, bad in zip(features, ~np.isfinite(values).all(axis=0)) if bad]
    if gaps:
        raise ValueError(
            f"features with missing or infinite values {gaps[:8]} ({len(gaps)} in all); drop or impute them"
        )
    controls = [control] if isinstance(control, str) else [str(c) for c in control]
    is_control = profiles[keys[0]].astype(str).isin(controls).to_numpy()
    if not is_control.any():
        raise ValueError(f"no profile has {keys[0]} in {controls} (the controls)")
    meta = profiles[keys + (["Metadata_Plate"] if same_plate and "Metadata_Plate" not in keys else [])].copy()
    meta = meta.astype(str).reset_index(drop=True)
    meta["_control"] = is_control
    # a control never counts as a positive of another: each has its own reference index
    meta["_reference"] = np.where(is_control, np.arange(len(meta)), -1)
    ap = average_precision(
        meta,
        values,
        pos_sameby=keys + ["_reference"],
        pos_diffby=[],
        neg_sameby=["Metadata_Plate"] if same_plate else [],
        neg_diffby=["_control", "_reference"],
        distance=distance,
        progress_bar=False,
    )
    ap = ap[~ap["_control"]].dropna(subset=["average_precision"])
    if ap.empty:
        raise ValueError(f"no perturbation has two or more replicates (by {keys})")
    counts = ap.groupby(keys, sort=False).size().rename("n_replicates")
    result = mean_average_precision(ap, keys, null_size=null_size, threshold=alpha, seed=seed, progress_bar=False)
    result = result.merge(counts.reset_index(), on=keys, how="left")
    out = pd.DataFrame(
        {
            "perturbation": result[keys].astype(str).agg(" · ".join, axis=1),
            **{k: result[k].to_numpy() for k in keys},
            "n_replicates": result["n_replicates"].astype("int64").to_numpy(),
            "n_controls": int(is_control.sum()),
            "mean_average_precision": result["mean_average_precision"].astype(float).to_numpy(),
            "p_value": result["p_value"].astype(float).to_numpy(),
        }
    )
    out["p_adj"] = adjust(out["p_value"].to_numpy(), padjust)
    out["p_adj_method"] = padjust
    out["active"] = out["p_adj"] < alpha
    return out.sort_values(["p_value", "mean_average_precision"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )
