"""Sections of "DAC": the DAC table and curves, single-channel DAC, optimal masks, the smoothing sweep."""

from __future__ import annotations

import numpy as np

from chanstat.dacscore.result import summarise_dac
from chanstat.report.display import format_value, note, show_figure, show_markdown, show_table
from chanstat.report.plots import charts, images, matrices, style
from chanstat.report.sections.base import (
    SINGLE_CHANNEL,
    describe_constant,
    ordered,
    rank,
    require,
    section,
    split_constant,
)
from chanstat.report.text import md
from chanstat.rundir import RunDirectory

STRATEGY_ORDER = ("aggregate", "joint", "per_channel", SINGLE_CHANNEL)


@section
def dac_curves(run: RunDirectory) -> None:
    """Reads ``dac_scores`` (method, strategy, channel, dac) and ``dac_curves`` (mask_size, score):
    DAC per method and strategy (mean over images) and the mean curves, a panel per strategy."""
    if not require(run, "dac_scores"):
        return
    summary = summarise_dac(run.table("dac_scores"))
    multi = summary[summary["strategy"] != SINGLE_CHANNEL]
    if len(multi):
        strategies = ordered(multi["strategy"], STRATEGY_ORDER)
        wide = multi.pivot_table(index="method", columns="strategy", values="dac", aggfunc="first", sort=False)
        wide = wide.reindex(index=ordered(multi["method"], run.method_order), columns=strategies)
        wide.columns = [str(c) for c in wide.columns]
        wide["n_images"] = multi.groupby("method", sort=False)["n"].max().reindex(wide.index)
        show_table(
            wide.rename_axis("method").reset_index(),
            caption="DAC per method and mask strategy (mean over images; higher = the map finds the evidence "
            "with smaller masks)",
            max_rows=None,
        )
    if not require(run, "dac_curves"):
        return
    curves = run.table("dac_curves")
    curves = curves[curves["strategy"] != SINGLE_CHANNEL]
    panels = {}
    for strategy in ordered(curves["strategy"], STRATEGY_ORDER):
        sub = curves[curves["strategy"] == strategy]
        lines = {m: charts.mean_curve(sub[sub["method"] == m]) for m in ordered(sub["method"], run.method_order)}
        panels[f"strategy: {strategy}"] = lines
    if panels:
        show_figure(charts.curve_facets(panels, ylabel="score (gain in p(real class))", legend_title="method"))
        show_markdown(
            "Score = p(real class | hybrid) − p(real class | counterfactual), mean over images "
            "(band: ± 1 standard error); the hybrid is the real image where the mask is on and the "
            "counterfactual elsewhere."
        )


@section
def single_channel_curves(run: RunDirectory) -> None:
    """Reads ``dac_scores`` and ``dac_curves`` rows of strategy ``single_channel``: method x channel
    DAC as a table and heatmap, and the curves per method."""
    if not require(run, "dac_scores"):
        return
    summary = summarise_dac(run.table("dac_scores"))
    single = summary[summary["strategy"] == SINGLE_CHANNEL]
    if single.empty:
        note(
            md("No {} strategy in {}: the DAC stage was run without it.", "`single_channel`", "dac_scores.parquet"),
            kind="missing",
        )
        return
    channels = ordered(single["channel"], run.channels)
    wide = single.pivot_table(index="method", columns="channel", values="dac", sort=False).reindex(columns=channels)
    wide.columns = [str(c) for c in wide.columns]
    show_table(
        wide.reset_index(), caption="Single-channel DAC (only this channel masked; mean over images)", max_rows=None
    )
    show_figure(
        matrices.heatmap(
            wide, title="Single-channel DAC", cmap="viridis", colorbar_label="DAC", xlabel="channel", ylabel="method"
        )
    )
    if not require(run, "dac_curves"):
        return
    curves = run.table("dac_curves")
    curves = curves[curves["strategy"] == SINGLE_CHANNEL]
    panels = {}
    for m in ordered(curves["method"], run.method_order):
        part = curves[curves["method"] == m]
        panels[m] = {
            ch: charts.mean_curve(part[part["channel"] == ch]) for ch in ordered(part["channel"], run.channels)
        }
    if panels:
        show_figure(
            charts.curve_facets(
                panels,
                colours=style.channel_colours(channels),
                ylabel="score (only this channel real)",
                legend_title="channel",
            )
        )


