"""The decompose stage in the pipeline: Shapley values and compartment masses, their statistics and
the per-cell link to CellProfiler features, on the synthetic set with a planted Mito phenotype."""

from __future__ import annotations

import numpy as np
import pytest

from chanstat import pipeline
from chanstat.stage import Arrays


@pytest.fixture(scope="module")
def decomposed(tiny_synthetic, trained_model, tmp_path_factory):
    data = tiny_synthetic
    config = {
        "run": {"device": "cpu"},
        "decompose": {"interactions": True},
        "stats": {"n_boot": 200, "tests": ["dominance"]},
        "cellprofiler": {"n_perm": 0, "n_boot": 50},
    }
    ctx = pipeline.context(config, tmp_path_factory.mktemp("decompose") / "run", dataset=data, model=trained_model)
    residual = (data.images - data.counterfactuals).abs().numpy()
    ctx.run.write(
        "attributions",
        Arrays({"residual": residual}, attrs={"residual": {"channels": list(data.channels), "method": "residual"}}),
    )
    infos = {name: pipeline.run_stage(name, ctx) for name in ("decompose", "stats", "cellprofiler")}
    return ctx, infos


def test_shapley_values_add_up_and_name_the_planted_channel(decomposed):
    ctx, infos = decomposed
    values = ctx.run.table("channel_shapley")
    totals = values.groupby("sample")["shapley"].sum()
    expected = ctx.run.table("channel_shapley_total").set_index("sample")["total"]
    np.testing.assert_allclose(totals.sort_index(), expected.sort_index(), atol=1e-6)
    means = values.groupby("channel")["shapley"].mean()
    # the oracle counterfactual differs in Mito only: every other channel is exactly 0
    assert (means.drop("Mito") == 0).all() and abs(means["Mito"]) > 0
    assert set(ctx.run.table("channel_shapley_interactions")["channel_a"]) <= set(ctx.dataset.channels)
    assert infos["decompose"]["shapley"]["baseline"] == "counterfactual"


def test_compartment_mass_partitions_the_channel_mass(decomposed):
    ctx, _ = decomposed
    compartments = ctx.run.table("compartment_mass")
    mass = ctx.run.table("channel_mass")
    by_channel = compartments.groupby(["sample", "channel"])["mass"].sum()
    reference = mass[mass["method"] == "residual"].set_index(["sample", "channel"])["mass"]
    np.testing.assert_allclose(by_channel.loc[reference.index], reference, rtol=1e-9)
    assert set(compartments["compartment"]) == {"nuclei", "cytoplasm", "background"}
    objects = ctx.run.table("object_mass")
    assert {"object", "compartment", "channel", "mass", "method"} <= set(objects.columns)


def test_stats_test_the_shapley_values_and_the_link_runs(decomposed):
    ctx, infos = decomposed
    tests = ctx.run.table("shapley_tests")
    assert {"against_zero", "dominance"} <= set(tests["test"])
    best = ctx.run.table("best_channel")
    assert "shapley" in set(best["quantity"])
    link = ctx.run.table("feature_link")
    assert len(link) and {"feature", "compartment", "channel", "p_value"} <= set(link.columns)
    assert infos["cellprofiler"]["feature_link_rows"] == len(link)


def test_real_field_objects_come_from_the_cellprofiler_outlines(shared_data):
    """The LoadData reader fills CellProfiler's outline images into label images; compartment
    masses then partition the field's attribution mass (a uniform map: mass = area)."""
    from pathlib import Path

    from chanstat.data.readers import read_loaddata
    from chanstat.decompose import compartment_mass

    csv = Path(__file__).resolve().parents[1] / "analyses" / "real_field_loaddata.csv"
    data = read_loaddata(csv, channels=["DNA", "Mito"], objects={"cells": "CellsOutlines", "nuclei": "NucleiOutlines"})
    nuclei, cells = data.objects["nuclei"], data.objects["cells"]
    assert len(np.unique(nuclei)) - 1 == 37  # the 37 nuclei CellProfiler outlined in this field
    assert 25 <= len(np.unique(cells)) - 1 <= 37  # cells cut by the field's border merge into the background
    uniform = np.ones((1, 2, *nuclei.shape[1:]), np.float32)
    result = compartment_mass(uniform, data.objects, channels=["DNA", "Mito"])
    shares = result.compartments.groupby("compartment")["share"].sum()
    assert shares.sum() == pytest.approx(1.0)
    assert shares["nuclei"] == pytest.approx((nuclei > 0).mean(), abs=1e-9)
