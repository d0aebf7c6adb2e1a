"""Integration steps of IG / D-IG chosen from the completeness error, and DeepLift's completeness check."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from chanstat.attribution import attribute
from chanstat.attribution.gradients import CompletenessWarning, recording_integration, summarise_integration


class ScalarPath(nn.Module):
    """logits = [0, g(<w, x>)]: IG of class 1 has the closed form
    w * (x - b) * (g(<w,x>) - g(<w,b>)) / <w, x - b> for any g."""

    def __init__(self, w: torch.Tensor, g=torch.exp):
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)
        self.g = g

    def forward(self, x):
        s = self.g((x * self.w).flatten(1).sum(1))
        return torch.stack([torch.zeros_like(s), s], 1)


def closed_form(model: ScalarPath, x, b):
    s_x = (x * model.w).flatten(1).sum(1)
    s_b = (b * model.w).flatten(1).sum(1)
    factor = (model.g(s_x) - model.g(s_b)) / (s_x - s_b)
    return model.w * (x - b) * factor[:, None, None, None]


def _data(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 3, 4, 4, generator=g) * 0.4
    x = torch.rand(n, 3, 4, 4, generator=g)
    b = torch.rand(n, 3, 4, 4, generator=g)
    return w, x, b


def test_linear_model_is_exact_with_the_fewest_steps():
    w, x, b = _data()
    model = ScalarPath(w, g=lambda s: s)
    target = torch.ones(len(x), dtype=torch.int64)
    with recording_integration() as records:
        maps = attribute(model, x, target, "d_ig", counterfactuals=b, counterfactual_target=target)
    # d_ig integrates from x (baseline) to the counterfactual b
    torch.testing.assert_close(maps, (w * (b - x)).float(), rtol=1e-5, atol=1e-6)
    summary = summarise_integration(records)["d_ig"]
    assert summary["max_steps"] == 8 and summary["max_error"] <= 1e-4


def test_gauss_legendre_meets_the_tolerance_with_fewer_steps_than_riemann():
    w, x, b = _data(seed=1)
    model = ScalarPath(w * 3.0)  # exp of a large argument: a strongly curved path
    target = torch.ones(len(x), dtype=torch.int64)
    exact = closed_form(model, x, b)
    steps = {}
    for method in ("gausslegendre", "riemann_trapezoid"):
        with recording_integration() as records:
            maps = attribute(model, x, target, "ig", baselines=None, quadrature=method, n_steps="auto", max_steps=512)
        summary = summarise_integration(records)["ig"]
        steps[method] = summary["mean_steps"]
        assert summary["max_error"] <= 0.01, (method, summary)
        if method == "gausslegendre":  # the completeness error bounds the error of the maps' sum
            zero = torch.zeros_like(x)
            truth = closed_form(model, x, zero)
            rel = (maps.flatten(1).sum(1) - truth.flatten(1).sum(1)).abs() / truth.flatten(1).sum(1).abs()
            assert float(rel.max()) <= 0.01
    assert steps["gausslegendre"] < steps["riemann_trapezoid"] / 2, steps
    assert exact.shape == x.shape


def test_step_choice_is_per_sample_and_batch_independent():
    w, x, b = _data(seed=2, n=5)
    model = ScalarPath(w * 2.0)
    x[2] = w.sign()[0]  # <w, x> about 29: a much more curved path, so it needs more steps than the others
    target = torch.ones(len(x), dtype=torch.int64)
    with recording_integration() as records:
        together = attribute(model, x, target, "ig", tolerance=1e-5)
    steps = records[-1]["steps"]
    assert steps[2] > steps[0]
    with recording_integration() as records:
        alone = attribute(model, x[2:3], target[2:3], "ig", tolerance=1e-5)
    assert int(records[-1]["steps"][0]) == int(steps[2])
    torch.testing.assert_close(alone[0], together[2])


def test_fixed_steps_are_recorded_with_their_error():
    w, x, b = _data(seed=3)
    model = ScalarPath(w * 3.0)
    target = torch.ones(len(x), dtype=torch.int64)
    with recording_integration() as records:
        attribute(model, x, target, "ig", n_steps=2, quadrature="riemann_left")
    summary = summarise_integration(records)["ig"]
    assert summary["max_steps"] == 2 and summary["max_error"] > 0.01 and summary["within_tolerance"] < 1


class Product(nn.Module):
    """logits = [0, sum(x * x)]: a product the rescale rule does not see, so DeepLift's maps
    (here the gradient times the difference) do not add up to the output change."""

    def forward(self, x):
        s = (x * x).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_deeplift_warns_when_completeness_fails():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 3, 3, generator=g) + 0.5
    target = torch.ones(4, dtype=torch.int64)
    with recording_integration() as records, pytest.warns(CompletenessWarning, match="miss f"):
        attribute(Product(), x, target, "dl")
    assert summarise_integration(records)["dl"]["max_error"] > 0.01


def test_deeplift_is_silent_when_completeness_holds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.rand(4, 2, 3, 3)
    target = torch.ones(4, dtype=torch.int64)
    with recording_integration() as records, warnings.catch_warnings():
        warnings.simplefilter("error", CompletenessWarning)
        attribute(model, x, target, "dl", baselines=0.0)
    assert summarise_integration(records)["dl"]["max_error"] <= 1e-3
