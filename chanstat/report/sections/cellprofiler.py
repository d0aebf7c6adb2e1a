"""Sections of "CellProfiler features": differential features, channel enrichment, compartment x
channel (beside the attribution per compartment), and the concordance of the two sides."""
from __future__ import annotations

import numpy as np

from chanstat.report.display import format_value, missing_note, show_figure, show_markdown, show_table
from chanstat.report.plots import charts, matrices
from chanstat.report.sections.base import drop_empty, has_column, ordered, require, section
from chanstat.report.text import md
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
    show_markdown(md("{} features tested{}; {} significant{}.", len(tested), contrast, n_sig,
                     md("; {} not tested (constant or missing)", untested) if untested else md("")))
    if len(tested):
        show_figure(matrices.volcano(tested, "effect_size", "p_value", "q_value", "_channel", run.channels,
                                     alpha=ALPHA, name="feature"))
    keep = ["feature", "compartment", "category", "channels", "n_case", "n_control", "statistic", "p_value", "q_value",
            "effect_size", "ci_low", "ci_high", "significant"]
    show_table(tested.sort_values("q_value")[keep], caption=f"Most significant features (top {top} by q_value)",
               max_rows=top)


@section
def channel_enrichment(run: RunDirectory) -> None:
    """Reads ``channel_enrichment`` (channel, n_features, n_significant; ``odds_ratio`` when declared):
    the share of each channel's features that differ, as bars, and the table."""
    if not require(run, "channel_enrichment"):
        return
    enr = run.table("channel_enrichment")
    d = enr.copy()
    d["channel"] = d["channel"].astype(str)
    d = d.set_index("channel").loc[ordered(d["channel"], run.channels)].reset_index()
    d["fraction_significant"] = d["n_significant"] / d["n_features"].where(d["n_features"] > 0)
    d["_count"] = [f"{int(a)}/{int(b)}" for a, b in zip(d["n_significant"], d["n_features"])]
    panels = [("fraction_significant", "fraction of features significant", None, False)]
    if has_column(d, "channel_enrichment", "odds_ratio"):
        panels.append(("odds_ratio", "odds ratio (significant features)", 1.0, True))
    show_figure(charts.channel_bars(d, "channel", panels, annotate="_count"))
    show_table(enr, caption="Channel enrichment of significant CellProfiler features", max_rows=None)


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
        for method, part in (mass.groupby("method", sort=False) if by_method else [("attribution", mass)]):
            mat = part.pivot_table(index="compartment", columns="channel", values="share", aggfunc="mean", sort=False)
            mats[f"attribution: {method}"] = mat.reindex(columns=ordered(mat.columns, chans))
        top = max(float(np.nanmax(m.to_numpy(dtype=float))) for m in mats.values())
        show_figure(matrices.heatmap_facets(mats, vmin=0.0, vmax=top, cmap="magma",
                                            colorbar_label="mean share of attribution mass", rows_are_channels=False))
    else:
        missing_note(["compartment_mass.parquet"], stage="decompose", what="no attribution per compartment")
    if not require(run, "compartment_channel"):
        return
    cc = run.table("compartment_channel")
    cc = cc.assign(fraction_significant=cc["n_significant"] / cc["n_features"].where(cc["n_features"] > 0))
    mat = cc.pivot_table(index="compartment", columns="channel", values="fraction_significant", aggfunc="mean",
                         sort=False)
    mat = mat.reindex(columns=ordered(mat.columns, chans))
    mat.columns = [str(c) for c in mat.columns]
    show_figure(matrices.heatmap(mat, title="CellProfiler: fraction of features significant", cmap="magma",
                                 colorbar_label="n_significant / n_features", xlabel="channel", ylabel="compartment"))
    show_table(cc, caption="Compartment × channel (CellProfiler features)", max_rows=60)


@section
def concordance(run: RunDirectory) -> None:
    """Reads ``concordance`` (method, statistic, estimate, p_value; ``ci_low`` / ``ci_high`` when declared)
    and ``concordance_ranks`` (``attribution_rank`` / ``feature_rank`` when declared)."""
    if not require(run, "concordance"):
        return
    con = run.table("concordance")
    d = con.assign(_p=[f"p = {format_value(v)}" for v in con["p_value"]])
    interval = all(has_column(d, "concordance", c) for c in ("ci_low", "ci_high"))
    show_figure(charts.estimate_intervals(d, "method", "estimate", "ci_low" if interval else None,
                                          "ci_high" if interval else None,
                                          facet="statistic" if d["statistic"].nunique() > 1 else None,
                                          xlabel="rank agreement (attribution shares vs CellProfiler)", annotate="_p"))
    show_table(drop_empty(con), caption="Concordance of attribution and CellProfiler channel rankings", max_rows=60)
    if run.has("concordance_ranks"):
        ranks = run.table("concordance_ranks")
        if all(has_column(ranks, "concordance_ranks", c) for c in ("attribution_rank", "feature_rank")):
            show_figure(matrices.rank_agreement(ranks, "feature_rank", "attribution_rank",
                                                ordered(ranks["channel"], run.channels),
                                                xlabel="CellProfiler rank", ylabel="attribution rank"))
            show_markdown("Rank 1 = the channel with the largest attribution share (y) or CellProfiler enrichment "
                          "score (x). Points on the dashed line: both rank the channel alike.")


def cellprofiler_channel(run: RunDirectory) -> str | None:
    """The channel whose CellProfiler features differ most (largest fraction significant; a
    description, not a test): ``"none"`` when no feature differs or channels tie, None without
    ``channel_enrichment``."""
    if not run.has("channel_enrichment"):
        return None
    enr = run.table("channel_enrichment")
    enr = enr[enr["n_features"] > 0]
    if enr.empty or not (enr["n_significant"] > 0).any():
        return "none"
    frac = enr["n_significant"] / enr["n_features"]
    winners = enr.loc[frac == frac.max(), "channel"].astype(str).tolist()
    return winners[0] if len(winners) == 1 else "none"

