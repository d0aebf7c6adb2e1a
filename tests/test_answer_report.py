"""The report's first screen (verdict, evidence figure, counterfactual quality), runs saved from Python,
p-values below float range, finish times, the plate layout and the explanations page."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from report_fake_run import Names, make_fake_run

from chanstat.report.display import NOTE_MIME, TABLE_MIME
from chanstat.rundir import RunDirectory

#: what the README's Python example saves (no provenance, no config)
PYTHON_BUILT = ("dataset", "meta", "attributions", "dac_scores", "dac_curves", "channel_mass", "channel_tests",
                "channel_share_ci", "best_channel")


def shown_by(section, run, *args) -> list[dict]:
    import chanstat.report.display as display

    shown = []
    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        section(run, *args)
    finally:
        display._display = original
    return shown


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return RunDirectory(make_fake_run(tmp_path_factory.mktemp("ans") / "run"))


def test_first_screen_holds_verdict_figure_and_counterfactual_quality(fake):
    from chanstat.report.sections import ERRORS, answer

    errors = len(ERRORS)
    bundles = shown_by(answer, fake)
    assert len(ERRORS) == errors
    first = bundles[0]["text/markdown"]
    assert "Mito carries the difference" in first and "strong" in first
    assert "single\\-channel DAC" in first  # the reasons name the pieces
    assert "image/png" in bundles[1]  # the evidence side by side
    assert any("**Counterfactuals:**" in b.get("text/markdown", "") and "flip rate" in b["text/markdown"]
               for b in bundles[2:5])
    verdict = fake.table("verdict")
    assert verdict.iloc[0]["grade"] == "strong" and set(fake.table("verdict_evidence")["piece"]) >= {"dac", "shapley"}


def test_a_run_saved_from_python_shows_only_what_it_holds(tmp_path):
    from chanstat.report import sections
    from chanstat.report.display import quiet_missing

    run = RunDirectory(make_fake_run(tmp_path / "py", tables=PYTHON_BUILT))
    assert not run.has("provenance")
    bundles = []
    quiet_missing(True)
    try:
        for name in sections.__all__:
            if name != "ERRORS":
                bundles += shown_by(getattr(sections, name), run)
    finally:
        quiet_missing(False)
    kinds = [b[NOTE_MIME]["kind"] for b in bundles if NOTE_MIME in b]
    texts = " ".join(b[NOTE_MIME]["text"] for b in bundles if NOTE_MIME in b)
    assert "missing" not in kinds and "error" not in kinds, texts
    assert "Stage not run" not in texts
    answer = shown_by(sections.answer, run)
    assert "carries the difference" in answer[0]["text/markdown"]  # the verdict, weighed at render time
    assert any("the set of possibly-best channels" in b.get("text/markdown", "") for b in answer)  # per method
    assert sum("image/png" in b for b in shown_by(sections.explanation_gallery, run)) == 4


def test_p_values_below_float_range_print_as_a_bound():
    from chanstat.report.display import show_table
    from chanstat.report.text import format_p, p_text

    assert format_p(0.0) == "< 1e-16" and format_p(1e-300) == "< 1e-16"
    assert format_p(0.0123) == "0.0123" and format_p(float("nan")) == "–"
    assert str(p_text(0.0)) == "p \\< 1e\\-16" and str(p_text(0.5)) == "p = 0\\.5"
    import chanstat.report.display as display

    shown = []
    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        show_table(pd.DataFrame({"test": ["a", "b"], "p_value": [0.0, 0.2], "q_value": [1e-30, 0.3], "estimate": [0.0, 1.0]}))
    finally:
        display._display = original
    rows = shown[0][TABLE_MIME]["rows"]
    assert rows[0] == ["a", "< 1e-16", "< 1e-16", "0"] and rows[1][1] == "0.2"


def test_answer_line_never_prints_p_equals_zero():
    from chanstat.report.sections.answer import answer_line

    row = pd.Series({"method": "d_ig", "quantity": "share", "role": "primary", "named_channel": "Mito",
                     "set_label": "Mito", "estimate": 0.5, "gap": 0.3, "gap_ci_low": 0.2, "gap_ci_high": 0.4,
                     "p_value": 0.0, "alpha": 0.05, "unit": "well", "n_units": 6, "scope": "population",
                     "plate_x_channel_p": float("nan")})
    text = str(answer_line(row, "integrated gradients"))
    assert "p \\< 1e\\-16" in text and "p = 0" not in text


def test_finish_time_is_filled_before_the_run_records_it():
    from chanstat.report.text import finished_time

    assert finished_time({"finished": "2025-01-01T00:01:00+00:00"}) == "2025-01-01T00:01:00+00:00"
    text = finished_time({"started": "2025-01-01T00:00:00+00:00", "total_wall_s": 90.0})
    assert text.startswith("2025-01-01T00:01:30+00:00")
    assert finished_time({}) is None


def test_plate_layout_from_well_names_and_rows_and_columns(tmp_path):
    from chanstat.report.plots.evidence import plate_positions, well_position
    from chanstat.report.sections import plate_layout

    assert well_position("C03") == (2, 2) and well_position("p24") == (15, 23) and well_position("C03_b0") is None
    rc = plate_positions(pd.DataFrame({"Metadata_Row": ["B", "C"], "Metadata_Col": [1, 12]}))
    assert list(rc["_row"]) == [1, 2] and list(rc["_col"]) == [0, 11]
    names = Names(wells=["C03", "C04", "D05", "E10", "H12", "A01"])
    run = RunDirectory(make_fake_run(tmp_path / "plate", names=names))
    pngs = [b for b in shown_by(plate_layout, run) if "image/png" in b]
    assert len(pngs) == 2  # the verdict channel's share and the best DAC per well
    # wells without plate positions: nothing drawn, no note
    assert shown_by(plate_layout, RunDirectory(make_fake_run(tmp_path / "noplate"))) == []


def test_explanations_page_holds_every_image_sorted_and_escaped(tmp_path):
    from chanstat.answer.page import write_explanations_page

    hostile = Names(classes=["</script><img src=x onerror=alert(1)>", "b&<i>"])
    run = RunDirectory(make_fake_run(tmp_path / "h", names=hostile, tables=("dataset", "meta", "dac_scores", "dac_curves",
                                                                            "dac_masks")))
    path = write_explanations_page(run)
    page = path.read_text(encoding="utf-8")
    assert path == run.path / "explanations.html"
    assert "<img src=x" not in page and "<i>" not in page and "http" not in page.replace("http-equiv", "")
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    records = data["records"]
    assert len(records) == run.n_images()
    assert [r["dac"] for r in records] == sorted((r["dac"] for r in records), reverse=True)
    assert all(r["image"].startswith("data:image/png;base64,") for r in records)
    assert {r["transition"] for r in records} == {f"{hostile.classes[0]} → {hostile.classes[1]}",
                                                   f"{hostile.classes[1]} → {hostile.classes[0]}"}
    stored = {("d_ig", "joint"), ("d_gradcam", "aggregate")}  # the fake stores these masks of images 0 and 1
    assert [r["has_mask"] for r in records] == [(r["method"], r["strategy"]) in stored and r["sample"] in (0, 1)
                                                for r in records]


def test_evidence_figure_marks_the_set():
    from chanstat.report.plots.evidence import evidence_panels

    ev = pd.DataFrame({"piece": ["attribution"] * 2 + ["dac"] * 2, "channel": ["ER", "Mito"] * 2,
                       "estimate": [0.2, 0.6, 0.1, 0.5], "ci_low": [0.1, 0.5, np.nan, 0.4],
                       "ci_high": [0.3, 0.7, np.nan, 0.6], "in_set": [False, True, False, True]})
    fig = evidence_panels(ev, ["ER", "Mito"])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["attribution share", "single-channel DAC"]


def test_agreement_groups_disagreeing_methods_by_channel():
    from chanstat.report.sections.answer import agreement

    text = str(agreement({"ig": "Mito", "saliency": "RNA", "dl": "Mito", "random": "none"}, "Mito", "Mito"))
    # most-named channel first, each with its methods; a method naming no channel is counted out
    assert text.startswith("The methods disagree (3 of 4 name a channel): **Mito** (`ig`, `dl`); **RNA** (`saliency`).")
    assert "The channel Shapley values name **Mito**." in text
