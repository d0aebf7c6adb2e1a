"""Section "The answer": which channel carries the difference, how sure we are, and whether the
attribution methods, the channel Shapley values and CellProfiler agree — in plain words, before
any detail."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import (
    format_value,
    missing_note,
    note,
    show_figure,
    show_heading,
    show_markdown,
    show_table,
)
from chanstat.report.plots import evidence as evidence_plots
from chanstat.report.plots.evidence import PANELS, evidence_panels
from chanstat.report.sections.base import POOLED, drop_empty, ordered, pooled_rows, require, section
from chanstat.report.sections.cellprofiler import cellprofiler_channel
from chanstat.report.sections.inference import (
    ALPHA,
    NO_CHANNEL,
    label_pseudo,
    names_channel,
    pseudo_replicate_note,
)
from chanstat.report.text import Markdown, code, md, p_text
from chanstat.rundir import RunDirectory
from chanstat.schema import SCHEMA

SUMMARY = (
    "family",
    "method",
    "role",
    "quantity",
    "named_channel",
    "set_label",
    "estimate",
    "gap",
    "gap_ci_low",
    "gap_ci_high",
    "p_value",
    "p_adj",
    "unit",
    "n_units",
    "pseudo_replicates",
    "scope",
    "plate_x_channel_p",
)
QUANTITY_WORDS = {"share": "attribution share", "shapley": "Shapley value", "dac": "single-channel DAC"}
#: what each ``best_channel`` error (``mcb(error=...)``) controls, in words
ERROR_WORDS = {
    "naming": "A channel is named only when it beats every other channel (one-sided at {alpha} / 2 each), so "
    "a channel that does not carry the largest mean is named with probability at most {alpha}; the set holds the "
    "channels that are not excluded.",
    "mcb": "Hsu's multiple comparisons with the best: with probability at least 1 - {alpha} the set holds every "
    "channel with the largest mean and every gap interval covers.",
}
#: ``best_channel``'s scope for pseudo-replicate units (spatial blocks of one field)
ONE_FIELD = "one field"


@section
def answer(run: RunDirectory) -> None:
    """The verdict first: ``verdict`` (one row per transition: ``sentence``, ``grade``, ``reasons``,
    ``quality``) and ``verdict_evidence`` (piece, channel, estimate, ci_low, ci_high, in_set) as the
    answer stage wrote them, else weighed now from the run's tables (a Python-built run); one
    figure of the evidence side by side; the counterfactuals' quality in one line. Then the
    answer per method (:func:`method_answers`)."""
    verdict, evidence = verdict_tables(run)
    if verdict is None or verdict.empty:
        method_answers(run)
        return
    verdict = verdict.iloc[np.argsort((verdict["transition"].astype(str) != POOLED).to_numpy(), kind="stable")]
    first = verdict.iloc[0]
    show_markdown(_verdict_text(first))
    ev = evidence[evidence["transition"].astype(str) == str(first["transition"])] if evidence is not None else None
    if ev is not None and len(ev):
        methods = ev.groupby("piece")["method"].first().to_dict()
        titles = {p: f"{t} ({methods[p]})" for p, (t, _) in PANELS.items() if methods.get(p)}
        show_figure(
            evidence_panels(ev, run.channels or ordered(ev["channel"], []), titles),
            alt=f"The evidence side by side ({first['transition']})",
        )
        show_markdown(
            md(
                "The evidence side by side ({}): filled, coloured channels are in the piece's set of "
                "possibly-best channels.",
                first["transition"],
            )
        )
    if str(first.get("quality") or "").strip():
        show_markdown(md("**Counterfactuals:** {}.", first["quality"]))
    if len(verdict) > 1:
        show_heading("Per transition")
        for _, row in verdict.iloc[1:].iterrows():
            show_markdown(_verdict_text(row))
    method_answers(run, quiet=True)


def _verdict_text(row: pd.Series) -> Markdown:
    """The verdict sentence, its grade and its reasons (one bullet each)."""
    reasons = list(row["reasons"]) if isinstance(row["reasons"], (list, tuple, np.ndarray)) else []
    head = md("**{}** Evidence grade: **{}**.", row["sentence"], row["grade"])
    return head + Markdown("\n\n") + Markdown("\n").join(md("- {}", r) for r in reasons) if reasons else head


def verdict_tables(run: RunDirectory) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(``verdict``, ``verdict_evidence``) from the run directory, else weighed now when the run holds
    any evidence (a run saved from Python has no answer stage), else (None, None)."""
    if run.has("verdict"):
        return run.table("verdict"), run.table("verdict_evidence") if run.has("verdict_evidence") else None
    from chanstat.answer.tables import INPUTS, weigh_run

    evidence = [
        n for n in INPUTS if n not in ("meta", "counterfactual_quality", "counterfactual_summary", "channel_share_ci")
    ]
    if not any(run.has(n) for n in evidence if n in SCHEMA):
        return None, None
    return weigh_run(run, n_boot=300)


