"""Sections of "Channel shares": shares per image, the channel tests, share intervals, map
similarity, DAC strategy comparisons, and the pseudo-replicate warning."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import format_value, note, show_figure, show_markdown, show_table
from chanstat.report.plots import charts, matrices, style
from chanstat.report.sections.base import (
    POOLED,
    describe_constant,
    drop_empty,
    is_true,
    ordered,
    pooled_first,
    pooled_rows,
    require,
    section,
    split_constant,
    with_transition,
)
from chanstat.report.sections.inference import (
    NO_CHANNEL,
    P_COLUMNS,
    companion,
    descriptive,
    label_pseudo,
    names_channel,
    pseudo_replicate_note,
    pseudo_replicates,
    roles,
    show_warnings,
    without_descriptive_p,
)
from chanstat.report.text import Markdown, code, md, p_text
from chanstat.rundir import RunDirectory

TEST_COLUMNS = (
    "method",
    "transition",
    "test",
    "role",
    "contrast",
    "channel_a",
    "channel_b",
    "statistic",
    "df1",
    "df2",
    "p_value",
    "p_adj",
    "q_value",
    "effect_size",
    "effect_size_name",
    "estimate",
    "dominant_channel",
    "dominant_share",
    "dominant_ci_low",
    "dominant_ci_high",
    "unit",
    "n_units",
    "n_samples",
    "n_plates",
    "pseudo_replicates",
    "p_adj_method",
    "multiplicity_scope",
)
DOMINANT = ("dominant_channel", "dominant_share", "dominant_ci_low", "dominant_ci_high")
CONSTANT = (
    "test",
    "role",
    "contrast",
    "channel_a",
    "channel_b",
    "unit",
    "n_units",
    "n_samples",
    "n_plates",
    "effect_size_name",
    "p_adj_method",
    "multiplicity_scope",
)
__all__ = [
    "NO_CHANNEL",
    "names_channel",
    "pseudo_replicate_note",
    "pseudo_replicates",
    "channel_shares",
    "channel_tests",
    "channel_share_ci",
    "map_similarity",
    "strategy_comparison",
]


@section
def channel_shares(run: RunDirectory) -> None:
    """Reads ``channel_mass`` (sample, method, channel, share; transition from the data set): per-image
    shares as box plots (a panel per method, a colour per transition) and the mean share per channel."""
    if not require(run, "channel_mass"):
        return
    mass = with_transition(run, run.table("channel_mass"))
    channels = ordered(mass["channel"], run.channels)
    hue = "transition" if "transition" in mass else None
    show_figure(
        charts.share_boxes(mass, channels, value="share", facet="method", hue=hue, ylabel="share of |attribution|")
    )
    keys = [c for c in ("method", hue) if c]
    wide = mass.pivot_table(index=keys, columns="channel", values="share", aggfunc="mean", sort=False)
    wide = wide.reindex(columns=[c for c in channels if c in wide.columns])
    wide.columns = [str(c) for c in wide.columns]
    show_table(wide.reset_index(), caption="Mean share per channel", max_rows=60)


def _primary_summary(tests: pd.DataFrame, primary: pd.DataFrame) -> None:
    """The primary test per method in words, with the plate x channel heterogeneity test beside it."""
    first = primary.iloc[0]
    parts = [
        md(
            "**Primary test:** {} (does one channel's share exceed every other channel's? A channel is named "
            "only when it beats each rival)",
            code(first["test"]),
        )
    ]
    if pd.notna(first["unit"]):
        parts.append(md("; unit of replication: {} ({} units)", first["unit"], format_value(first["n_units"])))
    lines = []
    for _, row in pooled_rows(primary).head(12).iterrows():
        p = p_text(row["p_value"]) if pd.notna(row["p_value"]) else Markdown("no p-value")
        named = names_channel(row["dominant_channel"])
        dominant = (
            md(", dominant channel **{}**", row["dominant_channel"]) if named else Markdown(", no dominant channel")
        )
        if named and "dominant_share" in row and pd.notna(row["dominant_share"]):
            dominant = dominant + md(
                " (share {}, simultaneous interval {} to {})",
                format_value(row["dominant_share"]),
                format_value(row.get("dominant_ci_low")),
                format_value(row.get("dominant_ci_high")),
            )
        het = companion(tests, row, "plate_x_channel")
        het_text = Markdown("")
        if het is not None:
            why = het["note"] if "note" in het and isinstance(het["note"], str) else ""
            het_text = (
                md("; plate × channel heterogeneity {}", p_text(het["p_value"]))
                if pd.notna(het["p_value"])
                else md("; plate × channel heterogeneity not tested ({})", why)
            )
        lines.append(md("- {}: {}{}{}", code(row["method"]), p, dominant, het_text))
    text = Markdown("").join(parts) + Markdown(".")
    note(text + (Markdown("\n\n") + Markdown("\n").join(lines) if lines else Markdown("")), kind="info")


def _table(rows: pd.DataFrame, caption: str, drop=(), **kwargs) -> None:
    rows = label_pseudo(without_descriptive_p(rows))
    cols = [c for c in TEST_COLUMNS if c in rows and c not in drop]
    table, constant = split_constant(rows[cols], CONSTANT + ("transition",))
    fixed = describe_constant(constant)
    show_table(drop_empty(table), caption=caption + (f" ({fixed})" if fixed else ""), **kwargs)


@section
def channel_tests(run: RunDirectory, max_pairwise: int = 30) -> None:
    """Reads ``channel_tests`` (the declared test columns; ``primary`` marks the primary test,
    ``role`` its part: primary / component / heterogeneity / secondary / descriptive): the
    primary (dominance) test per method in bold with the plate x channel heterogeneity test and
    the ``warning`` beside it, its pairwise components, the secondary tests (labelled so), the
    descriptive mixed-model estimates (never a p-value) and the tests' notes."""
    if not require(run, "channel_tests"):
        return
    pseudo_replicate_note(run)
    tests = run.table("channel_tests")
    tests = tests.assign(_role=roles(tests).to_numpy())
    primary = is_true(tests["primary"])
    rest = tests[~primary]
    if primary.any():
        prim = pooled_first(tests[primary])
        _primary_summary(tests, prim)
        show_warnings(prim, "primary test")
        het = rest[(rest["_role"] == "heterogeneity") & (rest["transition"].astype(str) == POOLED)]
        order = {m: i for i, m in enumerate(pd.unique(prim["method"].astype(str)))}
        shown = pd.concat([prim, het.assign(**{c: np.nan for c in DOMINANT if c in het})])
        shown = shown.iloc[
            np.argsort(shown["method"].astype(str).map(order).fillna(len(order)).to_numpy(), kind="stable")
        ]
        _table(
            shown,
            "Primary test per method, with the plate × channel heterogeneity test beside it",
            bold_rows=is_true(shown["primary"]),
            max_rows=None,
        )
        rest = rest.drop(het.index)
        # the primary test within each class transition (the primary rows pool the transitions)
        per = rest[(rest["test"] == prim["test"].iloc[0]) & (rest["transition"] != POOLED)]
        if len(per):
            _table(per, "Primary test within each transition", max_rows=60)
            rest = rest.drop(per.index)
    components = rest[rest["_role"] == "component"]
    if len(components):
        _table(
            pooled_rows(components),
            "Components of the dominance test (one-sided pairs 'A > B'; not adjusted: "
            "the intersection-union test needs every pair)",
            drop=DOMINANT,
            max_rows=max_pairwise,
        )
    heterogeneity = rest[rest["_role"] == "heterogeneity"]
    if len(heterogeneity):
        _table(heterogeneity, "Plate × channel heterogeneity within each transition", drop=DOMINANT, max_rows=60)
    estimates_only = descriptive(rest).to_numpy()
    secondary = rest[(rest["_role"] == "secondary").to_numpy() & ~estimates_only]
    omnibus = secondary[secondary["contrast"] == "channel"]
    if len(omnibus):
        _table(
            pooled_rows(omnibus),
            "Secondary tests across channels (do the shares differ at all? They do not say which channel dominates)",
            drop=DOMINANT,
            max_rows=60,
        )
    pairwise = secondary.drop(omnibus.index)
    if len(pairwise):
        by = "p_adj" if "p_adj" in pairwise else "p_value"
        shown = pooled_rows(pairwise).sort_values(by, kind="stable")
        _table(
            shown, f"Secondary pairwise channel contrasts, smallest {by} first", drop=DOMINANT, max_rows=max_pairwise
        )
    described = rest[estimates_only]
    if len(described):
        _table(
            pooled_rows(described),
            "Descriptive: mixed-model estimates only (no p-value: its Wald test is not "
            "calibrated with few wells or plates)",
            drop=DOMINANT + P_COLUMNS + ("p_adj_method", "multiplicity_scope"),
            max_rows=60,
        )
    if "note" in tests:
        notes = pooled_first(tests)[["test", "note"]]
        notes = notes[notes["note"].fillna("").astype(str).str.strip() != ""].drop_duplicates("test")
        if len(notes):
            show_table(notes, caption="Notes on the tests (first row of each)", max_rows=None, max_text=400)


