"""Section "Channel Shapley values": how much each channel contributes to p(real) − p(counterfactual)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import format_value, show_figure, show_markdown, show_table
from chanstat.report.plots import charts, matrices, style
from chanstat.report.sections.base import drop_empty, has_column, ordered, require, section
from chanstat.report.text import md
from chanstat.rundir import RunDirectory

INTERVAL = ("estimate", "ci_low", "ci_high")


@section
def channel_shapley(run: RunDirectory) -> None:
    """Reads ``channel_shapley`` (sample, channel, shapley), ``channel_shapley_total`` (sample, total),
    ``shapley_tests`` (source, channel; ``estimate`` / ``ci_low`` / ``ci_high`` when declared) and
    ``channel_shapley_interactions`` (channel_a, channel_b, interaction): bars with intervals, the
    efficiency check and the interaction heatmap."""
    if not require(run, "channel_shapley"):
        return
    values = run.table("channel_shapley")
    chans = ordered(values["channel"], run.channels)
    colours = style.channel_colours(chans)
    tests = run.table("shapley_tests") if run.has("shapley_tests") else None
    if tests is not None and all(has_column(tests, "shapley_tests", c) for c in INTERVAL):
        hue = "source" if tests["source"].nunique() > 1 else None
        show_figure(charts.grouped_bars(tests, "channel", "estimate", hue=hue, colours=None if hue else colours,
                                        ylabel="Shapley value (Δ p)", title="Channel Shapley values with intervals",
                                        err_low="ci_low", err_high="ci_high", ref=0.0))
    else:
        g = values.groupby("channel", sort=False)["shapley"]
        bars = pd.DataFrame({"channel": chans, "mean": g.mean().reindex(chans).to_numpy(),
                             "sem": (g.std(ddof=1) / np.sqrt(g.count())).reindex(chans).to_numpy()})
        bars["low"], bars["high"] = bars["mean"] - bars["sem"], bars["mean"] + bars["sem"]
        show_figure(charts.grouped_bars(bars, "channel", "mean", colours=colours, ylabel="Shapley value (Δ p)",
                                        title="Channel Shapley values (mean over images)", err_low="low",
                                        err_high="high", ref=0.0))
        show_markdown("Whiskers: ± 1 standard error over images (descriptive; images of one well are not "
                      "independent). The tested intervals appear when the statistics stage writes them.")
    if run.has("channel_shapley_total"):
        total = run.table("channel_shapley_total")
        sums = values.groupby("sample")["shapley"].sum()
        joined = total.set_index("sample")["total"].reindex(sums.index)
        gap = float(np.nanmax(np.abs(sums.to_numpy() - joined.to_numpy()))) if len(sums) else float("nan")
        show_markdown(md("The values of an image add up to p(real) − p(counterfactual): mean total {} over {} images "
                         "(largest gap between the sum and the total: {}).",
                         format_value(total["total"].mean()), len(total), format_value(gap)))
    if tests is not None:
        show_table(drop_empty(tests), caption="Channel Shapley values tested", max_rows=60)
    if run.has("channel_shapley_interactions"):
        inter = run.table("channel_shapley_interactions")
        mean = inter.groupby(["channel_a", "channel_b"], sort=False)["interaction"].mean()
        mat = pd.DataFrame(np.nan, index=chans, columns=chans)
        for (a, b), v in mean.items():
            mat.loc[str(a), str(b)] = v
            if pd.isna(mat.loc[str(b), str(a)]):
                mat.loc[str(b), str(a)] = v
        show_figure(matrices.heatmap(mat, title="Pairwise Shapley interactions (mean over images)", cmap="RdBu_r",
                                     center=0.0, colorbar_label="interaction (Δ p)", xlabel="channel",
                                     ylabel="channel", fmt="{:.3f}"))
    if run.has("feature_link"):
        link = run.table("feature_link")
        show_table(drop_empty(link), caption="CellProfiler features that predict where the classifier looks",
                   max_rows=20)
