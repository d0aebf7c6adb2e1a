"""PixelCAM-style localiser: a pixel-wise foreground/background head on a classifier's features.

After PixelCAM (Guichemerre et al., "PixelCAM: pixel class activation mapping for histology
image classification and ROI localization"): a small classifier made of 1x1 convolutions looks
at every position of a convolutional feature map of the (frozen, or jointly trained) classifier
and says "foreground" or "background". It learns from a CAM's pseudo-labels with a *partial*
cross-entropy: at every step a few pixels with the highest CAM of each image are labelled
foreground and a few from the lowest-CAM region background (resampled every step); all other
pixels carry no label. The map is the foreground probability at image resolution (head logits
upsampled bilinearly, then softmax). Because the head works in the feature space, it can mark
every pixel that *looks like* the discriminative structure, not only where a CAM peaks.

Layers
------
Two layers are involved. The **CAM layer** gives the pseudo-labels: Grad-CAM at the last
``nn.Conv2d`` (:func:`chanstat.models.default_cam_layer`), as usual. The **feature layer** is
what the head reads. Its default is the last ``nn.Conv2d`` whose output is spatially finer than
the CAM layer's (for the reference VGG: the last convolution before the final pooling, twice
the CAM's resolution), because a pixel classifier needs pixel features: on the synthetic Cell
Painting set a head on the last convolution itself scored a PxAP of 80.0-82.3 against its
Grad-CAM's 78.7-81.5 (sometimes below it), while a head one resolution step finer scored
89.1-90.2 (two models, two seeds each). When no convolution is finer (no downsampling), the
last one is used. ``layer=`` picks another feature layer (a module or dotted name).

Channels
--------
Nothing here assumes RGB; the head sees feature maps, whatever the number of input channels.
It therefore **localises but does not resolve channels**: ``pixelcam`` returns one map per
image, (N, 1, H, W). ``pixelcam_grad`` multiplies that map with the absolute input gradient of
the target class, ``|d f_y / d x_c|``, per channel: a channel-resolved (N, C, H, W) variant
(where PixelCAM says "here", the gradient says "through which channel").

Use
---
Train a head once on a set and pass it as a method option::

    head = train_pixelcam(model, images, labels)
    maps = attribute(model, images, labels, "pixelcam", head=head)

Without ``head=`` the registry methods fit a head to **each image on its own** (its own
Grad-CAM pseudo-labels, ``steps`` steps on that image's features; the heads of a chunk are
trained together as independent parameter sets, :func:`per_image_pixelcam`), so that, as
``attribute`` promises, a map depends only on its image. That is a quick look; the PixelCAM of
the paper is one head trained on a whole set, passed as ``head=``. The registry's ``layer=``
is the CAM layer; a trained head always reads its own feature layer (``head.layer_name``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from chanstat.attribution.core import resolve_layer
from chanstat.attribution.registry import AttributionBatch, MethodSpec, register


class PixelCAMHead(nn.Module):
    """Foreground/background classifier of every position of a feature map (1x1 convolutions).

    Parameters
    ----------
    in_features : channels K of the feature map (the layer's output channels).
    hidden : width of a hidden 1x1 layer (with ReLU); 0 (default) makes the head one linear
        1x1 convolution, a linear pixel classifier in feature space.
    layer_name : dotted name of the classifier layer whose output the head reads (set by
        :func:`train_pixelcam`; used by :func:`pixelcam_maps` to find the features again).
    cam_layer_name : the layer whose Grad-CAM gave the pseudo-labels (for the record).

    ``forward(features (N, K, h, w)) -> logits (N, 2, h, w)``, class 0 background, 1 foreground.
    """

    def __init__(self, in_features: int, hidden: int = 0, layer_name: str | None = None,
                 cam_layer_name: str | None = None) -> None:
        super().__init__()
        if in_features < 1 or hidden < 0:
            raise ValueError(f"need in_features >= 1 and hidden >= 0; got {in_features}, {hidden}")
        self.in_features = int(in_features)
        self.hidden = int(hidden)
        self.layer_name = layer_name
        self.cam_layer_name = cam_layer_name
        if hidden:
            self.net = nn.Sequential(nn.Conv2d(in_features, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2, 1))
        else:
            self.net = nn.Conv2d(in_features, 2, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.in_features:
            raise ValueError(
                f"PixelCAMHead expects features (N, {self.in_features}, h, w); got {tuple(features.shape)}"
            )
        return self.net(features)


# ---------------------------------------------------------------------------------------------
# layers and features
# ---------------------------------------------------------------------------------------------
def _conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _resolve_layer(model: nn.Module, layer) -> tuple[nn.Module, str]:
    """(module, dotted name) of ``layer``, resolved as every attribution method resolves it."""
    module = resolve_layer(model, layer)
    return module, next(name for name, m in model.named_modules() if m is module)


@contextlib.contextmanager
def _capture(layers: dict[str, nn.Module]) -> Iterator[dict]:
    store: dict = {}
    handles = []
    for name, layer in layers.items():
        def hook(_module, _inputs, output, name=name):
            store[name] = output

        handles.append(layer.register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def layer_features(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features at ``layer`` (N, K, h, w), model logits (N, n_classes)) in one forward pass."""
    with _capture({"layer": layer}) as store:
        logits = model(images)
    feats = store.get("layer")
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(f"layer must output a (N, K, h, w) feature map for PixelCAM; got {shape}")
    return feats, logits


def default_feature_layer(model: nn.Module, example: torch.Tensor, cam_layer: nn.Module | str | None = None) -> str:
    """Name of the last ``nn.Conv2d`` whose output is spatially finer than the CAM layer's.

    ``example`` is one image (1, C, H, W) to measure output sizes with; falls back on the CAM
    layer itself when no convolution is finer.
    """
    convs = _conv_names(model)
    _, cam_name = _resolve_layer(model, cam_layer)
    modules = {name: model.get_submodule(name) for name in convs}
    modules.setdefault(cam_name, model.get_submodule(cam_name))
    with torch.no_grad(), _capture(modules) as store:
        model(example)
    size = {name: int(np.prod(out.shape[-2:])) for name, out in store.items() if isinstance(out, torch.Tensor) and out.ndim == 4}
    if cam_name not in size:
        return cam_name
    finer = [name for name in convs if size.get(name, 0) > size[cam_name]]
    return finer[-1] if finer else cam_name


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _as_images(images) -> torch.Tensor:
    x = images.detach().float() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {tuple(x.shape)}")
    return x


# ---------------------------------------------------------------------------------------------
# pseudo-labels
# ---------------------------------------------------------------------------------------------
def gradcam_pseudo_source(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: nn.Module,
                          batch_size: int = 32) -> torch.Tensor:
    """Grad-CAM (ReLU) of each image's label class at ``layer``, upsampled: (N, 1, H, W), CPU."""
    from chanstat.attribution.cam import layer_gradcam, upsample

    device = _device_of(model)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        cam = layer_gradcam(model, x, y, layer, relu=True)
        out.append(upsample(cam, x.shape[-2:], "bilinear").detach().cpu())
    return torch.cat(out)


def pseudo_label_regions(cam: torch.Tensor, foreground_fraction: float, background_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (N, H*W) regions to sample foreground / background pseudo-labels from.

    Foreground: pixels at or above the ``ceil(foreground_fraction * H * W)``-th highest CAM
    value of each image; background: pixels at or below the ``ceil(background_fraction * H * W)``-th
    lowest value (ties included, so a CAM that is zero on most of the image makes all the zero
    pixels candidates). Pixels in both regions count as background only. Images whose CAM is
    constant (e.g. all zero after the ReLU) get empty regions: they teach nothing.
    """
    if not 0 < foreground_fraction < 1 or not 0 < background_fraction < 1:
        raise ValueError("foreground_fraction and background_fraction must lie in (0, 1)")
    if foreground_fraction + background_fraction > 1:
        raise ValueError("foreground_fraction + background_fraction must be <= 1 (the regions may not overlap)")
    flat = cam.reshape(cam.shape[0], -1).float()
    e = flat.shape[1]
    n_fg = min(e, int(np.ceil(foreground_fraction * e)))
    n_bg = min(e, int(np.ceil(background_fraction * e)))
    # Regions by value, not by rank, so ties (e.g. the zeros after Grad-CAM's ReLU) are all in
    # or all out; ranking ties by position would put the background in one corner of the image.
    fg_cut = flat.kthvalue(e - n_fg + 1, dim=1, keepdim=True).values  # n_fg-th largest
    bg_cut = flat.kthvalue(n_bg, dim=1, keepdim=True).values  # n_bg-th smallest
    background = flat <= bg_cut
    foreground = (flat >= fg_cut) & ~background
    informative = (flat.amax(dim=1) > flat.amin(dim=1))[:, None]
    return foreground & informative, background & informative


def _pseudo_labels(model, x, y, cam, cam_module, foreground_fraction, background_fraction):
    n, _, h, w = x.shape
    if cam is None:
        cam_t = gradcam_pseudo_source(model, x, y, cam_module)
    else:
        cam_t = cam.detach().float().cpu() if isinstance(cam, torch.Tensor) else torch.as_tensor(np.asarray(cam), dtype=torch.float32)
        if tuple(cam_t.shape) != (n, 1, h, w):
            raise ValueError(f"cam must have shape {(n, 1, h, w)}; got {tuple(cam_t.shape)}")
    return pseudo_label_regions(cam_t, foreground_fraction, background_fraction)


# ---------------------------------------------------------------------------------------------
# one head for a set
# ---------------------------------------------------------------------------------------------
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
    x = _as_images(images).cpu()
    y = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    y = y.reshape(-1).to(torch.int64)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},); got {tuple(y.shape)}")
    if steps < 1 or batch_size < 1 or n_foreground < 1 or n_background < 1:
        raise ValueError("steps, batch_size, n_foreground and n_background must be >= 1")
    n, _, h, w = x.shape
    device = _device_of(model)
    cam_module, cam_name = _resolve_layer(model, cam_layer)
    was_training = model.training
    model.eval()
    try:
        name = _resolve_layer(model, layer)[1] if layer is not None else default_feature_layer(model, x[:1].to(device), cam_module)
        module = model.get_submodule(name)
        fg_region, bg_region = _pseudo_labels(model, x, y, cam, cam_module, foreground_fraction, background_fraction)
        usable = torch.nonzero(fg_region.any(dim=1) & bg_region.any(dim=1)).flatten()
        if usable.numel() == 0:
            raise ValueError("every CAM is constant (nothing to learn from); check the model, layer and labels")
        cached = None
        with torch.no_grad():
            if cache_features and not joint:
                cached = torch.cat([layer_features(model, module, x[s : s + 64].to(device))[0] for s in range(0, n, 64)])
                feats = cached[:1]
            else:
                feats, _ = layer_features(model, module, x[:1].to(device))
        gen = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):  # seeded head initialisation, global RNG untouched
            torch.manual_seed(int(seed))
            head = PixelCAMHead(feats.shape[1], hidden=hidden, layer_name=name,
                                cam_layer_name=None if cam is not None else cam_name).to(device)
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
    finally:
        model.train(was_training)
    return head.eval()


def _logits_at(logits: torch.Tensor, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Head logits (n, 2, h, w) bilinearly upsampled to ``size`` and read at flat pixel indices
    (n, P) -> (n, 2, P); the same numbers as ``F.interpolate(..., align_corners=False)`` then
    gathering, without computing the whole upsampled map."""
    height, width = size
    rows = torch.div(pixels, width, rounding_mode="floor")
    cols = pixels - rows * width
    grid = torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], dim=-1).to(logits.dtype)
    return F.grid_sample(logits, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]