@section
def method_answers(run: RunDirectory, quiet: bool = False) -> None:
    """The answer per method, from ``best_channel`` (the confidence set for the best channel): per
    method its attribution shares, then the channel Shapley values and the primary method's
    single-channel DAC scores (rows pooled over transitions, else the first transition). A line
    names the channel when the set is that channel alone, else it gives the set of possibly-best
    channels ("Mito or ER"), never a bare "none" while the data exclude channels; then the
    estimate, its gap to the largest other channel with the simultaneous interval, the p-value
    (none for one field), the unit and scope, the plate x channel test where wells of a few
    plates are the units. Then whether the methods, the Shapley values and CellProfiler agree."""
    if not run.has("best_channel"):
        if not quiet:
            missing_note(
                ["best_channel.parquet"], stage="stats", what="which channel carries the difference is not known yet"
            )
        pseudo_replicate_note(run)
        return
    rows = answer_rows(run.table("best_channel"))
    if rows.empty:
        note("best_channel.parquet holds no rows, so the report cannot say which channel carries the difference.")
        return
    if quiet:
        show_heading("The answer per method")
    families = _families(run)
    show_markdown(
        Markdown("\n").join(
            answer_line(r, families.get(str(r["method"]), str(r["method"]))) for _, r in rows.iterrows()
        )
    )
    show_markdown(error_text(rows))
    shares = rows[rows["quantity"].astype(str) == "share"]
    shapley = rows[rows["quantity"].astype(str) == "shapley"]
    show_markdown(
        agreement(
            {str(r["method"]): _named(r) for _, r in shares.iterrows()},
            cellprofiler_channel(run),
            shapley=_named(shapley.iloc[0]) if len(shapley) else None,
        )
    )
    summary = rows.assign(
        family=[families.get(str(m), str(m)) for m in rows["method"]],
        pseudo_replicates=rows["scope"].astype(str) == ONE_FIELD,
    )
    show_table(
        drop_empty(label_pseudo(summary[[c for c in SUMMARY if c in summary]])),
        caption="The answer per method (estimate: the mean of the named channel, else of the largest; gap: to the "
        "largest other channel, with its simultaneous interval; set_label: the channels that may carry the "
        "largest value)",
        max_rows=None,
    )
    pseudo_replicate_note(run)


def answer_rows(best: pd.DataFrame) -> pd.DataFrame:
    """One ``best_channel`` row per method and quantity: attribution shares of every method, the
    Shapley values, and the primary method's other quantities; pooled over transitions (else the
    first transition); the named channel's row, else the row of the largest estimate."""
    quantity, role = best["quantity"].astype(str), best["role"].astype(str)
    shown = best[quantity.isin(["share", "shapley"]) | (role == "primary")]
    picked = []
    for _, part in shown.groupby(["quantity", "method"], sort=False, observed=True):
        part = pooled_rows(part)
        part = part[part["transition"].astype(str) == str(part["transition"].iloc[0])]
        named = part[part["channel"].astype(str) == str(part["named_channel"].iloc[0])]
        estimate = part["estimate"].to_numpy(float)
        picked.append(
            named.iloc[0]
            if len(named)
            else part.iloc[int(np.nanargmax(estimate)) if np.isfinite(estimate).any() else 0]
        )
    if not picked:
        return best.iloc[:0]
    out = pd.DataFrame(picked).reset_index(drop=True)
    order = out["quantity"].astype(str).map({"share": 0, "shapley": 1}).fillna(2)
    return out.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def error_text(rows: pd.DataFrame) -> Markdown:
    """Which error the sets control (``best_channel``'s ``error`` and ``alpha``), the adjustment
    across transitions, and which method carries that rate (the primary one)."""
    if (rows["scope"].astype(str) == ONE_FIELD).all():
        return Markdown(
            "**Which error is controlled.** None: the units are blocks of one field of view, not a sample of "
            "wells, so the sets describe this field and no error rate is claimed."
        )
    errors = [str(e) for e in dict.fromkeys(rows["error"].astype(str)) if str(e) in ERROR_WORDS]
    alpha = format_value(float(rows["alpha"].iloc[0]))
    primary = [str(m) for m in dict.fromkeys(rows.loc[rows["role"].astype(str) == "primary", "method"].astype(str))]
    text = Markdown(" ").join(md(ERROR_WORDS[e], alpha=alpha) for e in errors)
    text = text + Markdown(" ") + md("p_adj: Holm over the transitions of each method.")
    if primary:
        text = text + md(
            " Only the primary method ({}) carries this rate; the others are exploratory (no adjustment across "
            "methods).",
            Markdown(", ").join(code(m) for m in primary),
        )
    return md("**Which error is controlled.** {}", text)


