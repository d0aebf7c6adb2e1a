"""Model-free baselines for DAC: the residual ``|x - x'|`` and smoothed random noise.

Both resolve channels, (n, C, H, W), and never run the model. They are the floor a real
attribution method has to beat.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from chanstat.attribution.registry import AttributionBatch, MethodSpec, register


def residual(model, batch: AttributionBatch) -> torch.Tensor:
    """|x - x'| per channel and pixel."""
    assert batch.counterfactuals is not None  # attribute() checks needs_counterfactual before calling
    with torch.no_grad():
        return (batch.images - batch.counterfactuals).abs()


def sample_seed(image: np.ndarray, seed: int) -> int:
    """A 64-bit seed from an image's bytes and a user seed.

    Deriving the seed from the image itself (not its position in the batch) makes the noise of
    a sample the same however the data are chunked or ordered.
    """
    digest = hashlib.blake2b(
        np.ascontiguousarray(image, dtype=np.float32).tobytes(),
        digest_size=8,
        key=int(seed).to_bytes(8, "little", signed=True),
    ).digest()
    return int.from_bytes(digest, "little")


def random(model, batch: AttributionBatch, *, sigma: float = 4.0, seed: int = 0) -> torch.Tensor:  # noqa: A001
    """|Gaussian-smoothed |N(0, 1)| noise| per channel (the DAC random baseline).

    Options: ``sigma`` (smoothing in pixels, per channel; 0 = none), ``seed`` (combined with a
    hash of each image, so the map of an image does not depend on its batch).
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0; got {sigma}")
    with torch.no_grad():
        images = batch.images.detach().cpu().numpy()
        maps = np.empty_like(images)
        for i, image in enumerate(images):
            rng = np.random.default_rng(sample_seed(image, seed))
            noise = np.abs(rng.standard_normal(image.shape, dtype=np.float32))
            if sigma > 0:
                noise = np.abs(gaussian_filter(noise, sigma=(0, sigma, sigma)))
            maps[i] = noise
        return torch.from_numpy(maps).to(batch.images.device)


for _spec in (
    MethodSpec(
        "residual", "baseline", True, True, False, "Absolute difference |x - x'| (no model)", residual, explains="none"
    ),
    MethodSpec(
        "random",
        "baseline",
        True,
        False,
        False,
        "Smoothed random noise, seeded per image (no model)",
        random,
        explains="none",
    ),
):
    register(_spec)
