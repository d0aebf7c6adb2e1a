"""chanstat.metrics: localisation, deletion/insertion, ROAD and the randomisation check.

Known answers: the mask scores PxAP 100, an unrelated map scores about the foreground
fraction, a map perfect on one channel scores high only there, an independent brute-force
PxAP and a scipy sparse solve of the ROAD imputer agree, and a hand-built model whose logit
is the sum of one channel's region gives exact deletion curves.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from chanstat.metrics import (
    deletion,
    insertion,
    linear_impute,
    localisation,
    noisy_linear_impute,
    pxap,
    randomisable_layers,
    randomisation_check,
    road,
)

CHANNELS = ["DNA", "ER", "Mito"]


def blob_masks(n=8, c=3, h=24, w=20, seed=0) -> np.ndarray:
    """Random rectangles per image and channel, about a quarter of the pixels."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, c, h, w), bool)
    for i in range(n):
        for k in range(c):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            masks[i, k, y0 : y0 + h // 2, x0 : x0 + w // 2] = True
    return masks


def row(df: pd.DataFrame, channel: str) -> pd.Series:
    return df.loc[df["channel"] == channel].iloc[0]


# --------------------------------------------------------------------------------- PxAP
def test_pxap_of_the_mask_itself_is_100():
    masks = blob_masks()
    table = pxap(masks.astype(np.float32), masks, channels=CHANNELS)
    assert list(table["channel"]) == ["all"] + CHANNELS
    assert np.allclose(table["pxap"], 100.0)
    assert table["channel_resolved"].all()


def test_pxap_of_random_maps_is_about_the_foreground_fraction():
    masks = blob_masks(n=16, h=32, w=32)
    maps = np.random.default_rng(1).random(masks.shape).astype(np.float32)
    table = pxap(maps, masks, channels=CHANNELS)
    for _, r in table.iterrows():
        assert r["pxap"] == pytest.approx(100 * r["foreground_fraction"], abs=2.0)


def brute_force_ap(maps: np.ndarray, masks: np.ndarray, thresholds: int) -> float:
    """PxAP recomputed directly: per-sample min-max, then precision/recall at each threshold."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    norm = np.where(hi > lo, (flat - lo) / np.where(hi > lo, hi - lo, 1), 0)
    bins = np.clip(np.floor(norm * thresholds), 0, thresholds - 1).ravel()
    gt = masks.reshape(len(masks), -1).ravel()
    precision, recall = [], []
    for j in range(thresholds - 1, -1, -1):  # from the strictest threshold down
        pred = bins >= j
        tp = np.sum(pred & gt)
        precision.append(tp / pred.sum() if pred.sum() else 1.0)
        recall.append(tp / gt.sum())
    recall = np.concatenate([[0.0], recall])
    return 100 * float(np.sum(np.array(precision) * np.diff(recall)))


def test_pxap_matches_a_brute_force_recomputation():
    masks = blob_masks(n=5, h=12, w=10, seed=3)
    rng = np.random.default_rng(4)
    maps = (masks * rng.random(masks.shape) + 0.7 * rng.random(masks.shape)).astype(np.float32)
    table = pxap(maps, masks, thresholds=50, channels=CHANNELS, batch_size=2)
    assert row(table, "all")["pxap"] == pytest.approx(brute_force_ap(maps, masks, 50), abs=1e-9)
    assert row(table, "ER")["pxap"] == pytest.approx(brute_force_ap(maps[:, 1], masks[:, 1], 50), abs=1e-9)


def test_perfect_map_on_one_channel_scores_high_only_there():
    masks = blob_masks(n=12, h=24, w=24, seed=5)
    rng = np.random.default_rng(6)
    maps = rng.random(masks.shape).astype(np.float32)
    maps[:, 2] = masks[:, 2] + 0.1 * rng.random(masks[:, 2].shape)  # perfect on Mito only
    table = localisation(maps, masks, channels=CHANNELS, split=0.5, seed=0)
    mito, others = row(table, "Mito"), table[table["channel"].isin(["DNA", "ER"])]
    assert mito["pxap"] == pytest.approx(100.0)
    assert mito["dice"] == pytest.approx(1.0) and mito["miou"] == pytest.approx(1.0)
    assert mito["pointing_game"] == 1.0 and mito["relevance_rank"] == pytest.approx(1.0)
    assert (others["pxap"] < 100 * others["foreground_fraction"] + 5).all()
    assert (others["dice"] < 0.6).all() and (others["relevance_rank"] < 0.5).all()
    assert (others["relevance_mass"] < mito["relevance_mass"]).all()
    assert others["pxap"].max() < row(table, "all")["pxap"] < mito["pxap"]


def test_relevance_mass_and_rank_closed_form():
    masks = blob_masks(n=4, c=2, h=10, w=10, seed=7)
    a, b = 3.0, 1.0
    maps = np.where(masks, a, b).astype(np.float32)
    table = localisation(maps, masks, channels=["A", "B"], split=None)
    inside = masks.reshape(4, -1).sum(1)
    outside = masks[0].size - inside
    expected = np.mean(a * inside / (a * inside + b * outside))
    assert row(table, "all")["relevance_mass"] == pytest.approx(expected, rel=1e-6)
    assert np.allclose(table["relevance_rank"], 1.0)
    # with transform="signed" (or "positive") negative relevance does not count as mass; |a| does
    signed = np.where(masks, 1.0, -1.0).astype(np.float32)
    assert row(localisation(signed, masks, split=None, transform="signed"), "all")["relevance_mass"] == pytest.approx(1.0)
    assert row(localisation(signed, masks, split=None, transform="positive"), "all")["relevance_mass"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="transform must be one of"):
        localisation(signed, masks, split=None, transform="abs")
    assert row(localisation(signed, masks, split=None), "all")["relevance_mass"] == pytest.approx(
        np.mean(inside / masks[0].size)
    )


def test_dice_threshold_is_chosen_on_validation_and_applied_to_test():
    masks = blob_masks(n=10, c=1, h=16, w=16, seed=8)
    rng = np.random.default_rng(9)
    maps = np.where(masks, 0.8, 0.2) + 0.05 * rng.standard_normal(masks.shape)
    split = np.array([True] * 5 + [False] * 5)
    table = localisation(maps.astype(np.float32), masks, split=split)
    r = row(table, "ch0")
    assert (r["n_val"], r["n_test"]) == (5, 5)
    assert r["dice"] == pytest.approx(1.0) and r["miou"] == pytest.approx(1.0)
    assert 0.2 < r["dice_threshold"] < 0.8
    # a test set unlike validation shows the cost of a transferred threshold
    shifted = maps.copy()
    shifted[~split] = np.where(masks[~split], 0.8, 0.6) + 0.05 * rng.standard_normal(masks[~split].shape)
    assert row(localisation(shifted.astype(np.float32), masks, split=split), "ch0")["dice"] < 1.0


def test_channel_agnostic_maps_are_broadcast_and_flagged():
    masks = blob_masks(n=6, seed=10)
    masks[:] = masks[:, :1]  # same mask in every channel
    maps = np.random.default_rng(11).random((6, 1, 24, 20)).astype(np.float32) + masks[:, :1]
    table = localisation(maps, masks, channels=CHANNELS, split=None)
    assert not table["channel_resolved"].any()
    per_channel = table[table["channel"] != "all"].drop(columns="channel")
    assert (per_channel.nunique() == 1).all()  # identical rows


def test_a_single_mask_plane_is_shared_by_every_channel():
    masks = blob_masks(n=6, c=1, seed=14)
    maps = np.random.default_rng(15).random((6, 3, 24, 20)).astype(np.float32)
    maps[:, 1] += masks[:, 0]  # only ER follows the mask
    table = pxap(maps, masks, channels=CHANNELS).set_index("channel")
    assert table["channel_resolved"].all()
    assert table.loc["ER", "pxap"] > 90 > 40 > table.loc["DNA", "pxap"]
    assert table.loc["all", "n_foreground"] == 3 * masks.sum()


def test_results_do_not_depend_on_batch_size():
    masks = blob_masks(n=7, seed=12)
    maps = np.random.default_rng(13).random(masks.shape).astype(np.float32) + masks
    a = localisation(maps, masks, batch_size=2, seed=1)
    b = localisation(maps, masks, batch_size=64, seed=1)
    pd.testing.assert_frame_equal(a, b)


def test_localisation_rejects_bad_input():
    masks = blob_masks(n=4)
    with pytest.raises(ValueError, match="channels"):
        pxap(np.zeros((4, 2, 24, 20), np.float32), masks)
    with pytest.raises(ValueError, match="NaN"):
        pxap(np.full(masks.shape, np.nan, np.float32), masks)
    with pytest.raises(ValueError, match="binary"):
        pxap(np.zeros(masks.shape, np.float32), np.full(masks.shape, 0.5))
    with pytest.raises(ValueError, match="split"):
        localisation(np.zeros(masks.shape, np.float32), masks, split=np.ones(3, bool))
    with pytest.raises(ValueError, match="validation"):
        localisation(np.zeros(masks.shape, np.float32), masks, split=np.ones(4, bool))
    with pytest.raises(ValueError, match="reserved"):
        pxap(np.zeros(masks.shape, np.float32), masks, channels=["all", "b", "c"])


# ------------------------------------------------------------------- a model with a known answer
class RegionModel(nn.Module):
    """logit_1 = sum of channel ``k`` over a fixed region minus a bias; logit_0 = 0."""

    def __init__(self, region: torch.Tensor, channel: int, n_channels: int, bias: float):
        super().__init__()
        weight = torch.zeros(n_channels, *region.shape)
        weight[channel] = region.float()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias

    def forward(self, x):
        logit = (x * self.weight).flatten(1).sum(1) - self.bias
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


@pytest.fixture
def region_setup():
    h, w, c, k = 16, 16, 3, 2
    region = torch.zeros(h, w, dtype=torch.bool)
    region[4:10, 5:11] = True
    gen = torch.Generator().manual_seed(0)
    images = 0.1 + 0.05 * torch.rand(6, c, h, w, generator=gen)
    images[:, k][:, region] = 1.0  # bright region in channel k
    model = RegionModel(region, k, c, bias=float(region.sum()) * 0.5).eval()
    true_map = torch.zeros(6, c, h, w)
    true_map[:, k][:, region] = 1.0
    true_map = true_map + 1e-3 * torch.rand(true_map.shape, generator=gen)
    random_map = torch.rand(true_map.shape, generator=gen)
    return model, images, true_map, random_map, k


def test_deletion_auc_lower_for_the_true_map_and_only_its_channel_matters(region_setup):
    model, images, true_map, random_map, k = region_setup
    kw = dict(steps=10, channels=CHANNELS, batch_size=64)
    true = deletion(model, images, 1, true_map, **kw).summary
    rand = deletion(model, images, 1, random_map, **kw).summary
    for channel in ("all", "Mito"):
        t = true[true["channel"] == channel]["auc"].mean()
        r = rand[rand["channel"] == channel]["auc"].mean()
        assert t < r - 0.1, (channel, t, r)
    # the model ignores DNA and ER: removing them leaves the score where it was
    untouched = true[true["channel"].isin(["DNA", "ER"])]
    assert np.allclose(untouched["auc"], untouched["score_original"])
    assert np.allclose(untouched["score_final"], untouched["score_original"])


def test_deletion_curve_matches_a_direct_recomputation(region_setup):
    model, images, true_map, _, k = region_setup
    steps = 8
    result = deletion(model, images, 1, true_map, steps=steps, score="logit", per_channel=False)
    summary, curves = result.summary, result.curves
    weight = model.weight.detach().numpy()
    x = images.numpy()
    e = x[0].size
    for i in range(len(x)):
        order = np.argsort(-true_map[i].numpy().ravel(), kind="stable")
        expected = []
        for j in range(steps + 1):
            keep = np.ones(e, bool)
            keep[order[: int(round(j / steps * e))]] = False
            expected.append(float((x[i].ravel() * weight.ravel() * keep).sum() - model.bias))
        got = curves[curves["sample"] == i].sort_values("fraction")["score"].to_numpy()
        assert np.allclose(got, expected, atol=1e-4)
        auc = summary.loc[summary["sample"] == i, "auc"].iloc[0]
        assert auc == pytest.approx(np.trapezoid(expected, np.linspace(0, 1, steps + 1)), abs=1e-4)


def test_insertion_auc_higher_for_the_true_map(region_setup):
    model, images, true_map, random_map, _ = region_setup
    kw = dict(steps=10, channels=CHANNELS, baseline="zero")
    true = insertion(model, images, 1, true_map, **kw).summary
    rand = insertion(model, images, 1, random_map, **kw).summary
    for channel in ("all", "Mito"):
        assert true[true["channel"] == channel]["auc"].mean() > rand[rand["channel"] == channel]["auc"].mean() + 0.1


def test_deletion_broadcasts_channel_agnostic_maps(region_setup):
    model, images, true_map, _, k = region_setup
    agnostic = true_map[:, k : k + 1]
    table = deletion(model, images, 1, agnostic, steps=4, channels=CHANNELS).summary
    assert not table["channel_resolved"].any()
    assert set(table["channel"]) == {"all", *CHANNELS}


def test_deletion_rejects_bad_input(region_setup):
    model, images, true_map, _, _ = region_setup
    with pytest.raises(ValueError, match="baseline"):
        deletion(model, images, 1, true_map, baseline="purple")
    with pytest.raises(ValueError, match="maps"):
        deletion(model, images, 1, true_map[:, :2])
    with pytest.raises(ValueError, match="target"):
        deletion(model, images, [0, 1], true_map)
    with pytest.raises(ValueError, match="score"):
        deletion(model, images, 1, true_map, score="odds")


# ---------------------------------------------------------------------------------- ROAD
def sparse_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The noisy-linear-imputer system built entry by entry and solved with scipy."""
    h, w = image.shape
    index = -np.ones((h, w), int)
    coords = np.argwhere(removed)
    index[removed] = np.arange(len(coords))
    a = sp.lil_matrix((len(coords), len(coords)))
    b = np.zeros(len(coords))
    for e, (y, x) in enumerate(coords):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0) or not (0 <= y + dy < h and 0 <= x + dx < w):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                a[e, e] += weight
                if removed[y + dy, x + dx]:
                    a[e, index[y + dy, x + dx]] -= weight
                else:
                    b[e] += weight * image[y + dy, x + dx]
    out = image.astype(np.float64).copy()
    out[removed] = spla.spsolve(a.tocsr(), b)
    return out


