"""PixelCAM-style localiser: head, pseudo-labels, training modes, registry methods, and the
headline check that the head localises the planted signal better than the CAM it learned from."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from chanstat.attribution.pixelcam import (
    PixelCAMHead,
    default_feature_layer,
    gradcam_pseudo_source,
    per_image_pixelcam,
    pixelcam_maps,
    pseudo_label_regions,
    train_pixelcam,
)
from chanstat.metrics import localisation, pxap


def small_model(in_channels: int) -> nn.Module:
    from chanstat.models import VGGClassifier

    torch.manual_seed(0)
    return VGGClassifier(in_channels, 2, widths=(4, 8)).eval()


@pytest.mark.parametrize("in_channels", [1, 3, 7])
def test_head_works_for_any_number_of_channels(in_channels):
    model = small_model(in_channels)
    images = torch.rand(6, in_channels, 20, 16)
    labels = torch.tensor([0, 1] * 3)
    head = train_pixelcam(model, images, labels, steps=5, batch_size=4)
    from chanstat.models import default_cam_layer

    assert isinstance(head, PixelCAMHead)
    assert model.get_submodule(head.cam_layer_name) is default_cam_layer(model)  # Grad-CAM at the last Conv2d
    features = model.get_submodule(head.layer_name)
    assert isinstance(features, nn.Conv2d) and features is not default_cam_layer(model)  # one step finer
    assert head.layer_name == default_feature_layer(model, images[:1])
    maps = pixelcam_maps(model, head, images)
    assert maps.shape == (6, 1, 20, 16)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_pseudo_label_regions_take_ties_together():
    cam = torch.zeros(2, 1, 10, 10)
    cam[0, 0, 2:4, 2:4] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # 4 positive pixels, 96 zeros
    fg, bg = pseudo_label_regions(cam, foreground_fraction=0.02, background_fraction=0.3)
    assert fg[0].sum() == 2 and bool(fg[0].view(10, 10)[2, 2]) and bool(fg[0].view(10, 10)[2, 3])
    assert bg[0].sum() == 96  # every zero is a background candidate, not the 30 last by position
    assert not (fg & bg).any()
    assert fg[1].sum() == 0 and bg[1].sum() == 0  # a constant CAM teaches nothing
    with pytest.raises(ValueError, match="overlap"):
        pseudo_label_regions(cam, 0.8, 0.3)


def test_frozen_training_leaves_the_classifier_alone_and_joint_updates_it():
    model = small_model(3)
    images = torch.rand(8, 3, 16, 16)
    labels = torch.tensor([0, 1] * 4)
    before = copy.deepcopy(model.state_dict())
    train_pixelcam(model, images, labels, steps=5, batch_size=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    joint_model = copy.deepcopy(model)
    train_pixelcam(joint_model, images, labels, steps=5, batch_size=4, joint=True)
    assert not all(torch.equal(before[k], v) for k, v in joint_model.state_dict().items())


def test_training_rejects_bad_input():
    model = small_model(3)
    images = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match="labels"):
        train_pixelcam(model, images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cam must have shape"):
        train_pixelcam(model, images, torch.tensor([0, 1, 0, 1]), cam=torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="constant"):
        train_pixelcam(model, images, torch.tensor([0, 1, 0, 1]), cam=torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match="no layer named"):
        train_pixelcam(model, images, torch.tensor([0, 1, 0, 1]), layer="nope")


def test_registry_methods():
    from chanstat.attribution import METHODS, attribute

    assert not METHODS["pixelcam"].resolves_channels and METHODS["pixelcam_grad"].resolves_channels
    model = small_model(3)
    images = torch.rand(5, 3, 16, 16)
    labels = torch.tensor([0, 1, 0, 1, 1])
    head = train_pixelcam(model, images, labels, steps=5)
    maps = attribute(model, images, labels, "pixelcam", head=head)
    assert torch.allclose(maps, pixelcam_maps(model, head, images), atol=1e-6)
    resolved = attribute(model, images, labels, "pixelcam_grad", head=head)
    x = images.clone().requires_grad_(True)
    model(x).gather(1, labels[:, None]).sum().backward()
    assert resolved.shape == (5, 3, 16, 16)
    assert torch.allclose(resolved, maps * x.grad.abs(), atol=1e-6)
    # a trained head reads its own feature layer, whatever Grad-CAM layer attribute() resolves
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(attribute(model, images, labels, "pixelcam", head=head, layer=first_conv), maps)
    # without a head, one is fitted per image: a map does not depend on its batch
    alone = attribute(model, images[:2], labels[:2], "pixelcam", steps=10)
    together = attribute(model, images, labels, "pixelcam", steps=10, batch_size=5)
    assert alone.shape == (2, 1, 16, 16)
    assert torch.allclose(alone, together[:2], atol=1e-5)
    assert torch.allclose(per_image_pixelcam(model, images[1:2], labels[1:2], steps=10), together[1:2], atol=1e-5)


def test_default_feature_layer_is_one_resolution_step_finer_than_the_cam_layer():
    model = small_model(3)
    x = torch.rand(1, 3, 16, 12)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    sizes = {}
    hooks = [model.get_submodule(c).register_forward_hook(lambda m, i, o, c=c: sizes.__setitem__(c, o.shape[-2:])) for c in convs]
    model(x)
    for hook in hooks:
        hook.remove()
    chosen = default_feature_layer(model, x)
    finer = [c for c in convs if sizes[c].numel() > sizes[convs[-1]].numel()]
    assert chosen == finer[-1]
    no_pooling = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert default_feature_layer(no_pooling, x) == "2"  # nothing finer: the CAM layer itself


def test_pixelcam_localises_better_than_the_cam_it_learned_from(tiny_synthetic, trained_model, record_property):
    data = tiny_synthetic
    planted = data.meta.attrs.get("planted_channel", "Mito")
    from chanstat.models import default_cam_layer

    layer = default_cam_layer(trained_model)
    cam = gradcam_pseudo_source(trained_model, data.images, data.labels, layer)
    head = train_pixelcam(trained_model, data.images, data.labels, cam=cam, seed=0)
    maps = pixelcam_maps(trained_model, head, data.images)
    scores = {
        name: pxap(m, data.signal_masks, channels=data.channels).set_index("channel")["pxap"]
        for name, m in (("pixelcam", maps), ("gradcam", cam))
    }
    pixelcam_pxap, cam_pxap = float(scores["pixelcam"][planted]), float(scores["gradcam"][planted])
    record_property("pxap_pixelcam", pixelcam_pxap)
    record_property("pxap_gradcam", cam_pxap)
    print(f"PxAP on {planted}: pixelcam {pixelcam_pxap:.2f}, Grad-CAM it learned from {cam_pxap:.2f}")
    fg_fraction = float(data.signal_masks[:, data.channels.index(planted)].float().mean())
    assert cam_pxap > 100 * fg_fraction  # the CAM itself carries signal
    assert pixelcam_pxap > cam_pxap + 2
    table = localisation(maps, data.signal_masks, channels=data.channels, split=0.5)
    assert not table["channel_resolved"].any()
    assert np.isnan(table.set_index("channel").loc["DNA", "pxap"])  # nothing planted there
