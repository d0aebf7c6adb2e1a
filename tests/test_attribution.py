"""Attribution engine: closed forms, channel locality, batch independence, aggregation,
normalisation, bad input, the synthetic Mito effect, and the pipeline stage."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from chanstat.attribution import (
    AGGREGATIONS,
    METHODS,
    MethodSpec,
    aggregate_channels,
    attribute,
    normalize,
    register,
)

C, H, W = 3, 12, 10  # H != W on purpose


# ---------------------------------------------------------------------------------------------
# small models with known structure
# ---------------------------------------------------------------------------------------------
def linear_model(n_classes: int = 3, seed: int = 0) -> nn.Module:
    """f(x) = W x + b over the flattened image: IG / DeepLift have closed forms."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, n_classes)).eval()


class ReadChannel(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.k : self.k + 1]


def channel_k_model(k: int, seed: int = 0) -> nn.Module:
    """A small conv net that only ever reads input channel k."""
    torch.manual_seed(seed)
    return nn.Sequential(
        ReadChannel(k),
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).eval()


def conv_model(seed: int = 0, in_channels: int = C) -> nn.Module:
    from chanstat.models import VGGClassifier

    torch.manual_seed(seed)
    return VGGClassifier(in_channels, 2, widths=(4, 8), dropout=0.0).eval()


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, C, H, W, generator=g)


def call(model, method, x, xc, y, yc, **kw):
    return attribute(model, x, y, method, counterfactuals=xc, counterfactual_target=yc, **kw)


FAST = {"ig": {"n_steps": 8}, "d_ig": {"n_steps": 8}}


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
def test_registry_lists_every_issue_method_with_its_properties():
    expected = {
        "ig",
        "dl",
        "saliency",
        "ixg",
        "gradcam",
        "ggcam",
        "d_ig",
        "d_dl",
        "d_ixg",
        "d_gradcam",
        "d_ggcam",
        "residual",
        "random",
    }
    assert expected <= set(METHODS)
    for name, spec in METHODS.items():
        assert spec.name == name and spec.description and callable(spec.fn)
    assert not METHODS["gradcam"].resolves_channels and not METHODS["d_gradcam"].resolves_channels
    assert all(METHODS[m].resolves_channels for m in expected - {"gradcam", "d_gradcam"})
    assert {m for m in expected if METHODS[m].needs_counterfactual} == {
        "d_ig",
        "d_dl",
        "d_ixg",
        "d_gradcam",
        "d_ggcam",
        "residual",
    }
    assert METHODS["ig"].signed and METHODS["d_ig"].signed and not METHODS["residual"].signed


def test_register_rejects_duplicates_and_runs_new_methods():
    def doubled(model, batch):
        return 2 * batch.images

    spec = MethodSpec("test_doubled", "test", True, False, False, "2x", doubled, explains="none")
    register(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(spec)
        x = images(2, 0)
        torch.testing.assert_close(attribute(None, x, None, "test_doubled"), 2 * x)
    finally:
        del METHODS["test_doubled"]


# ---------------------------------------------------------------------------------------------
# closed forms on a linear model
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", [0.0, 0.3])
@pytest.mark.parametrize("method", ["ig", "dl"])
def test_vanilla_closed_form_on_linear_model(method, baseline):
    model = linear_model()
    x = images(4, 1)
    y = torch.tensor([0, 1, 2, 1])
    maps = attribute(model, x, y, method, baselines=baseline)
    w = model[1].weight.detach().reshape(3, C, H, W)
    expected = (x - baseline) * w[y]
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=0)
    # completeness: the channel maps sum to f_y(x) - f_y(baseline)
    with torch.no_grad():
        gap = model(x).gather(1, y[:, None])[:, 0] - model(torch.full_like(x, baseline)).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["d_ig", "d_dl"])
def test_discriminative_closed_form_on_linear_model(method):
    model = linear_model()
    x, xc = images(5, 2), images(5, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    yc = torch.tensor([1, 2, 0, 2, 0])
    maps = call(model, method, x, xc, y, yc)
    w = model[1].weight.detach().reshape(3, C, H, W)
    torch.testing.assert_close(maps, (xc - x) * w[yc], atol=1e-4, rtol=0)
    with torch.no_grad():
        gap = model(xc).gather(1, yc[:, None])[:, 0] - model(x).gather(1, yc[:, None])[:, 0]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap, atol=1e-4, rtol=0)


