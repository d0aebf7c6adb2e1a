"""Section "Localisation and faithfulness": maps against the planted signal, deletion / insertion curves."""

from __future__ import annotations

import numpy as np

from chanstat.report.display import show_figure, show_markdown, show_table
from chanstat.report.plots import charts, style
from chanstat.report.sections.base import (
    describe_constant,
    drop_empty,
    has_column,
    ordered,
    require,
    section,
    split_constant,
)
from chanstat.report.text import md
from chanstat.rundir import RunDirectory

LOCALISATION = ("pxap", "dice", "miou", "pointing_game", "relevance_mass", "relevance_rank")
FAITHFULNESS = ("deletion_auc", "insertion_auc", "road_morf_auc", "road_lerf_auc")


@section
def localisation(run: RunDirectory) -> None:
    """Reads ``localisation`` (one row per method and channel, a column per metric; the optional
    ``*_auc`` faithfulness columns) and ``faithfulness_curves`` (fraction, score per metric)."""
    if not require(run, "localisation"):
        return
    loc = run.table("localisation")
    metrics = [
        m
        for m in LOCALISATION + FAITHFULNESS
        if (m in LOCALISATION or has_column(loc, "localisation", m)) and np.isfinite(loc[m].to_numpy(dtype=float)).any()
    ]
    # rows without any value (a channel with no ground truth) say nothing
    has_value = np.isfinite(loc[metrics].to_numpy(dtype=float)).any(axis=1) if metrics else np.ones(len(loc), bool)
    dropped = int((~has_value).sum())
    loc = loc[has_value]
    table, constant = split_constant(loc, ("n_images", "n_val", "n_test", "channel_resolved"))
    table = table.drop(columns=[c for c in table.columns if c.endswith("_threshold")])
    fixed = describe_constant(constant)
    show_table(
        drop_empty(table),
        caption="Localisation and faithfulness metrics" + (f" ({fixed})" if fixed else ""),
        max_rows=60,
    )
    if dropped:
        show_markdown(
            md(
                "{} method × channel rows without ground truth (no signal in that channel) are not shown. "
                "{}: the map summed over channels against the union of the signal masks.",
                dropped,
                "`channel = all`",
            )
        )
    if metrics and len(loc):
        hue = "channel" if loc["channel"].nunique() > 1 else None
        chans = ordered(loc["channel"], ["all"] + run.channels) if hue else []
        colours = style.channel_colours(chans) if hue else None
        if colours and "all" in colours:
            colours["all"] = "#555555"
        for group in ([m for m in metrics if m in LOCALISATION], [m for m in metrics if m in FAITHFULNESS]):
            if not group:
                continue
            rows = loc[np.isfinite(loc[group].to_numpy(dtype=float)).any(axis=1)]
            show_figure(
                charts.metric_panels(
                    rows, group, "method", hue, colours=colours, order=ordered(rows["method"], run.method_order)
                )
            )
    if run.has("faithfulness_curves"):
        _faithfulness_curves(run)


def _faithfulness_curves(run: RunDirectory) -> None:
    curves = run.table("faithfulness_curves")
    keep = "all" if (curves["channel"] == "all").any() else str(curves["channel"].iloc[0])
    curves = curves[curves["channel"] == keep]
    panels = {}
    for metric in ordered(curves["metric"], ("deletion", "insertion", "road_morf", "road_lerf")):
        part = curves[curves["metric"] == metric]
        grid = np.linspace(part["fraction"].min(), part["fraction"].max(), 51)
        panels[metric] = {
            m: charts.mean_curve(part[part["method"] == m], "fraction", "score", grid=grid)
            for m in ordered(part["method"], run.method_order)
        }
    show_figure(
        charts.curve_facets(
            panels, xlabel="fraction of pixels removed / inserted", ylabel="p(real class)", legend_title="method"
        )
    )
    show_markdown(
        "Deletion: the most attributed pixels are removed first, so a faithful map makes the "
        "probability fall fast (low area). Insertion: they are added first to a blurred image, so a "
        "faithful map makes it rise fast (high area)."
    )
