"""Sections of "CellProfiler features": differential features, channel enrichment, compartment x
channel (beside the attribution per compartment), and the concordance of the two sides."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.cellprofiler.enrichment import ENRICHMENT_COLUMNS
from chanstat.report.display import format_value, missing_note, note, show_figure, show_markdown, show_table
from chanstat.report.plots import charts, matrices
from chanstat.report.sections.base import (
    describe_constant,
    drop_empty,
    has_column,
    ordered,
    require,
    section,
    split_constant,
)
from chanstat.report.text import Markdown, code, md
from chanstat.rundir import RunDirectory

ALPHA = 0.05


def feature_channel(channels) -> str:
    """One channel label per feature for colouring: its channel, "several", or "none"."""
    items = [str(c) for c in (channels if isinstance(channels, (list, tuple, np.ndarray)) else []) if str(c)]
    if not items:
        return "none"
    return items[0] if len(set(items)) == 1 else "several"


@section
def cp_differential(run: RunDirectory, top: int = 20) -> None:
    """Reads ``cp_differential`` (feature, compartment, category, channels, status, counts, statistic,
    p_value, q_value, effect_size, interval, significant; ``case`` / ``control`` / ``level`` when the
    schema declares them): a volcano plot coloured by channel and the most significant features."""
    if not require(run, "cp_differential"):
        return
    diff = run.table("cp_differential")
    tested = diff[diff["status"] == "tested"].copy()
    untested = len(diff) - len(tested)
    tested["_channel"] = [feature_channel(v) for v in tested["channels"]]
    n_sig = int(tested["significant"].fillna(False).astype(bool).sum())
    contrast = md("")
    if len(tested) and all(has_column(tested, "cp_differential", c) for c in ("case", "control")):
        level = md(", per {}", tested["level"].iloc[0]) if has_column(tested, "cp_differential", "level") else md("")
        contrast = md(" ({} vs {}{})", tested["case"].iloc[0], tested["control"].iloc[0], level)
    show_markdown(
        md(
            "{} features tested{}; {} significant{}.",
            len(tested),
            contrast,
            n_sig,
            md("; {} not tested (constant or missing)", untested) if untested else md(""),
        )
    )
    if len(tested):
        show_figure(
            matrices.volcano(
                tested, "effect_size", "p_value", "q_value", "_channel", run.channels, alpha=ALPHA, name="feature"
            )
        )
    keep = [
        "feature",
        "compartment",
        "category",
        "channels",
        "n_case",
        "n_control",
        "statistic",
        "p_value",
        "q_value",
        "effect_size",
        "ci_low",
        "ci_high",
        "significant",
    ]
    scope = ""
    if has_column(tested, "cp_differential", "multiplicity_scope") and tested["multiplicity_scope"].nunique() == 1:
        scope = f"; q_value: {tested['multiplicity_scope'].iloc[0]}"
    elif has_column(tested, "cp_differential", "multiplicity_scope"):
        keep.append("multiplicity_scope")
    show_table(
        tested.sort_values("q_value")[keep],
        caption=f"Most significant features (top {top} by q_value{scope})",
        max_rows=top,
    )


DESCRIPTIVE = ENRICHMENT_COLUMNS
COMPETITIVE = (
    "channel",
    "statistic",
    "score_inside",
    "score_outside",
    "p_value",
    "p_adj",
    "enriched",
    "n_features",
    "n_features_competitive",
    "statistic_name",
    "p_adj_method",
    "multiplicity_scope",
    "n_perm",
    "n_units",
)


def competitive(enr: pd.DataFrame) -> pd.DataFrame | None:
    """The competitive enrichment test's columns of ``channel_enrichment`` (None when it did not run),
    with ``enriched`` = ``p_adj`` < 0.05 (the test's own definition)."""
    if not all(has_column(enr, "channel_enrichment", c) for c in ("statistic", "p_value", "p_adj")):
        return None
    out = enr.assign(enriched=np.nan_to_num(enr["p_adj"].to_numpy(float), nan=1.0) < ALPHA)
    if has_column(enr, "channel_enrichment", "n_features_competitive"):  # the test's own count, not Fisher's
        out = out.drop(columns="n_features").rename(columns={"n_features_competitive": "n_features"})
    for col in ("n_features", "n_perm", "n_units"):  # counts stored as float after the merge read as counts
        values = out[col].to_numpy(float) if col in out else None
        if values is not None and np.isfinite(values).all() and (values == np.round(values)).all():
            out[col] = values.astype(np.int64)
    return out[[c for c in COMPETITIVE if c in out]]


@section
def channel_enrichment(run: RunDirectory) -> None:
    """Reads ``channel_enrichment``: the competitive test (``statistic``, ``score_inside``,
    ``score_outside``, ``p_value``, ``p_adj``, ``multiplicity_scope``; a channel is enriched
    when ``p_adj`` < 0.05) as the enrichment test, and the descriptive columns (``n_features``,
    ``n_significant``, ``fraction_significant``, ``n_up`` / ``n_down``, ``odds_ratio``,
    ``mean_abs_effect``) as a description without p-values."""
    if not require(run, "channel_enrichment"):
        return
    enr = run.table("channel_enrichment")
    d = enr.copy()
    d["channel"] = d["channel"].astype(str)
    d = d.set_index("channel").loc[ordered(d["channel"], run.channels)].reset_index()
    if not has_column(d, "channel_enrichment", "fraction_significant"):
        d["fraction_significant"] = d["n_significant"] / d["n_features"].where(d["n_features"] > 0)
    d["_count"] = [f"{int(a)}/{int(b)}" for a, b in zip(d["n_significant"], d["n_features"])]
    test = competitive(d)
    panels: list[tuple[str, str, float | None, bool]] = []
    annotate = "_count"
    if test is not None:
        d["_competitive"] = test["statistic"].to_numpy()
        d["_p"] = [f"p_adj {format_value(v)}" for v in test["p_adj"]]
        panels.append(("_competitive", "competitive statistic (inside − outside)", 0.0, False))
        annotate = "_p"
    panels.append(("fraction_significant", "fraction of features significant (description)", None, False))
    if has_column(d, "channel_enrichment", "odds_ratio"):
        panels.append(("odds_ratio", "odds ratio (description, no p-value)", 1.0, True))
    show_figure(charts.channel_bars(d, "channel", panels, annotate=annotate))
    if test is None:
        note(
            md(
                "No competitive enrichment test in this run (cellprofiler {} = 0?): the counts below describe which "
                "channels' features differ; they are not a test (features are correlated).",
                code("n_perm"),
            ),
            kind="info",
        )
    else:
        table, constant = split_constant(
            test, ("statistic_name", "p_adj_method", "multiplicity_scope", "n_perm", "n_units")
        )
        fixed = describe_constant(constant)
        enriched = test.loc[test["enriched"], "channel"].astype(str).tolist()
        show_markdown(
            md(
                "Competitive enrichment test (case/control labels of whole wells permuted, so the null keeps "
                "the correlation between features): {}.",
                md("enriched: {}", ", ".join(enriched)) if enriched else Markdown("no channel is enriched"),
            )
        )
        show_table(
            drop_empty(table),
            caption="Channel enrichment test: competitive, p_adj over channels" + (f" ({fixed})" if fixed else ""),
            max_rows=None,
        )
    show_table(
        drop_empty(d[[c for c in DESCRIPTIVE if c in d]]),
        caption="Channel enrichment, description: significant features per channel and odds ratios "
        "(no p-values: a Fisher test would treat correlated features as independent)",
        max_rows=None,
    )


@section
def compartment_channel(run: RunDirectory) -> None:
    """Reads ``compartment_mass`` (compartment, channel, share; per method) beside ``compartment_channel``
    (compartment, channel, n_features, n_significant): where the attribution lies and where the
    CellProfiler features differ, on the same compartment x channel grid."""
    chans = run.channels
    if run.has("compartment_mass"):
        mass = run.table("compartment_mass")
        by_method = has_column(mass, "compartment_mass", "method")  # the entry's declared row order starts with it
        mats = {}
        for method, part in mass.groupby("method", sort=False) if by_method else [("attribution", mass)]:
            mat = part.pivot_table(index="compartment", columns="channel", values="share", aggfunc="mean", sort=False)
            mats[f"attribution: {method}"] = mat.reindex(columns=ordered(mat.columns, chans))
        top = max(float(np.nanmax(m.to_numpy(dtype=float))) for m in mats.values())
        show_figure(
            matrices.heatmap_facets(
                mats,
                vmin=0.0,
                vmax=top,
                cmap="magma",
                colorbar_label="mean share of attribution mass",
                rows_are_channels=False,
            )
        )
    else:
        missing_note(["compartment_mass.parquet"], stage="decompose", what="no attribution per compartment")
    if not require(run, "compartment_channel"):
        return
    cc = run.table("compartment_channel")
    cc = cc.assign(fraction_significant=cc["n_significant"] / cc["n_features"].where(cc["n_features"] > 0))
    mat = cc.pivot_table(
        index="compartment", columns="channel", values="fraction_significant", aggfunc="mean", sort=False
    )
    mat = mat.reindex(columns=ordered(mat.columns, chans))
    mat.columns = [str(c) for c in mat.columns]
    show_figure(
        matrices.heatmap(
            mat,
            title="CellProfiler: fraction of features significant",
            cmap="magma",
            colorbar_label="n_significant / n_features",
            xlabel="channel",
            ylabel="compartment",
        )
    )
    show_table(cc, caption="Compartment × channel (CellProfiler features)", max_rows=60)


CONCORDANCE = (
    "method",
    "statistic",
    "estimate",
    "ci_low",
    "ci_high",
    "p_value",
    "min_p_value",
    "critical_estimate",
    "grain",
    "resampled",
    "n_boot",
)


@section
def concordance(run: RunDirectory) -> None:
    """Reads ``concordance`` (method, statistic, estimate, p_value; ``ci_low`` / ``ci_high``,
    ``min_p_value``, ``critical_estimate``, ``grain``, ``resampled``, ``n_boot`` and ``note`` when
    declared) and ``concordance_ranks`` (``attribution_rank`` / ``feature_rank`` when declared)."""
    if not require(run, "concordance"):
        return
    con = run.table("concordance")
    if has_column(con, "concordance", "note"):
        for text in dict.fromkeys(t for t in con["note"].dropna().astype(str) if t.strip()):
            note(md("**What these ranks can show:** {}", text), kind="info")
    d = con.assign(_p=[f"p = {format_value(v)}" for v in con["p_value"]])
    interval = all(has_column(d, "concordance", c) for c in ("ci_low", "ci_high"))
    show_figure(
        charts.estimate_intervals(
            d,
            "method",
            "estimate",
            "ci_low" if interval else None,
            "ci_high" if interval else None,
            facet="statistic" if d["statistic"].nunique() > 1 else None,
            xlabel="rank agreement (attribution shares vs CellProfiler)",
            annotate="_p",
        )
    )
    cols = [c for c in CONCORDANCE if has_column(con, "concordance", c)]
    table, constant = split_constant(con[cols], ("grain", "resampled", "n_boot", "min_p_value"))
    fixed = describe_constant(constant)
    show_table(
        drop_empty(table),
        caption="Concordance of attribution and CellProfiler channel rankings" + (f" ({fixed})" if fixed else ""),
        max_rows=60,
    )
    if run.has("concordance_ranks"):
        ranks = run.table("concordance_ranks")
        if all(has_column(ranks, "concordance_ranks", c) for c in ("attribution_rank", "feature_rank")):
            show_figure(
                matrices.rank_agreement(
                    ranks,
                    "feature_rank",
                    "attribution_rank",
                    ordered(ranks["channel"], run.channels),
                    xlabel="CellProfiler rank",
                    ylabel="attribution rank",
                )
            )
            show_markdown(
                "Rank 1 = the channel with the largest attribution share (y) or CellProfiler enrichment "
                "score (x). Points on the dashed line: both rank the channel alike."
            )


def cellprofiler_channel(run: RunDirectory) -> str | None:
    """The channel CellProfiler's features single out: the one channel the competitive enrichment
    test finds enriched (``p_adj`` < 0.05), the largest statistic among several enriched ones,
    ``"none"`` when none is; without that test, the largest fraction of significant features (a
    description; ``"none"`` when no feature differs or channels tie). None without
    ``channel_enrichment``."""
    if not run.has("channel_enrichment"):
        return None
    enr = run.table("channel_enrichment")
    test = competitive(enr)
    if test is not None:
        hits = test[test["enriched"]]
        if hits.empty:
            return "none"
        top = hits.loc[hits["statistic"] == hits["statistic"].max(), "channel"].astype(str).tolist()
        return top[0] if len(top) == 1 else "none"
    enr = enr[enr["n_features"] > 0]
    if enr.empty or not (enr["n_significant"] > 0).any():
        return "none"
    frac = enr["n_significant"] / enr["n_features"]
    winners = enr.loc[frac == frac.max(), "channel"].astype(str).tolist()
    return winners[0] if len(winners) == 1 else "none"