def _named(row: pd.Series) -> str:
    return str(row["named_channel"]) if names_channel(row.get("named_channel")) else NO_CHANNEL


def answer_line(row: pd.Series, family: str) -> Markdown:
    """One line of the answer per method (Markdown, escaped): the named channel or the set, the
    estimate and gap interval, p, unit and scope."""
    what = QUANTITY_WORDS.get(str(row["quantity"]), str(row["quantity"]))
    head = md("- **{}** ({}, {}, {}): ", family, code(row["method"]), what, str(row["role"]))
    scope = str(row.get("scope") or "")
    if names_channel(row.get("named_channel")):
        text = head + md(
            "channel **{}** carries the difference; its mean {} is {}, {} above the largest other channel "
            "(simultaneous interval {} to {})",
            row["named_channel"],
            what,
            format_value(row["estimate"]),
            format_value(row["gap"]),
            format_value(row["gap_ci_low"]),
            format_value(row["gap_ci_high"]),
        )
        if pd.notna(row.get("p_value")):
            text = text + md(" ({} that it is the largest)", p_text(row["p_value"]))
    elif str(row.get("set_label") or "").strip():
        text = head + md(
            "no single channel: the largest {} is in **{}** (the set of possibly-best channels at level {}); the "
            "other channels are excluded",
            what,
            row["set_label"],
            format_value(row["alpha"]),
        )
    else:
        text = head + md("no channel is excluded: any channel may carry the largest {}", what)
    text = text + md("; unit: {}, {} units", row["unit"], format_value(row["n_units"]))
    if scope == ONE_FIELD:
        text = text + Markdown(" (one field: effect sizes only, no p-value; blocks of one field are not wells)")
    elif scope:
        text = text + md(" (scope: {})", scope)
    text = text + Markdown(".")
    if pd.notna(row.get("plate_x_channel_p")):
        p = float(row["plate_x_channel_p"])
        verdict = "the composition differs between plates" if p < ALPHA else "no evidence that plates differ"
        text = text + md(" Plate × channel test: {}, {}.", p_text(p), Markdown(verdict))
    return text


def _families(run: RunDirectory) -> dict[str, str]:
    families = {"shapley": "model (Shapley)"}
    if run.has("attributions"):
        families.update({m: str(run.array_attrs("attributions", m).get("family") or m) for m in run.method_order})
    return families


def agreement(dominant: dict[str, object], cellprofiler: str | None, shapley: str | None = None) -> Markdown:
    """Whether the methods name the same channel, whether the Shapley values and CellProfiler point to it too.

    ``dominant``: method -> its dominant channel (``"none"`` when it names none);
    ``cellprofiler``: the channel CellProfiler's competitive enrichment test names, ``"none"``
    when it names no single one, None when the CellProfiler stage did not run;
    ``shapley``: the Shapley values' dominant channel (``"none"``), None without them.
    """
    named = {m: str(c) for m, c in dominant.items() if names_channel(c)}
    channels = sorted(set(named.values()))
    if not dominant:
        text = Markdown("")
    elif not named:
        text = md("No method names a single channel ({} methods).", len(dominant))
    elif len(channels) == 1:
        text = (
            md(
                "The methods agree: {} of {} name **{}**; the others name no single channel.",
                len(named),
                len(dominant),
                channels[0],
            )
            if len(named) < len(dominant)
            else md("The methods agree: all {} name **{}**.", len(named), channels[0])
        )
    else:
        by_channel = {c: [m for m, named_c in named.items() if named_c == c] for c in channels}
        ranked = sorted(by_channel.items(), key=lambda item: -len(item[1]))
        text = md(
            "The methods disagree ({} of {} name a channel): {}.",
            len(named),
            len(dominant),
            Markdown("; ").join(
                md("**{}** ({})", c, Markdown(", ").join(code(m) for m in methods)) for c, methods in ranked
            ),
        )
    if shapley is not None:
        if not names_channel(shapley):
            text = text + Markdown(" The channel Shapley values name no single channel.")
        else:
            same = (
                md(", as the methods do")
                if channels == [shapley]
                else (md(", not the channel the methods name") if len(channels) == 1 else Markdown(""))
            )
            text = text + md(" The channel Shapley values name **{}**{}.", shapley, same)
    if cellprofiler is None:
        return text
    if not names_channel(cellprofiler):
        return text + Markdown(" No single channel's CellProfiler features are enriched (competitive test).")
    verdict = Markdown("")
    if len(channels) == 1:
        verdict = (
            md(", in agreement with the methods")
            if channels[0] == cellprofiler
            else md(", not the channel the methods name")
        )
    return text + md(
        " CellProfiler: the features of **{}** differ more than the other channels' (competitive enrichment test){}.",
        cellprofiler,
        verdict,
    )