def _foreground(model: nn.Module, head: PixelCAMHead, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    feats, _ = layer_features(model, layer, x)
    logits = F.interpolate(head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return torch.softmax(logits, dim=1)[:, 1:2]


@torch.no_grad()
def pixelcam_maps(model: nn.Module, head: PixelCAMHead, images, batch_size: int = 64) -> torch.Tensor:
    """Foreground probability of every pixel, (N, 1, H, W) float32 on the CPU.

    The head reads the features of ``model.get_submodule(head.layer_name)``.
    """
    if not isinstance(head, PixelCAMHead):
        raise TypeError(f"head must be a PixelCAMHead (from train_pixelcam); got {type(head).__name__}")
    if head.layer_name is None:
        raise ValueError("head has no layer_name; train it with train_pixelcam or set head.layer_name")
    layer, _ = _resolve_layer(model, head.layer_name)
    x = _as_images(images)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        out = [_foreground(model, head, layer, x[s : s + batch_size].to(device)).cpu() for s in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# one head per image (batch-independent maps without a trained head)
# ---------------------------------------------------------------------------------------------
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
    device = _device_of(model)
    x = _as_images(images).to(device)
    y = (labels.detach() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))).to(device)
    y = y.reshape(-1).to(torch.int64)
    n, _, h, w = x.shape
    cam_module, cam_name = _resolve_layer(model, cam_layer)
    was_training = model.training
    model.eval()
    try:
        name = _resolve_layer(model, layer)[1] if layer is not None else default_feature_layer(model, x[:1], cam_module)
        fg_region, bg_region = _pseudo_labels(model, x, y, None, cam_module, foreground_fraction, background_fraction)
        usable = (fg_region.any(dim=1) & bg_region.any(dim=1)).to(device)
        with torch.no_grad():
            feats, _ = layer_features(model, model.get_submodule(name), x)
    finally:
        model.train(was_training)
    feats = feats.detach()
    k, fh, fw = feats.shape[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        template = PixelCAMHead(k, hidden=hidden, layer_name=name, cam_layer_name=cam_name)
    # stacked copies of the template's 1x1 convolutions: (n, out, in) weights, (n, out) biases
    params = []
    for conv in (m for m in template.modules() if isinstance(m, nn.Conv2d)):
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
        draws[i, :, :n_foreground] = torch.multinomial(fg_cpu[i], steps * n_foreground, replacement=True, generator=g).view(steps, -1)
        draws[i, :, n_foreground:] = torch.multinomial(bg_cpu[i], steps * n_background, replacement=True, generator=g).view(steps, -1)
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


# ---------------------------------------------------------------------------------------------
# registry methods
# ---------------------------------------------------------------------------------------------
def pixelcam(model, batch: AttributionBatch, *, head: PixelCAMHead | None = None, steps: int = 50,
             seed: int = 0, hidden: int = 0, lr: float = 1e-2) -> torch.Tensor:
    """PixelCAM foreground probability, (n, 1, H, W): localises, does not resolve channels.

    Options: ``head`` (a :class:`PixelCAMHead` from :func:`train_pixelcam`, used for every
    image, reading its own feature layer). Without it, a head is fitted to **each image on its
    own** (Grad-CAM pseudo-labels at the ``layer`` of ``attribute``; ``steps``, ``seed``,
    ``hidden``, ``lr``), so a map depends only on its image; a head trained on a whole set
    (the PixelCAM of the paper) localises better.
    """
    if head is None:
        if batch.target is None:
            raise ValueError("pixelcam without head= fits a head per image and needs target= (image classes)")
        return per_image_pixelcam(model, batch.inputs, batch.target, cam_layer=batch.layer, steps=steps,
                                  seed=seed, hidden=hidden, lr=lr)
    if not isinstance(head, PixelCAMHead):
        raise TypeError(f"head must be a PixelCAMHead (from train_pixelcam); got {type(head).__name__}")
    if head.layer_name is None:
        raise ValueError("head has no layer_name; train it with train_pixelcam or set head.layer_name")
    layer, _ = _resolve_layer(model, head.layer_name)
    with torch.no_grad():
        return _foreground(model, head, layer, batch.inputs)


def pixelcam_grad(model, batch: AttributionBatch, *, head: PixelCAMHead | None = None, steps: int = 50,
                  seed: int = 0, hidden: int = 0, lr: float = 1e-2) -> torch.Tensor:
    """PixelCAM map x |d f_target / d x| per channel, (n, C, H, W): the channel-resolved variant.

    Options as for :func:`pixelcam`.
    """
    fg = pixelcam(model, batch, head=head, steps=steps, seed=seed, hidden=hidden, lr=lr)
    x = batch.inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        picked = logits.gather(1, batch.target[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return fg * grad.abs()


for _spec in (
    MethodSpec("pixelcam", "pixelcam", False, False, False,
               "PixelCAM foreground probability (1x1-conv head on CAM pseudo-labels; one map per image)",
               pixelcam, uses_layer=True),
    MethodSpec("pixelcam_grad", "pixelcam", True, False, False,
               "PixelCAM map x |input gradient| per channel (channel-resolved PixelCAM)", pixelcam_grad,
               uses_layer=True),
):
    register(_spec)
