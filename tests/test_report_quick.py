"""The report of the real quick demo run (``quick_run`` fixture: every stage of analyses/demo.toml).

The pipeline's own report stage writes report.html / report.pdf; the tests also render the run
directory again with the built-in engine, then check every section, every figure and the key
numbers against the Parquet files the stages wrote.
"""
from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pandas as pd
import pytest

SECTIONS = (
    "The answer", "Run overview", "Data and model", "Classifier training", "Counterfactuals", "Attribution galleries",
    "DAC: discriminative attribution curves", "Single-channel curves", "Optimal masks", "Smoothing sweep",
    "Channel shares", "Tests", "Confidence intervals", "Map similarity and strategies",
    "Channel Shapley values", "Localisation and faithfulness", "CellProfiler features", "Channel enrichment", "Compartment × channel",
    "Concordance", "Provenance",
)


@pytest.fixture(scope="module")
def quick_report(quick_run, tmp_path_factory) -> dict:
    from chanstat.report import render

    out = tmp_path_factory.mktemp("quick_report")
    html_path, pdf_path = render(quick_run, formats=("html", "pdf"), engine="builtin", output_dir=out)
    return {"html": html_path.read_text(encoding="utf-8"), "pdf": pdf_path.read_bytes(), "run": Path(quick_run)}


def _headings(page: str) -> list[str]:
    out = []
    for m in re.finditer(r"<h[1-4][^>]*>(.*?)</h[1-4]>", page, re.S):
        text = re.sub(r"<a class=\"anchor-link\".*?</a>", "", m.group(1), flags=re.S)
        out.append(html_lib.unescape(re.sub(r"<[^>]+>", "", text)).strip())
    return out


def _table(page: str, caption: str) -> str:
    start = page.find(f'<p class="chanstat-caption">{html_lib.escape(caption)}')
    assert start >= 0, f"no table captioned {caption!r}"
    return page[start:page.find("</table>", start)]


def _cells(*values: str) -> str:
    return "".join(f"<td[^>]*>{re.escape(v)}</td>" for v in values)


def test_pipeline_wrote_the_report(quick_run):
    import json

    assert (quick_run / "report.html").stat().st_size > 100_000
    assert (quick_run / "report.pdf").read_bytes().startswith(b"%PDF")
    stage = json.loads((quick_run / "provenance.json").read_text())["stages"]["report"]
    assert stage["status"] == "done" and stage["files"] == ["report.html", "report.pdf"]


def test_quick_report_sections_and_figures(quick_report):
    page = quick_report["html"]
    assert quick_report["pdf"].startswith(b"%PDF")
    found = _headings(page)
    for name in SECTIONS:
        assert name in found, f"section {name!r} missing"
    assert "could not be drawn" not in page, re.findall(r"could not be drawn.*?</div>", page)[:3]
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", page)
    assert len(sources) >= 15
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<script[^>]*\ssrc=\"https?:", page)


def test_quick_report_every_written_file_is_used(quick_report):
    """A stage that ran leaves no "stage not run" note for its files."""
    run, page = quick_report["run"], quick_report["html"]
    notes = " ".join(re.findall(r'<div class="chanstat-note chanstat-missing">(.*?)</div>', page, re.S))
    from chanstat.schema import SCHEMA

    for name in (spec.file for spec in SCHEMA.values()):
        if (run / name).exists():
            assert f"<code>{name}</code>" not in notes, f"{name} exists but the report says it is missing"


def test_quick_report_numbers_equal_the_parquet(quick_report):
    run, page = quick_report["run"], quick_report["html"]
    tests = pd.read_parquet(run / "channel_tests.parquet")
    primary = tests[tests["primary"].astype(bool)]
    assert len(primary)
    table = _table(page, "Primary test per method")
    for row in primary.itertuples():
        match = re.search(r'<tr class="chanstat-emph">' + _cells(row.method, row.test) + r"(.*?)</tr>", table)
        assert match, row
        if pd.notna(row.p_value):
            from chanstat.report.text import format_p

            shown = html_lib.escape(format_p(row.p_value))  # "< 1e-16" below float range, never "0"
            assert f">{shown}<" in match.group(1)
            if getattr(row, "transition", "all") == "all":
                assert (f"p = {shown}" if not shown.startswith("&lt;") else f"p {shown}") in page  # the summary
    scores = pd.read_parquet(run / "dac_scores.parquet")
    means = scores.groupby(["method", "strategy", "channel"], sort=False)["dac"].mean()
    dac_table = _table(page, "DAC per method and mask strategy")
    for method in scores["method"].unique():
        strategies = [s for s in ("aggregate", "joint", "per_channel") if (method, s, "all") in means.index]
        cells = [str(method)] + [f"{means[(method, s, 'all')]:.3g}" for s in strategies]
        assert re.search(r"<tr>" + r"(?:<td[^>]*>[^<]*</td>)*?".join(_cells(c) for c in cells), dac_table), cells
    if (means.index.get_level_values("strategy") == "single_channel").any():
        single = _table(page, "Single-channel DAC")
        for (method, strategy, _channel), value in means.items():
            if strategy == "single_channel":
                assert re.search(_cells(str(method)) + r".*?" + re.escape(f"{value:.3g}"), single, re.S)
    enrichment = pd.read_parquet(run / "channel_enrichment.parquet")
    etable = _table(page, "Channel enrichment, description")
    for row in enrichment.itertuples():
        assert re.search(_cells(str(row.channel), str(row.n_features), str(row.n_significant)), etable), row
    if "p_adj" in enrichment:  # the competitive test is the enrichment test
        ctable = _table(page, "Channel enrichment test: competitive")
        for row in enrichment.itertuples():
            assert re.search(_cells(str(row.channel), f"{row.statistic:.3g}"), ctable), row
    mixed = tests[tests["test"] == "mixedlm"]
    for _row in mixed.itertuples():  # estimates only: no p-value column in its table
        header = re.search(r"<thead>(.*?)</thead>", _table(page, "Descriptive: mixed-model estimates only"), re.S)
        assert "p_value" not in header.group(1)
    if (run / "concordance.parquet").exists():
        notes = pd.read_parquet(run / "concordance.parquet")["note"].dropna()
        text = html_lib.unescape(re.sub(r"<[^>]+>", "", page))
        assert all(n in text for n in notes if n.strip())