def test_d_dl_completeness_on_relu_network():
    # no max pooling: Captum's DeepLift max-pool rule does not sum exactly to the output change
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(C, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).eval()
    x, xc = images(4, 4), images(4, 5)
    y, yc = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    maps = call(model, "d_dl", x, xc, y, yc)
    with torch.no_grad():
        gap = model(xc).gather(1, yc[:, None])[:, 0] - model(x).gather(1, yc[:, None])[:, 0]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap, atol=1e-5, rtol=1e-4)


def test_d_ixg_and_d_gradcam_match_direct_autograd():
    model = conv_model(seed=1)
    x, xc = images(3, 6), images(3, 7)
    y, yc = torch.tensor([0, 1, 0]), torch.tensor([1, 0, 1])
    # d_ixg = |grad f_y'(x') * (x - x')|
    xr = xc.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr).gather(1, yc[:, None]).sum(), xr)
    torch.testing.assert_close(call(model, "d_ixg", x, xc, y, yc), (grad * (x - xc)).abs(), atol=1e-6, rtol=1e-5)

    # d_gradcam = upsampled |sum_k dA_k f_y'(x') * (A_k(x) - A_k(x'))| at the last conv
    layer = model.features[-2]
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(x)
        a_real = store["a"]
        out = model(xc)
        a_cf = store["a"]
        (g,) = torch.autograd.grad(out.gather(1, yc[:, None]).sum(), a_cf)
    finally:
        handle.remove()
    cam = (g * (a_real - a_cf.detach())).sum(1, keepdim=True).abs()
    expected = torch.nn.functional.interpolate(cam, size=(H, W), mode="bilinear")
    torch.testing.assert_close(call(model, "d_gradcam", x, xc, y, yc), expected, atol=1e-6, rtol=1e-5)


def test_residual_and_random_baselines():
    x, xc = images(3, 8), images(3, 9)
    torch.testing.assert_close(attribute(None, x, None, "residual", counterfactuals=xc), (x - xc).abs())
    r0 = attribute(None, x, None, "random")
    assert r0.shape == x.shape and (r0 >= 0).all()
    torch.testing.assert_close(attribute(None, x, None, "random"), r0)  # deterministic
    assert not torch.equal(attribute(None, x, None, "random", seed=1), r0)
    assert not torch.equal(r0[0], r0[1])  # different images, different noise
    rough = attribute(None, x, None, "random", sigma=0)
    smooth_step = (r0[..., 1:] - r0[..., :-1]).abs().mean()
    rough_step = (rough[..., 1:] - rough[..., :-1]).abs().mean()
    assert smooth_step < 0.2 * rough_step


# ---------------------------------------------------------------------------------------------
# channel locality and batch independence, for every registered method
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 2])
def test_channel_k_model_puts_no_mass_outside_k(k):
    model = channel_k_model(k)
    x, xc = images(4, 10), images(4, 11)
    y, yc = torch.tensor([0, 1, 1, 0]), torch.tensor([1, 0, 0, 1])
    checked = []
    for name, spec in METHODS.items():
        # model-free baselines (residual, random) do not read the model, so the property is not theirs
        if not spec.resolves_channels or not spec.uses_model:
            continue
        maps = call(model, name, x, xc, y, yc, **FAST.get(name, {}))
        others = [c for c in range(C) if c != k]
        assert maps[:, others].abs().max() == 0, name
        assert maps[:, k].abs().sum() > 0, name
        checked.append(name)
    assert {"ig", "dl", "saliency", "ixg", "ggcam", "d_ig", "d_dl", "d_ixg", "d_ggcam"} <= set(checked)


