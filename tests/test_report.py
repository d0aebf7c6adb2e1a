"""Tests of chanstat.report on a small, self-consistent fake run directory built from the schema.

The fake run directory (tests/report_fake_run.py) holds every table of the run-directory schema,
written through ``RunDirectory`` with numbers planted so the Mito channel carries the
difference; tests render it once with the built-in engine (HTML and PDF) and check sections,
embedded figures, numbers against the Parquet files, and the notes shown when stages are
missing. Hostile names are in test_report_escaping.py; the real quick demo in test_report_quick.py.
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fake_run import PLATE_P, PLATE_WARNING, Names, make_fake_run, schema_tables

NAMES = Names()
CHANNELS = NAMES.channels


# ============================================================================ fixtures
SECTIONS = (
    "The answer", "Run overview", "Data and model", "Classifier training", "Counterfactuals", "Attribution galleries",
    "DAC: discriminative attribution curves", "Single-channel curves", "Optimal masks", "Smoothing sweep",
    "Channel shares", "Tests", "Confidence intervals", "Map similarity and strategies",
    "Channel Shapley values", "Localisation and faithfulness", "CellProfiler features", "Channel enrichment", "Compartment × channel",
    "Concordance", "Provenance",
)
#: a run saved from a Python analysis that holds only some tables (no data set, no arrays)
PARTIAL = ("config", "provenance", "meta", "data_summary", "training_history", "channel_tests")


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def rendered(fake_run) -> dict:
    from chanstat.report import render

    paths = render(fake_run, formats=("html", "pdf"), engine="builtin")
    return {"paths": paths, "html": paths[0].read_text(encoding="utf-8"), "pdf": paths[1].read_bytes()}


def headings(page: str) -> list[str]:
    """Text of every <h1>-<h4> of a page (anchor links stripped, entities decoded)."""
    import html as html_lib

    out = []
    for m in re.finditer(r"<h[1-4][^>]*>(.*?)</h[1-4]>", page, re.S):
        text = re.sub(r"<a class=\"anchor-link\".*?</a>", "", m.group(1), flags=re.S)
        out.append(html_lib.unescape(re.sub(r"<[^>]+>", "", text)).strip())
    return out


def table_after(page: str, caption: str) -> str:
    """The HTML of the first table whose caption starts with ``caption``."""
    import html as html_lib

    start = page.find(f'<p class="chanstat-caption">{html_lib.escape(caption)}')
    assert start >= 0, f"no table captioned {caption!r}"
    end = page.find("</table>", start)
    return page[start:end]


def html_text(fragment: str) -> str:
    """The text of an HTML fragment (tags dropped, entities decoded, whitespace collapsed)."""
    import html as html_lib

    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", "", fragment)))


def row_html(*cells: str) -> str:
    return "".join(f"<td[^>]*>{re.escape(c)}</td>" for c in cells)


# ============================================================================ rendering
def test_render_writes_html_and_pdf(rendered, fake_run):
    html_path, pdf_path = rendered["paths"]
    assert html_path == fake_run / "report.html" and pdf_path == fake_run / "report.pdf"
    assert rendered["pdf"].startswith(b"%PDF")
    assert len(rendered["pdf"]) > 50_000  # figures are in it
    assert "could not be drawn" not in rendered["html"]


def test_every_section_present(rendered):
    found = headings(rendered["html"])
    assert found[0] == "chanstat report"
    for name in SECTIONS:
        assert name in found, f"section {name!r} missing; headings: {found}"
    # the table of contents links the top-level sections
    toc = re.search(r'<nav class="chanstat-toc">(.*?)</nav>', rendered["html"], re.S).group(1)
    assert "Attribution galleries" in toc and "Provenance" in toc


def test_every_figure_is_an_embedded_png(rendered):
    page = rendered["html"]
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", page)
    # galleries (2 transitions x 2 images), DAC curves, single-channel heatmap + curves, masks, sweep,
    # shares, CIs, similarity, localisation, counterfactual bars, volcano, enrichment, compartments, concordance x2,
    # training curves
    assert len(sources) >= 20
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:80]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing the page needs comes from the network, and no code is shown
    assert not re.search(r"<script[^>]*\ssrc=\"https?:", page)
    assert not re.search(r"<link[^>]*\shref=\"https?:", page)
    assert not re.search(r"url\(\s*['\"]?https?:", page) and "@import" not in page
    assert "from chanstat.report import sections" not in page
    assert "S.overview(run)" not in page and "run_dir = " not in page


def test_gallery_has_a_figure_per_picked_image(rendered):
    page = rendered["html"]
    gallery = page[page.find('id="Attribution-galleries"'):page.find('id="Per-image-explanations"')]
    # 2 images for each of the 2 transitions, a figure per method family
    assert gallery.count("<img") == 4 * len(set(NAMES.families))
    assert "control → treated" in gallery and "treated → control" in gallery


def test_dac_numbers_equal_the_parquet(rendered, fake_run):
    from chanstat.report import format_value

    scores = pd.read_parquet(fake_run / "dac_scores.parquet")
    means = scores.groupby(["method", "strategy", "channel"])["dac"].mean()
    table = table_after(rendered["html"], "DAC per method and mask strategy")
    for method in scores["method"].unique():
        cells = [method] + [f"{means[(method, s, 'all')]:.3g}" for s in ("aggregate", "joint", "per_channel")]
        assert re.search(row_html(*cells), table), cells
    single = table_after(rendered["html"], "Single-channel DAC")
    for method in scores["method"].unique():
        cells = [method] + [f"{means[(method, 'single_channel', ch)]:.3g}" for ch in CHANNELS]
        assert re.search(row_html(*cells), single), cells
    assert format_value(means[("d_ig", "joint", "all")]) == f"{means[('d_ig', 'joint', 'all')]:.3g}"


def test_dac_summary_is_area_under_mean_curve(fake_run):
    """Mean of per-image areas == area under the mean curve (same grid): the number the report shows."""
    from chanstat.dacscore.result import summarise_dac

    curves = pd.read_parquet(fake_run / "dac_curves.parquet")
    part = curves[(curves["method"] == "residual") & (curves["strategy"] == "joint")]
    mean_curve = part.groupby("mask_size")["score"].mean()
    expected = np.trapezoid(mean_curve.to_numpy(), mean_curve.index.to_numpy())
    summary = summarise_dac(pd.read_parquet(fake_run / "dac_scores.parquet"))
    got = summary.set_index(["method", "strategy", "channel"]).loc[("residual", "joint", "all"), "dac"]
    assert got == pytest.approx(expected, rel=1e-9)


def test_primary_test_and_other_numbers_equal_the_parquet(rendered, fake_run):
    page = rendered["html"]
    tests = pd.read_parquet(fake_run / "channel_tests.parquet")
    table = table_after(page, "Primary test per method, with the plate × channel heterogeneity test beside it")
    for row in tests[tests["primary"]].itertuples():
        p = f"{row.p_value:.3g}"
        assert re.search(r'<tr class="chanstat-emph">' + row_html(row.method, "dominance", "primary"), table)
        assert f"p = {p}" in page  # the sentence above the table
        assert re.search(re.escape(row.method) + r".*?" + re.escape(p), table, re.S)
    # the heterogeneity test sits in the same table, not in bold, with its own p-value
    for method, p in zip(NAMES.methods[:2], PLATE_P):
        assert re.search(r"<tr>" + row_html(method, "plate_x_channel", "heterogeneity") + r".*?" + re.escape(f"{p:.3g}"),
                         table, re.S)
    assert "friedman_f" not in table  # the equal-shares omnibus is secondary now
    conc = pd.read_parquet(fake_run / "concordance.parquet")
    ctable = table_after(page, "Concordance of attribution")
    for row in conc.itertuples():
        assert re.search(row_html(row.method, row.statistic, f"{row.estimate:.3g}", f"{row.ci_low:.3g}",
                                  f"{row.ci_high:.3g}", f"{row.p_value:.3g}"), ctable)


def test_secondary_tests_are_labelled_and_mixedlm_has_no_p_value(rendered, fake_run):
    page = rendered["html"]
    secondary = table_after(page, "Secondary tests across channels")
    assert "role secondary" in secondary  # the role is stated (constant, so in the caption)
    assert re.search(row_html(NAMES.methods[0], "friedman_f", "5.43", "4", "20", "0.000123", "0.000247"), secondary)
    assert "Secondary pairwise channel contrasts" in page
    described = table_after(page, "Descriptive: mixed-model estimates only")
    header = re.search(r"<thead>(.*?)</thead>", described, re.S).group(1)
    assert "p_value" not in header and "p_adj" not in header and "q_value" not in header
    assert re.search(row_html(NAMES.methods[0], "17", "4", "1.43"), described)
    components = table_after(page, "Components of the dominance test")
    assert f"{NAMES.signal} &gt; {CHANNELS[0]}" in components and "not adjusted" in components


def test_mixedlm_p_value_is_never_printed(tmp_path):
    """Even a table that carries a p-value for the mixed model (an older stats stage) does not show it."""
    from report_fake_run import channel_test_rows, schema_frame

    from chanstat.report.display import TABLE_MIME
    from chanstat.report.sections import channel_tests
    from chanstat.rundir import RunDirectory

    rows = [dict(r) for r in channel_test_rows(NAMES, 12)]
    for r in rows:
        if r["test"] == "mixedlm":
            r.update(p_value=0.0421, p_adj=0.0842, q_value=0.0631, role="")  # role missing: the test name decides
    run = RunDirectory(tmp_path, create=True).save(channel_tests=schema_frame("channel_tests", rows, NAMES))
    bundles = shown_by(channel_tests, run)
    text = json.dumps([b.get(TABLE_MIME) or b.get("text/plain") for b in bundles])
    assert "0.0421" not in text and "0.0842" not in text and "0.0631" not in text
    assert "Descriptive: mixed-model estimates only" in text


def test_heterogeneity_and_warning_stand_next_to_the_primary_test(rendered):
    page = rendered["html"]
    tests = page[page.find('id="Tests"'):page.find('id="Confidence-intervals"')]
    plain = html_text(tests)
    warning = plain.find(f"Warning (primary test): {PLATE_WARNING}")
    primary = plain.find("Primary test per method")
    assert 0 <= warning < primary  # the warning precedes the primary table, before any secondary test
    assert plain.find("Secondary tests across channels") > primary
    summary = plain[:primary]
    assert f"{NAMES.methods[0]}: p = 0.0123, dominant channel Mito (share 0.48, simultaneous interval 0.412 to 0.557); " \
           "plate × channel heterogeneity p = 0.33" in summary
    assert f"{NAMES.methods[1]}: p = 0.41, no dominant channel; plate × channel heterogeneity p = 0.0271" in summary


def test_enrichment_shows_the_competitive_test(rendered, fake_run):
    page = rendered["html"]
    enrichment = pd.read_parquet(fake_run / "channel_enrichment.parquet")
    test = table_after(page, "Channel enrichment test: competitive")
    assert "holm over 5 channels of this contrast" in test and "n_perm 1999" in test
    for row in enrichment.itertuples():
        enriched = "yes" if row.p_adj < 0.05 else "no"
        assert re.search(row_html(row.channel, f"{row.statistic:.3g}") + r".*?" +
                         row_html(f"{row.p_value:.3g}", f"{row.p_adj:.3g}", enriched), test, re.S), row.channel
    section = html_text(page[page.find('id="Channel-enrichment"'):page.find('id="Compartment-%C3%97-channel"')])
    assert "enriched: Mito." in section
    described = table_after(page, "Channel enrichment, description")
    header = re.search(r"<thead>(.*?)</thead>", described, re.S).group(1)
    assert "odds_ratio" in header and "p_value" not in header and "q_value" not in header
    for row in enrichment.itertuples():
        assert re.search(row_html(row.channel, str(row.n_features), str(row.n_significant)), described)
    assert "12.5" in described


def test_concordance_states_what_its_ranks_can_show(rendered):
    page = rendered["html"]
    section = html_text(page[page.find('id="Concordance"'):page.find('id="Provenance"')])
    assert "What these ranks can show: with 5 ranks the smallest attainable p is 0.00833; p < 0.05 needs " \
           "kendall_tau >= 0.8" in section
    assert "resampled both" in section and "grain channel" in section


def test_share_intervals_marginal_and_simultaneous(rendered):
    page = rendered["html"]
    marginal = table_after(page, "Channel shares: mean [ci_low, ci_high], boot_t interval")
    simultaneous = table_after(page, "Channel shares: mean [simultaneous interval]")
    assert re.search(row_html(NAMES.methods[0], *["0.14 [0.09, 0.19]"] * 4, "0.45 [0.4, 0.5] *"), marginal)
    assert re.search(row_html(NAMES.methods[1], *["0.14 [0.04, 0.24]"] * 4, "0.45 [0.35, 0.55]"), simultaneous)


def test_pdf_holds_every_figure(rendered):
    n_html = len(re.findall(r"<img[^>]*\ssrc=\"data:image/png", rendered["html"]))
    n_pdf = len(re.findall(rb"/Subtype\s*/Image", rendered["pdf"]))
    assert n_pdf >= n_html  # each figure once (plus its alpha mask)
    assert len(re.findall(rb"/Type\s*/Page\b", rendered["pdf"])) >= 10


def test_parameters_are_injected_after_the_parameters_cell(fake_run):
    from chanstat.report import renderer

    nb, front = renderer.build_notebook(renderer.default_template(), {"run_dir": str(fake_run)})
    assert front["title"] == "chanstat report"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and repr(str(fake_run)) in injected[0].source
    # the parameters cell comes right before the injected one
    k = nb.cells.index(injected[0])
    assert "tags: [parameters]" in nb.cells[k - 1].source


# ============================================================================ missing stages
@pytest.fixture(scope="module")
def partial_page(tmp_path_factory) -> str:
    from chanstat.report.cli import configure

    run = make_fake_run(tmp_path_factory.mktemp("report_partial") / "run", tables=PARTIAL)
    parser = configure(argparse.ArgumentParser())
    args = parser.parse_args([str(run), "--to", "html", "--engine", "builtin"])
    assert args.func(args) == 0
    assert not (run / "report.pdf").exists()
    return (run / "report.html").read_text(encoding="utf-8")


def test_missing_stages_get_a_note_each(partial_page):
    page = partial_page
    assert "could not be drawn" not in page
    for name in SECTIONS:
        assert name in headings(page)
    notes = re.findall(r'<div class="chanstat-note chanstat-missing">(.*?)</div>', page, re.S)
    text = " ".join(notes)
    for f in ("attributions.zarr", "dac_scores.parquet", "dac_masks.zarr", "dac_sweep.parquet",
              "channel_mass.parquet", "channel_share_ci.parquet", "map_similarity.parquet", "dataset.zarr",
              "localisation.parquet", "cp_differential.parquet", "channel_enrichment.parquet",
              "compartment_channel.parquet", "concordance.parquet", "counterfactual_quality.parquet",
              "channel_shapley.parquet", "compartment_mass.parquet"):
        assert f in text, f"no 'stage not run' note names {f}"
    assert all("Stage not run" in n for n in notes)
    assert "channel_tests.parquet" not in text  # it exists
    # what exists is still shown: the answer from channel_tests' primary rows, tables, training curves
    assert "Data set summary" in page and "Primary test per method" in page and page.count("<img") == 1
    answer = page[page.find('id="The-answer"'):page.find('id="Run-overview"')]
    assert "carries the difference" in answer  # the verdict, weighed from channel_tests


def test_empty_run_directory_renders(tmp_path):
    from chanstat.report import sections
    from chanstat.rundir import RunDirectory

    shown = []
    run = RunDirectory(tmp_path)
    import chanstat.report.display as display

    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        for name in sections.__all__:
            if name != "ERRORS":
                getattr(sections, name)(run)
    finally:
        display._display = original
    notes = [b[display.NOTE_MIME]["text"] for b in shown if display.NOTE_MIME in b]
    assert any("provenance.json" in n for n in notes)
    assert any("attributions.zarr" in n for n in notes)
    assert any("best_channel.parquet" in n for n in notes)
    assert any("channel_shapley.parquet" in n for n in notes)
    assert not any(b[display.NOTE_MIME]["kind"] == "error" for b in shown if display.NOTE_MIME in b)


# ============================================================================ pieces
def test_format_value():
    from chanstat.report import format_value

    assert format_value(0.000123456) == "0.000123"
    assert format_value(1.23456e-7) == "1.23e-07"
    assert format_value(np.float32(0.5)) == "0.5"
    assert format_value(np.int64(12)) == "12"
    assert format_value(True) == "yes"
    assert format_value(float("nan")) == "–" and format_value(None) == "–" and format_value(pd.NA) == "–"
    assert format_value(["Mito", "DNA"]) == "Mito, DNA"


def test_typst_text_is_verbatim_and_compiles(tmp_path):
    import typst

    from chanstat.report.markdown import markdown_to_typst
    from chanstat.report.pdf import table_to_typst

    tricky = 'a #b $c$ *d* _e_ `f` <g> @h [i] \\j "k" // l = m'
    md = f"## Heading {tricky}\n\nText {tricky} with **bold**, *it*, `code #x` and [a link](https://x.org).\n\n- one\n- two\n"
    source = markdown_to_typst(md) + table_to_typst({
        "caption": "T", "columns": ["a #", "b"], "rows": [["1", tricky], ["2", "3"]], "bold_rows": [True, False],
        "numeric": [True, False], "footer": "Showing 2 of 9 rows."})
    assert "#heading(level: 2)" in source and "#table(columns: 2" in source
    (tmp_path / "t.typ").write_text(source)
    pdf = typst.compile(str(tmp_path / "t.typ"), ignore_system_fonts=True)
    assert pdf.startswith(b"%PDF")
    assert json.dumps(tricky, ensure_ascii=False) in source  # text goes in as a string literal


def test_map_scale_signed_and_unsigned():
    from chanstat.report.plots.images import map_scale

    signed = map_scale(np.array([-2.0, 0.5, 1.0]), quantile=1.0)
    assert signed["signed"] and signed["vmin"] == -2.0 and signed["vmax"] == 2.0 and signed["cmap"] == "RdBu_r"
    unsigned = map_scale(np.array([0.0, 0.5, 4.0]), quantile=1.0)
    assert not unsigned["signed"] and unsigned["vmin"] == 0.0 and unsigned["vmax"] == 4.0
    assert map_scale(np.zeros(4))["vmax"] == 1.0  # flat map: a usable scale, not 0/0
    assert map_scale(np.array([0.0, 1.0]), signed=True)["vmin"] < 0  # the registry's word wins


def test_mean_curve_interpolates_each_sample():
    from chanstat.report.plots.charts import mean_curve

    curves = pd.DataFrame({"sample": [0, 0, 1, 1], "mask_size": [0.0, 1.0, 0.0, 0.5], "score": [0.0, 1.0, 0.0, 1.0]})
    out = mean_curve(curves, grid=np.array([0.0, 0.25, 0.5, 1.0]))
    # sample 0: x; sample 1: 2x up to 0.5 then flat at 1
    np.testing.assert_allclose(out["mean"], [0.0, 0.375, 0.75, 1.0])
    assert (out["n"] == 2).all()


def test_channel_colours_follow_stains():
    from chanstat.report.plots.style import channel_colours, channel_key

    assert channel_key("OrigDNA") == "dna" and channel_key("CorrMito") == "mito" and channel_key("mito_tubeness") == "mito"
    assert channel_key("ER") == "er" and channel_key("ERK") != "er"
    colours = channel_colours(["DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "X1", "X2"])
    assert len(set(colours.values())) == 8  # every channel distinguishable
    assert channel_colours(["OrigDNA"])["OrigDNA"] == channel_colours(["DNA"])["DNA"]


def test_gallery_marks_channel_agnostic_maps():
    from chanstat.report.plots.images import attribution_gallery, map_scale

    rng = np.random.default_rng(0)
    real, cf = rng.random((3, 8, 8)), rng.random((3, 8, 8))
    maps = {"d_ig": rng.normal(size=(3, 8, 8)), "gradcam": rng.random((1, 8, 8))}
    fig = attribution_gallery(real, cf, maps, ["DNA", "ER", "Mito"], {m: map_scale(a) for m, a in maps.items()})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("DNA") == 4 and texts.count("Mito") == 4  # column title + real, counterfactual, d_ig
    assert "all channels" in texts and any("channel-" in t for t in texts)
    assert len(fig.axes) == 3  # the mosaic and one colour bar per method
    with pytest.raises(ValueError, match="channels"):
        attribution_gallery(real, cf, maps, ["DNA", "ER"], {m: map_scale(a) for m, a in maps.items()})


# ============================================================================ engines, CLI, stage
def test_engine_and_format_choice(monkeypatch):
    from chanstat.report import renderer

    monkeypatch.setattr(renderer.shutil, "which", lambda name: None)
    assert renderer.resolve_engine("auto") == "builtin"
    with pytest.raises(FileNotFoundError, match="quarto"):
        renderer.resolve_engine("quarto")
    monkeypatch.setattr(renderer.shutil, "which", lambda name: "/usr/bin/quarto")
    assert renderer.resolve_engine("auto") == "quarto"
    with pytest.raises(ValueError, match="engine"):
        renderer.resolve_engine("latex")
    assert renderer.parse_formats("html, pdf,html") == ["html", "pdf"]
    with pytest.raises(ValueError, match="docx"):
        renderer.parse_formats(["docx"])
    with pytest.raises(FileNotFoundError, match="run directory"):
        renderer.render(Path("/nonexistent/run"))


def test_quarto_engine_command(tmp_path, monkeypatch):
    """With a quarto CLI on PATH, each format is one `quarto render` with the run_dir parameter."""
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / "quarto"
    fake.parent.mkdir()
    fake.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
open({str(calls)!r}, "a").write(json.dumps(args) + "\\n")
out = args[args.index("--output") + 1]
open(out, "wb").write(b"%PDF-fake" if out.endswith(".pdf") else b"<html></html>")
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    run = tmp_path / "run"
    run.mkdir()
    from chanstat.report import render

    paths = render(run, formats="html,pdf", engine="auto")
    assert [p.name for p in paths] == ["report.html", "report.pdf"]
    assert (run / "report.pdf").read_bytes() == b"%PDF-fake"
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded[0][0] == "render" and recorded[0][1].endswith("chanstat_report.py")
    assert recorded[0][recorded[0].index("--to") + 1] == "html"
    assert recorded[1][recorded[1].index("--to") + 1] == "typst"
    assert f"run_dir:{run.resolve()}" in recorded[0]


def test_cli_arguments():
    from chanstat.report.cli import configure, main

    parser = configure(argparse.ArgumentParser())
    args = parser.parse_args(["runs/x"])
    assert args.run_dir == "runs/x" and args.to == "html,pdf" and args.engine == "auto" and args.func is main
    with pytest.raises(SystemExit):
        parser.parse_args(["runs/x", "--engine", "word"])


def test_stage_renders_the_configured_formats(monkeypatch, tmp_path):
    from chanstat.report import stage

    seen = {}

    def fake_render(run_dir, formats, engine, template):
        seen.update(run_dir=run_dir, formats=formats, engine=engine, template=template)
        return [Path(run_dir) / f"report.{f}" for f in formats]

    monkeypatch.setattr(stage, "render", fake_render)
    monkeypatch.setattr(stage, "resolve_engine", lambda e: "builtin" if e == "auto" else e)
    config = {}
    ctx = types.SimpleNamespace(out=tmp_path, resolve_path=lambda p: tmp_path / p,
                                section=lambda name: stage.ReportConfig(**config.get(name, {})).model_dump())
    outputs, info = stage.STAGE.whole_set(ctx, {})
    assert outputs == {}
    assert seen["formats"] == ["html", "pdf"] and seen["engine"] == "builtin" and seen["template"] is None
    assert info == {"engine": "builtin", "files": ["report.html", "report.pdf"]}
    config["report"] = {"formats": ["html"], "engine": "builtin", "template": "my.py"}
    stage.STAGE.whole_set(ctx, {})
    assert seen["formats"] == ["html"] and seen["template"] == tmp_path / "my.py"


def test_report_package_never_imports_torch():
    code = ("import sys; import chanstat.report, chanstat.report.sections, chanstat.report.renderer, "
            "chanstat.report.pdf, chanstat.report.stage, chanstat.report.cli, chanstat.report.plots.charts, "
            "chanstat.report.plots.images, chanstat.report.plots.matrices, chanstat.rundir; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ============================================================================ schema-driven pieces
def shown_by(section, run, *args) -> list[dict]:
    """The output bundles one section displays (without a kernel)."""
    import chanstat.report.display as display

    shown = []
    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        section(run, *args)
    finally:
        display._display = original
    return shown


def notes_of(bundles: list[dict], kind: str | None = None) -> list[str]:
    from chanstat.report.display import NOTE_MIME

    return [b[NOTE_MIME]["text"] for b in bundles if NOTE_MIME in b and (kind is None or b[NOTE_MIME]["kind"] == kind)]


def test_fake_run_holds_every_schema_table(fake_run):
    from chanstat.rundir import RunDirectory

    run = RunDirectory(fake_run)
    for name in schema_tables():
        assert len(run.table(name)) > 0, name  # validated against the schema on the way in and out


def test_answer_comes_first_then_the_set_per_method(rendered):
    page = rendered["html"]
    h2 = re.findall(r'<h2 id="([^"]+)"', page)
    assert h2[0] == "The-answer"
    answer = page[page.find('id="The-answer"'):page.find('id="Run-overview"')]
    assert "evidence" in answer and "Counterfactuals:" in answer and "<img" in answer  # the verdict first
    answer = answer[answer.find("The answer per method"):]  # then the answer per method, from best_channel
    items = [html_text(i) for i in re.findall(r"<li>(.*?)</li>", answer, re.S)]
    assert len(items) == 3  # the two methods' shares and the Shapley values
    named, unnamed, shapley = items
    assert ("(d_ig, attribution share, primary): channel Mito carries the difference; its mean attribution share is "
            "0.48, 0.38 above the largest other channel (simultaneous interval 0.28 to 0.48) (p = 0.0123 that it is "
            "the largest); unit: well, 6 units (scope: these plates). Plate × channel test: p = 0.33, no evidence "
            "that plates differ.") in named
    # no channel named: the set of possibly-best channels, never a bare "none", no channel said to carry it
    assert ("(residual, attribution share, exploratory): no single channel: the largest attribution share is in "
            "Mito or DNA (the set of possibly-best channels at level 0.05); the other channels are excluded") in unnamed
    assert "carries" not in unnamed and "p = 0.41" not in unnamed
    assert "Plate × channel test: p = 0.0271, the composition differs between plates." in unnamed
    assert "channel Mito carries the difference; its mean Shapley value is 0.5" in shapley and "p = 0.00456" in shapley
    text = html_text(answer)
    assert ("Which error is controlled. A channel is named only when it beats every other channel (one-sided at "
            "0.05 / 2 each), so a channel that does not carry the largest mean is named with probability at most "
            "0.05;") in text
    assert "Only the primary method (d_ig) carries this rate; the others are exploratory" in text
    assert ("The methods agree: 1 of 2 name Mito; the others name no single channel. The channel Shapley values name "
            "Mito, as the methods do.") in text
    assert "CellProfiler: the features of Mito differ more than the other channels' (competitive enrichment test), " \
           "in agreement with the methods." in text


def test_answer_without_best_channel_is_the_verdict_alone(partial_page):
    answer = partial_page[partial_page.find('id="The-answer"'):partial_page.find('id="Run-overview"')]
    assert "Mito carries the difference: weak evidence." in html_text(answer)  # attribution alone
    assert "The answer per method" not in answer  # no best_channel: no per-method set to show
    assert "CellProfiler:" not in html_text(answer) and "enriched" not in answer  # CellProfiler did not run


def test_shapley_and_compartment_sections(rendered):
    page = rendered["html"]
    shapley = page[page.find('id="Channel-Shapley-values"'):page.find('id="Localisation-and-faithfulness"')]
    assert shapley.count("<img") == 2  # bars and the interaction heatmap
    # planted: each image's values sum to its total 0.58 + 0.05 * sample, i.e. a mean of 0.855 over 12 images
    assert "mean total 0.855 over 12 images" in shapley
    compartments = page[page.find('id="Compartment-%C3%97-channel"'):page.find('id="Concordance"')]
    assert compartments.count("<img") == 2  # attribution per compartment beside CellProfiler


def test_counterfactual_candidates(rendered):
    table = table_after(rendered["html"], "Counterfactual candidates per provider")
    # 12 images, candidates "c0".."c3": 4 distinct, each used 3 times; n_candidates = 3 + sample
    assert re.search(row_html("oracle", "12", "1", "8.5", "3", "4", "3"), table), table


def test_pseudo_replicates_are_labelled(tmp_path):
    from report_fake_run import best_channel_rows, channel_test_rows, schema_frame

    from chanstat.report.display import TABLE_MIME
    from chanstat.report.sections import answer, channel_share_ci, channel_tests
    from chanstat.rundir import RunDirectory

    tests = schema_frame("channel_tests", channel_test_rows(NAMES, 12), NAMES)
    plain = RunDirectory(tmp_path / "a", create=True).save(channel_tests=tests)
    assert not any("Pseudo-replicates" in n for n in notes_of(shown_by(channel_tests, plain)))
    by_record = RunDirectory(tmp_path / "b", create=True).save(
        channel_tests=tests, provenance={"stages": {"data": {"pseudo_replicates": "9 spatial blocks of one field"}}})
    [text] = [n for n in notes_of(shown_by(channel_tests, by_record), "info") if "Pseudo-replicates" in n]
    assert "9 spatial blocks of one field" in text
    flagged = tests.assign(pseudo_replicates=True)
    ci = schema_frame("channel_share_ci", [{"method": "m", "transition": "all", "channel": ch, "mean": 0.2,
                                            "ci_low": 0.1, "ci_high": 0.3, "unit": "block", "n_units": 9,
                                            "n_samples": 90, "pseudo_replicates": True, "warning": ""}
                                           for ch in CHANNELS], NAMES)
    one_field = schema_frame("best_channel", best_channel_rows(NAMES, scope="one field"), NAMES)
    by_column = RunDirectory(tmp_path / "c", create=True).save(channel_tests=flagged, channel_share_ci=ci,
                                                              best_channel=one_field)
    for section in (channel_tests, channel_share_ci, answer):
        bundles = shown_by(section, by_column)
        assert any("Pseudo-replicates" in n for n in notes_of(bundles, "info")), section.__name__
        shown = json.dumps([b[TABLE_MIME] for b in bundles if TABLE_MIME in b] +
                           [b["text/plain"] for b in bundles if TABLE_MIME not in b and "text/plain" in b])
        assert "(pseudo-replicates)" in shown, section.__name__  # the unit itself is labelled
        assert "pseudo_replicates" not in shown, section.__name__  # no bare yes/no flag column


def test_answer_per_method_from_best_channel_alone(tmp_path):
    """Without any other table the answer per method is read from best_channel: one field of view
    shows effect sizes without p-values; a set of every channel says no channel is excluded. The
    Shapley bars use the against-zero rows of shapley_tests."""
    from report_fake_run import best_channel_rows, schema_frame, shapley_test_rows

    from chanstat.report.markdown import markdown_to_html
    from chanstat.report.sections import ERRORS, channel_shapley
    from chanstat.report.sections.answer import method_answers as answer
    from chanstat.rundir import RunDirectory

    rows = best_channel_rows(NAMES, scope="one field")
    rows += [{**r, "method": "random", "in_set": True, "named_channel": "", "set_label": ""}
             for r in rows if r["method"] == NAMES.methods[1]]
    shapley = schema_frame("channel_shapley", [{"sample": s, "channel": ch, "shapley": 0.1} for s in range(3)
                                               for ch in CHANNELS], NAMES)
    tests = schema_frame("shapley_tests", shapley_test_rows(NAMES, 3), NAMES)
    run = RunDirectory(tmp_path, create=True).save(best_channel=schema_frame("best_channel", rows, NAMES),
                                                   channel_shapley=shapley, shapley_tests=tests)
    text = markdown_to_html(shown_by(answer, run)[0]["text/markdown"])
    named, unnamed, everything, shap = (html_text(i) for i in re.findall(r"<li>(.*?)</li>", text, re.S))
    assert ("channel Mito carries the difference; its mean attribution share is 0.48, 0.38 above the largest other "
            "channel (simultaneous interval 0.28 to 0.48); unit: block, 6 units (one field: effect sizes only, no "
            "p-value; blocks of one field are not wells).") in named
    assert "Mito or DNA" in unnamed and "carries" not in unnamed
    assert "(random, attribution share, exploratory): no channel is excluded: any channel may carry the largest " \
           "attribution share" in everything
    assert not any("p =" in line for line in (named, unnamed, everything, shap))  # one field: no p-value
    shown = " ".join(b.get("text/markdown", "") for b in shown_by(answer, run))
    assert "**Which error is controlled.** None: the units are blocks of one field of view" in shown
    assert "named with probability at most" not in shown  # no error rate claimed for one field
    assert "channel Mito carries the difference; its mean Shapley value is 0.5" in shap
    errors = len(ERRORS)
    bundles = shown_by(channel_shapley, run)
    assert sum("image/png" in b for b in bundles) == 1 and len(ERRORS) == errors
    assert not any("standard error over images" in b.get("text/plain", "") for b in bundles)  # the tested intervals
