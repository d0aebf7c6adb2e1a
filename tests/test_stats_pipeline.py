"""The stats stage inside the quick demo run (shared session fixture `quick_run`)."""
from __future__ import annotations

import numpy as np
import pytest

from chanstat.io import read_json, read_table


def test_quick_demo_writes_channel_statistics(quick_run):
    mass_path = quick_run / "channel_mass.parquet"
    if not mass_path.exists():
        pytest.fail(f"the quick demo wrote no channel_mass.parquet (stages: {read_json(quick_run / 'provenance.json')['stages']})")
    mass = read_table(mass_path)
    tests = read_table(quick_run / "channel_tests.parquet")
    shares = read_table(quick_run / "channel_share_ci.parquet")
    similarity = read_table(quick_run / "map_similarity.parquet")
    meta = read_table(quick_run / "meta.parquet")

    assert {"sample", "method", "channel", "mass", "share", "Metadata_Plate", "Metadata_Well", "transition"} <= set(mass.columns)
    assert mass["share"].notna().all()
    totals = mass.groupby(["method", "sample"])["share"].sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0, rtol=1e-9)
    assert mass["sample"].nunique() == len(meta)

    primary = tests[tests["primary"]]
    assert sorted(primary["method"]) == sorted(mass["method"].unique())  # one primary row per method
    assert (primary["unit"] == "well").all() and (primary["test"] == "friedman_f").all()
    n_wells = meta[["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0]
    assert (primary["n_units"] == n_wells).all()
    assert set(tests["transition"]) >= {"all"}
    # discriminative IG against oracle counterfactuals (planted Mito phenotype) puts its mass on Mito
    if "d_ig" in set(primary["method"]):
        row = primary[primary["method"] == "d_ig"].iloc[0]
        assert row["dominant_channel"] == "Mito" and row["p_value"] < 0.05

    assert set(shares["method"]) == set(mass["method"])
    assert similarity["mean"].dropna().between(-1, 1).all()
    assert ((similarity["n"] + similarity["n_undefined"]) == len(meta)).all()  # constant maps: rho undefined
    stages = read_json(quick_run / "provenance.json")["stages"]
    assert stages["stats"]["status"] == "done" and "methods" in stages["stats"]
    if (quick_run / "dac_scores.parquet").exists():
        comparison = read_table(quick_run / "strategy_comparison.parquet")
        assert set(comparison["comparison"]) <= {"strategy", "method"} and len(comparison)
