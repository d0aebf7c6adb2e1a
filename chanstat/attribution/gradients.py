"""Gradient family (vanilla): integrated gradients, DeepLift, saliency, input x gradient.

All four keep the channel axis: maps are (n, C, H, W). Thin wrappers over Captum; the only
additions are a baseline that may be a number or one image, and an integrated-gradients batching
rule that does not depend on how many images share a chunk.
"""
from __future__ import annotations

import math
import numbers

import torch
from captum.attr import DeepLift, InputXGradient, IntegratedGradients, Saliency

from chanstat.attribution.modelstate import deeplift_model
from chanstat.attribution.registry import AttributionBatch, MethodSpec, register

#: Path points of integrated gradients evaluated per forward pass (times the chunk size).
DEFAULT_STEPS_PER_PASS = 10


def broadcast_baseline(baseline, inputs: torch.Tensor) -> torch.Tensor:
    """A baseline tensor shaped like ``inputs`` from a number, one image (C, H, W) or
    (1, C, H, W)."""
    if baseline is None:
        return torch.zeros_like(inputs)
    if isinstance(baseline, bool):
        raise TypeError("baselines must be a number or one image; got a bool")
    if isinstance(baseline, numbers.Real):
        if not math.isfinite(float(baseline)):
            raise ValueError(f"baselines must be a finite number or image; got {baseline!r}")
        return torch.full_like(inputs, float(baseline))
    b = torch.as_tensor(baseline, dtype=inputs.dtype).to(inputs.device)
    if b.ndim == 3:
        b = b.unsqueeze(0)
    if b.ndim != 4 or b.shape[0] != 1 or b.shape[1:] != inputs.shape[1:]:
        raise ValueError(
            f"baselines must be a number or one image of shape {tuple(inputs.shape[1:])}; got {tuple(b.shape)}. "
            "For a different baseline per image use a d_ method with counterfactuals=."
        )
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"baselines contain {int((~torch.isfinite(b)).sum())} NaN/inf values")
    return b.expand_as(inputs).contiguous()


def integrated_gradients(
    model,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor,
    n_steps: int,
    method: str,
    steps_per_pass: int | None,
) -> torch.Tensor:
    """Captum IG with ``internal_batch_size = n * steps_per_pass``.

    Captum splits the path into groups of ``internal_batch_size // n`` steps; tying the
    internal batch to ``n`` makes the grouping (and so the floating-point summation order)
    the same whatever the chunk size, which keeps a sample's map batch-independent.
    """
    n_steps = positive_int(n_steps, "n_steps")
    per_pass = DEFAULT_STEPS_PER_PASS if steps_per_pass is None else positive_int(steps_per_pass, "steps_per_pass")
    return IntegratedGradients(model).attribute(
        inputs,
        baselines=baselines,
        target=target,
        n_steps=n_steps,
        method=method,
        internal_batch_size=inputs.shape[0] * min(per_pass, n_steps),
    )


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; a float like 2.7 (or 2.0) is an error, never truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a whole number >= 1; got {value!r}")
    return int(value)


def ig(model, batch: AttributionBatch, *, baselines=None, n_steps: int = 50, method: str = "gausslegendre",
       steps_per_pass: int | None = None) -> torch.Tensor:
    """Integrated gradients of ``f_target`` from ``baselines`` (default 0) to the image.

    Options: ``baselines`` (number or one image), ``n_steps``, ``method`` (Captum's
    approximation: ``"gausslegendre"``, ``"riemann_trapezoid"``, ...), ``steps_per_pass``
    (memory knob: path points per forward pass).
    """
    x = batch.images
    return integrated_gradients(model, x, broadcast_baseline(baselines, x), batch.target, n_steps, method, steps_per_pass)


def dl(model, batch: AttributionBatch, *, baselines=None) -> torch.Tensor:
    """DeepLift (rescale rule) of ``f_target`` relative to ``baselines`` (default 0)."""
    x = batch.images
    return DeepLift(model).attribute(x, baselines=broadcast_baseline(baselines, x), target=batch.target)


def saliency(model, batch: AttributionBatch, *, abs: bool = True) -> torch.Tensor:  # noqa: A002 - Captum's name
    """|d f_target / d x| (``abs=False``: the signed gradient)."""
    return Saliency(model).attribute(batch.images, target=batch.target, abs=abs)


def ixg(model, batch: AttributionBatch) -> torch.Tensor:
    """x * d f_target / d x."""
    return InputXGradient(model).attribute(batch.images, target=batch.target)


for _spec in (
    MethodSpec("ig", "gradients", True, False, True, "Integrated gradients from a zero (or given) baseline", ig),
    MethodSpec("dl", "gradients", True, False, True, "DeepLift (rescale) from a zero (or given) baseline", dl,
               prepare=deeplift_model),
    MethodSpec("saliency", "gradients", True, False, False, "Absolute input gradient", saliency),
    MethodSpec("ixg", "gradients", True, False, True, "Input times gradient", ixg),
):
    register(_spec)
