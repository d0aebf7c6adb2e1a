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

from report_fake_run import Names, make_fake_run, schema_tables

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
    gallery = page[page.find('id="Attribution-galleries"'):page.find('id="DAC:-discriminative-attribution-curves"')]
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
    from chanstat.dac.result import summarise_dac

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
    table = table_after(page, "Primary test per method")
    assert "(test friedman_f, contrast channel, unit well" in table  # constant columns go to the caption
    for row in tests[tests["primary"]].itertuples():
        p = f"{row.p_value:.3g}"
        assert re.search(r'<tr class="chanstat-emph">' + row_html(row.method), table)
        assert f"p = {p}" in page  # the sentence above the table
        assert re.search(re.escape(row.method) + r".*?" + re.escape(p), table, re.S)
    assert "0.000123" in page and "0.00037" in page  # planted primary p and adjusted p
    enrichment = pd.read_parquet(fake_run / "channel_enrichment.parquet")
    etable = table_after(page, "Channel enrichment")
    for row in enrichment.itertuples():
        assert re.search(row_html(row.channel, str(row.n_features), str(row.n_significant)), etable)
        assert f"{row.q_value:.3g}" in etable
    conc = pd.read_parquet(fake_run / "concordance.parquet")
    ctable = table_after(page, "Concordance of attribution")
    for row in conc.itertuples():
        assert re.search(row_html(row.method, row.statistic, f"{row.estimate:.3g}", f"{row.p_value:.3g}"), ctable)


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
    assert "no answer.parquet in this run" in answer.replace("<code>", "").replace("</code>", "")


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
    assert any("answer.parquet" in n and "channel_tests.parquet" in n for n in notes)
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


def test_answer_comes_first_and_never_names_a_channel_for_none(rendered, fake_run):
    page = rendered["html"]
    h2 = re.findall(r'<h2 id="([^"]+)"', page)
    assert h2[0] == "The-answer"
    answer = page[page.find('id="The-answer"'):page.find('id="Run-overview"')]
    table = pd.read_parquet(fake_run / "answer.parquet")
    items = re.findall(r"<li>(.*?)</li>", answer, re.S)
    assert len(items) == len(table)
    for item, row in zip(items, table.itertuples()):
        assert f"<code>{row.method}</code>" in item
        if row.dominant_channel == "none":
            assert "no channel dominates" in item
            assert not any(ch in item for ch in CHANNELS)
        else:
            assert f"channel <strong>{row.dominant_channel}</strong> carries the difference" in item
    # two of three methods name Mito; CellProfiler's Mito features differ most (15 of 24 significant)
    assert "The methods agree: 2 of 3 name <strong>Mito</strong>; the others name none." in answer
    assert "differ most (largest fraction significant) in <strong>Mito</strong>, in agreement with the methods" in answer


def test_answer_falls_back_to_the_primary_tests(partial_page):
    answer = partial_page[partial_page.find('id="The-answer"'):partial_page.find('id="Run-overview"')]
    items = re.findall(r"<li>(.*?)</li>", answer, re.S)
    assert len(items) == 3  # one per primary (pooled) row
    assert "channel <strong>Mito</strong> carries the difference; its share is 0.48 (interval 0.412 to 0.557)" in items[0]
    assert "p = 0.000123" in items[0]
    assert "no channel dominates" in items[2] and "Mito" not in items[2] and "p = 0.81" in items[2]
    assert "The methods agree: 2 of 3 name <strong>Mito</strong>" in answer
    assert "features differ most" not in answer and "stand out" not in answer  # CellProfiler did not run


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
    from chanstat.report.sections import channel_tests
    from chanstat.rundir import RunDirectory
    from report_fake_run import schema_frame

    tests = schema_frame("channel_tests", [{"method": "m", "transition": "all", "test": "friedman_f",
                                            "contrast": "channel", "statistic": 1.0, "p_value": 0.5, "unit": "well",
                                            "n_units": 9, "n_samples": 90, "primary": True, "dominant_channel": "none"}],
                         NAMES)
    plain = RunDirectory(tmp_path / "a", create=True).save(channel_tests=tests)
    assert not any("Pseudo-replicates" in n for n in notes_of(shown_by(channel_tests, plain)))
    by_record = RunDirectory(tmp_path / "b", create=True).save(
        channel_tests=tests, provenance={"stages": {"data": {"pseudo_replicates": "9 spatial blocks of one field"}}})
    [text] = [n for n in notes_of(shown_by(channel_tests, by_record), "info") if "Pseudo-replicates" in n]
    assert "9 spatial blocks of one field" in text
    by_column = RunDirectory(tmp_path / "c", create=True).save(channel_tests=tests.assign(pseudo_replicates=True))
    assert any("Pseudo-replicates" in n for n in notes_of(shown_by(channel_tests, by_column), "info"))


