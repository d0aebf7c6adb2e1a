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

from chanstat.attribution.pixelcam.head import (
    PixelCAMHead,
    default_feature_layer,
    layer_and_name,
    layer_features,
    pixelcam_maps,
)
from chanstat.attribution.pixelcam.labels import gradcam_pseudo_source, pseudo_label_regions
from chanstat.attribution.pixelcam.methods import pixelcam, pixelcam_grad
from chanstat.attribution.pixelcam.per_image import per_image_pixelcam
from chanstat.attribution.pixelcam.train import train_pixelcam

__all__ = [
    "PixelCAMHead",
    "train_pixelcam",
    "pixelcam_maps",
    "per_image_pixelcam",
    "gradcam_pseudo_source",
    "pseudo_label_regions",
    "default_feature_layer",
    "layer_features",
    "layer_and_name",
    "pixelcam",
    "pixelcam_grad",
]