@section
def optimal_masks(run: RunDirectory) -> None:
    """Reads ``dac_masks`` (arrays ``<method>.<strategy>`` with attributes ``method``, ``strategy``,
    ``samples``): the masks of one image, a figure per strategy, a row per method."""
    if not require(run, "dac_masks"):
        return
    channels = run.channels
    group = run.group_attrs("dac_masks")
    settings = group.get("settings")
    if isinstance(settings, dict) and settings:
        show_markdown("Mask settings: " + ", ".join(f"{k} = {format_value(v)}" for k, v in settings.items()) + ".")
    entries = []  # (strategy, method, array name, data-set rows)
    for name in run.array_names("dac_masks"):
        if len(run.array_shape("dac_masks", name)) not in (3, 4):
            continue
        attrs = run.array_attrs("dac_masks", name)
        method, _, strategy = name.partition(".")
        rows = attrs.get("samples", group.get("samples"))
        entries.append(
            (
                str(attrs.get("strategy") or strategy),
                str(attrs.get("method") or method),
                name,
                None if rows is None else [int(r) for r in rows],
            )
        )
    if not entries:
        note("dac_masks.zarr holds no (N, C, H, W) masks.", kind="info")
        return
    # the same image in every figure: the first one every array holds
    common = (
        set.intersection(*[set(e[3]) for e in entries if e[3] is not None])
        if any(e[3] is not None for e in entries)
        else set()
    )
    sample = min(common) if common else None
    if common and run.has("dac_scores"):  # the best-explained of them (chanstat.explanations), not the first
        from chanstat.answer.explanations import best_explanations

        best = best_explanations(run.table("dac_scores"))
        best = best[best["sample"].isin(common)].sort_values("dac", ascending=False, kind="stable")
        sample = int(best["sample"].iloc[0]) if len(best) else sample
    for strategy in ordered([e[0] for e in entries], STRATEGY_ORDER):
        masks = {}
        for strat, method, name, rows in sorted(entries, key=lambda e: rank(e[1], run.method_order)):
            if strat != strategy:
                continue
            row = rows.index(sample) if (rows is not None and sample is not None) else 0
            arr = run.array("dac_masks", name, samples=[row])[0].astype(np.float32)
            arr = arr[None] if arr.ndim == 2 else arr
            if arr.shape[0] in (1, len(channels)):
                masks[method] = arr
        if masks:
            label = f"image {sample}" if sample is not None else "first image"
            tr = run.transitions
            if sample is not None and len(tr) > sample:
                label += f" ({tr.loc[sample, 'transition']})"
            show_figure(images.mask_panels(masks, channels, title=f"Optimal masks, strategy {strategy}: {label}"))


@section
def smoothing_sweep(run: RunDirectory) -> None:
    """Reads ``dac_sweep`` (method, closing, sigma, strategy, channel, dac): mean DAC per setting as a
    table and line plots (closing on x, a line per sigma, a panel per method / strategy / channel)."""
    if not require(run, "dac_sweep"):
        return
    sweep = run.table("dac_sweep")
    groups = ["method", "strategy", "channel"]
    df = sweep.groupby(groups + ["closing", "sigma"], sort=False)["dac"].agg(["mean", "count"]).reset_index()
    df = df.rename(columns={"mean": "dac", "count": "n_images"})
    # aggregate strategies first, then channels in stain order
    df = (
        df.assign(_c=[rank(str(c), ["all"] + run.channels) for c in df["channel"]])
        .sort_values(["method", "strategy", "_c"], kind="stable")
        .drop(columns="_c")
    )
    table, constant = split_constant(df, groups + ["n_images"])
    fixed = describe_constant(constant)
    if table["sigma"].nunique() > 1 and len(table) > 8:  # wide: one column per blur width
        keys = [c for c in table.columns if c not in ("sigma", "dac", "n_images")]
        wide = table.pivot_table(index=keys, columns="sigma", values="dac", aggfunc="first", sort=False)
        wide.columns = [f"sigma={format_value(c)}" for c in wide.columns]
        table = wide.reset_index()
    show_table(
        table,
        caption="Smoothing sweep: DAC for each closing / blur setting" + (f" ({fixed})" if fixed else ""),
        max_rows=60,
    )
    facet_cols = [c for c in groups if df[c].nunique() > 1]
    d = df.copy()
    d["_facet"] = (
        [" · ".join(str(v) for v in row) for row in d[facet_cols].itertuples(index=False, name=None)]
        if facet_cols
        else (fixed or "sweep")
    )
    hue = "sigma" if d["sigma"].nunique() > 1 else None
    show_figure(charts.line_facets(d, "closing", "dac", hue, "_facet", ylabel="DAC"))
