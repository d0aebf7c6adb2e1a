"""Intensity scaling of microscope images: per plate and channel (default) or per image.

Cell Painting intensities are compared *between* images: a brighter ER stain in one class is
a phenotype. Scaling every image by its own percentiles (per-image scaling) maps each image's
range onto [0, 1] and so erases exactly such differences. Per-plate scaling computes the
percentiles of each channel from all images of a plate (or from its control images only,
e.g. DMSO wells), and applies them to every image of that plate: differences between images
of one plate survive, plate-to-plate exposure differences are removed.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np

#: Scaling choices: per plate and channel, per image and channel, or raw intensities.
SCALINGS = ("plate", "image", "none")
Scaling = Literal["plate", "image", "none"]

#: Most pixels per channel that enter a pooled percentile: beyond this every image contributes a
#: regular grid subsample, so a plate of many large fields needs bounded memory (64 MB).
POOLED_PIXELS = 1 << 24


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """(low, high) with ``0 <= low < high <= 100``, or a ValueError naming them."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be two numbers (low, high); got {percentiles!r}") from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles need 0 <= low < high <= 100; got {low}, {high}")
    return low, high


def rescale_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """Clip every channel of one image to its own [low, high] percentiles and map them to [0, 1].

    Per-image scaling: it removes intensity differences between images (a brighter channel in
    one class disappears). Use it only when absolute intensity carries no information.

    Parameters
    ----------
    image : array, shape (C, H, W), any numeric dtype (e.g. uint16 camera counts).
    low, high : percentiles (0-100) computed per channel of this image only.

    Returns
    -------
    float32 array of the same shape, values in [0, 1]. A flat channel becomes 0.
    """
    low, high = check_percentiles((low, high))
    img = np.asarray(image, dtype=np.float32)
    lo = np.percentile(img, low, axis=(-2, -1), keepdims=True)
    hi = np.percentile(img, high, axis=(-2, -1), keepdims=True)
    return apply_limits(img, lo, hi)


def apply_limits(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``clip((image - lo) / (hi - lo), 0, 1)`` per channel; ``lo``/``hi`` broadcast as (C, 1, 1)."""
    img = np.asarray(image, dtype=np.float32)
    lo = np.asarray(lo, dtype=np.float32).reshape(-1, 1, 1)
    hi = np.asarray(hi, dtype=np.float32).reshape(-1, 1, 1)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((img - lo) / span, 0.0, 1.0).astype(np.float32)


def pooled_limits(images: Sequence[np.ndarray], low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel [low, high] percentiles of the pixels of several (C, H, W) images together.

    Every pixel counts while the images hold at most :data:`POOLED_PIXELS` pixels per channel
    together; beyond that each image contributes the same regular grid (every k-th row and
    column) of about that many pixels in total.

    Returns
    -------
    lo, hi : float64 arrays, shape (C,).
    """
    if not images:
        raise ValueError("no images to compute percentiles from")
    n_channels = images[0].shape[0]
    total = sum(int(np.prod(np.shape(img)[1:])) for img in images)
    step = max(1, math.ceil(math.sqrt(total / POOLED_PIXELS)))
    lo, hi = np.empty(n_channels), np.empty(n_channels)
    for c in range(n_channels):
        pixels = np.concatenate([np.asarray(img[c], dtype=np.float32)[::step, ::step].ravel() for img in images])
        lo[c], hi[c] = np.percentile(pixels, [low, high])
    return lo, hi


def scale_images(
    images: Sequence[np.ndarray],
    plates: Sequence[Any],
    channels: Sequence[str],
    scaling: str = "plate",
    percentiles: Sequence[float] = (1.0, 99.5),
    control: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Scale raw images to [0, 1] and describe how (for provenance).

    Parameters
    ----------
    images : N arrays of shape (C, H, W), raw intensities.
    plates : N plate names (the images of one plate share their limits).
    channels : C channel names (for the record).
    scaling : ``"plate"`` (default): per plate and channel, percentiles pooled over the plate's
        images (or its ``control`` images); ``"image"``: every image by its own percentiles
        (erases intensity differences between images); ``"none"``: raw intensities as float32.
    percentiles : (low, high) percentiles mapped to 0 and 1.
    control : bool array (N,), optional. Where given, a plate's limits come from its control
        images only; every plate needs at least one.

    Returns
    -------
    images : float32 array (N, C, H, W)
    record : dict, JSON-serialisable: ``method``, ``percentiles``, ``control`` (bool), and for
        ``"plate"`` the limits ``{plate: {channel: [lo, hi]}}``.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {list(SCALINGS)}; got {scaling!r}")
    low, high = check_percentiles(percentiles)
    plate_names = np.asarray([str(p) for p in plates], dtype=object)
    if len(plate_names) != len(images):
        raise ValueError(f"got {len(plate_names)} plate names for {len(images)} images")
    record: dict = {"method": scaling, "percentiles": [low, high], "control": control is not None}
    if scaling == "none":
        return np.stack([np.asarray(img, dtype=np.float32) for img in images]), record
    if scaling == "image":
        return np.stack([rescale_percentiles(img, low, high) for img in images]), record
    control = None if control is None else np.asarray(control, dtype=bool)
    out = np.empty((len(images),) + tuple(np.shape(images[0])), dtype=np.float32)
    limits: dict = {}
    for plate in dict.fromkeys(plate_names):
        members = np.flatnonzero(plate_names == plate)
        reference = members if control is None else members[control[members]]
        if reference.size == 0:
            raise ValueError(f"plate {plate!r} has no control images to compute its scaling from")
        lo, hi = pooled_limits([images[int(i)] for i in reference], low, high)
        for i in members:
            out[i] = apply_limits(images[int(i)], lo, hi)
        limits[plate] = {str(ch): [float(a), float(b)] for ch, a, b in zip(channels, lo, hi)}
    record["limits"] = limits
    return out, record