def test_every_method_is_batch_independent():
    model = conv_model(seed=2)
    x, xc = images(17, 12), images(17, 13)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (17,), generator=g)
    yc = 1 - y
    i = 6
    for name in METHODS:
        opts = FAST.get(name, {})
        together = call(model, name, x, xc, y, yc, **opts)
        alone = call(model, name, x[i : i + 1], xc[i : i + 1], y[i : i + 1], yc[i : i + 1], **opts)
        chunked = call(model, name, x, xc, y, yc, batch_size=5, **opts)
        scale = float(together.abs().max()) or 1.0
        torch.testing.assert_close(alone[0], together[i], atol=1e-5 * scale, rtol=1e-4, msg=name)
        torch.testing.assert_close(chunked, together, atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_numpy_inputs_int_target_and_model_mode():
    model = conv_model(seed=3)
    model.train()
    model.features[0].eval()  # a mixed state must come back as it was
    x = images(3, 14)
    from_tensor = attribute(model, x, 1, "saliency")
    from_numpy = attribute(model, x.numpy(), [1, 1, 1], "saliency")
    assert from_numpy.dtype == torch.float32 and from_numpy.device.type == "cpu"
    torch.testing.assert_close(from_numpy, from_tensor)
    assert model.training and model.features[1].training  # modes restored after the eval-mode computation
    assert not model.features[0].training


# ---------------------------------------------------------------------------------------------
# aggregation and normalisation
# ---------------------------------------------------------------------------------------------
def test_aggregation_shapes_and_values():
    model = conv_model(seed=4)
    x, xc = images(3, 15), images(3, 16)
    y, yc = torch.tensor([0, 1, 0]), torch.tensor([1, 0, 1])
    full = call(model, "ixg", x, xc, y, yc)
    assert full.shape == (3, C, H, W)
    expected = {
        "mean": full.mean(1, keepdim=True),
        "sum": full.sum(1, keepdim=True),
        "max": full.max(1, keepdim=True).values,
        "abs_mean": full.abs().mean(1, keepdim=True),
        "abs_sum": full.abs().sum(1, keepdim=True),
        "abs_max": full.abs().max(1, keepdim=True).values,
    }
    assert set(expected) == set(AGGREGATIONS)
    for how, value in expected.items():
        got = call(model, "ixg", x, xc, y, yc, aggregate=how)
        assert got.shape == (3, 1, H, W)
        torch.testing.assert_close(got, value, atol=1e-7, rtol=1e-6)
    # channel-agnostic methods are always one map per image
    assert call(model, "gradcam", x, xc, y, yc).shape == (3, 1, H, W)
    assert call(model, "d_gradcam", x, xc, y, yc, aggregate="mean").shape == (3, 1, H, W)
    # hand-made values, numpy in -> numpy out
    a = np.array([[[[1.0]], [[-3.0]], [[2.0]]]], dtype=np.float32)  # (1, 3, 1, 1)
    assert aggregate_channels(a, "sum").item() == 0.0
    assert aggregate_channels(a, "max").item() == 2.0
    assert aggregate_channels(a, "abs_max").item() == 3.0
    assert aggregate_channels(a, "abs_mean").item() == 2.0
    assert isinstance(aggregate_channels(a, "mean"), np.ndarray)


def _captum_style_threshold(values: np.ndarray, mass: float) -> float:
    """Independent recomputation of the cumulative-mass rule with NumPy."""
    s = np.sort(np.abs(values).ravel())
    c = np.cumsum(s.astype(np.float64))
    return float(s[np.nonzero(c >= c[-1] * mass)[0][0]])


def test_normalisation_is_per_sample_and_matches_definitions():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((4, 3, 8, 6)).astype(np.float32) ** 3  # long tails
    maps[2] = 0.0
    for how in ("max_abs", "percentile", "min_max"):
        whole = normalize(maps, how)
        for i in range(4):
            np.testing.assert_allclose(normalize(maps[i : i + 1], how)[0], whole[i], rtol=1e-6, atol=1e-7)
        assert np.all(whole[2] == 0)
    m = maps[0]
    np.testing.assert_allclose(normalize(maps, "max_abs")[0], m / np.abs(m).max(), rtol=1e-6)
    np.testing.assert_allclose(normalize(maps, "min_max")[0], (m - m.min()) / (m.max() - m.min()), rtol=1e-5, atol=1e-7)
    t = _captum_style_threshold(m, 0.98)
    np.testing.assert_allclose(normalize(maps, "percentile")[0], np.clip(m / t, -1, 1), rtol=1e-6)
    per_channel = normalize(torch.from_numpy(maps), "max_abs", per_channel=True)
    assert isinstance(per_channel, torch.Tensor)
    torch.testing.assert_close(per_channel.abs().amax(dim=(2, 3))[[0, 1, 3]], torch.ones(3, 3))
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(maps, "zscore")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    model = conv_model(seed=5)
    x, xc = images(2, 17), images(2, 18)
    y, yc = torch.tensor([0, 1]), torch.tensor([1, 0])
    with pytest.raises(ValueError, match=r"unknown attribution method 'igg'.*d_ig"):
        attribute(model, x, y, "igg")
    with pytest.raises(ValueError, match="same shape"):
        call(model, "d_ig", x, xc[:, :, :8], y, yc)
    with pytest.raises(ValueError, match="needs counterfactuals="):
        attribute(model, x, y, "d_ig", counterfactual_target=yc)
    with pytest.raises(ValueError, match="needs counterfactual_target="):
        attribute(model, x, y, "d_ig", counterfactuals=xc)
    with pytest.raises(ValueError, match="3 input channels; images have 4"):
        attribute(model, torch.rand(2, 4, H, W), y, "ig")
    with pytest.raises(ValueError, match="could not process images"):  # model without in_channels
        attribute(linear_model(), torch.rand(2, 4, H, W), y, "ig")
    bad = x.clone()
    bad[1, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"images contains 1 NaN/inf.*\[1\]"):
        attribute(model, bad, y, "ig")
    bad_cf = xc.clone()
    bad_cf[0, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="counterfactuals contains 1 NaN/inf"):
        call(model, "d_ig", x, bad_cf, y, yc)
    with pytest.raises(ValueError, match="target must lie in"):
        attribute(model, x, 2, "ig")
    with pytest.raises(ValueError, match="counterfactual_target must lie in"):
        call(model, "d_gradcam", x, xc, y, torch.tensor([1, 5]))
    with pytest.raises(ValueError, match=">= 0"):
        attribute(model, x, -1, "saliency")
    with pytest.raises(ValueError, match="class scores of shape"):
        attribute(nn.Sequential(nn.Conv2d(C, 2, 1)), x, 0, "saliency")  # returns maps, not scores
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        attribute(model, x, [0, 1, 0], "ig")
    with pytest.raises(ValueError, match="needs target="):
        attribute(model, x, None, "ig")
    with pytest.raises(ValueError, match="add a batch axis"):
        attribute(model, x[0], 0, "ig")
    with pytest.raises(ValueError, match="does not take option"):
        attribute(model, x, y, "ig", n_step=3)
    with pytest.raises(ValueError, match="unknown aggregate"):
        attribute(model, x, y, "ig", aggregate="median")
    with pytest.raises(ValueError, match="does not use a layer"):
        attribute(model, x, y, "ig", layer="features.0")
    with pytest.raises(ValueError, match="no layer named"):
        attribute(model, x, y, "gradcam", layer="features.99")
    with pytest.raises(ValueError, match="batch_size"):
        attribute(model, x, y, "ig", batch_size=0)


# ---------------------------------------------------------------------------------------------
# the synthetic Mito effect
# ---------------------------------------------------------------------------------------------
def test_d_ig_puts_largest_share_on_mito(tiny_synthetic, trained_model):
    ds = tiny_synthetic
    maps = attribute(
        trained_model,
        ds.images,
        ds.labels,
        "d_ig",
        counterfactuals=ds.counterfactuals,
        counterfactual_target=ds.counterfactual_target,
        n_steps=8,
    )
    mass = maps.abs().sum(dim=(2, 3))
    share = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-30)
    top = share.argmax(dim=1)
    assert (top == list(ds.channels).index("Mito")).float().mean() > 0.8


