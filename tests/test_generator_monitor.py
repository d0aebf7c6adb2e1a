"""Self-checking generator training: held-out split, checkpoint score, stopping rule, sparsity
weight schedule, the channel-sparsity penalty and the device profiles."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from chanstat.counterfactual.generator import losses as L
from chanstat.counterfactual.generator import monitor as M
from chanstat.counterfactual.generator.defaults import training_profile


def _log(rows):
    """A constructed training log: (flip, concentration, realism gap) per check."""
    out = []
    for i, (flip, conc, gap) in enumerate(rows):
        out.append(
            {
                "step": 25 * (i + 1),
                "check_flip_rate": flip,
                "check_concentration": conc,
                "check_realism_gap": gap,
                "check_score": M.checkpoint_score(flip, conc, gap, 0.9),
            }
        )
    return pd.DataFrame(out)


def test_every_usable_check_beats_every_unusable_one():
    assert M.checkpoint_score(0.89, 1.0, 0.0, 0.9) < M.checkpoint_score(0.9, 0.2, 5.0, 0.9)
    assert M.checkpoint_score(0.95, 0.9, 0.2, 0.9) > M.checkpoint_score(
        1.0, 0.7, 0.2, 0.9
    )  # concentration ranks usable ones
    assert M.checkpoint_score(0.95, 0.8, 0.9, 0.9) < M.checkpoint_score(0.95, 0.8, 0.1, 0.9)  # then realism
    assert math.isnan(M.checkpoint_score(float("nan"), 0.5, 0.1, 0.9))


def test_best_checkpoint_is_the_most_concentrated_usable_check():
    checks = _log([(0.5, 0.9, 0.1), (0.92, 0.6, 0.3), (0.95, 0.85, 0.3), (0.85, 0.95, 0.2), (0.97, 0.8, 0.3)])
    assert checks.loc[M.best_check(checks), "step"] == 75
    # rows without a check (NaN score) are ignored; no check at all -> None
    mixed = pd.concat([checks, pd.DataFrame({"step": [200], "check_score": [float("nan")]})], ignore_index=True)
    assert mixed.loc[M.best_check(mixed), "step"] == 75
    assert M.best_check(pd.DataFrame({"step": [1]})) is None


def test_training_stops_on_a_plateau_not_while_improving():
    improving = _log([(0.5, 0.5, 0.5), (0.7, 0.5, 0.5), (0.92, 0.5, 0.5), (0.95, 0.6, 0.5), (0.95, 0.7, 0.5)])
    assert M.stop_reason(improving, patience=3) is None
    flat = _log([(0.5, 0.5, 0.5), (0.95, 0.8, 0.3), (0.96, 0.805, 0.3), (0.9, 0.79, 0.3), (0.97, 0.8, 0.3)])
    reason = M.stop_reason(flat, patience=3)
    assert reason is not None and "plateau" in reason and "best usable" in reason
    never = _log([(0.3, 0.5, 0.5), (0.4, 0.5, 0.5), (0.4, 0.5, 0.5), (0.4, 0.5, 0.5), (0.4, 0.5, 0.5)])
    assert "not usable" in M.stop_reason(never, patience=3)
    assert M.stop_reason(flat.iloc[:3], patience=3) is None  # too few checks to judge


def test_sparsity_weight_follows_the_flip_rate():
    weight = M.SparsityWeight.from_option("auto", flip_target=0.9, start=1.0)
    for _ in range(20):
        weight.update(0.2)  # not flipping yet: nothing to judge, the weight waits
    assert weight.value == 1.0 and not weight.armed
    for _ in range(100):
        weight.update(1.0)  # every batch flips: room for a larger penalty
    high = weight.value
    assert high > 2.0
    for _ in range(200):
        weight.update(0.5)  # flips lost: the penalty gives way
    assert weight.value < high / 10
    fixed = M.SparsityWeight.from_option(0.3, flip_target=0.9)
    assert fixed.update(1.0) == 0.3 and fixed.update(0.0) == 0.3
    with pytest.raises(ValueError, match="sparsity"):
        M.SparsityWeight.from_option("big", flip_target=0.9)
    with pytest.raises(ValueError, match="sparsity"):
        M.SparsityWeight.from_option(-1, flip_target=0.9)


def test_channel_sparsity_loss_is_a_group_norm_over_channels():
    std = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    x = torch.zeros(1, 2, 2, 2)
    fake = x.clone()
    fake[0, 0, 0, 0] = 2.0  # channel 0: RMS sqrt(4 / 4) = 1; channel 1 unchanged
    fake[0, 1] = 4.0  # channel 1: 4 / std 2 = 2 everywhere, RMS 2
    assert float(L.channel_sparsity_loss(fake, x, std)) == pytest.approx(3.0, abs=1e-3)
    # the same squared change costs less in one channel than spread over two (sqrt(2) times more)
    one = torch.zeros(1, 2, 2, 2)
    one[0, 0] = 1.0
    two = torch.full((1, 2, 2, 2), 0.5**0.5)
    ones = torch.ones_like(std)
    assert float(L.channel_sparsity_loss(two, x, ones)) == pytest.approx(
        2**0.5 * float(L.channel_sparsity_loss(one, x, ones)), rel=1e-4
    )


def test_held_out_split_is_stratified_and_bounded():
    labels = torch.tensor([0] * 40 + [1] * 10)
    train, held = M.split_held_out(labels, 0.2, seed=0)
    assert len(set(train.tolist()) & set(held.tolist())) == 0 and len(train) + len(held) == 50
    assert int((labels[held] == 0).sum()) == 8 and int((labels[held] == 1).sum()) == 2
    train, held = M.split_held_out(torch.tensor([0] * 500 + [1] * 500), 0.5, seed=0, max_images=64)
    assert len(held) == 64
    assert len(M.split_held_out(labels, 0.0, seed=0)[1]) == 0


def test_change_shares_and_energy_distance():
    real = torch.zeros(2, 3, 2, 2)
    fake = real.clone()
    fake[0, 1] = 1.0
    shares = M.change_shares(real, fake)
    torch.testing.assert_close(shares[0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(shares[1], torch.full((3,), 1 / 3))
    a = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    assert abs(M._energy_distance(a[:100], a[100:])) < 0.2
    assert M._energy_distance(a, a + 5.0) > 5.0


def test_profiles_are_small_on_the_cpu_and_full_on_cuda():
    cpu, cuda = training_profile("cpu"), training_profile("cuda")
    assert cpu["profile"] == "cpu" and cuda["profile"] == "cuda"
    assert cpu["steps"] < cuda["steps"] and cpu["batch_size"] <= cuda["batch_size"]
    assert sum(cpu["architecture"]["widths"]) < sum(cuda["architecture"]["widths"])
    cpu["architecture"]["widths"].append(99)  # a copy: the defaults stay as they were
    assert training_profile("cpu")["architecture"]["widths"] == [8, 16]


def test_stopping_waits_for_a_settled_sparsity_weight():
    assert M.weight_settled([1.0, 1.1, 1.2, 1.3], patience=3)
    assert not M.weight_settled([0.1, 0.3, 0.9, 2.0], patience=3)
    assert M.weight_settled([0.01, 5.0, 5.1, 5.2, 5.3], patience=3)  # only the last patience + 1 checks count
