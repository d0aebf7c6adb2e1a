"""Tests of chanstat.report on a small, self-consistent fake run directory (numpy/pandas only).

The fake run directory has every file the report reads, with numbers planted so the Mito
channel carries the difference; tests render it once with the built-in engine (HTML and PDF)
and check sections, embedded figures, numbers against the Parquet files, and the notes shown
when stages are missing. Tests on the real quick demo run are in test_report_quick.py.
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

from chanstat.io import write_arrays, write_json, write_table

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
CLASSES = ["control", "treated"]
METHODS = ["d_ig", "residual", "d_gradcam"]
STRATEGIES = ["aggregate", "joint", "per_channel"]

ALL_FILES = (
    "config.toml", "provenance.json", "dataset.zarr", "meta.parquet", "data_summary.parquet",
    "training_history.parquet", "counterfactual_quality.parquet", "attributions.zarr", "dac_curves.parquet",
    "dac_scores.parquet", "dac_masks.zarr", "dac_sweep.parquet", "localisation.parquet", "channel_mass.parquet",
    "channel_tests.parquet", "channel_share_ci.parquet", "map_similarity.parquet", "strategy_comparison.parquet",
    "cp_differential.parquet", "channel_enrichment.parquet", "compartment_channel.parquet", "concordance.parquet",
    "concordance_ranks.parquet", "counterfactual_summary.parquet", "faithfulness_curves.parquet",
)


def make_fake_run(out: Path, files: tuple[str, ...] = ALL_FILES, n: int = 12, size: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    C, H, W = len(CHANNELS), size, size
    labels = np.arange(n) % 2
    cf_labels = 1 - labels
    images = rng.gamma(2.0, 0.2, size=(n, C, H, W)).astype(np.float32)
    cfs = images.copy()
    signal = np.zeros((n, C, H, W), bool)
    signal[:, 4, H // 4: H // 2, W // 4: W // 2] = True
    cfs[signal] += 0.8
    mito = CHANNELS.index("Mito")
    want = set(files)

    if "config.toml" in want:
        (out / "config.toml").write_text('[run]\nname = "fake"\nseed = 0\n\n[data]\nsource = "synthetic"\n')
    if "provenance.json" in want:
        write_json({
            "chanstat_run": "fake", "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:01:00+00:00",
            "quick": True, "seed": 0, "device": {"device": "cpu", "platform": "test", "cpu_count": 2},
            "versions": {"numpy": np.__version__, "pandas": pd.__version__, "python": "3.11"},
            "git_commit": None, "total_wall_s": 60.0,
            "stages": {"data": {"status": "done", "wall_s": 1.5, "n_images": n},
                       "model": {"status": "done", "wall_s": 20.25, "val_accuracy": 0.9375}},
        }, out / "provenance.json")
    if "dataset.zarr" in want:
        write_arrays(out / "dataset.zarr", {
            "images": images, "counterfactuals": cfs, "signal_masks": signal,
            "labels": labels.astype(np.int64), "counterfactual_labels": cf_labels.astype(np.int64),
        }, group_attrs={"channels": CHANNELS, "classes": CLASSES}, mode="w")
    if "meta.parquet" in want:
        write_table(pd.DataFrame({
            "sample": np.arange(n), "Metadata_Plate": [f"P{i % 2 + 1}" for i in range(n)],
            "Metadata_Well": [f"W{i // 2:02d}" for i in range(n)], "Metadata_Site": np.zeros(n, int),
            "Metadata_Class": [CLASSES[k] for k in labels],
        }), out / "meta.parquet")
    if "data_summary.parquet" in want:
        write_table(pd.DataFrame({"class": CLASSES, "n_images": [int((labels == k).sum()) for k in range(2)],
                                  "n_wells": [3, 3]}), out / "data_summary.parquet")
    if "training_history.parquet" in want:
        e = np.arange(1, 6)
        write_table(pd.DataFrame({"epoch": e, "train_loss": 0.7 / e, "train_accuracy": 1 - 0.4 / e,
                                  "val_loss": 0.8 / e, "val_accuracy": 1 - 0.5 / e}), out / "training_history.parquet")
    if "counterfactual_quality.parquet" in want:
        write_table(pd.DataFrame([{"sample": s, "channel": ch, "mean_abs_diff": 0.5 if ch == "Mito" else 0.01,
                                   "change_share": 0.9 if ch == "Mito" else 0.025, "label": int(labels[s]),
                                   "target_label": int(cf_labels[s]), "flipped": True, "provider": "oracle"}
                                  for s in range(n) for ch in CHANNELS]), out / "counterfactual_quality.parquet")
    if "counterfactual_summary.parquet" in want:
        write_table(pd.DataFrame({"provider": "oracle", "channel": CHANNELS, "n_samples": n,
                                  "mean_abs_diff": [0.01, 0.01, 0.01, 0.01, 0.5],
                                  "change_share": [0.025, 0.025, 0.025, 0.025, 0.9], "flip_rate": 0.95,
                                  "success_rate": 0.95}), out / "counterfactual_summary.parquet")
    if "attributions.zarr" in want:
        diff = cfs - images
        d_ig = diff * rng.normal(1.0, 0.3, size=diff.shape).astype(np.float32) - 0.05 * rng.random(diff.shape)
        residual = np.abs(diff)
        gradcam = np.abs(diff).mean(axis=1, keepdims=True)
        write_arrays(out / "attributions.zarr", {"d_ig": d_ig.astype(np.float32), "residual": residual,
                                                 "d_gradcam": gradcam.astype(np.float32)},
                     attrs={"d_ig": {"channels": CHANNELS, "method": "d_ig", "signed": True, "resolves_channels": True},
                            "residual": {"channels": CHANNELS, "method": "residual", "signed": False,
                                         "resolves_channels": True},
                            "d_gradcam": {"channels": CHANNELS, "method": "d_gradcam", "signed": False,
                                          "resolves_channels": False}},
                     group_attrs={"channels": CHANNELS}, mode="w")
    curves, scores = [], []
    steps = np.arange(21)
    for s in range(n):
        for mi, m in enumerate(METHODS):
            for strat in STRATEGIES + ["single_channel"]:
                chans = CHANNELS if strat == "single_channel" else ["all"]
                for ch in chans:
                    k = 2.0 + mi + (4.0 if ch in ("all", "Mito") else 0.0) + rng.normal(0, 0.3)
                    size_ = steps / steps[-1]
                    sc = (1 - (1 - size_) ** k) * (0.9 if ch in ("all", "Mito") else 0.2)
                    curves.append(pd.DataFrame({"sample": s, "method": m, "strategy": strat, "channel": ch,
                                                "step": steps, "threshold": 1 - size_, "mask_size": size_, "score": sc}))
                    scores.append({"sample": s, "method": m, "strategy": strat, "channel": ch,
                                   "dac": float(np.trapezoid(sc, size_))})
    if "dac_curves.parquet" in want:
        write_table(pd.concat(curves, ignore_index=True), out / "dac_curves.parquet")
    if "dac_scores.parquet" in want:
        write_table(pd.DataFrame(scores), out / "dac_scores.parquet")
    if "dac_masks.zarr" in want:
        masks = (np.abs(cfs - images) > 0.4).astype(np.float32)[:2]
        write_arrays(out / "dac_masks.zarr", {"d_ig.joint": masks, "d_gradcam.aggregate": masks.max(axis=1, keepdims=True)},
                     attrs={"d_ig.joint": {"channels": CHANNELS, "samples": [0, 1], "method": "d_ig", "strategy": "joint"},
                            "d_gradcam.aggregate": {"channels": ["all"], "samples": [0, 1], "method": "d_gradcam",
                                                    "strategy": "aggregate"}},
                     group_attrs={"channels": CHANNELS, "settings": {"closing": 10, "sigma": 2.0}}, mode="w")
    if "dac_sweep.parquet" in want:
        rows = [{"method": m, "closing": c, "sigma": sg, "sample": s, "strategy": "aggregate", "channel": "all",
                 "dac": 0.5 + 0.01 * c - 0.02 * sg + 0.1 * i + 0.01 * s}
                for i, m in enumerate(METHODS[:2]) for c in (0, 5, 10) for sg in (0.0, 2.0) for s in range(3)]
        write_table(pd.DataFrame(rows), out / "dac_sweep.parquet")
    if "localisation.parquet" in want:
        write_table(pd.DataFrame([{"method": m, "channel": ch, "channel_resolved": m != "d_gradcam", "n_images": n,
                                   "pxap": 100 * rng.random(), "dice": rng.random(), "miou": rng.random()}
                                  for m in METHODS for ch in CHANNELS]), out / "localisation.parquet")
    if "faithfulness_curves.parquet" in want:
        frac = np.linspace(0, 1, 11)
        write_table(pd.DataFrame([{"sample": s, "method": m, "metric": metric, "channel": "all",
                                   "channel_resolved": True, "fraction": f,
                                   "score": (1 - f) ** (2 + i) if metric == "deletion" else 1 - (1 - f) ** (2 + i)}
                                  for s in range(4) for i, m in enumerate(METHODS) for metric in ("deletion", "insertion")
                                  for f in frac]), out / "faithfulness_curves.parquet")
    mass_rows = []
    for s in range(n):
        for m in METHODS:
            raw = rng.random(C) + np.eye(C)[mito] * 2
            for c, ch in enumerate(CHANNELS):
                mass_rows.append({"sample": s, "method": m, "channel": ch, "mass": raw[c], "share": raw[c] / raw.sum(),
                                  "Metadata_Plate": f"P{s % 2 + 1}"})
    if "channel_mass.parquet" in want:
        write_table(pd.DataFrame(mass_rows), out / "channel_mass.parquet")
    if "channel_tests.parquet" in want:
        write_table(pd.DataFrame([
            {"method": "d_ig", "test": "friedman_f", "contrast": "channel", "channel_a": None, "channel_b": None,
             "statistic": 5.4321, "df1": 4.0, "df2": 20.0, "p_value": 0.000123456, "p_adj": 0.000370368,
             "effect_size": 0.8765, "effect_size_name": "kendall_w", "note": "", "unit": "well", "n_units": 6,
             "primary": True, "dominant_channel": "Mito", "dominant_share": 0.48, "dominant_ci_low": 0.41234,
             "dominant_ci_high": 0.55678},
            {"method": "d_ig", "test": "wilcoxon", "contrast": "pair", "channel_a": "Mito", "channel_b": "DNA",
             "statistic": 21.0, "df1": np.nan, "df2": np.nan, "p_value": 0.03125, "p_adj": 0.3125,
             "effect_size": 1.0, "effect_size_name": "rank_biserial", "note": "", "unit": "well", "n_units": 6,
             "primary": False, "dominant_channel": "Mito", "dominant_share": 0.48, "dominant_ci_low": 0.41234,
             "dominant_ci_high": 0.55678},
            {"method": "residual", "test": "friedman_f", "contrast": "channel", "channel_a": None, "channel_b": None,
             "statistic": 3.21, "df1": 4.0, "df2": 20.0, "p_value": 0.0123, "p_adj": 0.0246, "effect_size": 0.51,
             "effect_size_name": "kendall_w", "note": "", "unit": "well", "n_units": 6, "primary": True,
             "dominant_channel": "Mito", "dominant_share": 0.45, "dominant_ci_low": 0.3, "dominant_ci_high": 0.5},
        ]), out / "channel_tests.parquet")
    if "channel_share_ci.parquet" in want:
        write_table(pd.DataFrame([{"method": m, "channel": ch, "mean": 0.2 + (0.25 if ch == "Mito" else -0.06),
                                   "ci_low": 0.15 + (0.25 if ch == "Mito" else -0.06),
                                   "ci_high": 0.25 + (0.25 if ch == "Mito" else -0.06)}
                                  for m in METHODS for ch in CHANNELS]), out / "channel_share_ci.parquet")
    if "map_similarity.parquet" in want:
        pairs = [(CHANNELS[i], CHANNELS[j]) for i in range(C) for j in range(i + 1, C)]
        write_table(pd.DataFrame([{"method": m, "channel_a": a, "channel_b": b, "mean": 0.1 + 0.2 * k + 0.05 * i,
                                   "sd": 0.1, "median": 0.1, "n": n, "n_undefined": 0}
                                  for k, m in enumerate(METHODS[:2]) for i, (a, b) in enumerate(pairs)]),
                    out / "map_similarity.parquet")
    if "strategy_comparison.parquet" in want:
        write_table(pd.DataFrame([{"method": m, "strategy": s, "dac": 0.5 + 0.1 * i, "rank": i + 1}
                                  for m in METHODS for i, s in enumerate(STRATEGIES)]), out / "strategy_comparison.parquet")
    if "cp_differential.parquet" in want:
        feats = []
        for i in range(120):
            ch = CHANNELS[i % C]
            p = 10 ** -rng.uniform(0, 6 if ch == "Mito" else 1.5)
            chans = [ch] if i % 17 else [ch, "DNA"]
            feats.append({"feature": f"Cells_Intensity_Feature{i}_{ch}", "compartment": ["Cells", "Nuclei", "Cytoplasm"][i % 3],
                          "category": "Intensity", "channels": chans if i % 23 else [], "status": "tested",
                          "statistic": rng.normal(), "p_value": p, "q_value": min(1.0, p * 10),
                          "effect_size": rng.normal(0, 1), "significant": p * 10 < 0.05, "case": "treated",
                          "control": "control", "level": "well"})
        feats.append({"feature": "Cells_AreaShape_Constant", "compartment": "Cells", "category": "AreaShape",
                      "channels": [], "status": "constant", "statistic": np.nan, "p_value": np.nan, "q_value": np.nan,
                      "effect_size": np.nan, "significant": False, "case": "treated", "control": "control",
                      "level": "well"})
        write_table(pd.DataFrame(feats), out / "cp_differential.parquet")
    if "channel_enrichment.parquet" in want:
        write_table(pd.DataFrame({"channel": CHANNELS, "n_features": [24] * C, "n_significant": [1, 0, 2, 1, 15],
                                  "odds_ratio": [0.3, 0.0, 0.6, 0.3, 12.5], "p_value": [0.9, 1.0, 0.7, 0.9, 1e-6],
                                  "q_value": [1.0, 1.0, 1.0, 1.0, 5e-6], "mean_abs_effect": [0.2, 0.1, 0.3, 0.2, 1.2]}),
                    out / "channel_enrichment.parquet")
    if "compartment_channel.parquet" in want:
        write_table(pd.DataFrame([{"compartment": comp, "channel": ch, "n_features": 8,
                                   "n_significant": 6 if ch == "Mito" else 1, "fraction_significant": 0.75 if ch == "Mito" else 0.125}
                                  for comp in ("Cells", "Nuclei", "Cytoplasm") for ch in CHANNELS]),
                    out / "compartment_channel.parquet")
    if "concordance.parquet" in want:
        write_table(pd.DataFrame([{"method": m, "statistic": stat, "estimate": 0.9 - 0.3 * i, "p_value": 0.01 * (i + 1),
                                   "ci_low": 0.5 - 0.3 * i, "ci_high": 1.0, "alternative": "greater", "n_channels": C,
                                   **{f"attribution_rank_{ch}": r for r, ch in enumerate(CHANNELS[::-1], 1)},
                                   **{f"feature_rank_{ch}": r for r, ch in enumerate(CHANNELS[::-1], 1)}}
                                  for i, m in enumerate(METHODS[:2]) for stat in ("kendall_tau", "spearman_rho")]),
                    out / "concordance.parquet")
    if "concordance_ranks.parquet" in want:
        write_table(pd.DataFrame([{"method": m, "channel": ch, "attribution_score": 0.5 if ch == "Mito" else 0.1,
                                   "attribution_rank": float(r if i == 0 else (r % C) + 1), "feature_score": 1.0 / r,
                                   "feature_rank": float(r), "n_wells": 6}
                                  for i, m in enumerate(METHODS[:2]) for r, ch in enumerate(CHANNELS[::-1], 1)]),
                    out / "concordance_ranks.parquet")
    return out


# ============================================================================ fixtures
SECTIONS = (
    "Run overview", "Data and model", "Classifier training", "Counterfactuals", "Attribution galleries",
    "DAC: discriminative attribution curves", "Single-channel curves", "Optimal masks", "Smoothing sweep",
    "Channel shares", "Tests", "Confidence intervals", "Map similarity and strategies",
    "Localisation and faithfulness", "CellProfiler features", "Channel enrichment", "Compartment × channel",
    "Concordance", "Provenance",
)
DATA_ONLY = ("config.toml", "provenance.json", "dataset.zarr", "meta.parquet", "data_summary.parquet",
             "training_history.parquet")


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
    assert gallery.count("<img") == 4  # 2 images for each of the 2 transitions
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
    from chanstat.report.sections import dac_summary

    curves = pd.read_parquet(fake_run / "dac_curves.parquet")
    part = curves[(curves["method"] == "residual") & (curves["strategy"] == "joint")]
    mean_curve = part.groupby("mask_size")["score"].mean()
    expected = np.trapezoid(mean_curve.to_numpy(), mean_curve.index.to_numpy())
    summary = dac_summary(pd.read_parquet(fake_run / "dac_scores.parquet"))
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
def data_only_page(tmp_path_factory) -> str:
    from chanstat.report.cli import configure

    run = make_fake_run(tmp_path_factory.mktemp("report_partial") / "run", files=DATA_ONLY)
    parser = configure(argparse.ArgumentParser())
    args = parser.parse_args([str(run), "--to", "html", "--engine", "builtin"])
    assert args.func(args) == 0
    assert not (run / "report.pdf").exists()
    return (run / "report.html").read_text(encoding="utf-8")


def test_missing_stages_get_a_note_each(data_only_page):
    page = data_only_page
    assert "could not be drawn" not in page
    for name in SECTIONS:
        assert name in headings(page)
    notes = re.findall(r'<div class="chanstat-note chanstat-missing">(.*?)</div>', page, re.S)
    text = " ".join(notes)
    for f in ("attributions.zarr", "dac_scores.parquet", "dac_masks.zarr", "dac_sweep.parquet",
              "channel_mass.parquet", "channel_tests.parquet", "channel_share_ci.parquet", "map_similarity.parquet",
              "localisation.parquet", "cp_differential.parquet", "channel_enrichment.parquet",
              "compartment_channel.parquet", "concordance.parquet", "counterfactual_quality.parquet"):
        assert f in text, f"no 'stage not run' note names {f}"
    assert all("Stage not run" in n for n in notes)
    # what exists is still shown
    assert "Data set summary" in page and page.count("<img") == 1  # training curves


def test_empty_run_directory_renders(tmp_path):
    from chanstat.report import sections
    from chanstat.report.rundir import RunDirectory

    shown = []
    run = RunDirectory(tmp_path)
    import chanstat.report.display as display

    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        for name in ("overview", "data_and_model", "attribution_galleries", "dac_curves", "channel_tests",
                     "cp_differential", "provenance"):
            getattr(sections, name)(run)
    finally:
        display._display = original
    notes = [b[display.NOTE_MIME]["text"] for b in shown if display.NOTE_MIME in b]
    assert any("provenance.json" in n for n in notes)
    assert any("attributions.zarr" in n for n in notes)
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
    from chanstat.report.figures import map_scale

    signed = map_scale(np.array([-2.0, 0.5, 1.0]), quantile=1.0)
    assert signed["signed"] and signed["vmin"] == -2.0 and signed["vmax"] == 2.0 and signed["cmap"] == "RdBu_r"
    unsigned = map_scale(np.array([0.0, 0.5, 4.0]), quantile=1.0)
    assert not unsigned["signed"] and unsigned["vmin"] == 0.0 and unsigned["vmax"] == 4.0
    assert map_scale(np.zeros(4))["vmax"] == 1.0  # flat map: a usable scale, not 0/0
    assert map_scale(np.array([0.0, 1.0]), signed=True)["vmin"] < 0  # the registry's word wins


def test_mean_curve_interpolates_each_sample():
    from chanstat.report.figures import mean_curve

    curves = pd.DataFrame({"sample": [0, 0, 1, 1], "mask_size": [0.0, 1.0, 0.0, 0.5], "score": [0.0, 1.0, 0.0, 1.0]})
    out = mean_curve(curves, grid=np.array([0.0, 0.25, 0.5, 1.0]))
    # sample 0: x; sample 1: 2x up to 0.5 then flat at 1
    np.testing.assert_allclose(out["mean"], [0.0, 0.375, 0.75, 1.0])
    assert (out["n"] == 2).all()


def test_channel_colours_follow_stains():
    from chanstat.report.figures import channel_colours, channel_key

    assert channel_key("OrigDNA") == "dna" and channel_key("CorrMito") == "mito" and channel_key("mito_tubeness") == "mito"
    assert channel_key("ER") == "er" and channel_key("ERK") != "er"
    colours = channel_colours(["DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "X1", "X2"])
    assert len(set(colours.values())) == 8  # every channel distinguishable
    assert channel_colours(["OrigDNA"])["OrigDNA"] == channel_colours(["DNA"])["DNA"]


def test_gallery_marks_channel_agnostic_maps():
    from chanstat.report.figures import attribution_gallery, map_scale

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
    ctx = types.SimpleNamespace(out=tmp_path, section=lambda name: config.get(name, {}),
                                resolve_path=lambda p: tmp_path / p)
    info = stage.run(ctx)
    assert seen["formats"] == ["html", "pdf"] and seen["engine"] == "builtin" and seen["template"] is None
    assert info == {"engine": "builtin", "files": ["report.html", "report.pdf"]}
    config["report"] = {"formats": ["html"], "engine": "builtin", "template": "my.py"}
    stage.run(ctx)
    assert seen["formats"] == ["html"] and seen["template"] == tmp_path / "my.py"


def test_report_package_never_imports_torch():
    code = ("import sys; import chanstat.report, chanstat.report.sections, chanstat.report.renderer, "
            "chanstat.report.pdf, chanstat.report.stage, chanstat.report.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