# ---------------------------------------------------------------------------------------------
# pipeline stage
# ---------------------------------------------------------------------------------------------
def _context(dataset, model, section):
    from chanstat.attribution.stage import AttributionConfig

    validated = AttributionConfig(**section).model_dump()
    return SimpleNamespace(section=lambda name: validated, dataset=dataset, model=model, seed=0, progress=False)


def test_stage_writes_maps_with_attributes(tiny_synthetic, trained_model):
    from chanstat.attribution import stage

    ds = tiny_synthetic.subset(np.arange(6))
    ctx = _context(
        ds,
        trained_model,
        {"methods": ["ig", "gradcam", "d_ig", "random"], "options": {"ig": {"n_steps": 4}, "d_ig": {"n_steps": 4}}},
    )
    outputs = stage.per_image(ctx, SimpleNamespace(dataset=ds))
    maps = outputs["attributions"]
    _, info = stage.whole_set(ctx, outputs)
    assert info["methods"] == ["ig", "gradcam", "d_ig", "random"] and "skipped" not in info
    n = 6
    assert maps.arrays["ig"].shape == (n, len(ds.channels), 48, 48) and maps.arrays["gradcam"].shape == (n, 1, 48, 48)
    attrs = maps.attrs
    assert attrs["ig"]["channels"] == list(ds.channels) and attrs["gradcam"]["channels"] == ["all"]
    assert attrs["d_ig"]["target"] == "counterfactual" and attrs["ig"]["target"] == "real"
    assert attrs["d_ig"]["signed"] is True and attrs["gradcam"]["resolves_channels"] is False
    expected = attribute(
        trained_model,
        ds.images,
        ds.labels,
        "d_ig",
        counterfactuals=ds.counterfactuals,
        counterfactual_target=ds.counterfactual_target,
        n_steps=4,
    )
    np.testing.assert_allclose(maps.arrays["d_ig"], expected.numpy(), rtol=1e-5, atol=1e-7)


