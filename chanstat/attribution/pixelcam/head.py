"""The PixelCAM head and the classifier features it reads (layers, feature capture, maps)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chanstat.attribution.core import resolve_layer
from chanstat.tensors import as_images, evaluating, model_device, model_dtype


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

    def __init__(
        self, in_features: int, hidden: int = 0, layer_name: str | None = None, cam_layer_name: str | None = None
    ) -> None:
        super().__init__()
        if in_features < 1 or hidden < 0:
            raise ValueError(f"need in_features >= 1 and hidden >= 0; got {in_features}, {hidden}")
        self.in_features = int(in_features)
        self.hidden = int(hidden)
        self.layer_name = layer_name
        self.cam_layer_name = cam_layer_name
        self.net: nn.Module
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


def _conv_names(model: nn.Module) -> list[str]:
    from chanstat.models.adapter import unwrap

    return [name for name, m in unwrap(model).named_modules() if isinstance(m, nn.Conv2d)]


def layer_and_name(model: nn.Module, layer) -> tuple[nn.Module, str]:
    """(module, dotted name) of ``layer``, resolved as every attribution method resolves it."""
    from chanstat.models.adapter import unwrap

    module = resolve_layer(model, layer)
    return module, next(name for name, m in unwrap(model).named_modules() if m is module)


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
    """(features at ``layer`` (N, K, h, w), model logits (N, n_classes)) in one forward pass.

    The images go in in the model's dtype; features and logits come back as float32."""
    with _capture({"layer": layer}) as store:
        logits = model(images.to(model_dtype(model)))
    feats = store.get("layer")
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(f"layer must output a (N, K, h, w) feature map for PixelCAM; got {shape}")
    return feats.float(), logits.float()  # heads and losses work in float32 whatever the model's dtype


def default_feature_layer(model: nn.Module, example: torch.Tensor, cam_layer: nn.Module | str | None = None) -> str:
    """Name of the last ``nn.Conv2d`` whose output is spatially finer than the CAM layer's.

    ``example`` is one image (1, C, H, W) to measure output sizes with; falls back on the CAM
    layer itself when no convolution is finer.
    """
    convs = _conv_names(model)
    _, cam_name = layer_and_name(model, cam_layer)
    modules = {name: model.get_submodule(name) for name in convs}
    modules.setdefault(cam_name, model.get_submodule(cam_name))
    with torch.no_grad(), _capture(modules) as store:
        model(example.to(model_dtype(model)))
    size = {
        name: int(np.prod(out.shape[-2:]))
        for name, out in store.items()
        if isinstance(out, torch.Tensor) and out.ndim == 4
    }
    if cam_name not in size:
        return cam_name
    finer = [name for name in convs if size.get(name, 0) > size[cam_name]]
    return finer[-1] if finer else cam_name


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
    layer, _ = layer_and_name(model, head.layer_name)
    x = as_images(images, "images")
    device = model_device(model)
    with evaluating(model, grad=True):  # every module's train/eval flag comes back
        out = [
            _foreground(model, head, layer, x[s : s + batch_size].to(device)).cpu()
            for s in range(0, x.shape[0], batch_size)
        ]
    return torch.cat(out)
