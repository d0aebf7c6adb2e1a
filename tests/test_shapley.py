"""channel_shapley: efficiency, null player, Captum agreement, additive and 1-logit models, groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from chanstat.decompose import channel_shapley, interactions_from_values, shapley_from_values

CHANNELS = ["DNA", "ER", "Mito"]


class TinyConv(nn.Module):
    """A small non-additive CNN; ``reads`` picks the channels it ever looks at."""

    def __init__(self, reads=(0, 1, 2), n_out=2):
        super().__init__()
        self.reads = list(reads)
        self.net = nn.Sequential(
            nn.Conv2d(len(self.reads), 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, n_out),
        )

    def forward(self, x):
        return 4 * self.net(x[:, self.reads])  # scaled so the probabilities move visibly


class Additive(nn.Module):
    """p(class 1 | x) = 0.1 + 0.8 * sum_k w_k * mean(x_k): the value of a coalition is additive."""

    def __init__(self, weights):
        super().__init__()
        self.register_buffer("w", torch.tensor(weights, dtype=torch.float64))

    def forward(self, x):
        p = 0.1 + 0.8 * (x.double().mean(dim=(2, 3)) * self.w).sum(dim=1)
        logit = torch.log(p) - torch.log1p(-p)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    cf = torch.rand(8, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    return x, cf, y


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyConv().eval()


def _matrix(result) -> np.ndarray:
    return result.values.pivot(index="sample", columns="channel", values="shapley")[result.players].to_numpy()


def test_efficiency_and_tables(model, pairs):
    x, cf, y = pairs
    r = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    assert list(r.values.columns) == ["sample", "channel", "shapley", "se", "baseline"]
    assert list(r.total.columns) == ["sample", "target", "baseline", "p_real", "p_counterfactual", "total"]
    assert r.settings["estimator"] == "exact" and r.settings["coalition_values"] == 8 * 2**3
    assert r.settings["forward_passes"] <= 8 * 2**3  # fewer where an earlier call evaluated coalitions
    with torch.no_grad():
        p_real = torch.softmax(model(x), 1).gather(1, y[:, None])[:, 0].double().numpy()
        p_cf = torch.softmax(model(cf), 1).gather(1, y[:, None])[:, 0].double().numpy()
    np.testing.assert_allclose(r.total["p_real"], p_real, atol=1e-6)
    np.testing.assert_allclose(r.total["p_counterfactual"], p_cf, atol=1e-6)
    np.testing.assert_allclose(_matrix(r).sum(axis=1), r.total["total"], rtol=0, atol=1e-12)
    assert np.abs(r.total["total"]).max() > 1e-3  # the test is not vacuous
    assert (r.values["se"] == 0).all()
    # never a flag-dependent type: empty interactions with the same columns
    assert isinstance(r.interactions, pd.DataFrame) and r.interactions.empty
    assert list(r.interactions.columns) == ["sample", "channel_a", "channel_b", "interaction", "baseline"]


def test_channel_never_read_gets_exactly_zero(pairs):
    x, cf, y = pairs
    torch.manual_seed(1)
    r = channel_shapley(TinyConv(reads=(0, 2)).eval(), x, y, counterfactuals=cf, channels=CHANNELS)
    er = r.values.loc[r.values["channel"] == "ER", "shapley"]
    assert (er == 0.0).all()
    assert (r.values.loc[r.values["channel"] != "ER", "shapley"].abs() > 0).all()


def test_equals_captum_shapley_values(model, pairs):
    from captum.attr import ShapleyValues

    x, cf, y = pairs
    r = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    mask = torch.arange(3).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    with torch.no_grad():
        ref = ShapleyValues(lambda inp: torch.softmax(model(inp), 1)).attribute(
            x, baselines=cf, target=y, feature_mask=mask
        )
    np.testing.assert_allclose(_matrix(r), ref[:, :, 0, 0].double().numpy(), rtol=0, atol=1e-6)


def test_additive_model_gives_per_channel_differences(pairs):
    x, cf, y = pairs
    w = [0.5, 0.2, 0.3]
    r = channel_shapley(Additive(w), x, 1, counterfactuals=cf, channels=CHANNELS, interactions=True)
    expected = 0.8 * np.asarray(w) * (x.double().mean(dim=(2, 3)) - cf.double().mean(dim=(2, 3))).numpy()
    # probabilities come back in float32: agreement to ~1e-7 of values of ~1e-2
    np.testing.assert_allclose(_matrix(r), expected, rtol=0, atol=5e-7)
    np.testing.assert_allclose(r.interactions["interaction"], 0.0, atol=5e-7)
    assert len(r.interactions) == 8 * 3
    # an additive game: every permutation gives the same marginals, so sampling is exact
    s = channel_shapley(Additive(w), x, 1, counterfactuals=cf, channels=CHANNELS, n_permutations=5)
    np.testing.assert_allclose(_matrix(s), expected, rtol=0, atol=5e-7)
    np.testing.assert_allclose(s.values["se"], 0.0, atol=5e-7)


def test_one_logit_model_and_target_symmetry(pairs):
    x, cf, _ = pairs
    torch.manual_seed(2)
    m = TinyConv(n_out=1).eval()
    one = channel_shapley(m, x, 1, counterfactuals=cf)
    zero = channel_shapley(m, x, 0, counterfactuals=cf)
    with torch.no_grad():
        p1 = torch.sigmoid(m(x))[:, 0].double().numpy()
    np.testing.assert_allclose(one.total["p_real"], p1, atol=1e-6)
    np.testing.assert_allclose(_matrix(one), -_matrix(zero), atol=1e-6)  # p(0) = 1 - p(1)
    np.testing.assert_allclose(_matrix(one).sum(axis=1), one.total["total"], atol=1e-12)


def test_groups_are_players(model, pairs):
    from captum.attr import ShapleyValues

    x, cf, y = pairs
    r = channel_shapley(
        model, x, y, counterfactuals=cf, channels=CHANNELS, groups={"cyto": ["ER", "Mito"]}, interactions=True
    )
    assert r.players == ["DNA", "cyto"] and r.groups["cyto"] == ["ER", "Mito"]
    mask = torch.tensor([0, 1, 1]).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    with torch.no_grad():
        ref = ShapleyValues(lambda inp: torch.softmax(model(inp), 1)).attribute(
            x, baselines=cf, target=y, feature_mask=mask
        )
    np.testing.assert_allclose(_matrix(r), ref[:, [0, 1], 0, 0].double().numpy(), atol=1e-6)
    # two players: the interaction index is v(12) - v(1) - v(2) + v(0), computed here directly
    with torch.no_grad():

        def p(h):
            return torch.softmax(model(h), 1).gather(1, y[:, None])[:, 0].double().numpy()

        only_dna = torch.cat([x[:, :1], cf[:, 1:]], 1)
        only_cyto = torch.cat([cf[:, :1], x[:, 1:]], 1)
        direct = p(x) - p(only_dna) - p(only_cyto) + p(cf)
    np.testing.assert_allclose(r.interactions["interaction"], direct, atol=1e-6)


def test_sampled_estimator_is_within_its_standard_error(model, pairs):
    x, cf, y = pairs
    exact = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    sampled = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS, n_permutations=64, seed=3)
    assert sampled.settings["estimator"] == "permutation"
    z = (_matrix(sampled) - _matrix(exact)) / sampled.values["se"].to_numpy().reshape(8, 3)
    assert np.abs(z).max() < 4.5
    np.testing.assert_allclose(
        _matrix(sampled).sum(axis=1), exact.total["total"], atol=1e-6
    )  # efficiency per permutation
    with pytest.raises(ValueError, match="interactions need the exact"):
        channel_shapley(model, x, y, counterfactuals=cf, n_permutations=8, interactions=True)


def test_batch_size_does_not_change_values(model, pairs):
    x, cf, y = pairs
    big = channel_shapley(model, x, y, counterfactuals=cf)
    small = channel_shapley(model, x, y, counterfactuals=cf, batch_size=3)  # batches straddle images, 2 chunks
    np.testing.assert_allclose(small.values["shapley"], big.values["shapley"], atol=1e-6)
    # the sampled estimator draws per sample: one image per chunk gives the same permutations
    one = channel_shapley(model, x, y, counterfactuals=cf, n_permutations=6, batch_size=2)
    many = channel_shapley(model, x, y, counterfactuals=cf, n_permutations=6)
    np.testing.assert_allclose(one.values[["shapley", "se"]], many.values[["shapley", "se"]], atol=1e-6)


def test_non_counterfactual_baselines_are_named(model, pairs):
    x, _, y = pairs
    with torch.no_grad():

        def p(h):
            return torch.softmax(model(h), 1).gather(1, y[:, None])[:, 0].double().numpy()

        p_zero, p_mean = p(torch.zeros_like(x)), p(x.mean(0, keepdim=True).expand_as(x))
    zero = channel_shapley(model, x, y, baseline="zero")
    mean = channel_shapley(model, x, y, baseline="mean")
    blur = channel_shapley(model, x, y, baseline="blur", blur_sigma=2.0)
    np.testing.assert_allclose(zero.total["p_counterfactual"], p_zero, atol=1e-6)
    np.testing.assert_allclose(mean.total["p_counterfactual"], p_mean, atol=1e-6)
    for r, name in ((zero, "zero"), (mean, "mean"), (blur, "blur")):
        assert (r.values["baseline"] == name).all() and (r.total["baseline"] == name).all()
        np.testing.assert_allclose(_matrix(r).sum(axis=1), r.total["total"], atol=1e-12)
    with pytest.raises(ValueError, match="needs counterfactuals"):
        channel_shapley(model, x, y)
    with pytest.raises(ValueError, match="baseline must be one of"):
        channel_shapley(model, x, y, baseline="noise")


def test_value_formulas_on_a_closed_form_game():
    # v(S) = |S|^2 over 3 players: symmetric, phi_k = 9/3 = 3; I_ab = 2 for every pair
    sizes = np.array([bin(s).count("1") for s in range(8)], float)
    v = (sizes**2)[None, :]
    np.testing.assert_allclose(shapley_from_values(v), [[3.0, 3.0, 3.0]])
    inter = interactions_from_values(v)
    np.testing.assert_allclose(inter[0][~np.eye(3, dtype=bool)], 2.0)


@pytest.mark.slow
def test_planted_channel_carries_most_of_the_total_on_the_demo(tiny_synthetic, trained_model):
    data = tiny_synthetic
    r = channel_shapley(
        trained_model,
        data.images,
        data.labels,
        counterfactuals=data.counterfactuals,
        channels=data.channels,
        interactions=True,
    )
    summary = r.summary().set_index("channel")
    planted = data.meta.attrs["planted_channel"]
    assert summary["shapley"].idxmax() == planted
    assert summary.loc[planted, "share_of_total"] > 0.5
    np.testing.assert_allclose(r.values.groupby("sample")["shapley"].sum(), r.total["total"], atol=1e-10)


def test_coalitions_known_from_dac_or_an_earlier_call_are_reused_exactly(pairs):
    """DAC's baselines and full single-channel masks are Shapley coalitions: after dac() the
    Shapley call evaluates only the others, and the values are those of a fresh computation."""
    from chanstat.dacscore import dac
    from chanstat.dacscore.coalitions import forget

    x, cf, y = pairs
    torch.manual_seed(3)
    model = TinyConv().eval()
    fresh = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    assert fresh.settings["forward_passes"] == 8 * 2**3
    again = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    assert again.settings["forward_passes"] == 0
    pd.testing.assert_frame_equal(again.values, fresh.values)
    forget(model)
    dac(model, x, y, (x - cf).abs(), counterfactuals=cf, strategy="single_channel", steps=8)
    after = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    assert after.settings["forward_passes"] == 8 * (2**3 - 2 - 3)  # the empty, full and single-channel sets were known
    np.testing.assert_allclose(_matrix(after), _matrix(fresh), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_matrix(after).sum(axis=1), after.total["total"], rtol=0, atol=1e-12)


def test_changed_weights_are_not_served_from_memory(pairs):
    x, cf, y = pairs
    torch.manual_seed(4)
    model = TinyConv().eval()
    first = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    with torch.no_grad():
        model.net[0].weight.mul_(-1.0)  # in place: same storage, new version
    changed = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    assert changed.settings["forward_passes"] == 8 * 2**3
    torch.manual_seed(4)
    twin = TinyConv().eval()
    with torch.no_grad():
        twin.net[0].weight.mul_(-1.0)
    np.testing.assert_allclose(_matrix(changed), _matrix(channel_shapley(twin, x, y, counterfactuals=cf)), atol=1e-6)
    assert np.abs(_matrix(changed) - _matrix(first)).max() > 1e-4


def test_channels_equal_in_image_and_baseline_are_evaluated_once(pairs):
    """A channel identical in x and x' pastes nothing: coalitions differing only there are one
    hybrid, and the channel's value is exactly 0 whatever the model reads."""
    x, cf, y = pairs
    cf = cf.clone()
    cf[:, 1] = x[:, 1]
    torch.manual_seed(5)
    model = TinyConv().eval()
    r = channel_shapley(model, x, y, counterfactuals=cf, channels=CHANNELS)
    assert r.settings["forward_passes"] == 8 * 2**2
    assert (r.values.loc[r.values["channel"] == "ER", "shapley"] == 0.0).all()
    np.testing.assert_allclose(_matrix(r).sum(axis=1), r.total["total"], rtol=0, atol=1e-12)
    from captum.attr import ShapleyValues

    mask = torch.arange(3).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    with torch.no_grad():
        ref = ShapleyValues(lambda inp: torch.softmax(model(inp), 1)).attribute(
            x, baselines=cf, target=y, feature_mask=mask
        )
    np.testing.assert_allclose(_matrix(r), ref[:, :, 0, 0].double().numpy(), rtol=0, atol=1e-6)
