"""Grad-CAM family (vanilla): layer Grad-CAM and guided Grad-CAM.

Grad-CAM weighs the activations of a convolutional layer, so it cannot tell input channels
apart: ``gradcam`` returns one map per image, (n, 1, H, W). Guided Grad-CAM multiplies that map
with guided backpropagation, which is per input channel, (n, C, H, W).
"""

from __future__ import annotations

import torch
from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam

from chanstat.attribution.registry import AttributionBatch, MethodSpec, register

DEFAULT_INTERPOLATION = "bilinear"


def upsample(layer_map: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    """Layer-resolution map (n, 1, h, w) -> input resolution (n, 1, H, W)."""
    if tuple(layer_map.shape[-2:]) == tuple(size):
        return layer_map
    return LayerAttribution.interpolate(layer_map, tuple(size), interpolate_mode=mode)


def layer_gradcam(model, inputs, target, layer, relu: bool) -> torch.Tensor:
    """Grad-CAM at the layer's resolution, (n, 1, h, w)."""
    cam = LayerGradCam(model, layer).attribute(inputs, target=target, relu_attributions=relu)
    if cam.ndim != 4 or cam.shape[1] != 1:
        raise ValueError(
            f"layer must produce (n, K, h, w) activations for Grad-CAM; Grad-CAM map has shape {tuple(cam.shape)}"
        )
    return cam


def gradcam(
    model, batch: AttributionBatch, *, relu: bool = True, interpolate_mode: str = DEFAULT_INTERPOLATION
) -> torch.Tensor:
    """Grad-CAM of ``f_target`` at ``batch.layer``, upsampled to the image (n, 1, H, W).

    Options: ``relu`` (keep only positive evidence, as in the Grad-CAM paper),
    ``interpolate_mode`` (``"bilinear"``, ``"nearest"``, ...).
    """
    x = batch.images
    cam = layer_gradcam(model, x, batch.target, batch.layer, relu)
    return upsample(cam, x.shape[-2:], interpolate_mode)


def guided_backprop(model, inputs: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Guided backpropagation (ReLU gradients clipped at zero), (n, C, H, W)."""
    return GuidedBackprop(model).attribute(inputs, target=target)


def ggcam(model, batch: AttributionBatch, *, interpolate_mode: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """Guided Grad-CAM (Captum's ``GuidedGradCam``): upsampled ReLU Grad-CAM x guided
    backpropagation, per channel."""
    return GuidedGradCam(model, batch.layer).attribute(
        batch.images, target=batch.target, interpolate_mode=interpolate_mode
    )


for _spec in (
    MethodSpec(
        "gradcam", "cam", False, False, False, "Layer Grad-CAM, upsampled (one map per image)", gradcam, uses_layer=True
    ),
    MethodSpec(
        "ggcam",
        "cam",
        True,
        False,
        True,
        "Guided Grad-CAM (Grad-CAM x guided backprop, per channel)",
        ggcam,
        uses_layer=True,
    ),
):
    register(_spec)
