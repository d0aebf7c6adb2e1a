"""How much do channel conclusions depend on where the counterfactuals came from?

Compare two run directories of the same data and model settings that differ only in their
``[counterfactual]`` provider -- typically an oracle run (the reference) and an ``optimise``,
``nearest`` or ``from_files`` run. Reads only the run directories' tables (no torch):
``channel_tests.parquet`` (dominant channel by attribution mass), ``dac_scores.parquet``
(DAC per method, strategy and channel), ``counterfactual_summary.parquet`` and
``provenance.json`` (the planted channel of semi-synthetic data).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chanstat.io import read_json, read_table

DOMINANT_COLUMNS = ("method", "evidence", "reference_dominant", "other_dominant", "agree", "planted_channel")
DAC_COLUMNS = ("method", "strategy", "channel", "dac_reference", "dac_other", "dac_difference", "n_reference", "n_other")


@dataclass
class RunComparison:
    """Result of :func:`compare_runs`.

    Attributes
    ----------
    dominant : DataFrame, columns :data:`DOMINANT_COLUMNS`
        One row per (method, evidence). ``evidence`` is ``"attribution_mass"`` (the primary
        channel test's dominant channel, pooled over transitions) or ``"single_channel_dac"``
        (the channel with the highest mean single-channel DAC). ``agree``: the two runs name the
        same channel. ``planted_channel``: the truth, when the data were planted (else None).
    dac : DataFrame, columns :data:`DAC_COLUMNS`
        Mean DAC per (method, strategy, channel) in each run (``channel`` is ``"all"`` for
        strategies that score all channels at once) and ``dac_difference = dac_other -
        dac_reference``; ``n_*`` are the numbers of scored pairs.
    quality : DataFrame
        The two runs' ``counterfactual_summary`` tables stacked, with a ``run`` column
        (``"reference"`` / ``"other"``).
    summary : dict
        ``dominant_agreement`` (fraction of rows of ``dominant`` that agree),
        ``mean_abs_dac_difference``, and the providers of both runs.
    """

    dominant: pd.DataFrame
    dac: pd.DataFrame
    quality: pd.DataFrame
    summary: dict


def _table(run: Path, name: str) -> pd.DataFrame | None:
    path = run / name
    return read_table(path) if path.exists() else None


def _planted_channel(run: Path) -> str | None:
    path = run / "provenance.json"
    if not path.exists():
        return None
    stages = read_json(path).get("stages", {})
    return stages.get("data", {}).get("planted_channel")


def _provider(run: Path) -> str | None:
    path = run / "provenance.json"
    if not path.exists():
        return None
    return read_json(path).get("stages", {}).get("counterfactual", {}).get("provider")


def dominant_by_mass(tests: pd.DataFrame | None) -> pd.Series:
    """Method -> dominant channel of the primary pooled channel test."""
    if tests is None or not len(tests) or "dominant_channel" not in tests:
        return pd.Series(dtype=object)
    rows = tests[tests["primary"].astype(bool)] if "primary" in tests else tests
    if "transition" in rows:
        pooled = rows[rows["transition"].astype(str) == "all"]
        rows = pooled if len(pooled) else rows
    method = rows["method"] if "method" in rows else pd.Series(["all"] * len(rows), index=rows.index)
    return pd.Series(rows["dominant_channel"].astype(str).to_numpy(), index=method.astype(str).to_numpy()).groupby(level=0).first()


def dominant_by_dac(scores: pd.DataFrame | None, strategy: str = "single_channel") -> pd.Series:
    """Method -> channel with the highest mean DAC under ``strategy``."""
    if scores is None or not len(scores):
        return pd.Series(dtype=object)
    rows = scores[scores["strategy"].astype(str) == strategy]
    if not len(rows):
        return pd.Series(dtype=object)
    means = rows.groupby(["method", "channel"], sort=False)["dac"].mean().reset_index()
    best = means.loc[means.groupby("method", sort=False)["dac"].idxmax()]
    return pd.Series(best["channel"].astype(str).to_numpy(), index=best["method"].astype(str).to_numpy())


def mean_dac(scores: pd.DataFrame | None) -> pd.DataFrame:
    """Mean DAC and number of pairs per (method, strategy, channel)."""
    if scores is None or not len(scores):
        return pd.DataFrame(columns=["method", "strategy", "channel", "dac", "n"])
    frame = scores.copy()
    if "channel" not in frame:
        frame["channel"] = "all"
    frame["channel"] = frame["channel"].astype(object).where(frame["channel"].notna(), "all").astype(str)
    for col in ("method", "strategy"):
        frame[col] = frame[col].astype(str)
    return (
        frame.groupby(["method", "strategy", "channel"], sort=False)["dac"]
        .agg(dac="mean", n="count")
        .reset_index()
    )


def compare_runs(reference: str | os.PathLike, other: str | os.PathLike) -> RunComparison:
    """Compare the channel conclusions of two run directories (see :class:`RunComparison`)."""
    reference, other = Path(reference), Path(other)
    for run in (reference, other):
        if not run.is_dir():
            raise FileNotFoundError(f"run directory not found: {run}")
    planted = _planted_channel(reference) or _planted_channel(other)

    rows = []
    for evidence, fn, name in (
        ("attribution_mass", dominant_by_mass, "channel_tests.parquet"),
        ("single_channel_dac", dominant_by_dac, "dac_scores.parquet"),
    ):
        ref, oth = fn(_table(reference, name)), fn(_table(other, name))
        for method in [m for m in ref.index if m in oth.index]:
            rows.append(
                dict(method=method, evidence=evidence, reference_dominant=ref[method], other_dominant=oth[method],
                     agree=bool(ref[method] == oth[method]), planted_channel=planted)
            )
    dominant = pd.DataFrame(rows, columns=list(DOMINANT_COLUMNS))

    ref_dac, oth_dac = mean_dac(_table(reference, "dac_scores.parquet")), mean_dac(_table(other, "dac_scores.parquet"))
    dac = ref_dac.merge(oth_dac, on=["method", "strategy", "channel"], suffixes=("_reference", "_other"), how="inner")
    dac["dac_difference"] = dac["dac_other"] - dac["dac_reference"]
    dac = dac.rename(columns={"n_reference": "n_reference", "n_other": "n_other"})[list(DAC_COLUMNS)]

    quality = []
    for label, run in (("reference", reference), ("other", other)):
        table = _table(run, "counterfactual_summary.parquet")
        if table is not None:
            quality.append(table.assign(run=label))
    quality_df = pd.concat(quality, ignore_index=True) if quality else pd.DataFrame()

    summary = {
        "reference": str(reference),
        "other": str(other),
        "reference_provider": _provider(reference),
        "other_provider": _provider(other),
        "planted_channel": planted,
        "dominant_agreement": float(dominant["agree"].mean()) if len(dominant) else None,
        "mean_abs_dac_difference": float(np.abs(dac["dac_difference"]).mean()) if len(dac) else None,
    }
    return RunComparison(dominant=dominant, dac=dac, quality=quality_df, summary=summary)