def test_linear_imputer_matches_a_sparse_solve():
    rng = np.random.default_rng(0)
    images = rng.random((2, 2, 14, 11)).astype(np.float32)
    removed = rng.random(images.shape) < 0.6
    removed[0, 0, 2:9, 3:8] = True  # a solid block as well as scattered pixels
    removed[1, 1] = False  # an untouched plane
    got = linear_impute(torch.from_numpy(images), torch.from_numpy(removed), tol=1e-7).numpy()
    for i in range(2):
        for c in range(2):
            assert np.allclose(got[i, c], sparse_reference(images[i, c], removed[i, c]), atol=1e-4)
    noisy = noisy_linear_impute(torch.from_numpy(images), torch.from_numpy(removed), noise=0.01,
                                generator=torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(noisy[~removed], images[~removed])
    assert 0.005 < np.std(noisy[removed] - got[removed]) < 0.02


def test_road_separates_the_true_map_from_a_random_one(region_setup):
    model, images, true_map, random_map, _ = region_setup
    kw = dict(fractions=(0.1, 0.3, 0.5), channels=CHANNELS, seed=0)
    true = road(model, images, 1, true_map, **kw).summary
    rand = road(model, images, 1, random_map, **kw).summary
    assert set(true["order"]) == {"morf", "lerf"}

    def mean(df, order, channel="all"):
        return df[(df["order"] == order) & (df["channel"] == channel)]["auc"].mean()

    assert mean(true, "morf") < mean(rand, "morf") - 0.1
    assert mean(true, "lerf") > mean(true, "morf") + 0.3
    assert mean(true, "morf", "Mito") < mean(true, "morf", "DNA") - 0.3


# ---------------------------------------------------------------------------- randomisation
def test_randomisation_check_known_answers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()
    images = torch.rand(4, 3, 8, 8)
    assert [name for name, _ in randomisable_layers(model)] == ["3", "0"]

    def image_itself(m, x, y):  # ignores the model: must survive randomisation untouched
        return x

    def gradient(m, x, y):
        x = x.clone().requires_grad_(True)
        m(x).gather(1, y[:, None]).sum().backward()
        return x.grad

    same = randomisation_check(model, images, 1, image_itself, channels=CHANNELS)
    assert np.allclose(same["spearman"], 1.0)
    assert set(same["layer_index"]) == {1, 2} and set(same["channel"]) == {"all", *CHANNELS}
    moved = randomisation_check(model, images, 1, gradient, channels=CHANNELS, seed=3)
    last = moved[(moved["layer_index"] == 2) & (moved["channel"] == "all")]
    assert last["spearman"].abs().mean() < 0.3
    assert model[3].weight.requires_grad  # the original model was not touched
    with pytest.raises(ValueError, match="unknown layers"):
        randomisation_check(model, images, 1, gradient, layers=["nope"])


def test_randomisation_check_runs_registered_methods(trained_model, tiny_synthetic):
    x = tiny_synthetic.images[:3]
    y = tiny_synthetic.labels[:3]
    table = randomisation_check(trained_model, x, y, "saliency", layers=["classifier.1"], channels=tiny_synthetic.channels)
    assert len(table) == 3 * (1 + len(tiny_synthetic.channels))
    assert table["spearman"].between(-1, 1).all()


# ---------------------------------------------------------------------------------- device
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_match_cpu(region_setup):
    model, images, true_map, random_map, _ = region_setup
    masks = (true_map > 0.5).numpy()
    cpu = localisation(random_map.numpy(), masks, channels=CHANNELS)
    gpu = localisation(random_map.numpy(), masks, channels=CHANNELS, device="cuda")
    pd.testing.assert_frame_equal(cpu, gpu, atol=1e-6)
    d_cpu = deletion(model, images, 1, true_map, steps=6, channels=CHANNELS).summary
    d_gpu = deletion(model.cuda(), images, 1, true_map, steps=6, channels=CHANNELS).summary
    pd.testing.assert_frame_equal(d_cpu, d_gpu, atol=1e-4)
    removed = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    filled_cpu = linear_impute(images, removed)
    filled_gpu = linear_impute(images.cuda(), removed.cuda()).cpu()
    assert torch.allclose(filled_cpu, filled_gpu, atol=1e-4)


def test_deletion_takes_a_baseline_tensor(region_setup):
    """A zero tensor as baseline gives exactly the "zero" baseline's curves (the tensor path is used)."""
    model, images, true_map, _, _ = region_setup
    kw = dict(steps=4, channels=CHANNELS)
    named = deletion(model, images, 1, true_map, baseline="zero", **kw).summary
    tensor = deletion(model, images, 1, true_map, baseline=torch.zeros(1, *images.shape[1:]), **kw).summary
    pd.testing.assert_frame_equal(named, tensor)