def test_stage_shares_the_gradient_at_the_image_across_methods(tiny_synthetic, trained_model):
    from chanstat.attribution import stage

    ds = tiny_synthetic.subset(np.arange(4))
    methods = ["ig", "saliency", "ixg", "d_ig", "d_ixg"]
    ctx = _context(ds, trained_model, {"methods": methods, "batch_size": 3})
    seen = []
    handle = trained_model.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    try:
        maps = stage.per_image(ctx, SimpleNamespace(dataset=ds))["attributions"]
        in_stage = sum(seen)
        seen.clear()
        for name in methods:
            alone = attribute(
                trained_model,
                ds.images,
                ds.labels,
                name,
                counterfactuals=ds.counterfactuals,
                counterfactual_target=ds.counterfactual_target,
                batch_size=3,
            )
            np.testing.assert_allclose(maps.arrays[name], alone.numpy(), rtol=1e-4, atol=1e-6)
    finally:
        handle.remove()
    # saliency, ixg and d_ixg take the gradient ig / d_ig computed at the image: 3 x 4 images fewer
    assert sum(seen) - in_stage == 3 * len(ds)
    assert maps.attrs["ig"]["integration"]["rule"] == "adaptive_trapezoid"
    assert maps.attrs["ig"]["integration"]["batch_error"] <= 0.01


def test_stage_skips_counterfactual_methods_without_counterfactuals(tiny_synthetic, trained_model):
    from chanstat.attribution import stage

    ds = tiny_synthetic.subset(np.arange(3))
    ds.counterfactuals = None
    ds.counterfactual_target = None
    ctx = _context(ds, trained_model, {"methods": ["saliency", "d_ig", "residual"]})
    outputs = stage.per_image(ctx, SimpleNamespace(dataset=ds))
    _, info = stage.whole_set(ctx, outputs)
    assert info["methods"] == ["saliency"]
    assert set(info["skipped"]) == {"d_ig", "residual"}


# ---------------------------------------------------------------------------------------------
# users' models: reused ReLUs (torchvision ResNets), state left as it was, other dtypes
# ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's BasicBlock shape: one ``self.relu`` called twice per forward."""

    def __init__(self, channels: int, separate: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.relu_out = nn.ReLU(inplace=True) if separate else self.relu

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + x)


class TinyResNet(nn.Module):
    """ResNet-18 layout in miniature (stem, two basic blocks, average pool, fc); the stem's ReLU
    module is the same object in every call site when ``separate`` is False."""

    def __init__(self, separate: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(C, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(6, separate), BasicBlock(6, separate))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)
        for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial eval statistics
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.mark.parametrize("method", ["dl", "d_dl"])
def test_deeplift_on_resnet_with_reused_relu(method):
    shared, separate = TinyResNet(separate=False).eval(), TinyResNet(separate=True).eval()
    separate.load_state_dict(shared.state_dict())
    x, xc = images(3, 30), images(3, 31)
    y, yc = torch.tensor([0, 1, 0]), torch.tensor([1, 0, 1])
    maps = call(shared, method, x, xc, y, yc)
    # the same numbers as the model written with one ReLU module per call
    torch.testing.assert_close(maps, call(separate, method, x, xc, y, yc), atol=1e-6, rtol=1e-5)
    # completeness (no max pooling): the maps sum to the change of the explained score
    cls, ref, inp = (y, torch.zeros_like(x), x) if method == "dl" else (yc, x, xc)
    with torch.no_grad():
        gap = shared(inp).gather(1, cls[:, None])[:, 0] - shared(ref).gather(1, cls[:, None])[:, 0]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap, atol=1e-5, rtol=1e-4)
    assert all(m.inplace for m in shared.modules() if isinstance(m, nn.ReLU))  # the user's modules untouched