def _wide(d: pd.DataFrame, keys: list[str], chans: list[str], low: str, high: str) -> pd.DataFrame:
    """One row per group, one "mean [low, high]" cell per channel ("*" marks the dominant channel)."""
    dominant = is_true(d["dominant"]) if "dominant" in d else np.zeros(len(d), bool)
    cells = [
        f"{format_value(e)} [{format_value(lo)}, {format_value(hi)}]{' *' if dom else ''}"
        for e, lo, hi, dom in zip(d["mean"], d[low], d[high], dominant)
    ]
    wide = d.assign(_cell=cells).pivot_table(index=keys, columns="channel", values="_cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[c for c in chans if c in wide.columns])
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index().merge(d.drop_duplicates(keys)[keys + ["unit", "n_units"]], on=keys, how="left")


@section
def channel_share_ci(run: RunDirectory) -> None:
    """Reads ``channel_share_ci`` (method, transition, channel, mean, ci_low, ci_high, unit, n_units;
    ``interval``, ``simultaneous_ci_low`` / ``simultaneous_ci_high``, ``dominant``,
    ``pseudo_replicates`` and ``warning`` when present): mean share [interval] per channel as a
    table (marginal, then simultaneous) and a forest plot."""
    if not require(run, "channel_share_ci"):
        return
    ci = pooled_first(run.table("channel_share_ci"))
    chans = ordered(ci["channel"], run.channels)
    keys = ["method", "transition"]
    pseudo_replicate_note(run)
    d = label_pseudo(ci)
    show_warnings(ci, "intervals")
    kind = ""
    if "interval" in ci and ci["interval"].nunique(dropna=True) == 1:
        kind = f"{ci['interval'].dropna().iloc[0]} "
    star = " * = the channel the dominance test names" if "dominant" in ci and is_true(ci["dominant"]).any() else ""
    table, constant = split_constant(_wide(d, keys, chans, "ci_low", "ci_high"), ("transition", "unit", "n_units"))
    fixed = describe_constant(constant)
    show_table(
        table,
        caption=f"Channel shares: mean [ci_low, ci_high], {kind}interval for one channel named in advance"
        + (f" ({fixed})" if fixed else "")
        + (f";{star}" if star else ""),
        max_rows=60,
    )
    if {"simultaneous_ci_low", "simultaneous_ci_high"} <= set(ci.columns):
        table, constant = split_constant(
            _wide(d, keys, chans, "simultaneous_ci_low", "simultaneous_ci_high"), ("transition", "unit", "n_units")
        )
        fixed = describe_constant(constant)
        show_table(
            table,
            caption="Channel shares: mean [simultaneous interval] over all channels, valid for a channel "
            "chosen from the data (e.g. the largest)" + (f" ({fixed})" if fixed else ""),
            max_rows=60,
        )
    plot = pooled_rows(d)
    group_cols = [c for c in keys if plot[c].nunique() > 1]
    if group_cols:
        plot = plot.assign(
            _group=[" · ".join(str(v) for v in row) for row in plot[group_cols].itertuples(index=False, name=None)]
        )
    show_figure(
        charts.interval_plot(
            plot,
            "mean",
            "ci_low",
            "ci_high",
            "channel",
            "_group" if group_cols else None,
            colours=style.channel_colours(chans),
            xlabel="share (mean, interval)",
            ref=1 / max(len(chans), 1),
        )
    )


@section
def map_similarity(run: RunDirectory) -> None:
    """Reads ``map_similarity`` (method, channel_a, channel_b, mean, n_undefined): the mean Spearman
    correlation between channel maps of one image, a heatmap per method."""
    if not require(run, "map_similarity"):
        return
    sim = run.table("map_similarity")
    mats = {}
    for method in ordered(sim["method"], run.method_order)[:12]:
        sub = sim[sim["method"] == method]
        names = ordered(pd.concat([sub["channel_a"], sub["channel_b"]]), run.channels)
        mat = pd.DataFrame(np.nan, index=names, columns=names)
        for a, b, v in zip(sub["channel_a"].astype(str), sub["channel_b"].astype(str), sub["mean"]):
            mat.loc[a, b] = v
            if pd.isna(mat.loc[b, a]):
                mat.loc[b, a] = v
        for n in names:  # a map is perfectly correlated with itself
            if pd.isna(mat.loc[n, n]):
                mat.loc[n, n] = 1.0
        mats[method] = mat
    show_figure(
        matrices.heatmap_facets(
            mats, vmin=-1.0, vmax=1.0, cmap="RdBu_r", colorbar_label="Spearman ρ (mean over images)"
        )
    )
    show_markdown(
        "Low correlation between two channels' maps means the method attributes different places in "
        "different channels; values near 1 mean the channel maps are copies of one another. "
        "Grey cells (n/a): the correlation is undefined because a channel's map is constant "
        "(e.g. all zero) in every image."
    )
    per = sim.groupby("method", sort=False)["mean"]
    summary = pd.DataFrame(
        {
            "mean": per.mean(),
            "lowest pair": per.min(),
            "highest pair": per.max(),
            "pairs": per.size(),
            "pairs undefined": sim["mean"].isna().groupby(sim["method"], sort=False).sum(),
            "image pairs undefined": sim.groupby("method", sort=False)["n_undefined"].sum(),
        }
    )
    show_table(
        summary.rename_axis("method").reset_index(),
        caption="Map similarity per method (over channel pairs)",
        max_rows=None,
    )


COMPARISON_COLUMNS = (
    "method",
    "strategy",
    "channel",
    "a",
    "b",
    "mean_a",
    "mean_b",
    "estimate",
    "ci_low",
    "ci_high",
    "statistic",
    "p_value",
    "p_adj",
    "p_adj_method",
    "effect_size",
    "effect_size_name",
    "unit",
    "n_units",
    "note",
)


@section
def strategy_comparison(run: RunDirectory) -> None:
    """Reads ``strategy_comparison`` (comparison, a, b, estimate, interval, p-values): strategies
    compared within each method, then methods within each strategy."""
    if not require(run, "strategy_comparison"):
        return
    comp = run.table("strategy_comparison")
    for kind, caption, fixed in (
        ("strategy", "Mask strategies compared within each method (DAC of a − b)", "strategy"),
        ("method", "Methods compared within each strategy (DAC of a − b)", "method"),
    ):
        part = comp[comp["comparison"] == kind]
        if part.empty:
            continue
        cols = [c for c in COMPARISON_COLUMNS if c in part and c != fixed]
        part = part.sort_values("p_adj", kind="stable") if kind == "method" else part
        table, constant = split_constant(
            part[cols], ("channel", "effect_size_name", "unit", "n_units", "note", "p_adj_method")
        )
        known = describe_constant(constant)
        show_table(
            drop_empty(table),
            caption=caption + (", sorted by p_adj" if kind == "method" else "") + (f" ({known})" if known else ""),
            max_rows=40,
        )
    other = comp[~comp["comparison"].isin(("strategy", "method"))]
    if len(other):
        show_table(drop_empty(other), caption="Other DAC comparisons", max_rows=40)
