"""DAC on the synthetic screen (planted Mito phenotype) and the pipeline stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chanstat.dacscore import dac
from chanstat.dacscore.stage import is_discriminative
from chanstat.stage import balanced_subset


@pytest.fixture(scope="module")
def learned_model(tiny_synthetic, trained_model):
    """The conftest model, which must have learned the phenotype (DAC can only find what the model uses)."""
    with torch.no_grad():
        accuracy = (trained_model(tiny_synthetic.images).argmax(1) == tiny_synthetic.labels).float().mean().item()
    assert accuracy >= 0.7, f"the seeded trained_model fixture did not learn the planted phenotype ({accuracy:.2f})"
    return trained_model


def _subset(dataset, n=12):
    return balanced_subset(dataset.labels.numpy(), n, seed=0)


def _single_channel_means(model, dataset, maps, idx):
    result = dac(
        model,
        dataset.images[idx],
        dataset.labels[idx],
        maps,
        counterfactuals=dataset.counterfactuals[idx],
        channels=dataset.channels,
        strategy="single_channel",
        steps=20,
    )
    return result.scores.groupby("channel")["dac"].mean()


def test_planted_channel_carries_the_decision_residual(tiny_synthetic, learned_model):
    """Oracle counterfactuals differ in Mito only: its single-channel DAC is the largest,
    and every other channel's is exactly 0 (pasting an identical channel changes nothing)."""
    ds = tiny_synthetic
    idx = _subset(ds)
    residual = (ds.images[idx] - ds.counterfactuals[idx]).abs()
    means = _single_channel_means(learned_model, ds, residual, idx)
    assert means.idxmax() == "Mito" and means["Mito"] > 0.02
    assert (means.drop("Mito") == 0).all()


def test_planted_channel_carries_the_decision_d_ig(tiny_synthetic, learned_model):
    attribution = pytest.importorskip("chanstat.attribution")
    ds = tiny_synthetic
    idx = _subset(ds)
    trained_model = learned_model
    maps = attribution.attribute(
        trained_model,
        ds.images[idx],
        ds.labels[idx],
        "d_ig",
        counterfactuals=ds.counterfactuals[idx],
        counterfactual_target=ds.counterfactual_target[idx],
        n_steps=16,
    )
    means = _single_channel_means(trained_model, ds, maps, idx)
    assert means.idxmax() == "Mito" and means["Mito"] > 0.02
    # and the channel-resolved strategies rank the D-IG map above a random one
    result = dac(
        trained_model,
        ds.images[idx],
        ds.labels[idx],
        maps,
        counterfactuals=ds.counterfactuals[idx],
        strategy=["joint", "per_channel"],
        steps=20,
    )
    noise = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    random = dac(
        trained_model,
        ds.images[idx],
        ds.labels[idx],
        noise,
        counterfactuals=ds.counterfactuals[idx],
        strategy=["joint", "per_channel"],
        steps=20,
    )
    assert (result.summary()["dac"].to_numpy() > random.summary()["dac"].to_numpy()).all()


def test_is_discriminative():
    assert is_discriminative("d_ig") and is_discriminative("residual") and is_discriminative("random")
    assert not is_discriminative("ig") and not is_discriminative("gradcam")


def test_balanced_subset():
    labels = np.array([0] * 10 + [1] * 4)
    idx = balanced_subset(labels, 6, seed=1)
    assert len(idx) == 6 and np.all(np.diff(idx) > 0) and (labels[idx] == 1).sum() == 3
    assert balanced_subset(labels, None, 0).tolist() == list(range(14))
    assert len(balanced_subset(labels, 12, 0)) == 12  # the small class runs out, the other fills up


def _stage_context(tmp_path, dataset, model, config, maps):
    from chanstat import pipeline
    from chanstat.stage import Arrays

    ctx = pipeline.context({**config, "run": {"device": "cpu"}}, tmp_path / "run", dataset=dataset, model=model)
    ctx.run.write("attributions", Arrays(maps))
    return ctx