def test_deeplift_treats_functional_relu_as_a_nonlinearity():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.conv = nn.Conv2d(C, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    model = Functional().eval()
    x = images(2, 32)
    maps = attribute(model, x, 1, "dl")
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap, atol=1e-5, rtol=1e-4)


def _state(model: nn.Module) -> list:
    return [
        (
            name,
            m.training,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            sorted(k for k in vars(m) if not k.startswith("_")),
            [(p.dtype, p.requires_grad) for p in m.parameters(recurse=False)],
        )
        for name, m in model.named_modules()
    ]


@pytest.mark.parametrize("method", ["dl", "d_dl", "ig", "ggcam", "d_ggcam", "saliency", "pixelcam_grad"])
def test_attribution_leaves_the_model_as_it_was(method):
    model = TinyResNet(separate=method == "ggcam").train()
    model.layer1[0].eval()  # mixed modes must come back exactly
    model.fc.bias.requires_grad_(False)
    before = _state(model)
    x, xc = images(2, 33), images(2, 34)
    opts = {"n_steps": 4} if method == "ig" else ({"steps": 2} if method == "pixelcam_grad" else {})
    call(model, method, x, xc, torch.tensor([0, 1]), torch.tensor([1, 0]), **opts)
    assert _state(model) == before


def test_model_state_restored_after_an_error_inside_deeplift():
    class FailsOnBatch(TinyResNet):
        def forward(self, x):
            out = super().forward(x)  # DeepLift's hooks have run (and stored tensors on the ReLUs)
            if x.shape[0] > 2:  # DeepLift runs images and baselines together
                raise RuntimeError("planted failure")
            return out

    model = FailsOnBatch(separate=True).train()  # one ReLU per call: runs on today's Captum too
    model.layer1[1].eval()
    before = _state(model)
    with pytest.raises(Exception, match="planted failure"):
        attribute(model, images(2, 35), 0, "dl")
    assert _state(model) == before
    assert model.training and not model.layer1[1].training


@pytest.mark.parametrize(
    "dtype, method",
    [
        (torch.float16, "saliency"),
        (torch.float16, "dl"),
        (torch.float16, "d_dl"),
        (torch.float16, "pixelcam_grad"),
        (torch.bfloat16, "saliency"),
        (torch.float64, "saliency"),
        (torch.float64, "d_dl"),
    ],
)
def test_model_in_another_dtype_gets_inputs_in_its_dtype(dtype, method):
    model = conv_model(seed=7)
    x, xc = images(2, 36), images(2, 39)
    opts = {"steps": 2} if method == "pixelcam_grad" else {}
    expected = call(model, method, x, xc, torch.tensor([1, 0]), torch.tensor([0, 1]), **opts)
    model = model.to(dtype)
    maps = call(model, method, x, xc, torch.tensor([1, 0]), torch.tensor([0, 1]), **opts)
    assert maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
    assert all(p.dtype == dtype for p in model.parameters())  # DeepLift runs in float32, then casts back
    relative_error = float((maps - expected).norm() / expected.norm())
    assert (
        relative_error < {torch.float64: 1e-5, torch.float16: 0.03, torch.bfloat16: 0.15}[dtype]
    )  # bf16: 8-bit mantissa


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("n_steps", 2.7, "n_steps must be a whole number"),
        ("n_steps", 0, "n_steps must be a whole number"),
        ("steps_per_pass", 1.5, "steps_per_pass must be a whole number"),
        ("baselines", float("nan"), "baselines must be a finite"),
        ("baselines", float("inf"), "baselines must be a finite"),
    ],
)
def test_invalid_method_options_are_errors_not_rounded(option, value, message):
    model = linear_model()
    with pytest.raises(ValueError, match=message):
        attribute(model, images(2, 37), 0, "ig", **{option: value})


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_deeplift_refuses_a_non_finite_baseline(value):
    with pytest.raises(ValueError, match="baselines must be a finite"):
        attribute(linear_model(), images(2, 38), 0, "dl", baselines=value)


def test_deeplift_on_an_untraceable_model_with_a_reused_relu_says_what_to_change():
    class Untraceable(TinyResNet):
        def forward(self, x):
            if bool((x.detach() < -1).all()):  # data-dependent control flow: torch.fx cannot trace this
                x = -x
            return super().forward(x)

    with pytest.raises(ValueError, match="reuses one and torch.fx could not trace it"):
        attribute(Untraceable().eval(), images(2, 40), 0, "dl")
