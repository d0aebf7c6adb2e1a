"""The registry methods ``pixelcam`` and ``pixelcam_grad``."""

from __future__ import annotations

import torch

from chanstat.attribution.adaptive import input_gradient
from chanstat.attribution.pixelcam.head import PixelCAMHead, _foreground, layer_and_name
from chanstat.attribution.pixelcam.per_image import per_image_pixelcam
from chanstat.attribution.registry import AttributionBatch, MethodSpec, register


def pixelcam(
    model,
    batch: AttributionBatch,
    *,
    head: PixelCAMHead | None = None,
    steps: int = 50,
    seed: int = 0,
    hidden: int = 0,
    lr: float = 1e-2,
) -> torch.Tensor:
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
        return per_image_pixelcam(
            model, batch.images, batch.target, cam_layer=batch.layer, steps=steps, seed=seed, hidden=hidden, lr=lr
        )
    if not isinstance(head, PixelCAMHead):
        raise TypeError(f"head must be a PixelCAMHead (from train_pixelcam); got {type(head).__name__}")
    if head.layer_name is None:
        raise ValueError("head has no layer_name; train it with train_pixelcam or set head.layer_name")
    layer, _ = layer_and_name(model, head.layer_name)
    with torch.no_grad():
        return _foreground(model, head, layer, batch.images)


def pixelcam_grad(
    model,
    batch: AttributionBatch,
    *,
    head: PixelCAMHead | None = None,
    steps: int = 50,
    seed: int = 0,
    hidden: int = 0,
    lr: float = 1e-2,
) -> torch.Tensor:
    """PixelCAM map x |d f_target / d x| per channel, (n, C, H, W): the channel-resolved variant.

    Options as for :func:`pixelcam`.
    """
    assert batch.target is not None  # a method that explains "real" always gets the targets
    fg = pixelcam(model, batch, head=head, steps=steps, seed=seed, hidden=hidden, lr=lr)
    # the gradient saliency takes: shared with it inside sharing_gradients()
    return fg * input_gradient(model, batch.images, batch.target).abs()


for _spec in (
    MethodSpec(
        "pixelcam",
        "pixelcam",
        False,
        False,
        False,
        "PixelCAM foreground probability (1x1-conv head on CAM pseudo-labels; one map per image)",
        pixelcam,
        uses_layer=True,
    ),
    MethodSpec(
        "pixelcam_grad",
        "pixelcam",
        True,
        False,
        False,
        "PixelCAM map x |input gradient| per channel (channel-resolved PixelCAM)",
        pixelcam_grad,
        uses_layer=True,
    ),
):
    register(_spec)
