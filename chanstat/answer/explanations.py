"""Per-image explanations, QuAC-style: each image's best explanation across methods (highest DAC).

:func:`explanations` reads ``dac_scores`` and ``dac_curves`` of a run directory; the choice itself
is :func:`best_explanations` on two tables, so it can be checked on constructed ones.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

SINGLE_CHANNEL = "single_channel"
COLUMNS = (
    "sample",
    "transition",
    "label",
    "counterfactual_label",
    "method",
    "strategy",
    "channel",
    "dac",
    "mask_size",
    "score",
    "n_explanations",
    "rank",
)
META = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


def optimal_points(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (sample, method, strategy, channel): the curve point nearest (mask size 0, score 1).

    The same choice as the DAC stage's optimal masks: the evaluated step minimising
    ``mask_size**2 + (1 - score)**2``, the first one on ties.
    """
    keys = ["sample", "method", "strategy", "channel"]
    c = curves
    if "evaluated" in c and c["evaluated"].fillna(True).astype(bool).any():
        c = c[c["evaluated"].fillna(True).astype(bool)]
    c = c.assign(_d=c["mask_size"].astype(float) ** 2 + (1.0 - c["score"].astype(float)) ** 2)
    c = c.sort_values(keys + ["_d", "step"], kind="stable")
    return c.drop_duplicates(keys)[keys + ["mask_size", "score"]].reset_index(drop=True)


def best_explanations(scores: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each sample's explanation with the highest DAC across methods and mask strategies.

    Whole-image strategies are compared (``single_channel`` rows only when there are no others);
    ties keep the first row of ``scores``. ``mask_size`` and ``score`` are those of the optimal
    curve point (NaN without ``curves``); ``n_explanations`` counts the rows compared.
    """
    s = scores[scores["strategy"].astype(str) != SINGLE_CHANNEL]
    if s.empty:
        s = scores
    s = s.dropna(subset=["dac"]).reset_index(drop=True)
    n = s.groupby("sample")["dac"].size().rename("n_explanations")
    order = np.lexsort((np.arange(len(s)), -s["dac"].to_numpy(float), s["sample"].to_numpy()))
    best = s.iloc[order].drop_duplicates("sample").reset_index(drop=True)
    best = best[["sample", "method", "strategy", "channel", "dac"]].merge(n, left_on="sample", right_index=True)
    if curves is not None and not curves.empty:
        best = best.merge(optimal_points(curves), on=["sample", "method", "strategy", "channel"], how="left")
    else:
        best["mask_size"], best["score"] = np.nan, np.nan
    return best


def _as_run(run):
    from chanstat.rundir import RunDirectory

    return run if isinstance(run, RunDirectory) else RunDirectory(os.fspath(run))


def explanations(
    run, transition: str | Sequence[str] | None = None, min_score: float | None = None, top: int | None = None
) -> pd.DataFrame:
    """A tidy table of every image's best explanation across methods (highest DAC), best first.

    Parameters
    ----------
    run : a run directory (path or :class:`~chanstat.rundir.RunDirectory`) holding ``dac_scores``
        (and ``dac_curves`` for the mask sizes).
    transition : keep these class transitions (``"control → treated"``) only.
    min_score : keep explanations whose DAC is at least this.
    top : keep the ``top`` best (after the other filters).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS` (``rank`` 1 is the best), plus ``Metadata_Plate`` /
        ``Metadata_Well`` / ``Metadata_Site`` when the run has them. ``mask_size`` is the
        fraction of the image the optimal mask keeps.
    """
    run = _as_run(run)
    if not run.has("dac_scores"):
        raise FileNotFoundError(
            f"{run.path} holds no dac_scores.parquet: run the DAC stage (or save DAC results) first"
        )
    curves = run.table("dac_curves") if run.has("dac_curves") else None
    table = best_explanations(run.table("dac_scores"), curves)
    tr = run.transitions
    if len(tr):
        table = table.merge(tr, on="sample", how="left")
    for col in ("transition", "label", "counterfactual_label"):
        if col not in table:
            table[col] = ""
        table[col] = table[col].fillna("").astype(str)
    if run.has("meta"):
        meta = run.table("meta")
        table = table.merge(meta[["sample"] + [c for c in META if c in meta]], on="sample", how="left")
    if transition is not None:
        wanted = [transition] if isinstance(transition, str) else list(transition)
        table = table[table["transition"].isin(wanted)]
    if min_score is not None:
        table = table[table["dac"] >= min_score]
    table = table.sort_values(["dac", "sample"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    if top is not None:
        table = table.head(int(top))
    return table[list(COLUMNS) + [c for c in META if c in table]]


def gallery_picks(run, per_transition: int = 2, available: Sequence[int] | None = None) -> list[tuple[str, list[int]]]:
    """Images to show per transition: the best-explained first, then the typical one (median DAC).

    Without DAC scores, the images whose counterfactual changed them most and the median one
    (``counterfactual_quality``); with neither, the first images.
    """
    run = _as_run(run)
    tr = run.transitions
    if tr.empty:
        return []
    tr = tr[tr["counterfactual_label"].astype(str) != tr["label"].astype(str)]
    if available is not None:
        tr = tr[tr["sample"].isin(np.asarray(available))]
    value = None
    if run.has("dac_scores"):
        best = best_explanations(run.table("dac_scores"))
        value = best.set_index("sample")["dac"]
    elif run.has("counterfactual_quality"):
        value = run.table("counterfactual_quality").groupby("sample")["mean_abs_diff"].sum()
    picks = []
    for name, g in tr.groupby("transition", sort=True):
        samples = g["sample"].to_numpy()
        if value is not None and value.index.isin(samples).any():
            v = value[value.index.isin(samples)].sort_values(ascending=False, kind="stable")
            chosen = [int(v.index[0])]
            median = v.iloc[(len(v) - 1) // 2]
            for s in (v - median).abs().sort_values(kind="stable").index:
                if len(chosen) >= per_transition:
                    break
                if int(s) not in chosen:
                    chosen.append(int(s))
        else:
            chosen = [int(s) for s in samples[:per_transition]]
        picks.append((str(name), chosen[:per_transition]))
    return picks
