"""Section "Channel Shapley values": how much each channel contributes to p(real) − p(counterfactual)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import format_value, show_figure, show_markdown, show_table
from chanstat.report.plots import charts, matrices, style
from chanstat.report.sections.base import (
    describe_constant,
    drop_empty,
    has_column,
    ordered,
    require,
    section,
    split_constant,
)
from chanstat.report.sections.inference import label_pseudo, pooled, pseudo_replicate_note, show_warnings
from chanstat.report.text import md
from chanstat.rundir import RunDirectory

INTERVAL = ("estimate", "ci_low", "ci_high")
ZERO = (
    "channel",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "simultaneous_ci_low",
    "simultaneous_ci_high",
    "statistic",
    "df",
    "p_value",
    "p_adj",
    "p_adj_method",
    "multiplicity_scope",
    "alternative",
    "unit",
    "n_units",
    "n_samples",
    "pseudo_replicates",
)
DOMINANCE = (
    "test",
    "contrast",
    "channel_a",
    "channel_b",
    "statistic",
    "df1",
    "p_value",
    "estimate",
    "dominant_channel",
    "dominant_value",
    "dominant_ci_low",
    "dominant_ci_high",
    "unit",
    "n_units",
    "pseudo_replicates",
)


def _bars_from_tests(tests: pd.DataFrame) -> pd.DataFrame | None:
    """Per channel: the value and interval the statistics stage tested (against-zero rows: ``mean``;
    older tables: ``estimate``), pooled over transitions; None when the table has none."""
    rows = tests
    if has_column(tests, "shapley_tests", "test"):
        rows = tests[tests["test"].astype(str) == "against_zero"]
    rows = pooled(rows) if len(pooled(rows)) else rows
    value = "mean" if has_column(rows, "shapley_tests", "mean") else "estimate"
    if not len(rows) or not all(has_column(rows, "shapley_tests", c) for c in (value, "ci_low", "ci_high")):
        return None
    if rows[value].isna().all():
        return None
    return rows.rename(columns={value: "_value"})


@section
def channel_shapley(run: RunDirectory) -> None:
    """Reads ``channel_shapley`` (sample, channel, shapley), ``channel_shapley_total`` (sample, total),
    ``shapley_tests`` (the ``against_zero`` rows: ``mean``, ``ci_low`` / ``ci_high``, the
    simultaneous interval, ``p_value`` / ``p_adj``; the ``dominance`` rows: ``dominant_channel`` with its
    interval; ``pseudo_replicates``, ``warning``) and ``channel_shapley_interactions`` (channel_a,
    channel_b, interaction): bars with intervals, the tests, the efficiency check, the interactions."""
    if not require(run, "channel_shapley"):
        return
    values = run.table("channel_shapley")
    chans = ordered(values["channel"], run.channels)
    colours = style.channel_colours(chans)
    tests = run.table("shapley_tests") if run.has("shapley_tests") else None
    bars = _bars_from_tests(tests) if tests is not None else None
    if bars is not None:
        hue = "source" if bars["source"].nunique() > 1 else None
        show_figure(
            charts.grouped_bars(
                bars,
                "channel",
                "_value",
                hue=hue,
                colours=None if hue else colours,
                ylabel="Shapley value (Δ p)",
                title="Channel Shapley values with intervals",
                err_low="ci_low",
                err_high="ci_high",
                ref=0.0,
            )
        )
    else:
        g = values.groupby("channel", sort=False)["shapley"]
        means = pd.DataFrame(
            {
                "channel": chans,
                "mean": g.mean().reindex(chans).to_numpy(),
                "sem": (g.std(ddof=1) / np.sqrt(g.count())).reindex(chans).to_numpy(),
            }
        )
        means["low"], means["high"] = means["mean"] - means["sem"], means["mean"] + means["sem"]
        show_figure(
            charts.grouped_bars(
                means,
                "channel",
                "mean",
                colours=colours,
                ylabel="Shapley value (Δ p)",
                title="Channel Shapley values (mean over images)",
                err_low="low",
                err_high="high",
                ref=0.0,
            )
        )
        show_markdown(
            "Whiskers: ± 1 standard error over images (descriptive; images of one well are not "
            "independent). The tested intervals appear when the statistics stage writes them."
        )
    if tests is not None:
        show_warnings(tests, "Shapley tests")
        pseudo_replicate_note(run)
    if run.has("channel_shapley_total"):
        total = run.table("channel_shapley_total")
        sums = values.groupby("sample")["shapley"].sum()
        joined = total.set_index("sample")["total"].reindex(sums.index)
        gap = float(np.nanmax(np.abs(sums.to_numpy() - joined.to_numpy()))) if len(sums) else float("nan")
        show_markdown(
            md(
                "The values of an image add up to p(real) − p(counterfactual): mean total {} over {} images "
                "(largest gap between the sum and the total: {}).",
                format_value(total["total"].mean()),
                len(total),
                format_value(gap),
            )
        )
    if tests is not None:
        _tests_tables(tests)
    if run.has("channel_shapley_interactions"):
        inter = run.table("channel_shapley_interactions")
        mean = inter.groupby(["channel_a", "channel_b"], sort=False)["interaction"].mean()
        mat = pd.DataFrame(np.nan, index=chans, columns=chans)
        for (a, b), v in mean.items():
            mat.loc[str(a), str(b)] = v
            if pd.isna(mat.loc[str(b), str(a)]):
                mat.loc[str(b), str(a)] = v
        show_figure(
            matrices.heatmap(
                mat,
                title="Pairwise Shapley interactions (mean over images)",
                cmap="RdBu_r",
                center=0.0,
                colorbar_label="interaction (Δ p)",
                xlabel="channel",
                ylabel="channel",
                fmt="{:.3f}",
            )
        )
    if run.has("feature_link"):
        link = run.table("feature_link")
        show_table(
            drop_empty(link), caption="CellProfiler features that predict where the classifier looks", max_rows=20
        )


def _tests_tables(tests: pd.DataFrame) -> None:
    """The against-zero tests per channel, then the dominance test of the Shapley values."""
    if not has_column(tests, "shapley_tests", "test"):
        show_table(drop_empty(label_pseudo(tests)), caption="Channel Shapley values tested", max_rows=60)
        return
    zero = tests[tests["test"].astype(str) == "against_zero"]
    if len(zero):
        lab = label_pseudo(zero)
        table, constant = split_constant(
            lab[[c for c in ("transition",) + ZERO if c in lab]],
            ("transition", "p_adj_method", "multiplicity_scope", "alternative", "unit", "n_units", "n_samples"),
        )
        fixed = describe_constant(constant)
        show_table(
            drop_empty(table),
            caption="Shapley value per channel tested against zero (unit means; "
            "simultaneous interval over channels)" + (f" ({fixed})" if fixed else ""),
            max_rows=60,
        )
    dom = tests[tests["test"].astype(str).isin(("dominance", "dominance_pair"))]
    if len(dom):
        dom = pooled(dom) if len(pooled(dom)) else dom
        pairs = (dom["test"].astype(str) != "dominance").to_numpy()
        lab = label_pseudo(dom)
        lab = lab.assign(
            **{
                c: lab[c].where(~pairs)
                for c in ("dominant_channel", "dominant_value", "dominant_ci_low", "dominant_ci_high")
                if c in lab
            }
        )
        table = lab[[c for c in DOMINANCE if c in lab]]
        show_table(
            drop_empty(table),
            caption="Which channel dominates the Shapley values (intersection-union "
            "dominance test; pairs 'A > B' are its components, not adjusted)",
            bold_rows=(dom["test"].astype(str) == "dominance").to_numpy(),
            max_rows=30,
        )
