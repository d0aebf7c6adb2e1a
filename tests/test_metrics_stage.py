"""The metrics pipeline stage: method x channel localisation table, faithfulness tables, PixelCAM."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chanstat.io import read_table


@pytest.fixture(scope="module")
def stage_run(tiny_synthetic, trained_model, tmp_path_factory):
    from chanstat import pipeline
    from chanstat.attribution import attribute
    from chanstat.stage import Arrays

    data = tiny_synthetic
    maps = {
        "residual": (data.images - data.counterfactuals).abs().numpy(),
        "random": attribute(None, data.images, None, "random").numpy(),
        "gradcam": attribute(trained_model, data.images, data.labels, "gradcam").numpy(),
    }
    config = {
        "attribution": {"methods": ["gradcam", "pixelcam"], "pixelcam": {"steps": 60}},
        "metrics": {
            "faithfulness_methods": ["residual", "random", "not_in_this_run"],
            "faithfulness_images": 2,
            "steps": 4,
            "road": True,
            "road_fractions": [0.5],
            "randomisation": {"methods": ["saliency", "residual"], "images": 2, "layers": ["classifier.1"]},
        }
    }
    out = tmp_path_factory.mktemp("metrics_stage")
    ctx = pipeline.context({**config, "run": {"device": "cpu"}}, out, dataset=data, model=trained_model)
    attribution_info = pipeline.run_stage("attribution", ctx)  # gradcam, then one PixelCAM head on every image
    staged = ctx.run.read("attributions")
    merged = Arrays({**maps, "pixelcam": staged.arrays["pixelcam"]})
    ctx.run.write("attributions", merged)
    ctx.results["attributions"] = merged
    info = pipeline.run_stage("metrics", ctx)
    info["attribution"] = attribution_info
    return out, info, ctx


def test_localisation_table_is_method_by_channel(stage_run, tiny_synthetic):
    out, info, ctx = stage_run
    loc = read_table(out / "localisation.parquet")
    channels = list(tiny_synthetic.channels)
    assert set(loc["method"]) == {"residual", "random", "gradcam", "pixelcam"}
    assert len(loc) == 4 * (1 + len(channels))
    assert {"pxap", "dice", "miou", "relevance_mass", "relevance_rank", "pointing_game", "deletion_auc",
            "insertion_auc", "road_morf_auc", "road_lerf_auc"} <= set(loc.columns)
    overall = loc[loc["channel"] == "all"].set_index("method")
    # the residual marks exactly where image and counterfactual differ; random noise does not
    assert overall.loc["residual", "pxap"] > 60 > overall.loc["random", "pxap"]
    assert overall.loc["residual", "relevance_mass"] == pytest.approx(1.0)
    planted = tiny_synthetic.meta.attrs.get("planted_channel", "Mito")
    per_channel = loc[(loc["method"] == "residual") & (loc["channel"] != "all")].set_index("channel")
    assert per_channel["pxap"].drop(planted).isna().all()  # no foreground outside the planted channel
    assert not loc.loc[loc["method"].isin(["gradcam", "pixelcam"]), "channel_resolved"].any()
    assert ctx.results["localisation"].equals(loc)


def test_faithfulness_tables(stage_run, tiny_synthetic):
    out, info, _ = stage_run
    faith = read_table(out / "faithfulness.parquet")
    curves = read_table(out / "faithfulness_curves.parquet")
    assert set(faith["metric"]) == {"deletion", "insertion", "road_morf", "road_lerf"}
    assert set(faith["method"]) == {"residual", "random"}
    assert faith["sample"].nunique() == 2
    n_views = 1 + len(tiny_synthetic.channels)
    assert len(faith) == 2 * 2 * 4 * n_views
    assert set(curves.columns) == {"sample", "method", "metric", "channel", "channel_resolved", "fraction", "score"}
    deletion = curves[curves["metric"] == "deletion"]
    assert sorted(deletion["fraction"].unique()) == pytest.approx(np.linspace(0, 1, 5))
    assert info["faithfulness_skipped"] == {"not_in_this_run": "no maps in this run"}


def test_pixelcam_head_is_trained_once_in_the_attribution_stage(stage_run, tiny_synthetic):
    out, info, _ = stage_run
    report = info["attribution"]["pixelcam"]
    assert report["learned_from"] == "the gradcam maps of this stage" and report["feature_layer"]
    from chanstat.rundir import RunDirectory

    stored = RunDirectory(out).read("attributions")
    assert stored.arrays["pixelcam"].shape == (len(tiny_synthetic), 1) + tuple(tiny_synthetic.images.shape[2:])
    # a head shared by every image: its maps are probabilities, and it is localised like any method
    assert 0 <= stored.arrays["pixelcam"].min() and stored.arrays["pixelcam"].max() <= 1
    assert info["pxap_all"]["pixelcam"] is not None and info["pxap_all"]["pixelcam"] > info["pxap_all"]["random"]


def test_randomisation_table(stage_run, tiny_synthetic):
    out, info, _ = stage_run
    table = read_table(out / "randomisation.parquet")
    assert set(table["method"]) == {"saliency", "residual"}
    assert set(table["layer"]) == {"classifier.1"}
    assert len(table) == 2 * 2 * (1 + len(tiny_synthetic.channels))
    # the residual |x - x'| never looks at the model: randomising it changes nothing; its planes
    # outside the planted channel are all zero, and a constant map has no rank correlation
    residual = table[table["method"] == "residual"]
    planted = tiny_synthetic.meta.attrs.get("planted_channel", "Mito")
    assert np.allclose(residual.loc[residual["channel"].isin(["all", planted]), "spearman"], 1.0)
    assert residual.loc[~residual["channel"].isin(["all", planted]), "spearman"].isna().all()
    assert info["randomisation"]["n_images"] == 2


def test_stage_needs_masks(tiny_synthetic, trained_model, tmp_path):
    from chanstat import pipeline

    data = tiny_synthetic.subset(np.arange(4))
    data.signal_masks = None
    ctx = pipeline.context({"metrics": {}}, tmp_path, dataset=data, model=trained_model)
    with pytest.raises(RuntimeError, match="signal_masks"):
        pipeline.run_stage("metrics", ctx)


def test_quick_demo_writes_the_metrics_tables(quick_run):
    loc = read_table(quick_run / "localisation.parquet")
    assert {"method", "channel", "pxap", "dice", "miou"} <= set(loc.columns)
    assert "all" in set(loc["channel"])
    assert (quick_run / "faithfulness.parquet").exists()
    assert isinstance(read_table(quick_run / "faithfulness.parquet"), pd.DataFrame)
