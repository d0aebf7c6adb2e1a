"""CAM pseudo-labels for PixelCAM: Grad-CAM of the label class and the regions pixels are drawn from."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from chanstat.tensors import model_device, model_dtype


def gradcam_pseudo_source(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: nn.Module, batch_size: int = 32
) -> torch.Tensor:
    """Grad-CAM (ReLU) of each image's label class at ``layer``, upsampled: (N, 1, H, W), CPU."""
    from chanstat.attribution.cam import layer_gradcam, upsample

    device = model_device(model)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, model_dtype(model))
        y = labels[start : start + batch_size].to(device)
        cam = layer_gradcam(model, x, y, layer, relu=True)
        out.append(upsample(cam.float(), x.shape[-2:], "bilinear").detach().cpu())
    return torch.cat(out)


def pseudo_label_regions(
    cam: torch.Tensor, foreground_fraction: float, background_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
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
        cam_t = (
            cam.detach().float().cpu()
            if isinstance(cam, torch.Tensor)
            else torch.as_tensor(np.asarray(cam), dtype=torch.float32)
        )
        if tuple(cam_t.shape) != (n, 1, h, w):
            raise ValueError(f"cam must have shape {(n, 1, h, w)}; got {tuple(cam_t.shape)}")
    return pseudo_label_regions(cam_t, foreground_fraction, background_fraction)
