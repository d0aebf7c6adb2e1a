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

from chanstat.rundir import RunDirectory

DOMINANT_COLUMNS = ("method", "evidence", "reference_dominant", "other_dominant", "agree", "planted_channel")
DAC_COLUMNS = (
    "method",
    "strategy",
    "channel",
    "dac_reference",
    "dac_other",
    "dac_difference",
    "n_reference",
    "n_other",
)


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


def _open(run: str | os.PathLike | RunDirectory) -> RunDirectory:
    """The run directory (refused, in one line, unless chanstat made it)."""
    return run if isinstance(run, RunDirectory) else RunDirectory(run)


def _table(run: RunDirectory, name: str) -> pd.DataFrame | None:
    """Table ``name`` (schema name or file name) of ``run``, validated; None when the run lacks it."""
    name = name.removesuffix(".parquet")
    return run.table(name) if run.has(name) else None


def _planted_channel(run: RunDirectory) -> str | None:
    return run.provenance.get("stages", {}).get("data", {}).get("planted_channel")


def _provider(run: RunDirectory) -> str | None:
    return run.provenance.get("stages", {}).get("counterfactual", {}).get("provider")


def dominant_by_mass(tests: pd.DataFrame | None) -> pd.Series:
    """Method -> dominant channel of the primary pooled channel test."""
    if tests is None or not len(tests) or "dominant_channel" not in tests:
        return pd.Series(dtype=object)
    rows = tests[tests["primary"].astype(bool)] if "primary" in tests else tests
    if "transition" in rows:
        pooled = rows[rows["transition"].astype(str) == "all"]
        rows = pooled if len(pooled) else rows
    method = rows["method"] if "method" in rows else pd.Series(["all"] * len(rows), index=rows.index)
    return (
        pd.Series(rows["dominant_channel"].astype(str).to_numpy(), index=method.astype(str).to_numpy())
        .groupby(level=0)
        .first()
    )


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
    return frame.groupby(["method", "strategy", "channel"], sort=False)["dac"].agg(dac="mean", n="count").reset_index()


def compare_runs(reference: str | os.PathLike, other: str | os.PathLike) -> RunComparison:
    """Compare the channel conclusions of two run directories (see :class:`RunComparison`)."""
    ref_run, other_run = _open(reference), _open(other)
    planted = _planted_channel(ref_run) or _planted_channel(other_run)

    rows = []
    for evidence, fn, name in (
        ("attribution_mass", dominant_by_mass, "channel_tests.parquet"),
        ("single_channel_dac", dominant_by_dac, "dac_scores.parquet"),
    ):
        ref, oth = fn(_table(ref_run, name)), fn(_table(other_run, name))
        for method in [m for m in ref.index if m in oth.index]:
            rows.append(
                dict(
                    method=method,
                    evidence=evidence,
                    reference_dominant=ref[method],
                    other_dominant=oth[method],
                    agree=bool(ref[method] == oth[method]),
                    planted_channel=planted,
                )
            )
    dominant = pd.DataFrame(rows, columns=list(DOMINANT_COLUMNS))

    ref_dac, oth_dac = (
        mean_dac(_table(ref_run, "dac_scores.parquet")),
        mean_dac(_table(other_run, "dac_scores.parquet")),
    )
    dac = ref_dac.merge(oth_dac, on=["method", "strategy", "channel"], suffixes=("_reference", "_other"), how="inner")
    dac["dac_difference"] = dac["dac_other"] - dac["dac_reference"]
    dac = dac.rename(columns={"n_reference": "n_reference", "n_other": "n_other"})[list(DAC_COLUMNS)]

    quality = []
    for label, run in (("reference", ref_run), ("other", other_run)):
        table = _table(run, "counterfactual_summary.parquet")
        if table is not None:
            quality.append(table.assign(run=label))
    quality_df = pd.concat(quality, ignore_index=True) if quality else pd.DataFrame()

    summary = {
        "reference": str(ref_run.path),
        "other": str(other_run.path),
        "reference_provider": _provider(ref_run),
        "other_provider": _provider(other_run),
        "planted_channel": planted,
        "dominant_agreement": float(dominant["agree"].mean()) if len(dominant) else None,
        "mean_abs_dac_difference": float(np.abs(dac["dac_difference"]).mean()) if len(dac) else None,
    }
    return RunComparison(dominant=dominant, dac=dac, quality=quality_df, summary=summary)


METHOD_COLUMNS = (
    "run",
    "provider",
    "method",
    "planted_channel",
    "dominant_by_mass",
    "dominant_by_dac",
    "dac_aggregate",
    "dac_planted",
    "dac_planted_reference",
    "dac_planted_difference",
    "agree_with_reference",
)
CHANNEL_COLUMNS = ("run", "provider", "channel", "change_share", "flip_rate", "shapley_share", "single_channel_dac")


@dataclass
class CounterfactualComparison:
    """Result of :func:`compare_counterfactual_runs` (several runs, one table).

    Attributes
    ----------
    methods : DataFrame, columns :data:`METHOD_COLUMNS`
        One row per (run, attribution method): dominant channel by attribution mass and by
        single-channel DAC, mean aggregate DAC, single-channel DAC of the planted channel in
        this run and in the ref_run run and their difference, and whether both dominant
        channels equal the ref_run run's.
    channels : DataFrame, columns :data:`CHANNEL_COLUMNS`
        One row per (run, channel): mean share of the counterfactual change, flip rate, mean
        Shapley share (``|phi_k| / sum_j |phi_j|`` per image, averaged; NaN when the run has no
        ``channel_shapley.parquet``) and single-channel DAC averaged over methods.
    summary : dict
        Per run: provider, planted channel, dominant-channel agreement with the ref_run.
    """

    methods: pd.DataFrame
    channels: pd.DataFrame
    summary: dict


