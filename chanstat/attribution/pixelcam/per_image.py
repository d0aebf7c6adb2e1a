"""PixelCAM without a trained head: one head per image, so a map depends only on its image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chanstat.attribution.pixelcam.head import (
    PixelCAMHead,
    _logits_at,
    default_feature_layer,
    layer_and_name,
    layer_features,
)
from chanstat.attribution.pixelcam.labels import _pseudo_labels
from chanstat.tensors import as_images, as_target, evaluating, model_device


def per_image_pixelcam(
    model: nn.Module,
    images,
    labels,
    layer: nn.Module | str | None = None,
    cam_layer: nn.Module | str | None = None,
    steps: int = 50,
    lr: float = 1e-2,
    hidden: int = 0,
    n_foreground: int = 4,
    n_background: int = 4,
    foreground_fraction: float = 0.1,
    background_fraction: float = 0.3,
    seed: int = 0,
) -> torch.Tensor:
    """PixelCAM maps with one head per image, fitted to that image's own CAM pseudo-labels.

    All heads of the batch are trained at once as stacked, independent parameter sets (a summed
    loss and Adam's per-element updates keep them independent); every head starts from the same
    seeded initialisation and draws its pixels (all steps' at once) from its own generator seeded
    with ``seed``, so an image's map does not depend on the other images of the batch. Images whose CAM is
    constant get an all-zero map. Parameters as in :func:`train_pixelcam`.

    Returns (N, 1, H, W) foreground probabilities on the model's device.
    """
    device = model_device(model)
    x = as_images(images, "images").to(device)
    y = as_target(labels, x.shape[0], "labels").to(device)
    n, _, h, w = x.shape
    cam_module, cam_name = layer_and_name(model, cam_layer)
    with evaluating(model, grad=True):  # every module's train/eval flag comes back
        name = layer_and_name(model, layer)[1] if layer is not None else default_feature_layer(model, x[:1], cam_module)
        fg_region, bg_region = _pseudo_labels(model, x, y, None, cam_module, foreground_fraction, background_fraction)
        usable = (fg_region.any(dim=1) & bg_region.any(dim=1)).to(device)
        with torch.no_grad():
            feats, _ = layer_features(model, model.get_submodule(name), x)
    feats = feats.detach()
    k, fh, fw = feats.shape[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        template = PixelCAMHead(k, hidden=hidden, layer_name=name, cam_layer_name=cam_name)
    # stacked copies of the template's 1x1 convolutions: (n, out, in) weights, (n, out) biases
    params = []
    for conv in (m for m in template.modules() if isinstance(m, nn.Conv2d)):
        assert conv.bias is not None  # PixelCAMHead's convolutions all have a bias
        params.append(conv.weight.detach()[:, :, 0, 0].to(device).expand(n, -1, -1).clone().requires_grad_(True))
        params.append(conv.bias.detach().to(device).expand(n, -1).clone().requires_grad_(True))

    def logits_of(f: torch.Tensor) -> torch.Tensor:  # (n, K, h, w) -> (n, 2, h, w)
        z = f.flatten(2)
        for i in range(0, len(params), 2):
            z = torch.einsum("bkp,bok->bop", z, params[i]) + params[i + 1][:, :, None]
            if i + 2 < len(params):
                z = torch.relu(z)
        return z.view(n, 2, fh, fw)

    optimiser = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    rows = torch.nonzero(usable.cpu()).flatten().tolist()
    # Every step's pixels drawn up front, per image from its own seeded generator (i.i.d. with
    # replacement, as if drawn step by step): (n, steps, n_fg + n_bg) pixel indices.
    per_step = n_foreground + n_background
    draws = torch.zeros(n, max(steps, 1), per_step, dtype=torch.int64)
    fg_cpu, bg_cpu = fg_region.float().cpu(), bg_region.float().cpu()
    for i in rows:
        g = torch.Generator().manual_seed(int(seed))
        draws[i, :, :n_foreground] = torch.multinomial(
            fg_cpu[i], steps * n_foreground, replacement=True, generator=g
        ).view(steps, -1)
        draws[i, :, n_foreground:] = torch.multinomial(
            bg_cpu[i], steps * n_background, replacement=True, generator=g
        ).view(steps, -1)
    draws = draws.to(device)
    target = torch.cat([torch.ones(n_foreground), torch.zeros(n_background)]).long().to(device)
    for step in range(steps if rows else 0):
        picked = _logits_at(logits_of(feats), draws[:, step], (h, w))  # (n, 2, P)
        per_image = F.cross_entropy(picked, target.expand(n, -1), reduction="none").mean(dim=1)
        loss = (per_image * usable.float()).sum()  # a sum: each head gets only its own gradient
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        upsampled = F.interpolate(logits_of(feats), size=(h, w), mode="bilinear", align_corners=False)
        maps = torch.softmax(upsampled, dim=1)[:, 1:2]
    return torch.where(usable.view(n, 1, 1, 1), maps, torch.zeros_like(maps))