# ---- per-image explanations and the plate layout -------------------------------------------------
@section
def explanation_gallery(run: RunDirectory, per_transition: int = 2) -> None:
    """Reads ``dac_scores`` / ``dac_curves`` (through :func:`chanstat.explanations`), ``dac_masks`` and
    ``dataset``: per transition the best-explained image and the typical one (median DAC), each
    as real, counterfactual, mask and hybrid per channel."""
    if not require(run, "dac_scores", "dataset"):
        return
    from chanstat.answer import explanations, gallery_picks
    from chanstat.answer.page import _masks, mask_of

    table = explanations(run).set_index("sample")
    masks = _masks(run)
    stored = run.array_names("dataset")
    channels = run.channels
    for transition, samples in gallery_picks(run, per_transition):
        show_heading(transition, level=4)
        for k, s in enumerate(samples):
            row = table.loc[s]
            real = run.array("dataset", "images", samples=[s])[0].astype(np.float32)
            cf = (
                run.array("dataset", "counterfactuals", samples=[s])[0].astype(np.float32)
                if "counterfactuals" in stored
                else None
            )
            mask = mask_of(run, masks, str(row["method"]), str(row["strategy"]), int(s))
            kind = "best explained" if k == 0 else "typical (median DAC)"
            title = (
                f"image {s}, {kind}: DAC {row['dac']:.3f} ({row['method']}, {row['strategy']}), "
                f"mask {100 * float(row['mask_size']):.0f}% of the image"
                if pd.notna(row["mask_size"])
                else f"image {s}, {kind}: DAC {row['dac']:.3f} ({row['method']}, {row['strategy']})"
            )
            show_figure(
                evidence_plots.explanation_panels(
                    real,
                    cf,
                    mask,
                    channels,
                    title=title,
                    real_label=f"real\n({row['label']})",
                    counterfactual_label=f"counterfactual\n({row['counterfactual_label']})",
                )
            )


@section
def explanations_page(run: RunDirectory) -> None:
    """Writes ``explanations.html`` into the run directory (every image's best explanation, sorted by
    DAC, paged offline) and says where it is."""
    if not require(run, "dac_scores"):
        return
    from chanstat.answer.page import write_explanations_page

    path = write_explanations_page(run)
    show_markdown(
        md(
            "Every image's best explanation, sorted by DAC, is in {} next to this report "
            "(a static page: open it in a browser, no server needed).",
            code(path.name),
        )
    )


@section
def plate_layout(run: RunDirectory) -> None:
    """Reads ``meta`` (``Metadata_Well`` like ``C03``, or ``Metadata_Row`` / ``Metadata_Col``), the
    verdict's channel and ``channel_mass`` of its primary method (mean share per well), and the
    best explanation's DAC per well: a 96/384-well plate map per plate."""
    if not run.has("meta"):
        return
    meta = run.table("meta")
    located = evidence_plots.plate_positions(meta)
    located = located[(located["_row"] < 16) & (located["_col"] < 24)]
    if located.empty:
        return  # the wells carry no plate positions
    keys = [c for c in ("Metadata_Plate", "Metadata_Well", "_row", "_col") if c in located]
    verdict, _ = verdict_tables(run)
    channel = str(verdict.iloc[0]["channel"]) if verdict is not None and len(verdict) else ""
    method = str(verdict.iloc[0]["primary_method"]) if verdict is not None and len(verdict) else ""
    if channel and run.has("channel_mass"):
        mass = run.table("channel_mass")
        mass = mass[
            (mass["channel"].astype(str) == channel)
            & (mass["method"].astype(str) == (method or mass["method"].iloc[0]))
        ]
        wells = (
            located[["sample"] + keys]
            .merge(mass[["sample", "share"]], on="sample")
            .groupby(keys, as_index=False)["share"]
            .mean()
        )
        if len(wells):
            show_figure(
                evidence_plots.plate_heatmap(wells, "share", f"{channel} share", vmin=0.0, vmax=1.0),
                caption=f"Mean share of {channel} (the verdict's channel) per well, {method or 'attribution'}.",
            )
    if run.has("dac_scores"):
        from chanstat.answer import explanations

        best = explanations(run)
        wells = (
            located[["sample"] + keys]
            .merge(best[["sample", "dac"]], on="sample")
            .groupby(keys, as_index=False)["dac"]
            .mean()
        )
        if len(wells):
            show_figure(
                evidence_plots.plate_heatmap(wells, "dac", "best DAC", vmin=0.0, vmax=1.0),
                caption="Mean DAC of each image's best explanation, per well.",
            )
