"""Section "The answer": which channel carries the difference, how sure we are, and whether the
attribution methods and CellProfiler agree — in plain words, before any detail."""
from __future__ import annotations

import pandas as pd

from chanstat.report.display import format_value, missing_note, note, show_markdown, show_table
from chanstat.report.sections.base import declared, drop_empty, has_column, is_true, pooled_rows, section
from chanstat.report.sections.cellprofiler import cellprofiler_channel
from chanstat.report.sections.stats import NO_CHANNEL, names_channel, pseudo_replicate_note
from chanstat.report.text import Markdown, code, md
from chanstat.rundir import RunDirectory

ALPHA = 0.05


@section
def answer(run: RunDirectory) -> None:
    """Reads ``answer`` (family, method, dominant_channel; ``quantity``, ``estimate``, ``ci_low``,
    ``ci_high``, ``p_value``, ``unit``, ``n_units``, ``cellprofiler_channel``,
    ``agrees_with_cellprofiler``, ``note`` when declared); without it, the primary rows of
    ``channel_tests`` (``primary``, ``dominant_channel``, ``p_value``, ``dominant_share`` and its
    interval) and ``channel_enrichment`` / ``concordance`` for the CellProfiler side."""
    if run.has("answer"):
        table = run.table("answer")
        known = table[[c for c in table.columns if declared("answer", c)]]  # undeclared extras are not read
        lines = [_answer_line(row, known) for _, row in known.iterrows()]
        show_markdown(Markdown("\n").join(lines))
        if has_column(known, "answer", "cellprofiler_channel"):
            named = [c for c in known["cellprofiler_channel"].dropna().astype(str).unique() if names_channel(c)]
            cp = named[0] if len(named) == 1 else NO_CHANNEL
        else:
            cp = cellprofiler_channel(run)
        show_markdown(agreement(dict(zip(known["method"].astype(str), known["dominant_channel"])), cp))
        show_table(drop_empty(table), caption="The answer per method", max_rows=None)
    elif run.has("channel_tests"):
        _from_channel_tests(run)
    else:
        missing_note(["answer.parquet", "channel_tests.parquet"], stage="stats",
                     what="which channel carries the difference is not known yet")
    pseudo_replicate_note(run)


def _interval(row: pd.Series, est: str, low: str, high: str, what: str) -> Markdown:
    if pd.isna(row.get(est)):
        return Markdown("")
    text = md("; its {} is {}", what, format_value(row[est]))
    if pd.notna(row.get(low)) and pd.notna(row.get(high)):
        text = text + md(" (interval {} to {})", format_value(row[low]), format_value(row[high]))
    return text


def _answer_line(row: pd.Series, table: pd.DataFrame) -> Markdown:
    def opt(column: str):
        return row[column] if has_column(table, "answer", column) and pd.notna(row[column]) else None

    head = md("- **{}** ({}): ", row["family"], code(row["method"]))
    quantity = opt("quantity") or "share"
    if names_channel(row["dominant_channel"]):
        text = head + md("channel **{}** carries the difference", row["dominant_channel"])
        text = text + _interval(row, "estimate", "ci_low", "ci_high", quantity)
    else:
        text = head + md("no channel dominates: no channel's {} exceeds every other channel's with confidence", quantity)
    if opt("p_value") is not None:
        text = text + md(" (p = {})", format_value(row["p_value"]))
    if opt("unit") is not None:
        text = text + md("; unit: {}", row["unit"]) + (md(", {} units", int(row["n_units"])) if opt("n_units") is not None else "")
    cp, agrees = opt("cellprofiler_channel"), opt("agrees_with_cellprofiler")
    if cp is not None or agrees is not None:
        cp_text = md("CellProfiler features point to {}", cp) if cp is not None and names_channel(cp) \
            else Markdown("CellProfiler features point to no single channel")
        verdict = Markdown("") if agrees is None else md(" — {}", "they agree" if bool(agrees) else "they disagree")
        text = text + md(". {}{}", cp_text, verdict)
    if opt("note") is not None:
        text = text + md(". {}", row["note"])
    return text + Markdown(".")


def _from_channel_tests(run: RunDirectory) -> None:
    tests = run.table("channel_tests")
    primary = pooled_rows(tests[is_true(tests["primary"])])
    if primary.empty:
        note("channel_tests.parquet holds no primary test, so the report cannot say which channel carries the "
             "difference.", kind="missing")
        return
    families = {}
    if run.has("attributions"):
        families = {m: str(run.array_attrs("attributions", m).get("family") or m) for m in run.method_order}
    concordance = run.table("concordance") if run.has("concordance") else None
    lines, dominant = [], {}
    for _, row in primary.iterrows():
        method = str(row["method"])
        head = md("- **{}** ({}): ", families.get(method, method), code(method))
        significant = pd.notna(row["p_value"]) and row["p_value"] < ALPHA
        dominant[method] = row["dominant_channel"] if significant else NO_CHANNEL
        if names_channel(dominant[method]):
            text = head + md("channel **{}** carries the difference", row["dominant_channel"])
            if "dominant_share" in row:
                text = text + _interval(row, "dominant_share", "dominant_ci_low", "dominant_ci_high", "share")
        else:
            text = head + Markdown("no channel dominates")
        text = text + md(" (primary test {}, p = {})", code(row["test"]), format_value(row["p_value"]))
        if concordance is not None:
            for _, c in concordance[concordance["method"].astype(str) == method].head(1).iterrows():
                text = text + md("; rank agreement with CellProfiler {} = {} (p = {})", c["statistic"],
                                 format_value(c["estimate"]), format_value(c["p_value"]))
        lines.append(text + Markdown("."))
    show_markdown(Markdown("\n").join(lines))
    show_markdown(agreement(dominant, cellprofiler_channel(run)))
    note(md("Read from the primary rows of {} (no {} in this run). A channel is named only when the table names "
            "one and the primary test rejects at {}; the primary test asks whether the shares differ between "
            "channels, not whether one channel exceeds all others.",
            "channel_tests.parquet", "answer.parquet", ALPHA), kind="info")


def agreement(dominant: dict[str, object], cellprofiler: str | None) -> Markdown:
    """Whether the methods name the same channel, and whether CellProfiler points to it too.

    ``dominant``: method -> its dominant channel (``"none"`` when it names none);
    ``cellprofiler``: the channel whose features differ most, ``"none"`` when no single one
    does, None when the CellProfiler stage did not run.
    """
    named = {m: str(c) for m, c in dominant.items() if names_channel(c)}
    channels = sorted(set(named.values()))
    if not named:
        text = md("No method names a dominant channel ({} methods).", len(dominant))
    elif len(channels) == 1:
        text = md("The methods agree: {} of {} name **{}**; the others name none.", len(named), len(dominant),
                  channels[0]) if len(named) < len(dominant) else md("The methods agree: all {} name **{}**.",
                                                                     len(named), channels[0])
    else:
        text = md("The methods disagree: {}.", Markdown("; ").join(md("{} names {}", code(m), c) for m, c in named.items()))
    if cellprofiler is None:
        return text
    if not names_channel(cellprofiler):
        return text + Markdown(" No single channel's CellProfiler features stand out.")
    verdict = Markdown("")
    if len(channels) == 1:
        verdict = md(", in agreement with the methods") if channels[0] == cellprofiler \
            else md(", not the channel the methods name")
    return text + md(" The CellProfiler features differ most (largest fraction significant) in **{}**{}.",
                     cellprofiler, verdict)
