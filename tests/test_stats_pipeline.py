"""The stats stage inside the quick demo run (shared session fixture `quick_run`): planted Mito."""
from __future__ import annotations

import numpy as np

from chanstat.rundir import RunDirectory


def test_quick_demo_writes_channel_statistics(quick_run):
    run = RunDirectory(quick_run)
    mass, tests, shares = run.table("channel_mass"), run.table("channel_tests"), run.table("channel_share_ci")
    similarity, meta = run.table("map_similarity"), run.table("meta")

    assert {"sample", "method", "channel", "mass", "share", "Metadata_Plate", "Metadata_Well", "transition"} <= set(mass.columns)
    assert mass["share"].notna().all()
    totals = mass.groupby(["method", "sample"])["share"].sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0, rtol=1e-9)
    assert mass["sample"].nunique() == len(meta)

    primary = tests[tests["primary"] & (tests["transition"] == "all")]
    assert sorted(primary["method"]) == sorted(mass["method"].unique())  # one primary row per method
    assert (primary["test"] == "dominance").all() and (primary["unit"] == "well").all()
    n_wells = meta[["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0]
    assert (primary["n_units"] == n_wells).all()
    # two plates, wells as units: the design warning and the plate x channel test are there
    assert primary["warning"].str.contains("plate").all()
    assert "plate_x_channel" in set(tests["test"])
    # discriminative IG against oracle counterfactuals (planted Mito phenotype) names Mito; random maps name none
    by_method = primary.set_index("method")
    assert by_method.loc["d_ig", "dominant_channel"] == "Mito" and by_method.loc["d_ig", "p_value"] < 0.05
    assert by_method.loc["random", "dominant_channel"] == "none"

    best = run.table("best_channel")
    best = best[best["transition"] == "all"]
    named = best.groupby(["quantity", "method"])["named_channel"].first()
    assert named["share", "d_ig"] == "Mito" and named["shapley", "shapley"] == "Mito"
    random = best[(best["quantity"] == "share") & (best["method"] == "random")]
    assert named["share", "random"] == "" and random["in_set"].sum() >= 2  # a random map names no channel

    assert set(shares["method"]) == set(mass["method"])
    assert similarity["mean"].dropna().between(-1, 1).all()
    assert ((similarity["n"] + similarity["n_undefined"]) == len(meta)).all()  # constant maps: rho undefined
    comparison = run.table("strategy_comparison")
    assert set(comparison["comparison"]) <= {"strategy", "method"} and len(comparison)
    stages = run.provenance["stages"]
    assert stages["stats"]["status"] == "done" and stages["stats"]["dominant_channel"]["d_ig"] == "Mito"
    assert stages["stats"]["best_channel"]["d_ig"] == "Mito" and stages["stats"]["best_channel"]["random"] != "Mito"
