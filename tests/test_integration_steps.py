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
    # the adaptive rule's first grid: 17 points (end points included), no refinement
    assert summary["max_steps"] == 17 and summary["max_error"] <= 1e-4


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


@pytest.mark.parametrize(("quadrature", "tolerance"), [("gausslegendre", 1e-5), ("adaptive", 1e-3)])
def test_step_choice_is_per_sample_and_batch_independent(quadrature, tolerance):
    w, x, b = _data(seed=2, n=5)
    model = ScalarPath(w * 2.0)
    x[2] = w.sign()[0]  # <w, x> about 29: a much more curved path, so it needs more steps than the others
    target = torch.ones(len(x), dtype=torch.int64)
    options = dict(tolerance=tolerance, quadrature=quadrature, max_steps=512)
    with recording_integration() as records:
        together = attribute(model, x, target, "ig", **options)
    steps = records[-1]["steps"]
    assert steps[2] > steps[0]
    with recording_integration() as records:
        alone = attribute(model, x[2:3], target[2:3], "ig", **options)
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


# ---------------------------------------------------------------------------------------------
# the nested adaptive trapezoid rule (the default with n_steps="auto") and shared gradients
# ---------------------------------------------------------------------------------------------
def _relu_path(seed=4, n=8):
    """logits = [0, relu(<w, x> - c)]: the path from 0 crosses one kink; IG has the closed form of
    :func:`closed_form` (every gradient is a multiple of w, so the map's error is its completeness error)."""
    w, x, _ = _data(seed=seed, n=n)
    c = float((x * w).flatten(1).sum(1).median()) * 0.37
    model = ScalarPath(w, g=lambda s: torch.relu(s - c))
    return model, x


def test_adaptive_rule_meets_the_tolerance_per_image_and_per_batch_on_a_kinked_path():
    model, x = _relu_path()
    target = torch.ones(len(x), dtype=torch.int64)
    zero = torch.zeros_like(x)
    with recording_integration() as records:
        maps = attribute(model, x, target, "ig", tolerance=1e-3)
    summary = summarise_integration(records)["ig"]
    assert records[-1]["rule"] == "adaptive_trapezoid"
    assert summary["max_error"] <= 1e-3 and summary["batch_error"] <= 1e-3, summary
    truth = closed_form(model, x, zero)
    active = truth.flatten(1).abs().sum(1) > 0
    rel = (maps - truth).flatten(1).abs().sum(1) / truth.flatten(1).abs().sum(1).clamp_min(1e-12)
    assert float(rel[active].max()) <= 1e-3 + 1e-5
    # a uniform grid with as many points as the adaptive rule's largest count misses the tolerance
    fixed = int(summary["max_steps"])
    with recording_integration() as records:
        attribute(model, x, target, "ig", n_steps=fixed, quadrature="adaptive", tolerance=1e-3)
    uniform = summarise_integration(records)["ig"]
    assert uniform["rule"] == "trapezoid_uniform" and uniform["max_error"] > 1e-3, uniform


def test_adaptive_error_shrinks_on_a_smooth_path_and_the_map_follows():
    w, x, _ = _data(seed=5)
    model = ScalarPath(w * 3.0)
    target = torch.ones(len(x), dtype=torch.int64)
    truth = closed_form(model, x, torch.zeros_like(x))
    errors, steps = [], []
    for tolerance in (1e-2, 1e-4):
        with recording_integration() as records:
            maps = attribute(model, x, target, "ig", tolerance=tolerance, max_steps=512)
        summary = summarise_integration(records)["ig"]
        assert summary["max_error"] <= tolerance, summary
        rel = (maps - truth).flatten(1).abs().sum(1) / truth.flatten(1).abs().sum(1)
        errors.append(float(rel.max()))
        steps.append(summary["mean_steps"])
    assert errors[1] < errors[0] / 10 and steps[1] > steps[0]


def test_adaptive_linear_model_is_exact_on_the_first_grid():
    w, x, b = _data(seed=6)
    model = ScalarPath(w, g=lambda s: 2 * s)
    target = torch.ones(len(x), dtype=torch.int64)
    with recording_integration() as records:
        maps = attribute(model, x, target, "d_ig", counterfactuals=b, counterfactual_target=target, max_steps=3)
    torch.testing.assert_close(maps, (2 * w * (b - x)).float(), rtol=1e-5, atol=1e-6)
    assert summarise_integration(records)["d_ig"]["max_steps"] == 3  # the end points and one midpoint


class Counting(nn.Module):
    """A small ReLU CNN that counts the images it runs forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
        )
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.net(x)


def test_shared_gradients_give_the_same_maps_with_fewer_passes():
    from chanstat.attribution.adaptive import sharing_gradients

    model = Counting().eval()
    g = torch.Generator().manual_seed(0)
    x, xc = torch.rand(5, 3, 6, 6, generator=g), torch.rand(5, 3, 6, 6, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1])
    yc = 1 - y
    methods = ("ig", "saliency", "ixg", "d_ig", "d_ixg")

    def run():
        model.images = 0
        maps = {
            m: attribute(model, x, y, m, counterfactuals=xc, counterfactual_target=yc, batch_size=2) for m in methods
        }
        return maps, model.images

    alone, alone_images = run()
    with sharing_gradients():
        shared, shared_images = run()
    for m in methods:
        torch.testing.assert_close(shared[m], alone[m], rtol=1e-5, atol=1e-7)
    # saliency, ixg and d_ixg take the gradient at the image from ig / d_ig: 3 x 5 images fewer
    assert alone_images - shared_images == 3 * len(x), (alone_images, shared_images)
    with sharing_gradients(max_bytes=0):  # nothing may be kept: everything is computed again
        none_kept, none_kept_images = run()
    assert none_kept_images == alone_images
    torch.testing.assert_close(none_kept["ixg"], alone["ixg"])
