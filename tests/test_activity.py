"""Phenotypic activity (mAP against controls) on the real LINCS plate SQ00015054."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chanstat.cellprofiler import activity

LINCS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lincs_SQ00015054" / \
    "SQ00015054_normalized_feature_select.csv.gz"
PROTEASOME = ("BRD-K50691590", "BRD-K60230970")


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    if not LINCS.is_file():
        pytest.skip(f"real data not found: {LINCS}")
    return pd.read_csv(LINCS)


def test_lincs_proteasome_inhibitors_active_dmso_pseudo_groups_not(lincs):
    profiles = lincs.copy()
    dmso = np.flatnonzero(profiles["Metadata_broad_sample"].eq("DMSO").to_numpy())
    rng = np.random.default_rng(7)
    shuffled = rng.permutation(dmso)
    # 24 DMSO wells: two random pseudo-groups of 6 "perturbations", the other 12 stay controls
    profiles.loc[shuffled[:6], "Metadata_broad_sample"] = "DMSO_pseudo_A"
    profiles.loc[shuffled[6:12], "Metadata_broad_sample"] = "DMSO_pseudo_B"
    result = activity(profiles, perturbation="Metadata_broad_sample", control="DMSO", null_size=5000, seed=0)
    by = result.set_index("perturbation")
    for compound in PROTEASOME:
        row = by[by.index.str.startswith(compound)].iloc[0]
        assert row["n_replicates"] == 12 and row["n_controls"] == 12
        assert row["p_adj"] < 0.05 and row["active"], row
        assert row["mean_average_precision"] > 0.9
    for pseudo in ("DMSO_pseudo_A", "DMSO_pseudo_B"):
        assert not by.loc[pseudo, "active"] and by.loc[pseudo, "p_adj"] >= 0.05, by.loc[pseudo]
    assert result["p_adj_method"].eq("bh").all()
    assert (result["p_adj"] >= result["p_value"] - 1e-12).all()


def test_activity_holm_and_errors(lincs):
    sub = lincs[lincs["Metadata_broad_sample"].str.startswith(("DMSO", "BRD-K50691590"), na=False)]
    holm = activity(sub, padjust="holm", null_size=2000)
    assert holm["p_adj_method"].eq("holm").all() and holm["active"].all()
    with pytest.raises(ValueError, match="no profile has Metadata_broad_sample in"):
        activity(sub, control="PBS")
    with pytest.raises(ValueError, match="lack columns"):
        activity(sub, perturbation="Metadata_compound")
    bad = sub.copy()
    feature = [c for c in bad.columns if not c.startswith("Metadata_")][0]
    bad.loc[bad.index[0], feature] = np.nan
    with pytest.raises(ValueError, match="missing or infinite"):
        activity(bad)


def test_report_shows_activity_when_saved(lincs, tmp_path):
    import chanstat.report.display as display
    from chanstat.report import sections
    from chanstat.rundir import RunDirectory

    sub = lincs[lincs["Metadata_broad_sample"].str.startswith(("DMSO", "BRD-K50691590", "BRD-K60230970"), na=False)].copy()
    sub.loc[sub["Metadata_broad_sample"].str.startswith("BRD-K6023"), "Metadata_broad_sample"] = "<b>K6023</b>"
    result = activity(sub, null_size=1000)
    shown: list = []
    original = display._display
    display._display = lambda bundle, metadata=None: shown.append(bundle)
    try:
        empty = RunDirectory(tmp_path / "empty", create=True)
        sections.activity(empty)
        assert shown == []  # no profile table given: nothing to show
        run = RunDirectory(tmp_path / "run", create=True).save(activity=result)
        assert run.table("activity")["perturbation"].tolist() == result["perturbation"].tolist()
        sections.activity(run)
    finally:
        display._display = original
    html = " ".join(b.get("text/html", "") for b in shown)
    assert "2 of 2 perturbations are active" in html and "BRD-K50691590" in html
    assert "<b>K6023</b>" not in html and "&lt;b&gt;K6023&lt;/b&gt;" in html