def shapley_shares(table: pd.DataFrame | None) -> pd.Series:
    """Channel -> mean over images of ``|phi_k| / sum_j |phi_j|`` (empty without a table)."""
    if table is None or not len(table) or not {"sample", "channel", "shapley"} <= set(table.columns):
        return pd.Series(dtype=float)
    frame = table[["sample", "channel", "shapley"]].copy()
    frame["magnitude"] = frame["shapley"].abs()
    total = frame.groupby("sample")["magnitude"].transform("sum")
    frame["share"] = np.where(total > 0, frame["magnitude"] / total.where(total > 0, 1.0), np.nan)
    return frame.groupby("channel", sort=False)["share"].mean()


def compare_counterfactual_runs(runs, reference: str | None = None) -> CounterfactualComparison:
    """Compare the channel conclusions of several runs that differ in their counterfactuals.

    Parameters
    ----------
    runs : mapping of run label -> run directory (e.g. ``{"oracle": ..., "generator": ...}``),
        or a sequence of directories (labelled by their folder names).
    reference : label of the reference run (default: the first one, or the one whose provider
        is ``oracle``).

    Returns
    -------
    CounterfactualComparison
    """
    if not isinstance(runs, dict):
        runs = {Path(getattr(r, "path", r)).name: r for r in runs}
    if not runs:
        raise ValueError("no run directories to compare")
    runs = {str(k): _open(v) for k, v in runs.items()}
    providers = {label: _provider(run) for label, run in runs.items()}
    if reference is None:
        oracles = [label for label, p in providers.items() if p == "oracle"]
        reference = oracles[0] if oracles else next(iter(runs))
    if reference not in runs:
        raise ValueError(f"reference {reference!r} is not one of the runs {list(runs)}")
    planted = next((p for p in (_planted_channel(run) for run in runs.values()) if p), None)

    per_run = {}
    for label, run in runs.items():
        scores = _table(run, "dac_scores.parquet")
        per_run[label] = dict(
            mass=dominant_by_mass(_table(run, "channel_tests.parquet")),
            dac=dominant_by_dac(scores),
            means=mean_dac(scores),
        )

    def planted_dac(means: pd.DataFrame, method: str) -> float:
        rows = means[
            (means["method"] == method) & (means["strategy"] == "single_channel") & (means["channel"] == planted)
        ]
        return float(rows["dac"].iloc[0]) if len(rows) else float("nan")

    rows = []
    ref = per_run[reference]
    for label, parts in per_run.items():
        methods = list(
            dict.fromkeys(list(parts["mass"].index) + list(parts["dac"].index) + parts["means"]["method"].tolist())
        )
        for method in methods:
            means = parts["means"]
            agg = means[(means["method"] == method) & (means["strategy"] == "aggregate")]["dac"]
            mine, theirs = planted_dac(means, method), planted_dac(ref["means"], method)
            dom_mass, dom_dac = parts["mass"].get(method), parts["dac"].get(method)
            ref_mass, ref_dac = ref["mass"].get(method), ref["dac"].get(method)
            agree = [a == b for a, b in ((dom_mass, ref_mass), (dom_dac, ref_dac)) if a is not None and b is not None]
            rows.append(
                dict(
                    run=label,
                    provider=providers[label],
                    method=method,
                    planted_channel=planted,
                    dominant_by_mass=dom_mass,
                    dominant_by_dac=dom_dac,
                    dac_aggregate=float(agg.mean()) if len(agg) else float("nan"),
                    dac_planted=mine,
                    dac_planted_reference=theirs,
                    dac_planted_difference=mine - theirs,
                    agree_with_reference=bool(all(agree)) if agree else None,
                )
            )
    methods_df = pd.DataFrame(rows, columns=list(METHOD_COLUMNS))

    channel_rows = []
    for label, run in runs.items():
        summary = _table(run, "counterfactual_summary.parquet")
        shares = shapley_shares(_table(run, "channel_shapley.parquet"))
        means = per_run[label]["means"]
        single = means[means["strategy"] == "single_channel"].groupby("channel")["dac"].mean()
        channels = (
            list(summary["channel"])
            if summary is not None
            else list(dict.fromkeys(list(shares.index) + list(single.index)))
        )
        for ch in channels:
            row = summary[summary["channel"] == ch].iloc[0] if summary is not None else None
            channel_rows.append(
                dict(
                    run=label,
                    provider=providers[label],
                    channel=ch,
                    change_share=float(row["change_share"]) if row is not None else float("nan"),
                    flip_rate=float(row["flip_rate"]) if row is not None else float("nan"),
                    shapley_share=float(shares.get(ch, np.nan)),
                    single_channel_dac=float(single.get(ch, np.nan)),
                )
            )
    channels_df = pd.DataFrame(channel_rows, columns=list(CHANNEL_COLUMNS))
    summary = {
        "reference": reference,
        "planted_channel": planted,
        "runs": {
            label: dict(
                path=str(run.path),
                provider=providers[label],
                agreement=_mean_or_none(methods_df.loc[methods_df["run"] == label, "agree_with_reference"]),
            )
            for label, run in runs.items()
        },
    }
    return CounterfactualComparison(methods=methods_df, channels=channels_df, summary=summary)


def _mean_or_none(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else None