def test_stage_writes_tables_masks_and_sweep(tmp_path, tiny_synthetic, trained_model):
    from chanstat import pipeline
    from chanstat.rundir import RunDirectory

    ds = tiny_synthetic
    n = ds.images.shape[0]
    residual = (ds.images - ds.counterfactuals).abs().numpy()
    config = {
        "dac": {
            "strategies": ["aggregate", "single_channel"],
            "steps": 6,
            "max_samples": 6,
            "filter_pairs": True,
            "sweep": {"closings": [0, 4], "sigmas": [0, 1.0], "methods": ["residual"]},
        }
    }
    maps = {
        "residual": residual,
        "d_gradcam": residual.sum(1, keepdims=True),  # channel-agnostic: aggregate only
        "ig": residual,  # not discriminative: not scored
    }
    ctx = _stage_context(tmp_path, ds, trained_model, config, maps)
    info = pipeline.run_stage("dac", ctx)
    assert info["methods"] == ["residual", "d_gradcam"]

    run = RunDirectory(ctx.out)
    scores = run.table("dac_scores")
    curves = run.table("dac_curves")
    assert list(scores.columns) == ["sample", "method", "strategy", "channel", "dac"]
    assert list(curves.columns)[:8] == [
        "sample",
        "method",
        "strategy",
        "channel",
        "step",
        "threshold",
        "mask_size",
        "score",
    ]
    kept = sorted(set(scores["sample"]))
    assert len(kept) == 6 - info["n_dropped"] and max(kept) < n
    assert set(scores.loc[scores["method"] == "d_gradcam", "strategy"]) == {"aggregate"}
    assert set(scores.loc[scores["strategy"] == "single_channel", "channel"]) == set(ds.channels)
    assert ctx.results["dac_scores"].equals(scores)

    masks = run.arrays("dac_masks")
    assert set(masks.arrays) == {"residual.aggregate", "residual.single_channel", "d_gradcam.aggregate"}
    assert masks.arrays["residual.aggregate"].shape == (len(kept), 1, *ds.images.shape[2:])
    assert masks.arrays["residual.single_channel"].shape == (len(kept), len(ds.channels), *ds.images.shape[2:])
    assert masks.samples.tolist() == kept

    sweep = run.table("dac_sweep")
    assert list(sweep.columns) == ["method", "closing", "sigma", "sample", "strategy", "channel", "dac"]
    assert set(zip(sweep["closing"], sweep["sigma"])) == {(0, 0.0), (0, 1.0), (4, 0.0), (4, 1.0)}
    assert len(info["sweep_mean_dac"]) == 4  # residual x aggregate x 4 settings


def test_stage_errors(tmp_path, tiny_synthetic, trained_model):
    from chanstat import pipeline

    zeros = np.zeros(tuple(tiny_synthetic.images.shape), np.float32)
    ctx = _stage_context(
        tmp_path / "a", tiny_synthetic, trained_model, {"dac": {"methods": ["d_ig"]}}, {"residual": zeros}
    )
    with pytest.raises(ValueError, match=r"methods \['d_ig'\] have no attribution maps"):
        pipeline.run_stage("dac", ctx)
    ctx = _stage_context(
        tmp_path / "b", tiny_synthetic, trained_model, {"dac": {}}, {"residual": np.zeros((3, 5, 8, 8), np.float32)}
    )
    with pytest.raises(ValueError, match="cover 3 images"):
        pipeline.run_stage("dac", ctx)


@pytest.mark.slow
def test_speed_benchmark_runs(tmp_path):
    """Smoke run of analyses/benchmarks/dac_speed.py (numbers are reported, never asserted)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analyses" / "benchmarks" / "dac_speed.py"
    spec = importlib.util.spec_from_file_location("dac_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(
        ["--quick", "--pairs", "4", "--steps", "10", "--method", "residual", "--json", str(tmp_path / "speed.json")]
    )
    assert [row["strategy"] for row in out["rows"]] == ["aggregate", "joint", "per_channel", "single_channel"] * 2
    assert all(row["speedup_vs_published"] > 0 and row["speedup_vs_quac"] > 0 for row in out["rows"])
