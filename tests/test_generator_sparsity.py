"""The channel-sparsity penalty and self-checking training on tiny seeded runs."""
from __future__ import annotations

import math

import pytest
import torch
from test_generator import TINY, tiny_set

from chanstat.counterfactual.generator import train_generator
from chanstat.counterfactual.generator.monitor import change_shares, held_out_quality


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread (and a shared machine does not stall them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ReadsTwoChannels(torch.nn.Module):
    """Class 1 when mean(A) + 0.5 mean(B) is large: changing A flips it best, B also helps, C never."""

    def forward(self, x):
        s = 8 * (x[:, 0].mean(dim=(1, 2)) + 0.5 * x[:, 1].mean(dim=(1, 2)) - 0.6)
        return torch.stack([-s, s], dim=1)


def _share_of_planted_channel(sparsity):
    data = tiny_set(n=16, channels=("A", "B", "C"), size=8)
    model = ReadsTwoChannels()
    # only the classifier drives the change, so the comparison isolates the penalty
    training = train_generator(data, model, steps=80, batch_size=8, seed=0, architecture=TINY, progress=False,
                               sparsity=sparsity, held_out=0.0, adversarial=0, r1=0, style=0, cycle=0, diversity=0,
                               identity=0, lr=0.01)
    net = training.network
    target = 1 - data.labels
    z = torch.randn(len(data), 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        converted = net.translate(data.images, net.style_from_latent(z, target))
    return change_shares(data.images, converted).mean(0)


def test_sparsity_penalty_concentrates_the_change_in_the_planted_channel(one_thread):
    without = _share_of_planted_channel(0.0)
    with_penalty = _share_of_planted_channel(1.0)
    # without the penalty B (which the classifier also reads) takes about a third of the change
    assert float(without[1]) > 0.2
    assert float(with_penalty[0]) > float(without[0]) + 0.1
    assert float(with_penalty[1]) < float(without[1]) - 0.1


class MeanModel(torch.nn.Module):
    def forward(self, x):
        s = 4 * (x[:, 0].mean(dim=(1, 2)) - 0.45)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_self_checking_training_keeps_the_best_check_and_reports_it(one_thread):
    data = tiny_set(n=24, channels=("A", "B"), size=8)
    model = MeanModel()
    training = train_generator(data, model, steps=60, batch_size=8, seed=0, architecture=TINY, progress=False,
                               check_every=5, patience=3, min_steps=0, held_out=0.25, log_every=5)
    log = training.log
    checks = log[log["check_score"].notna()]
    assert len(checks) >= 4 and checks["step"].tolist() == sorted(checks["step"])
    quality = training.quality
    best = checks.loc[checks["check_score"].idxmax()]
    assert quality["best_step"] == int(best["step"])
    assert quality["held_out_flip_rate"] == pytest.approx(best["check_flip_rate"])
    assert set(quality["good_values"]) == {"flip_rate", "concentration", "realism_gap"}
    assert quality["n_held_out"] == 6 and quality["stop_reason"]
    if quality["stopped_at"] < 60:  # stopped by the rule: the last `patience` checks brought nothing better
        assert "plateau" in quality["stop_reason"]
        assert checks["check_score"].iloc[-3:].max() < checks["check_score"].iloc[:-3].max() + 0.01
    # the returned network is the best check's: re-measuring it gives that check's numbers
    from chanstat.counterfactual.generator.monitor import split_held_out

    _, held = split_held_out(data.labels, 0.25, seed=0)
    train_rows = torch.tensor([i for i in range(len(data)) if i not in set(held.tolist())])
    again = held_out_quality(training.network, model, data.images[held], data.labels[held], data.images[train_rows],
                             data.labels[train_rows], channels=data.channels, seed=0 + quality["best_step"])
    assert again["flip_rate"] == pytest.approx(quality["held_out_flip_rate"])
    assert again["concentration"] == pytest.approx(quality["held_out_concentration"], rel=1e-4)


def test_time_budget_stops_training(one_thread):
    data = tiny_set(n=12, channels=("A", "B"), size=8)
    training = train_generator(data, MeanModel(), steps=10_000, batch_size=4, seed=0, architecture=TINY,
                               progress=False, time_budget=0.5, check_every=5, min_steps=10**6)
    assert training.steps < 10_000
    assert "time budget" in training.quality["stop_reason"]
    assert math.isfinite(training.quality["held_out_flip_rate"])


@pytest.mark.slow
@pytest.mark.parametrize("phenotype,channel", [
    ("nuclear_size", "DNA"), ("er_intensity", "ER"), ("rna_nucleoli", "RNA"), ("agp_intensity", "AGP"),
    ("mito_fragmentation", "Mito"),
])
def test_sparse_generator_puts_the_change_in_the_planted_channel(one_thread, phenotype, channel):
    """Quality study (issue 26): CPU defaults, stopping rule, data-chosen sparsity; >= 0.8 of the
    change in the planted channel at a held-out flip rate >= 0.9 (32 px, 128 images)."""
    from chanstat.counterfactual import generate_counterfactuals
    from chanstat.data import synthetic
    from chanstat.models import VGGClassifier, train

    data = synthetic(n_plates=2, wells_per_class=4, sites_per_well=8, size=32, phenotype=phenotype, seed=0)
    torch.manual_seed(0)
    model = VGGClassifier(len(data.channels), len(data.classes), widths=(8, 16, 32))
    train(model, data, epochs=40, batch_size=8, lr=2e-3, patience=10, min_epochs=20, seed=0, progress=False)
    result = generate_counterfactuals(data, "generator", model=model.eval(), seed=0, n_latent=5, n_reference=5)
    quality = result.info["generator_quality"]
    share = result.summary.set_index("channel")["change_share"]
    print(f"\n{phenotype}: held-out flip {quality['held_out_flip_rate']:.3f}, concentration "
          f"{quality['held_out_concentration']:.3f}; all images flip {result.summary['flip_rate'].iloc[0]:.3f}, "
          f"shares {share.round(3).to_dict()}; steps {quality['stopped_at']} ({quality['stop_reason']})")
    assert quality["held_out_flip_rate"] >= 0.9
    assert share[channel] >= 0.8
