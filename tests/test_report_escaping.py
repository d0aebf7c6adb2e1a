"""Hostile names: class, channel, method, family, feature, well and plate names holding HTML and
Markdown / Typst markup are shown literally everywhere (HTML and PDF), never interpreted."""
from __future__ import annotations

import html
import re

import pandas as pd
import pytest
from report_fake_run import Names, make_fake_run

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(1)</script>"
MARKUP = "*b* #h $x$ @r `t` [l](javascript:alert(1))"
HOSTILE = Names(
    channels=[IMG, SCRIPT, MARKUP, "DNA", "Mito $2$"],
    classes=[IMG, SCRIPT + " *c* #k"],
    methods=[IMG, "m*#$@`[x]", "_u_"],
    families=[SCRIPT, "fam $x$ @y", "= eq"],
    compartments=[IMG, "Cells", "#Nuclei"],
    feature="{channel}_" + SCRIPT + "_{i}",
    wells=[IMG, SCRIPT, "W*1*", "W2", "W3", "W4"],
    plates=[SCRIPT, IMG],
    run_name=SCRIPT,
    data_record={"pseudo_replicates": IMG},
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    from chanstat import render

    run = make_fake_run(tmp_path_factory.mktemp("hostile") / "run", names=HOSTILE, n=4, size=16)
    html_path, pdf_path = render(run, formats=("html", "pdf"), engine="builtin")
    return {"html": html_path.read_text(encoding="utf-8"), "pdf": pdf_path.read_bytes(), "run": run}


def test_no_markup_from_data_reaches_the_page(hostile):
    page = hostile["html"]
    assert "could not be drawn" not in page  # no section broke on the names either
    # every <img> on the page is one of the report's own embedded figures, with alt, src and width only
    tags = re.findall(r"<img\b[^>]*>", page)
    assert len(tags) >= 20
    for tag in tags:
        assert ' src="data:image/png;base64,' in tag, tag[:120]
        assert set(re.findall(r"\s([a-z-]+)=", re.sub(r'"[^"]*"', '""', tag))) <= {"alt", "src", "width"}, tag[:200]
    assert "<script>alert" not in page and "alert(1)</script>" not in page
    assert "javascript:" not in re.sub(r"&[a-z]+;|[^\w:]", "", " ".join(re.findall(r'href="[^"]*"', page)))
    assert "<em>b</em>" not in page and "<em>c</em>" not in page and "<em>u</em>" not in page


def test_hostile_text_is_visible_as_written(hostile):
    page = hostile["html"]
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    for name in HOSTILE.channels + HOSTILE.classes + HOSTILE.methods + HOSTILE.families:
        assert name in text, name
    assert f"{IMG} → {HOSTILE.classes[1]}" in text  # the gallery heading of one transition
    assert html.escape(IMG, quote=False) in page
    assert f"field of view, not independent wells or plates ({IMG})" in text  # the pseudo-replicate note


def test_pdf_renders_with_hostile_names(hostile, tmp_path):
    """Typst reads "@r" as a reference and "#h" as code: the PDF compiles only if they stay text."""
    import json

    import nbformat

    import chanstat.report.display as display
    from chanstat.report import sections
    from chanstat.report.pdf import compile_typst, notebook_to_typst
    from chanstat.rundir import RunDirectory

    assert hostile["pdf"].startswith(b"%PDF") and len(hostile["pdf"]) > 20_000
    shown = []
    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        run = RunDirectory(hostile["run"])
        for section in (sections.answer, sections.channel_tests, sections.cp_differential, sections.provenance):
            section(run)
    finally:
        display._display = original
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data=b) for b in shown if "image/png" not in b]
    nb = nbformat.v4.new_notebook(cells=[cell])
    source = notebook_to_typst(nb, tmp_path / "figures", title=SCRIPT)
    assert json.dumps(MARKUP, ensure_ascii=False) in source  # a table cell: one Typst string literal
    assert "#link(" not in source and "#emph" not in source
    assert compile_typst(source, tmp_path, tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")


def test_markdown_escaping_round_trips():
    from chanstat.report.markdown import markdown_to_html, markdown_to_typst
    from chanstat.report.text import Markdown, code, escape_markdown, md

    for s in (IMG, SCRIPT, MARKUP, "a\\b", "&amp; &lt;", "1. item", "- item", "> quote", "| a | b |", "***", "x_y_z"):
        assert html.unescape(markdown_to_html(escape_markdown(s))) == s, s
        assert "#emph" not in markdown_to_typst(escape_markdown(s)) and "#link" not in markdown_to_typst(escape_markdown(s))
    assert markdown_to_html(md("**{}** {:.2f}", IMG, 0.5)) == f"<strong>{html.escape(IMG)}</strong> 0.50"
    assert md("{}", Markdown("*kept*")) == "*kept*"  # trusted markup passes through
    assert Markdown("a ") + "*b*" == "a " + escape_markdown("*b*")
    assert "*b*" + Markdown(" a") == escape_markdown("*b*") + " a"  # plain text on either side is escaped
    assert html.unescape(markdown_to_html(code("a ``b`` c"))) == "<code>a ``b`` c</code>"
    heading = markdown_to_html(Markdown("#### ") + SCRIPT + " *c*")
    assert heading.startswith("<h4>") and html.unescape(heading) == f"<h4>{SCRIPT} *c*</h4>"


def test_figures_draw_dollar_names_literally():
    """Mathtext is off: a name like "$\\frac{$" would otherwise be a parse error (the section would fail)."""
    import io

    import pandas as pd

    from chanstat.report.plots.charts import grouped_bars

    names = ["$\\frac{$", "b$^$"]
    fig = grouped_bars(pd.DataFrame({"channel": names, "v": [1.0, 2.0]}), "channel", "v", title="$\\sqrt{$ x")
    fig.savefig(io.BytesIO(), format="png")  # drawn outside the style context, as the report does
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names


def test_generator_caption_lists_the_kept_channels_escaped(capsys):
    from chanstat.report.display import show_table
    from chanstat.report.sections.counterfactual import _open_channels

    text = _open_channels({"open_channels": {"treated": ["<b>Mito</b>"], "control": []}, "pruned_at_step": 625})
    assert text == ". Channels it may change (pruned at step 625): to treated: <b>Mito</b>; to control: none"
    assert _open_channels({}) == ""
    show_table(pd.DataFrame({"a": [1]}), caption=text)
    shown = capsys.readouterr().out
    caption = re.search(r'<p class="chanstat-caption">(.*?)</p>', shown).group(1)
    assert "&lt;b&gt;Mito&lt;/b&gt;" in caption and "<b>" not in caption
