"""Section "The answer": which channel carries the difference, how sure we are, and whether the
attribution methods, the channel Shapley values and CellProfiler agree — in plain words, before
any detail."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import missing_note, note, show_figure, show_heading, show_markdown, show_table
from chanstat.report.plots import evidence as evidence_plots
from chanstat.report.plots.evidence import PANELS, evidence_panels
from chanstat.report.sections.base import POOLED, declared, drop_empty, is_true, ordered, require, section
from chanstat.report.sections.cellprofiler import cellprofiler_channel
from chanstat.report.sections.inference import (
    ALPHA,
    NO_CHANNEL,
    companion,
    dominance_line,
    label_pseudo,
    names_channel,
    pooled,
    primary_rows,
    pseudo_replicate_note,
    warnings_of,
)
from chanstat.report.text import Markdown, code, md
from chanstat.rundir import RunDirectory
from chanstat.schema import SCHEMA

SHAPLEY_METHOD = "channel_shapley"
SUMMARY = (
    "family",
    "method",
    "source",
    "dominant_channel",
    "share",
    "ci_low",
    "ci_high",
    "interval",
    "p_value",
    "unit",
    "n_units",
    "pseudo_replicates",
    "plate_x_channel_p",
)


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
    """The answer per method. Reads the primary ``dominance`` row per method of ``channel_tests`` (``dominant_channel``,
    ``dominant_share`` and its simultaneous interval ``dominant_ci_low`` / ``dominant_ci_high``,
    ``p_value``, ``unit``, ``n_units``, ``pseudo_replicates``, ``warning``) beside the
    ``plate_x_channel`` row of the same method; the ``dominance`` row of ``shapley_tests``
    (``source == "shapley"``); ``answer`` for the families and the declared agreement columns
    (``cellprofiler_channel``, ``agrees_with_cellprofiler``, ``note``); without ``channel_tests``,
    the rows of ``answer`` alone. CellProfiler's side: ``channel_enrichment``'s competitive test."""
    tests = run.table("channel_tests") if run.has("channel_tests") else None
    table = run.table("answer") if run.has("answer") else None
    shapley = run.table("shapley_tests") if run.has("shapley_tests") else None
    if tests is None and table is None:
        if not quiet:
            missing_note(
                ["answer.parquet", "channel_tests.parquet"],
                stage="stats",
                what="which channel carries the difference is not known yet",
            )
        pseudo_replicate_note(run)
        return
    if quiet:
        show_heading("The answer per method")
    known = table[[c for c in table.columns if declared("answer", c)]] if table is not None else None
    shared = _shared_warning(tests, shapley)
    rows = _attribution_rows(run, tests, known, per_line=shared is None)
    shap_row = _shapley_row(shapley, known, per_line=shared is None)
    lines = [line for line, _ in rows] + ([shap_row[0]] if shap_row else [])
    if not lines:
        note(
            "Neither channel_tests.parquet nor answer.parquet holds a primary row, so the report cannot say which "
            "channel carries the difference.",
            kind="missing",
        )
        return
    show_markdown(Markdown("\n").join(lines))
    if shared:
        note(md("**Warning** (every test above): {}", shared), kind="info")
    dominant = {str(r["method"]): r["dominant_channel"] for _, r in rows}
    cp = _cellprofiler(run, known)
    show_markdown(agreement(dominant, cp, shapley=shap_row[1]["dominant_channel"] if shap_row else None))
    summary = pd.DataFrame([r for _, r in rows] + ([shap_row[1]] if shap_row else []))
    summary = label_pseudo(summary[[c for c in SUMMARY if c in summary]])
    show_table(
        drop_empty(summary),
        caption="The answer per method (share: the dominant channel's mean; ci_low/ci_high: its simultaneous interval)",
        max_rows=None,
    )
    if tests is None:
        note(
            md(
                "Read from {} alone (no {} in this run): the plate × channel heterogeneity test is not shown.",
                "answer.parquet",
                "channel_tests.parquet",
            ),
            kind="info",
        )
    pseudo_replicate_note(run)


def _shared_warning(tests: pd.DataFrame | None, shapley: pd.DataFrame | None) -> str | None:
    """The one warning every primary row carries (shown once below the lines), else None."""
    rows = []
    if tests is not None:
        rows.append(primary_rows(tests))
    if shapley is not None and "test" in shapley:
        rows.append(shapley[shapley["test"].astype(str) == "dominance"])
    texts = set()
    for part in rows:
        values = part["warning"] if "warning" in part else pd.Series([""] * len(part), dtype=object)
        texts |= {v.strip() if isinstance(v, str) else "" for v in values}
    return next(iter(texts)) if len(texts) == 1 and next(iter(texts)) else None


def _families(run: RunDirectory, known: pd.DataFrame | None) -> dict[str, str]:
    families = {}
    if run.has("attributions"):
        families = {m: str(run.array_attrs("attributions", m).get("family") or m) for m in run.method_order}
    if known is not None:
        families.update({str(m): str(f) for m, f in zip(known["method"], known["family"])})
    return families


def _answer_of(known: pd.DataFrame | None, method: str) -> pd.Series | None:
    if known is None:
        return None
    hit = known[known["method"].astype(str) == method]
    return hit.iloc[0] if len(hit) else None


def _extras(answer_row: pd.Series | None, named: bool = True, shown: tuple[str, ...] = ()) -> Markdown:
    """The CellProfiler verdict and note the answer table adds to a method's line (when declared);
    a line that names no channel gets no CellProfiler channel either (the agreement line says it);
    a note already ``shown`` (the tests' warning) is not repeated."""
    if answer_row is None:
        return Markdown("")

    def opt(column: str):
        return answer_row[column] if column in answer_row.index and pd.notna(answer_row[column]) else None

    text = Markdown("")
    cp, agrees = opt("cellprofiler_channel"), opt("agrees_with_cellprofiler")
    if named and (cp is not None or agrees is not None):
        cp_text = (
            md("CellProfiler features point to {}", cp)
            if cp is not None and names_channel(cp)
            else Markdown("CellProfiler features point to no single channel")
        )
        verdict = Markdown("") if agrees is None else md(" — {}", "they agree" if bool(agrees) else "they disagree")
        text = text + md(" {}{}.", cp_text, verdict)
    if opt("note") is not None and str(answer_row["note"]).strip() and str(answer_row["note"]).strip() not in shown:
        text = text + md(" {}", answer_row["note"])
    return text


def _checked(row: pd.Series) -> pd.Series:
    """A channel is named only when the table names one and its test rejects at ALPHA."""
    row = row.copy()
    if names_channel(row.get("dominant_channel")) and pd.notna(row.get("p_value")) and row["p_value"] >= ALPHA:
        row["dominant_channel"] = NO_CHANNEL
    if not names_channel(row.get("dominant_channel")):
        row["dominant_channel"] = NO_CHANNEL
        for col in ("dominant_share", "dominant_ci_low", "dominant_ci_high"):
            row[col] = float("nan")
    return row


def _summary(row: pd.Series, family: str, source: str, het: pd.Series | None, interval: str) -> dict:
    return {
        "family": family,
        "method": str(row["method"]),
        "source": source,
        "dominant_channel": row["dominant_channel"],
        "share": row.get("dominant_share"),
        "ci_low": row.get("dominant_ci_low"),
        "ci_high": row.get("dominant_ci_high"),
        "interval": interval,
        "p_value": row.get("p_value"),
        "unit": row.get("unit"),
        "n_units": row.get("n_units"),
        "pseudo_replicates": bool(row.get("pseudo_replicates"))
        if pd.notna(row.get("pseudo_replicates", None))
        else False,
        "plate_x_channel_p": het["p_value"] if het is not None else float("nan"),
        "warning": row.get("warning") if isinstance(row.get("warning"), str) else "",
    }


def _attribution_rows(
    run: RunDirectory, tests: pd.DataFrame | None, known: pd.DataFrame | None, per_line: bool = True
) -> list[tuple]:
    """(line, summary row) per method: from the primary dominance rows, else from the answer table."""
    families = _families(run, known)
    out = []
    primary = pooled(primary_rows(tests)) if tests is not None else pd.DataFrame()
    if tests is not None and primary.empty:
        primary = primary_rows(tests)
    if len(primary):
        for _, raw in primary.iterrows():
            row = _checked(raw)
            method = str(row["method"])
            het = companion(tests, raw, "plate_x_channel")
            family = families.get(method, method)
            head = md("- **{}** ({}, attribution share): ", family, code(method))
            line = dominance_line(head, row, "share", het, test_name=md("{}", code(row["test"])), warning=per_line)
            line = line + _extras(
                _answer_of(known, method), names_channel(row["dominant_channel"]), tuple(warnings_of(tests))
            )
            out.append((line, _summary(row, family, "attribution share", het, "simultaneous")))
        return out
    if known is None:
        return out
    for _, a in known.iterrows():
        if _is_shapley(a):
            continue
        row = _checked(
            pd.Series(
                {
                    "method": a["method"],
                    "dominant_channel": a["dominant_channel"],
                    "dominant_share": a.get("estimate"),
                    "dominant_ci_low": a.get("ci_low"),
                    "dominant_ci_high": a.get("ci_high"),
                    "p_value": a.get("p_value"),
                    "unit": a.get("unit"),
                    "n_units": a.get("n_units"),
                }
            )
        )
        head = md("- **{}** ({}, {}): ", a["family"], code(a["method"]), str(a.get("source") or "attribution share"))
        line = dominance_line(head, row, str(a.get("quantity") or "share"), None, test_name=Markdown("primary"))
        out.append(
            (
                line + _extras(a, names_channel(row["dominant_channel"])),
                _summary(row, str(a["family"]), str(a.get("source") or ""), None, "simultaneous"),
            )
        )
    return out


def _is_shapley(a: pd.Series) -> bool:
    return str(a["method"]) == SHAPLEY_METHOD or "shapley" in str(a.get("source") or "").lower()


def _shapley_row(shapley: pd.DataFrame | None, known: pd.DataFrame | None, per_line: bool = True) -> tuple | None:
    """(line, summary row) for the channel Shapley values' dominance test, when the run has one."""
    head = md("- **{}** ({}, Shapley value): ", "model (Shapley)", code(SHAPLEY_METHOD))
    if shapley is not None and "test" in shapley and "dominant_channel" in shapley:
        dom = shapley[(shapley["test"].astype(str) == "dominance") & (shapley["source"].astype(str) == "shapley")]
        if "primary" in dom:
            dom = dom[is_true(dom["primary"])] if is_true(dom["primary"]).any() else dom
        dom = pooled(dom) if len(pooled(dom)) else dom
        if len(dom):
            row = _checked(dom.iloc[0])
            row["method"] = SHAPLEY_METHOD
            line = dominance_line(head, row, "contribution", None, test_name=Markdown("dominance"), warning=per_line)
            return line + _extras(
                _answer_of(known, SHAPLEY_METHOD), names_channel(row["dominant_channel"]), tuple(warnings_of(shapley))
            ), _summary(row, "model (Shapley)", "Shapley value", None, "simultaneous")
    if known is not None:
        for _, a in known.iterrows():
            if _is_shapley(a):
                row = _checked(
                    pd.Series(
                        {
                            "method": a["method"],
                            "dominant_channel": a["dominant_channel"],
                            "dominant_share": a.get("estimate"),
                            "dominant_ci_low": a.get("ci_low"),
                            "dominant_ci_high": a.get("ci_high"),
                            "p_value": a.get("p_value"),
                            "unit": a.get("unit"),
                            "n_units": a.get("n_units"),
                        }
                    )
                )
                line = dominance_line(head, row, "contribution", None, test_name=Markdown("dominance"))
                return line + _extras(a, names_channel(row["dominant_channel"])), _summary(
                    row, "model (Shapley)", "Shapley value", None, "simultaneous"
                )
    return None


def _cellprofiler(run: RunDirectory, known: pd.DataFrame | None) -> str | None:
    if known is not None and "cellprofiler_channel" in known:
        named = [c for c in known["cellprofiler_channel"].dropna().astype(str).unique() if names_channel(c)]
        if known["cellprofiler_channel"].notna().any():
            return named[0] if len(named) == 1 else NO_CHANNEL
    return cellprofiler_channel(run)


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
        text = md("No method names a dominant channel ({} methods).", len(dominant))
    elif len(channels) == 1:
        text = (
            md("The methods agree: {} of {} name **{}**; the others name none.", len(named), len(dominant), channels[0])
            if len(named) < len(dominant)
            else md("The methods agree: all {} name **{}**.", len(named), channels[0])
        )
    else:
        text = md(
            "The methods disagree: {}.", Markdown("; ").join(md("{} names {}", code(m), c) for m, c in named.items())
        )
    if shapley is not None:
        if not names_channel(shapley):
            text = text + Markdown(" The channel Shapley values name no dominant channel.")
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
