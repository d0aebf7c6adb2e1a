"""DAC engine: smoothing vs scipy, schedules, curves vs a per-mask reference, properties, errors.

The reference (``reference_dac`` below) is the straightforward loop: one mask at a time,
scipy binary closing and Gaussian per mask, one forward pass per mask at batch size one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from chanstat.dacscore import (
    STRATEGIES,
    dac,
    gaussian_blur,
    grey_closing,
    rank_fractions,
    smoothing_sweep,
    structuring_element,
    value_thresholds,
)
from chanstat.dacscore.result import curve_area
from chanstat.dacscore.thresholds import element_ranks, selection_counts

ALL_STRATEGIES = ["aggregate", "joint", "per_channel", "single_channel"]


# --------------------------------------------------------------------------- the reference


def binary_closing(mask: np.ndarray, element: np.ndarray | None) -> np.ndarray:
    """Closing whose borders neither grow nor erode (OpenCV's default border rule)."""
    if element is None:
        return mask.copy()
    dilated = ndi.binary_dilation(mask, structure=element, border_value=0)
    return ndi.binary_erosion(dilated, structure=element, border_value=1)


def blur_reference(mask: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return mask.astype(np.float64)
    return ndi.gaussian_filter(mask.astype(np.float64), sigma, mode="mirror", truncate=2.5)


def select(values: np.ndarray, schedule: str, steps: int, k: int) -> np.ndarray:
    """Elements of one ranking group (any shape, >= 0) selected at step ``k``."""
    flat = values.reshape(-1)
    if schedule == "value":
        if k == steps:
            return np.ones(values.shape, bool)
        peak = flat.max()
        normalised = flat / peak if peak > 0 else np.zeros_like(flat)
        return (normalised > np.float32(1.0 - k / steps)).reshape(values.shape)
    n = int(np.rint(rank_fractions(steps)[k] * flat.size))
    order = np.argsort(flat, kind="stable")  # of equal values the lower index ranks lower
    chosen = np.zeros(flat.size, bool)
    if n:
        chosen[order[flat.size - n :]] = True
    return chosen.reshape(values.shape)


def reference_dac(
    model,
    real,
    counterfactual,
    attributions,
    target,
    strategy,
    steps,
    schedule="value",
    closing=10,
    closing_shape="ellipse",
    sigma=2.0,
):
    """``mask_size`` and ``score`` arrays of shape (N, K, steps + 1)."""
    real = torch.as_tensor(real, dtype=torch.float32)
    counterfactual = torch.as_tensor(counterfactual, dtype=torch.float32)
    magnitude = torch.as_tensor(attributions, dtype=torch.float32).abs()
    element = structuring_element(closing, closing_shape) if closing > 1 else None
    n, c = real.shape[:2]
    sizes, scores = [], []
    with torch.no_grad():
        for i in range(n):
            x, xc, y = real[i : i + 1], counterfactual[i : i + 1], int(target[i])
            p_cf = torch.softmax(model(xc), 1)[0, y].item()
            if strategy == "aggregate":
                planes, curves = magnitude[i].sum(0, keepdim=True).numpy(), [[0]]
            elif strategy == "single_channel":
                planes, curves = magnitude[i].numpy(), [[k] for k in range(c)]
            else:
                planes, curves = magnitude[i].numpy(), [list(range(c))]
            sample_sizes, sample_scores = [], []
            for curve in curves:
                curve_sizes, curve_scores = [], []
                for k in range(steps + 1):
                    if strategy == "joint":
                        chosen = select(planes, schedule, steps, k)
                    else:
                        chosen = np.stack([select(p, schedule, steps, k) for p in planes])
                    closed = np.stack([binary_closing(chosen[p], element) for p in curve])
                    hybrid = xc.clone()
                    for plane, closed_plane in zip(curve, closed):
                        weight = torch.as_tensor(blur_reference(closed_plane, sigma), dtype=torch.float32)
                        for ch in range(c) if strategy == "aggregate" else [plane]:
                            hybrid[0, ch] = weight * x[0, ch] + (1 - weight) * xc[0, ch]
                    curve_sizes.append(closed.sum() / closed.size)
                    curve_scores.append(torch.softmax(model(hybrid), 1)[0, y].item() - p_cf)
                sample_sizes.append(curve_sizes)
                sample_scores.append(curve_scores)
            sizes.append(sample_sizes)
            scores.append(sample_scores)
    return np.asarray(sizes), np.asarray(scores)


def as_arrays(curves: pd.DataFrame, strategy: str, n_steps: int):
    part = curves[curves["strategy"] == strategy]
    n_samples = part["sample"].nunique()
    return (
        part["mask_size"].to_numpy().reshape(n_samples, -1, n_steps),
        part["score"].to_numpy().reshape(n_samples, -1, n_steps),
    )


# --------------------------------------------------------------------------- fixtures


class TinyNet(nn.Module):
    """A small CNN with a spatially structured decision (not just a mean)."""

    def __init__(self, channels: int, classes: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def toy():
    """Three pairs of 3-channel 14 x 17 images (non-square), channel-resolved maps with ties."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyNet(3).eval()
    for p in model.parameters():
        p.data *= 3.0  # decisive probabilities, so scores move
    real = torch.rand(3, 3, 14, 17, generator=g)
    counterfactual = torch.rand(3, 3, 14, 17, generator=g)
    maps = torch.randn(3, 3, 14, 17, generator=g)
    maps[0, 1] = 0.0  # an all-zero channel
    maps[1, :, :4] = 0.5  # a plateau of ties
    maps = (maps * 4).round() / 4  # many ties everywhere
    target = torch.tensor([0, 1, 0])
    return model, real, counterfactual, maps, target


# --------------------------------------------------------------------------- morphology


def test_structuring_elements():
    assert structuring_element(0).tolist() == [[True]]
    assert structuring_element(1, "square").tolist() == [[True]]
    square = structuring_element(4, "square")
    assert square.shape == (4, 4) and square.all()
    odd = structuring_element(11)
    assert np.array_equal(odd, odd[::-1]) and np.array_equal(odd, odd[:, ::-1])  # (the raster is not transposable)
    assert odd[5].all() and odd[:, 5].all() and not odd[0, 0]
    even = structuring_element(10)
    assert even.shape == (10, 10) and even[5].all() and even[:, 5].all()
    assert not even[0, 0] and even[0].sum() == 1  # one pixel at the top, as the raster ellipse
    with pytest.raises(ValueError, match="closing_shape"):
        structuring_element(5, "diamond")
    with pytest.raises(ValueError, match="non-negative integer"):
        structuring_element(-1)


@pytest.mark.parametrize("shape", ["ellipse", "square"])
@pytest.mark.parametrize("size", [2, 3, 7, 10])
def test_grey_closing_thresholds_to_binary_closing(shape, size):
    """One grey-level closing, thresholded anywhere, equals the binary closing of that threshold."""
    rng = np.random.default_rng(size)
    maps = ndi.gaussian_filter(rng.random((2, 23, 29)), (0, 1.2, 1.2)).astype(np.float32)
    element = structuring_element(size, shape)
    closed = grey_closing(torch.from_numpy(maps), element).numpy()
    differing = 0
    for threshold in np.quantile(maps, np.linspace(0.02, 0.98, 25)):
        for p in range(len(maps)):
            expected = binary_closing(maps[p] > threshold, element)
            differing += int((expected != (closed[p] > threshold)).sum())
    assert differing == 0


def test_closing_borders_neither_grow_nor_erode():
    element = structuring_element(10)
    full = torch.ones(1, 12, 15)
    assert torch.equal(grey_closing(full, element), full)
    empty = torch.zeros(1, 12, 15)
    assert torch.equal(grey_closing(empty, element), empty)
    ranks = torch.arange(180, dtype=torch.float32).reshape(1, 12, 15)
    assert torch.all(grey_closing(ranks, element) >= ranks)  # extensive
    assert torch.equal(grey_closing(ranks, None), ranks)


@pytest.mark.parametrize("shape", [(3, 20, 31), (1, 200, 140), (2, 3, 5)])
@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_gaussian_blur_matches_scipy(shape, sigma):
    """Dense (small sides) and tiled (long sides) paths both equal scipy's mirrored Gaussian."""
    masks = (torch.rand(*shape, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    ours = gaussian_blur(masks, sigma).numpy()
    expected = np.stack([blur_reference(m.numpy(), sigma) for m in masks])
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    full = gaussian_blur(torch.ones(shape), sigma)
    np.testing.assert_allclose(full.numpy(), 1.0, atol=1e-6)
    assert torch.equal(gaussian_blur(masks, 0), masks)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(masks, -1.0)


# --------------------------------------------------------------------------- schedules


def test_schedules():
    t = value_thresholds(200)
    assert len(t) == 201 and t[0] == 1.0 and t[-1] == 0.0 and np.all(np.diff(t) < 0)
    q = rank_fractions(200)
    assert len(q) == 201 and q[0] == 0 and q[-1] == 1 and np.all(np.diff(q) > 0)
    assert np.diff(q)[0] < np.diff(q)[-1] / 4  # finer at small masks
    for steps in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 2"):
            value_thresholds(steps)


def test_ranks_break_ties_by_position_and_rank_counts_never_jump():
    values = torch.tensor([[0.5, 0.5, 0.2, 0.5, 0.9, 0.0]])
    assert element_ranks(values).tolist() == [[2.0, 3.0, 1.0, 4.0, 5.0, 0.0]]
    flat = torch.zeros(1, 100)  # all tied
    counts, fractions = selection_counts(flat, "rank", 10)
    assert counts[0].tolist() == np.rint(fractions * 100).astype(int).tolist()
    counts, _ = selection_counts(flat, "value", 10)  # a value threshold takes ties together
    assert counts[0, :-1].sum() == 0 and counts[0, -1] == 100


# --------------------------------------------------------------------------- engine vs reference


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
@pytest.mark.parametrize(
    "schedule,closing,shape,sigma",
    [
        ("value", 10, "ellipse", 2.0),
        ("rank", 4, "square", 1.0),
        ("value", 0, "ellipse", 0.0),
        ("rank", 5, "ellipse", 0.0),
    ],
)
def test_engine_matches_per_mask_reference(toy, strategy, schedule, closing, shape, sigma):
    model, real, counterfactual, maps, target = toy
    steps = 8
    result = dac(
        model,
        real,
        target,
        maps,
        counterfactuals=counterfactual,
        strategy=strategy,
        steps=steps,
        schedule=schedule,
        closing=closing,
        closing_shape=shape,
        sigma=sigma,
        batch_size=5,
    )
    size, score = as_arrays(result.curves, strategy, steps + 1)
    ref_size, ref_score = reference_dac(
        model, real, counterfactual, maps, target, strategy, steps, schedule, closing, shape, sigma
    )
    np.testing.assert_array_equal(size, ref_size)
    np.testing.assert_allclose(score, ref_score, atol=2e-6)
    stats = result.stats[strategy]
    assert stats["forward_passes"] < stats["hybrids"]  # empty/full/repeated masks were skipped


def test_numpy_inputs_and_channel_agnostic_maps(toy):
    model, real, counterfactual, maps, target = toy
    agnostic = maps.abs().sum(1, keepdim=True)
    from_numpy = dac(
        model, real.numpy(), target.numpy(), agnostic.numpy(), counterfactuals=counterfactual.numpy(), steps=6
    )
    from_torch = dac(model, real, target, maps, counterfactuals=counterfactual, steps=6)
    pd.testing.assert_frame_equal(from_numpy.curves, from_torch.curves, atol=1e-6)


# --------------------------------------------------------------------------- properties


def test_curves_monotone_from_empty_to_full(toy):
    model, real, counterfactual, maps, target = toy
    for schedule in ("value", "rank"):
        result = dac(
            model,
            real,
            target,
            maps,
            counterfactuals=counterfactual,
            strategy=ALL_STRATEGIES,
            steps=10,
            schedule=schedule,
            channels=["a", "b", "c"],
        )
        curves = result.curves
        assert set(curves["strategy"]) == set(ALL_STRATEGIES)
        assert set(curves.loc[curves["strategy"] == "single_channel", "channel"]) == {"a", "b", "c"}
        for _, part in curves.groupby(["sample", "strategy", "channel"]):
            part = part.sort_values("step")
            size = part["mask_size"].to_numpy()
            assert size[0] == 0.0 and size[-1] == 1.0
            assert np.all(np.diff(size) >= 0)
            assert part["score"].iloc[0] == 0.0  # empty mask: the counterfactual itself
        with torch.no_grad():
            p_real = torch.softmax(model(real), 1)[torch.arange(3), target]
            p_cf = torch.softmax(model(counterfactual), 1)[torch.arange(3), target]
        last = curves[(curves["step"] == 10) & (curves["strategy"] != "single_channel")]
        expected = (p_real - p_cf).numpy()[last["sample"].to_numpy()]
        np.testing.assert_allclose(last["score"].to_numpy(), expected, atol=1e-6)


def test_dac_is_area_under_interpolated_curve(toy):
    model, real, counterfactual, maps, target = toy
    result = dac(model, real, target, maps, counterfactuals=counterfactual, strategy="joint", steps=12)
    size, score = as_arrays(result.curves, "joint", 13)
    grid = np.linspace(0, 1, 1001)
    for i in range(3):
        expected = np.trapezoid(np.interp(grid, size[i, 0], score[i, 0]), grid)
        assert result.scores["dac"].iloc[i] == pytest.approx(expected, abs=1e-12)
    mean_curve = np.mean([np.interp(grid, size[i, 0], score[i, 0]) for i in range(3)], axis=0)
    assert result.scores["dac"].mean() == pytest.approx(np.trapezoid(mean_curve, grid), abs=1e-12)
    # a straight line from (0, 0) to (1, 1) has area 1/2 wherever its points lie
    line = np.array([[0.0, 0.1, 0.1, 0.7, 1.0]])
    assert curve_area(line, line)[0] == pytest.approx(0.5)
    mean = result.mean_curves(grid_points=11)
    assert list(mean.columns) == ["strategy", "channel", "mask_size", "score", "score_sd", "n"]
    assert len(mean) == 11 and mean["n"].eq(3).all()


def test_samples_are_independent_of_their_batch(toy):
    model, real, counterfactual, maps, target = toy
    together = dac(
        model, real, target, maps, counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=6, batch_size=7
    )
    alone = dac(
        model, real[1:2], target[1:2], maps[1:2], counterfactuals=counterfactual[1:2], strategy=ALL_STRATEGIES, steps=6
    )
    mine = together.scores[together.scores["sample"] == 1].reset_index(drop=True)
    np.testing.assert_allclose(mine["dac"], alone.scores["dac"], atol=1e-6)


def test_residual_of_single_channel_change_scores_zero_elsewhere(toy):
    """Counterfactual differing only in channel k: single-channel DAC of the others is exactly 0."""
    model, real, _, _, target = toy
    counterfactual = real.clone()
    counterfactual[:, 2] = torch.rand(3, 14, 17, generator=torch.Generator().manual_seed(5))
    residual = (real - counterfactual).abs()
    result = dac(
        model,
        real,
        target,
        residual,
        counterfactuals=counterfactual,
        strategy="single_channel",
        steps=10,
        channels=["DNA", "ER", "Mito"],
    )
    scores = result.scores.set_index(["sample", "channel"])["dac"]
    assert np.all(scores.xs("DNA", level="channel") == 0) and np.all(scores.xs("ER", level="channel") == 0)
    assert scores.xs("Mito", level="channel").abs().max() > 1e-4
    # channels without residual need one forward pass each (the full mask), not one per step
    assert result.stats["single_channel"]["forward_passes"] <= 3 * (2 + 11)


def test_full_single_channel_mask_is_the_channel_coalition(toy):
    """The last step of a single-channel curve pastes the whole channel: its score is the model
    on x' with channel k taken from x, whether it comes from memory (an earlier call) or not."""
    from chanstat.dacscore.coalitions import forget

    model, real, counterfactual, maps, target = toy
    forget(model)
    first = dac(model, real, target, maps, counterfactuals=counterfactual, strategy="single_channel", steps=10)
    second = dac(model, real, target, maps, counterfactuals=counterfactual, strategy="single_channel", steps=10)
    pd.testing.assert_frame_equal(first.curves, second.curves, atol=1e-6)
    assert second.stats["single_channel"]["forward_passes"] < first.stats["single_channel"]["forward_passes"]
    last = first.curves[first.curves["step"] == 10].sort_values(["sample", "channel"])
    with torch.no_grad():
        p_cf = torch.softmax(model(counterfactual), 1)[torch.arange(3), target]
        for k in range(real.shape[1]):
            hybrid = counterfactual.clone()
            hybrid[:, k] = real[:, k]
            expected = (torch.softmax(model(hybrid), 1)[torch.arange(3), target] - p_cf).numpy()
            got = last[last["channel"] == last["channel"].unique()[k]]["score"].to_numpy()
            np.testing.assert_allclose(got, expected, atol=1e-6)


def test_training_mode_restored(toy):
    model, real, counterfactual, maps, target = toy
    model.train()
    try:
        a = dac(model, real, target, maps, counterfactuals=counterfactual, steps=4)
        assert model.training
    finally:
        model.eval()
    b = dac(model, real, target, maps, counterfactuals=counterfactual, steps=4)
    pd.testing.assert_frame_equal(a.scores, b.scores)


# --------------------------------------------------------------------------- optimal / minimal masks


class ChannelMeanNet(nn.Module):
    """Logit of class 1 = 40 * (mean of channel 0 - 0.5): a known, monotone decision."""

    def forward(self, x):
        z = 40 * (x[:, 0].mean(dim=(1, 2)) - 0.5)
        return torch.stack([torch.zeros_like(z), z], 1)


def test_optimal_and_minimal_masks():
    h = w = 12
    real = torch.ones(2, 2, h, w)  # class 1 (mean 1)
    counterfactual = torch.zeros(2, 2, h, w)  # class 0
    maps = torch.rand(2, 2, h, w, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 1])
    result = dac(
        ChannelMeanNet(),
        real,
        target,
        maps,
        counterfactuals=counterfactual,
        strategy=["aggregate", "single_channel"],
        steps=20,
        schedule="value",
        closing=0,
        sigma=0,
        return_masks=True,
    )
    agg = result.curves[result.curves["strategy"] == "aggregate"]
    for sample, part in agg.groupby("sample"):
        part = part.sort_values("step")
        # flips once more than half of channel 0 is pasted
        first = part.loc[part["mask_size"] > 0.5, "step"].min()
        row = result.minimal[(result.minimal["sample"] == sample) & (result.minimal["strategy"] == "aggregate")].iloc[0]
        assert row["flipped"] and row["step"] == first
        distance = part["mask_size"] ** 2 + (1 - part["score"]) ** 2
        best = result.optimal[(result.optimal["sample"] == sample) & (result.optimal["strategy"] == "aggregate")]
        assert best["step"].iloc[0] == part["step"].to_numpy()[np.argmin(distance.to_numpy())]
        mask = result.optimal_masks["aggregate"][sample]
        assert mask.shape == (1, h, w) and mask.mean() == pytest.approx(best["mask_size"].iloc[0])
    # channel 1 does not enter the decision: its single-channel hybrids never flip
    never = result.never_flipped
    assert set(never["channel"]) == {"ch1"} and len(never) == 2
    single = result.minimal_masks["single_channel"]
    assert single.shape == (2, 2, h, w) and np.isnan(single[:, 1]).all() and not np.isnan(single[:, 0]).any()
    row = result.minimal[(result.minimal["strategy"] == "single_channel") & (result.minimal["channel"] == "ch1")]
    assert row["step"].isna().all() and row["score"].isna().all()


def test_filter_pairs_reports_dropped():
    h = w = 8
    real = torch.stack([torch.ones(2, h, w), torch.zeros(2, h, w), torch.ones(2, h, w)])
    counterfactual = torch.stack([torch.zeros(2, h, w), torch.ones(2, h, w), torch.ones(2, h, w)])
    target = torch.tensor([1, 1, 1])  # sample 1's real image looks like class 0, sample 2's counterfactual like 1
    maps = torch.rand(3, 2, h, w, generator=torch.Generator().manual_seed(0))
    result = dac(
        ChannelMeanNet(),
        real,
        target,
        maps,
        counterfactuals=counterfactual,
        steps=4,
        filter_pairs=True,
        counterfactual_target=torch.tensor([0, 0, 0]),
    )
    assert result.samples.tolist() == [0]
    assert set(result.scores["sample"]) == {0}
    dropped = result.dropped.set_index("sample")
    assert dropped.loc[1, "reason"] == "real and counterfactual misclassified"
    assert dropped.loc[2, "reason"] == "counterfactual misclassified"
    unfiltered = dac(ChannelMeanNet(), real, target, maps, counterfactuals=counterfactual, steps=4)
    assert len(unfiltered.dropped) == 0 and set(unfiltered.scores["sample"]) == {0, 1, 2}


def test_smoothing_sweep(toy):
    model, real, counterfactual, maps, target = toy
    table = smoothing_sweep(
        model,
        real,
        target,
        maps,
        counterfactuals=counterfactual,
        closings=(0, 4),
        sigmas=(0, 1.5),
        strategy=["aggregate", "per_channel"],
        steps=6,
    )
    assert list(table.columns) == ["closing", "sigma", "sample", "strategy", "channel", "dac"]
    assert len(table) == 2 * 2 * 2 * 3
    direct = dac(
        model, real, target, maps, counterfactuals=counterfactual, strategy="per_channel", steps=6, closing=4, sigma=1.5
    )
    part = table[(table["closing"] == 4) & (table["sigma"] == 1.5) & (table["strategy"] == "per_channel")]
    np.testing.assert_allclose(part["dac"].to_numpy(), direct.scores["dac"].to_numpy(), atol=1e-6)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs(toy):
    model, real, counterfactual, maps, target = toy
    with pytest.raises(ValueError, match="maps must have shape"):
        dac(model, real, target, maps[:, :, :10], counterfactuals=counterfactual)
    with pytest.raises(ValueError, match="maps must have shape"):
        dac(model, real, target, maps[:2], counterfactuals=counterfactual)
    with pytest.raises(ValueError, match="need one map per channel.*aggregate"):
        dac(model, real, target, maps[:, :1], counterfactuals=counterfactual, strategy="per_channel")
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        dac(model, real, target, maps, counterfactuals=counterfactual, steps=1)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        dac(model, real, target, maps, counterfactuals=counterfactual, sigma=-0.5)
    with pytest.raises(ValueError, match="closing must be a non-negative integer"):
        dac(model, real, target, maps, counterfactuals=counterfactual, closing=-3)
    with pytest.raises(ValueError, match="unknown DAC strategy"):
        dac(model, real, target, maps, counterfactuals=counterfactual, strategy="mean")
    with pytest.raises(ValueError, match="unknown schedule"):
        dac(model, real, target, maps, counterfactuals=counterfactual, schedule="log")
    with pytest.raises(ValueError, match="same shape"):
        dac(model, real, target, maps, counterfactuals=counterfactual[:, :2])
    with pytest.raises(ValueError, match="target must be an int or have shape"):
        dac(model, real, target[:2], maps, counterfactuals=counterfactual)
    with pytest.raises(ValueError, match="model has 2 classes"):
        dac(model, real, torch.tensor([0, 5, 0]), maps, counterfactuals=counterfactual)
    bad = maps.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="maps contains"):
        dac(model, real, target, bad, counterfactuals=counterfactual)
    with pytest.raises(ValueError, match="batch_size"):
        dac(model, real, target, maps, counterfactuals=counterfactual, batch_size=0)
    with pytest.raises(ValueError, match="channels must be unique"):
        dac(model, real, target, maps, counterfactuals=counterfactual, channels=["a", "a", "b"])


def test_strategy_registry_describes_the_four():
    assert {"aggregate", "joint", "per_channel", "single_channel"} <= set(STRATEGIES)
    assert not STRATEGIES["aggregate"].channel_resolved and STRATEGIES["single_channel"].curve_per_plane


def test_chunked_samples_give_the_same_result(toy, monkeypatch):
    import chanstat.dacscore.engine as engine

    model, real, counterfactual, maps, target = toy
    whole = dac(
        model, real, target, maps, counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=6, return_masks=True
    )
    monkeypatch.setattr(engine, "samples_per_chunk", lambda *a: 1)  # one sample per chunk
    chunked = dac(
        model, real, target, maps, counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=6, return_masks=True
    )
    pd.testing.assert_frame_equal(whole.curves, chunked.curves, atol=1e-6)
    for name in ALL_STRATEGIES:
        np.testing.assert_allclose(whole.optimal_masks[name], chunked.optimal_masks[name], atol=1e-6)
        np.testing.assert_allclose(whole.minimal_masks[name], chunked.minimal_masks[name], atol=1e-6)


def test_every_pair_dropped_gives_empty_tables():
    real = torch.zeros(2, 2, 8, 8)  # class 0 for the model, but labelled 1
    result = dac(
        ChannelMeanNet(),
        real,
        torch.tensor([1, 1]),
        torch.rand(2, 2, 8, 8),
        counterfactuals=torch.ones(2, 2, 8, 8),
        strategy=ALL_STRATEGIES,
        steps=4,
        filter_pairs=True,
        return_masks=True,
    )
    assert len(result.dropped) == 2 and len(result.curves) == 0 and len(result.scores) == 0
    assert result.optimal_masks["aggregate"].shape == (0, 1, 8, 8)


class FlattensInput(nn.Module):
    """A model that reshapes its raw input with ``view`` (fails on channels-last tensors)."""

    def __init__(self, n_inputs: int):
        super().__init__()
        self.linear = nn.Linear(n_inputs, 2)

    def forward(self, x):
        return self.linear(x.view(x.shape[0], -1))


def test_input_layout_probe(toy):
    from chanstat.dacscore.scoring import input_memory_format

    model, real, counterfactual, maps, target = toy
    assert input_memory_format(model, real[:2]) == torch.channels_last
    torch.manual_seed(0)
    flat = FlattensInput(3 * 14 * 17).eval()
    assert input_memory_format(flat, real[:2]) == torch.contiguous_format
    result = dac(flat, real, target, maps, counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=5)
    assert result.settings["memory_format"] == "contiguous"
    size, score = as_arrays(result.curves, "per_channel", 6)
    ref_size, ref_score = reference_dac(flat, real, counterfactual, maps, target, "per_channel", 5)
    np.testing.assert_array_equal(size, ref_size)
    np.testing.assert_allclose(score, ref_score, atol=2e-6)


# --------------------------------------------------------------------------- adaptive schedule


def run_plan(size: np.ndarray, truth, tolerance: float):
    """Drive an AdaptivePlan on one curve whose score at mask size x is ``truth(x)``."""
    from chanstat.dacscore.adaptive import AdaptivePlan

    counts = np.searchsorted(np.unique(size), size)  # equal sizes = the same mask
    known = np.full((1, len(size)), np.nan)
    known[0, 0] = 0.0  # the empty mask
    plan = AdaptivePlan(size[None], counts[None], known, tolerance)
    asked = []
    while True:
        ids, steps = plan.requests()
        if not len(ids):
            break
        asked.extend(steps.tolist())
        plan.update(ids, steps, truth(size[steps]))
    score, exact = plan.scores()
    return score[0], exact[0], asked


def test_adaptive_plan_resolves_a_discontinuous_curve():
    size = np.linspace(0, 1, 201) ** 3  # most steps at small masks, as value thresholds on sparse maps give
    jump_at, height = 0.137, 0.9
    truth = lambda x: np.where(x >= jump_at, height, 0.0) + 0.1 * x  # noqa: E731
    tolerance = 0.002
    score, exact, asked = run_plan(size, truth, tolerance)
    full = curve_area(size[None], truth(size)[None])[0]
    assert abs(curve_area(size[None], score[None])[0] - full) <= tolerance
    assert len(asked) <= 24 and len(set(asked)) == len(asked)  # no step scored twice
    np.testing.assert_allclose(score[exact], truth(size[exact]))  # evaluated steps are the truth
    below = size[exact & (size < jump_at)].max()
    above = size[exact & (size >= jump_at)].min()
    assert (above - below) * height / 2 <= tolerance  # the jump is bracketed to the tolerance
    # a straight curve costs the coarse grid (7 + 5 points and the last) and is reproduced exactly
    score, _, asked = run_plan(size, lambda x: 0.7 * x, tolerance)
    np.testing.assert_allclose(score, 0.7 * size, atol=1e-12)
    assert len(asked) <= 13


def test_adaptive_plan_steps_without_room_are_exact():
    """Curves with fewer distinct masks than the coarse grid are evaluated completely."""
    size = np.r_[0.0, np.full(50, 0.25), np.full(50, 0.5), 1.0]
    score, exact, asked = run_plan(size, lambda x: x**2, 1e-9)
    assert exact.all() and sorted(asked) == [1, 51, 101]
    np.testing.assert_allclose(score, size**2)


def nearest_other(images, labels):
    distance = torch.cdist(images.flatten(1), images.flatten(1))
    distance[labels[:, None] == labels[None, :]] = float("inf")
    return distance.argmin(1)


@pytest.fixture(scope="module")
def synthetic_pairs(tiny_synthetic, trained_model):
    """6 images of the synthetic screen with oracle and nearest-other-class counterfactuals."""
    from chanstat.dacscore.stage import balanced_subset

    ds = tiny_synthetic
    idx = torch.as_tensor(balanced_subset(ds.labels.numpy(), 6, seed=0))
    real, labels = ds.images[idx], ds.labels[idx]
    partner = nearest_other(ds.images, ds.labels)[idx]  # the nearest image of the other class
    nearest = ds.images[partner]
    return trained_model, real, labels, {"oracle": ds.counterfactuals[idx], "nearest": nearest}


@pytest.mark.parametrize("pairing", ["oracle", "nearest"])
def test_adaptive_reproduces_the_value_grid_on_the_synthetic_set(synthetic_pairs, pairing):
    """Oracle pairs: every curve's DAC within the tolerance of the 200-step value grid's.
    Nearest-neighbour pairs make noisy, non-monotone curves (an isolated spike between two
    evaluated steps cannot be seen), so there the mean DAC per strategy -- the reported
    figure -- is held to the issue's target of 0.01."""
    model, real, labels, counterfactuals = synthetic_pairs
    cf = counterfactuals[pairing]
    maps = (real - cf).abs() + 0.05 * torch.rand(real.shape, generator=torch.Generator().manual_seed(1))
    common = dict(counterfactuals=cf, strategy=ALL_STRATEGIES, steps=200)
    tolerance = 0.0025
    value = dac(model, real, labels, maps, schedule="value", **common)
    adaptive = dac(model, real, labels, maps, schedule="adaptive", tolerance=tolerance, **common)
    by_strategy = adaptive.scores["strategy"]
    per_curve = (adaptive.scores["dac"] - value.scores["dac"]).abs().groupby(by_strategy).max()
    of_means = (
        adaptive.scores.groupby("strategy")["dac"].mean() - value.scores.groupby("strategy")["dac"].mean()
    ).abs()
    worst, bound = {"oracle": (per_curve, tolerance), "nearest": (of_means, 0.01)}[pairing]
    assert set(worst.index) == set(ALL_STRATEGIES) and (worst <= bound).all(), worst
    most_passes = {"oracle": 24, "nearest": 40}[pairing]  # noisy curves take more bisections
    for strategy in ALL_STRATEGIES:
        assert adaptive.stats[strategy]["forward_passes_per_curve"] <= most_passes
        assert adaptive.stats[strategy]["forward_passes"] < value.stats[strategy]["forward_passes"] / 3
    curves = adaptive.curves
    assert value.curves["evaluated"].all() and not curves["evaluated"].all()
    pd.testing.assert_series_equal(curves["mask_size"], value.curves["mask_size"])  # same steps, same masks
    for _, part in curves.groupby(["sample", "strategy", "channel"]):
        size = part["mask_size"].to_numpy()
        assert size[0] == 0.0 and size[-1] == 1.0 and np.all(np.diff(size) >= 0)
        assert part["score"].iloc[0] == 0.0 and part["evaluated"].iloc[0] and part["evaluated"].iloc[-1]
    assert curves.loc[~curves["evaluated"], "prediction"].isna().all()
    assert curves.loc[curves["evaluated"], "prediction"].notna().all()


@pytest.mark.parametrize("schedule", ["value", "adaptive"])
def test_cross_curve_batches_equal_per_curve_evaluation(toy, schedule):
    """Hybrids of all samples, strategies and channels in shared batches score as one at a time."""
    model, real, counterfactual, maps, target = toy
    together = dac(
        model,
        real,
        target,
        maps,
        counterfactuals=counterfactual,
        strategy=ALL_STRATEGIES,
        steps=30,
        schedule=schedule,
        batch_size=7,
    )
    alone = pd.concat(
        [
            dac(
                model,
                real[i : i + 1],
                target[i : i + 1],
                maps[i : i + 1],
                counterfactuals=counterfactual[i : i + 1],
                strategy=s,
                steps=30,
                schedule=schedule,
                batch_size=1,
            ).curves.assign(sample=i)
            for s in ALL_STRATEGIES
            for i in range(3)
        ],
        ignore_index=True,
    )
    key = ["strategy", "sample", "channel", "step"]
    together = together.curves.sort_values(key).reset_index(drop=True)
    alone = alone.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(together.drop(columns="score"), alone.drop(columns="score"), check_dtype=False)
    np.testing.assert_allclose(together["score"], alone["score"], atol=1e-6)


# --------------------------------------------------------------------------- models and settings


class OneLogitNet(nn.Module):
    """Sigmoid model: logit of class 1 = 40 * (mean of channel 0 - 0.5), as one output."""

    def forward(self, x):
        return (40 * (x[:, 0].mean(dim=(1, 2)) - 0.5))[:, None]


def test_single_logit_model_equals_its_two_logit_twin():
    g = torch.Generator().manual_seed(3)
    real = torch.rand(4, 2, 10, 10, generator=g) * 0.4 + 0.4
    counterfactual = torch.rand(4, 2, 10, 10, generator=g) * 0.4 + 0.2
    maps = torch.rand(4, 2, 10, 10, generator=g)
    target = torch.tensor([1, 0, 1, 0])
    common = dict(counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=20, schedule="value")
    one = dac(OneLogitNet(), real, target, maps, **common)
    two = dac(ChannelMeanNet(), real, target, maps, **common)
    assert one.scores["dac"].abs().max() > 1e-3  # the decision moves
    np.testing.assert_allclose(one.scores["dac"], two.scores["dac"], atol=1e-6)
    pd.testing.assert_series_equal(one.curves["prediction"], two.curves["prediction"])


def test_half_precision_model(toy):
    model, real, counterfactual, maps, target = toy
    half = TinyNet(3)
    half.load_state_dict(model.state_dict())
    half = half.half().eval()
    common = dict(counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=10, schedule="value")
    scores16 = dac(half, real, target, maps, **common)
    scores32 = dac(model, real, target, maps, **common)
    assert scores16.settings["dtype"] == "float16"
    np.testing.assert_allclose(scores16.scores["dac"], scores32.scores["dac"], atol=5e-3)


def test_huge_sigma_is_capped_at_the_image_size():
    """sigma = 1e6 finishes at once and equals the Gaussian cut at twice each axis' length."""
    masks = (torch.rand(2, 9, 13, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    blurred = gaussian_blur(masks, 1e6).numpy()
    expected = masks.numpy().astype(np.float64)
    for axis, n in ((1, 9), (2, 13)):
        offsets = np.arange(-2 * n, 2 * n + 1)
        taps = np.exp(-0.5 * (offsets / 1e6) ** 2)
        expected = ndi.correlate1d(expected, taps / taps.sum(), axis=axis, mode="mirror")
    np.testing.assert_allclose(blurred, expected, atol=1e-6)


def test_bad_schedule_settings(toy):
    model, real, counterfactual, maps, target = toy
    with pytest.raises(ValueError, match="steps must be an integer >= 2.*2.7"):
        dac(model, real, target, maps, counterfactuals=counterfactual, steps=2.7)
    for tolerance in (0, -0.1, float("nan"), "0.01"):
        with pytest.raises(ValueError, match="tolerance must be"):
            dac(model, real, target, maps, counterfactuals=counterfactual, tolerance=tolerance)
    with pytest.raises(TypeError):
        dac(model, real, counterfactual, maps, target)  # counterfactuals is keyword-only


def test_result_module_needs_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from chanstat.dacscore.result import DacResult, summarise_dac; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_summarise_dac():
    from chanstat.dacscore.result import summarise_dac

    scores = pd.DataFrame(
        {
            "method": ["a", "a", "a", "b"],
            "strategy": ["joint", "joint", "single_channel", "joint"],
            "channel": ["all", "all", "DNA", None],
            "dac": [0.2, 0.4, 0.1, 0.3],
        }
    )
    out = summarise_dac(scores)
    assert list(out.columns) == ["method", "strategy", "channel", "dac", "dac_sd", "n"]
    first = out.iloc[0]
    assert (first["method"], first["strategy"], first["channel"], first["n"]) == ("a", "joint", "all", 2)
    assert first["dac"] == pytest.approx(0.3) and first["dac_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out.iloc[2]["channel"] == "all"  # a missing channel counts as every channel
    assert list(summarise_dac(scores.drop(columns="method")).columns) == ["strategy", "channel", "dac", "dac_sd", "n"]
    assert len(summarise_dac(None)) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(toy):
    """The same curves on the GPU (masks, closing, blur, batches on the device) as on the CPU."""
    import copy

    model, real, counterfactual, maps, target = toy
    on_gpu = copy.deepcopy(model).cuda()
    common = dict(counterfactuals=counterfactual, strategy=ALL_STRATEGIES, steps=20, return_masks=True)
    cpu = dac(model, real, target, maps, schedule="value", **common)
    gpu = dac(on_gpu, real, target, maps, schedule="value", **common)
    pd.testing.assert_frame_equal(cpu.curves.drop(columns="score"), gpu.curves.drop(columns="score"))
    np.testing.assert_allclose(cpu.curves["score"], gpu.curves["score"], atol=1e-4)
    for name in ALL_STRATEGIES:
        np.testing.assert_allclose(cpu.optimal_masks[name], gpu.optimal_masks[name], atol=1e-5)
    adaptive_cpu = dac(model, real, target, maps, schedule="adaptive", **common)
    adaptive_gpu = dac(on_gpu, real, target, maps, schedule="adaptive", **common)
    np.testing.assert_allclose(adaptive_cpu.scores["dac"], adaptive_gpu.scores["dac"], atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = dac(on_gpu.to(memory_format=torch.channels_last), real, target, maps, schedule="value", **common)
    np.testing.assert_allclose(low.scores["dac"], cpu.scores["dac"], atol=0.05)