def test_sections_pick_up_declared_optional_columns(monkeypatch, tmp_path):
    """Columns the schema declares later (the answer's interval and CellProfiler verdict, the Shapley
    intervals) are used as soon as they are declared: here declared by patching the schema."""
    import dataclasses

    from chanstat import schema
    from chanstat.report.sections import answer, channel_shapley
    from chanstat.rundir import RunDirectory
    from report_fake_run import schema_frame

    def extend(name: str, columns: str) -> None:
        spec = schema.SCHEMA[name]
        monkeypatch.setitem(schema.SCHEMA, name, dataclasses.replace(spec, columns=spec.columns + schema._columns(columns)))

    extend("answer", "quantity:str? estimate:float? ci_low:float? ci_high:float? p_value:float? "
                     "cellprofiler_channel:str? agrees_with_cellprofiler:bool?")
    extend("shapley_tests", "estimate:float? ci_low:float? ci_high:float?")
    table = schema_frame("answer", [
        {"family": "ig", "method": "d_ig", "dominant_channel": "Mito", "quantity": "contribution", "estimate": 0.48,
         "ci_low": 0.41234, "ci_high": 0.55678, "p_value": 0.002, "cellprofiler_channel": "Mito",
         "agrees_with_cellprofiler": True},
        {"family": "cam", "method": "gc", "dominant_channel": "none", "quantity": "share", "estimate": 0.3,
         "ci_low": 0.1, "ci_high": 0.5, "p_value": 0.4, "cellprofiler_channel": "Mito",
         "agrees_with_cellprofiler": False}], NAMES)
    shapley = schema_frame("channel_shapley", [{"sample": s, "channel": ch, "shapley": 0.1} for s in range(3)
                                               for ch in CHANNELS], NAMES)
    tests = schema_frame("shapley_tests", [{"source": "shapley", "channel": ch, "estimate": 0.1, "ci_low": 0.05,
                                            "ci_high": 0.15} for ch in CHANNELS], NAMES)
    run = RunDirectory(tmp_path, create=True).save(answer=table, channel_shapley=shapley, shapley_tests=tests)
    from chanstat.report.markdown import markdown_to_html
    from chanstat.report.sections import ERRORS

    text = markdown_to_html(shown_by(answer, run)[0]["text/markdown"])
    ig, cam = re.findall(r"<li>(.*?)</li>", text, re.S)
    assert ("channel <strong>Mito</strong> carries the difference; its contribution is 0.48 (interval 0.412 to 0.557)"
            " (p = 0.002). CellProfiler features point to Mito — they agree.") in ig
    assert cam.startswith("<strong>cam</strong> (<code>gc</code>): no channel dominates") and "they disagree" in cam
    assert "carries" not in cam
    errors = len(ERRORS)
    bundles = shown_by(channel_shapley, run)
    assert sum("image/png" in b for b in bundles) == 1 and len(ERRORS) == errors
    assert not any("standard error over images" in b.get("text/plain", "") for b in bundles)  # the tested intervals
