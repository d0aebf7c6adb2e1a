"""One PixelCAM head trained on a whole set (the PixelCAM of the paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from chanstat.attribution.pixelcam.head import (
    PixelCAMHead,
    _logits_at,
    default_feature_layer,
    layer_and_name,
    layer_features,
)
from chanstat.attribution.pixelcam.labels import _pseudo_labels
from chanstat.tensors import as_images, as_target, evaluating, model_device


def train_pixelcam(
    model: nn.Module,
    images,
    labels,
    layer: nn.Module | str | None = None,
    cam_layer: nn.Module | str | None = None,
    cam=None,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-2,
    hidden: int = 0,
    n_foreground: int = 4,
    n_background: int = 4,
    foreground_fraction: float = 0.1,
    background_fraction: float = 0.3,
    joint: bool = False,
    image_loss_weight: float = 1.0,
    model_lr: float | None = None,
    cache_features: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> PixelCAMHead:
    """Train a PixelCAM head on a classifier's feature map from CAM pseudo-labels.

    Parameters
    ----------
    model : classifier (N, C, H, W) -> (N, n_classes); any number of input channels. It runs
        in eval mode (dropout off, batch-norm statistics fixed) on its own device.
    images : (N, C, H, W) images; labels : (N,) class indices (the class whose CAM is used).
    layer : the feature layer the head reads (module or dotted name); default
        :func:`default_feature_layer` (see the module notes).
    cam_layer : the Grad-CAM layer for the pseudo-labels; default the last ``nn.Conv2d``.
    cam : optional (N, 1, H, W) CAMs to learn from instead (then ``cam_layer`` is unused).
    steps : optimiser steps (Adam, cosine-decayed learning rate); each draws ``batch_size``
        images and, per image, ``n_foreground`` pixels from the top ``foreground_fraction`` of
        its CAM and ``n_background`` from the bottom ``background_fraction`` (fresh each step).
    lr : learning rate of the head; hidden : hidden width of the head (0 = linear).
    joint : also train the classifier, with loss ``pixel CE + image_loss_weight * image CE``
        (PixelCAM's multi-task setting). The model is updated **in place**; its learning rate
        is ``model_lr`` (default ``lr / 10``). Default False: the classifier stays frozen.
    cache_features : with a frozen classifier, compute the feature maps of all images once
        (N x K x h x w floats on the model's device) instead of a forward pass per step.
    seed : seeds the head's initialisation and the pixel sampling.

    Returns
    -------
    PixelCAMHead on the model's device (eval mode), with ``layer_name`` / ``cam_layer_name``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("model must be a torch.nn.Module")
    x = as_images(images, "images").cpu()
    y = as_target(labels, x.shape[0], "labels")
    if steps < 1 or batch_size < 1 or n_foreground < 1 or n_background < 1:
        raise ValueError("steps, batch_size, n_foreground and n_background must be >= 1")
    n, _, h, w = x.shape
    device = model_device(model)
    cam_module, cam_name = layer_and_name(model, cam_layer)
    with evaluating(model, grad=True):  # every module's train/eval flag comes back
        name = (
            layer_and_name(model, layer)[1]
            if layer is not None
            else default_feature_layer(model, x[:1].to(device), cam_module)
        )
        module = model.get_submodule(name)
        fg_region, bg_region = _pseudo_labels(model, x, y, cam, cam_module, foreground_fraction, background_fraction)
        usable = torch.nonzero(fg_region.any(dim=1) & bg_region.any(dim=1)).flatten()
        if usable.numel() == 0:
            raise ValueError("every CAM is constant (nothing to learn from); check the model, layer and labels")
        cached = None
        with torch.no_grad():
            if cache_features and not joint:
                cached = torch.cat(
                    [layer_features(model, module, x[s : s + 64].to(device))[0] for s in range(0, n, 64)]
                )
                feats = cached[:1]
            else:
                feats, _ = layer_features(model, module, x[:1].to(device))
        gen = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):  # seeded head initialisation, global RNG untouched
            torch.manual_seed(int(seed))
            head = PixelCAMHead(
                feats.shape[1], hidden=hidden, layer_name=name, cam_layer_name=None if cam is not None else cam_name
            ).to(device)
        params = [{"params": head.parameters(), "lr": lr}]
        frozen = {p: p.requires_grad for p in model.parameters()}
        if joint:
            params.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": model_lr or lr / 10})
        else:
            for p in model.parameters():
                p.requires_grad_(False)
        optimiser = torch.optim.Adam(params)
        # cosine decay: the pseudo-labels are resampled every step, so a decaying rate averages
        # over many draws instead of ending on the last few
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        order = usable[torch.randperm(usable.numel(), generator=gen)]
        cursor = 0
        target_row = torch.cat([torch.ones(n_foreground), torch.zeros(n_background)]).long()
        try:
            for _ in tqdm(range(steps), desc="train pixelcam", disable=not progress, leave=False):
                if cursor >= order.numel():
                    order = usable[torch.randperm(usable.numel(), generator=gen)]
                    cursor = 0
                idx = order[cursor : cursor + batch_size]
                cursor += batch_size
                fg_pix = torch.multinomial(fg_region[idx].float(), n_foreground, replacement=True, generator=gen)
                bg_pix = torch.multinomial(bg_region[idx].float(), n_background, replacement=True, generator=gen)
                pixels = torch.cat([fg_pix, bg_pix], dim=1).to(device)
                target = target_row.expand(len(idx), -1).to(device)
                if cached is not None:
                    feats = cached[idx.to(device)]
                else:
                    with torch.set_grad_enabled(joint):
                        feats, logits = layer_features(model, module, x[idx].to(device))
                picked = _logits_at(head(feats), pixels, (h, w))  # (b, 2, P)
                loss = F.cross_entropy(picked, target)
                if joint:
                    loss = loss + image_loss_weight * F.cross_entropy(logits, y[idx].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        finally:
            for p, flag in frozen.items():
                p.requires_grad_(flag)
    return head.eval()
