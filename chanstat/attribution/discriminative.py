"""Discriminative family: attribution of the difference between an image ``x`` and its
counterfactual ``x'`` (same cell, other class ``y'``), after the DAC paper.

- ``d_ig``: integrated gradients of ``f_{y'}`` on ``x'`` with baseline ``x`` (signed; the
  channel maps sum to ``f_{y'}(x') - f_{y'}(x)``).
- ``d_dl``: DeepLift likewise.
- ``d_ixg``: ``|grad f_{y'}(x') * (x - x')|``.
- ``d_gradcam``: layer gradient at ``x'`` times ``A(x) - A(x')``, summed over the layer's
  channels, absolute value, upsampled — one map per image (no input-channel resolution).
- ``d_ggcam``: ``d_gradcam`` times guided backpropagation of ``f_{y'}`` at ``x'`` (per channel).
"""

from __future__ import annotations

import torch
from captum.attr import LayerActivation, LayerGradientXActivation

from chanstat.attribution.adaptive import MIN_STEPS, input_gradient
from chanstat.attribution.cam import DEFAULT_INTERPOLATION, guided_backprop, upsample
from chanstat.attribution.gradients import DEFAULT_TOLERANCE, MAX_STEPS, deeplift_checked, integrated_gradients
from chanstat.attribution.modelstate import deeplift_model
from chanstat.attribution.registry import AttributionBatch, MethodSpec, register


def d_ig(
    model,
    batch: AttributionBatch,
    *,
    n_steps: int | str = "auto",
    quadrature: str = "auto",
    steps_per_pass: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = MAX_STEPS,
    local_bound: float | None = None,
    refine: str = "worst",
    min_steps: int = MIN_STEPS,
) -> torch.Tensor:
    """IG of the counterfactual class along the straight path from ``x`` to ``x'``; ``n_steps="auto"``
    refines each sample's trapezoid grid until its completeness error is within ``tolerance``
    (options as for ``ig``)."""
    assert batch.counterfactuals is not None  # attribute() requires counterfactuals= for the d_* methods
    assert batch.counterfactual_target is not None  # attribute() requires counterfactual_target= for d_* methods
    return integrated_gradients(
        model,
        batch.counterfactuals,
        batch.images,
        batch.counterfactual_target,
        n_steps,
        quadrature,
        steps_per_pass,
        tolerance=tolerance,
        max_steps=max_steps,
        local_bound=local_bound,
        refine=refine,
        min_steps=min_steps,
        name="d_ig",
    )


def d_dl(model, batch: AttributionBatch, *, tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """DeepLift of the counterfactual class on ``x'`` with reference ``x``; warns when the maps miss
    ``f(x') - f(x)`` by more than ``tolerance`` (relative)."""
    assert batch.counterfactuals is not None  # attribute() requires counterfactuals= for the d_* methods
    assert batch.counterfactual_target is not None  # attribute() requires counterfactual_target= for d_* methods
    return deeplift_checked(
        model, batch.counterfactuals, batch.images, batch.counterfactual_target, tolerance=tolerance, name="d_dl"
    )


def d_ixg(model, batch: AttributionBatch) -> torch.Tensor:
    """|gradient of f_{y'} at x' times (x - x')|."""
    assert batch.counterfactuals is not None  # attribute() requires counterfactuals= for the d_* methods
    assert batch.counterfactual_target is not None  # attribute() requires counterfactual_target= for d_* methods
    grad = input_gradient(model, batch.counterfactuals, batch.counterfactual_target)
    return (grad * (batch.images - batch.counterfactuals)).abs()


def d_gradcam_layer(model, batch: AttributionBatch) -> torch.Tensor:
    """sum_k grad_{A_k} f_{y'}(x') * (A_k(x) - A_k(x')) at the layer's resolution, (n, 1, h, w)."""
    layer = batch.layer
    assert batch.counterfactuals is not None  # attribute() requires counterfactuals= for the d_* methods
    grad = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(
        batch.counterfactuals, target=batch.counterfactual_target
    )
    # one forward pass for both activations; LayerActivation runs without autograd
    acts = LayerActivation(model, layer).attribute(torch.cat([batch.images, batch.counterfactuals]))
    if grad.ndim != 4:
        raise ValueError(f"layer must produce (n, K, h, w) activations for D-GradCAM; got shape {tuple(grad.shape)}")
    n = batch.images.shape[0]
    return (grad * (acts[:n] - acts[n:])).sum(dim=1, keepdim=True)


def d_gradcam(
    model,
    batch: AttributionBatch,
    *,
    abs: bool = True,  # noqa: A002 - mirrors Saliency
    interpolate_mode: str = DEFAULT_INTERPOLATION,
) -> torch.Tensor:
    """D-GradCAM, upsampled to the image: (n, 1, H, W). ``abs=False`` keeps the sign."""
    cam = d_gradcam_layer(model, batch)
    if abs:
        cam = cam.abs()
    return upsample(cam, batch.images.shape[-2:], interpolate_mode)


def d_ggcam(model, batch: AttributionBatch, *, interpolate_mode: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """|D-GradCAM| (upsampled) times guided backpropagation of f_{y'} at x', per channel."""
    cam = upsample(d_gradcam_layer(model, batch).abs(), batch.images.shape[-2:], interpolate_mode)
    assert batch.counterfactuals is not None  # attribute() requires counterfactuals= for the d_* methods
    return guided_backprop(model, batch.counterfactuals, batch.counterfactual_target) * cam


for _spec in (
    MethodSpec(
        "d_ig",
        "discriminative",
        True,
        True,
        True,
        "Discriminative IG: IG of the counterfactual class on x' with baseline x",
        d_ig,
        explains="counterfactual",
    ),
    MethodSpec(
        "d_dl",
        "discriminative",
        True,
        True,
        True,
        "Discriminative DeepLift: DeepLift of the counterfactual class on x' with reference x",
        d_dl,
        explains="counterfactual",
        prepare=deeplift_model,
    ),
    MethodSpec(
        "d_ixg",
        "discriminative",
        True,
        True,
        False,
        "Discriminative input x gradient: |grad f_y'(x') * (x - x')|",
        d_ixg,
        explains="counterfactual",
    ),
    MethodSpec(
        "d_gradcam",
        "discriminative",
        False,
        True,
        False,
        "Discriminative Grad-CAM: layer gradient at x' times A(x) - A(x') (one map per image)",
        d_gradcam,
        explains="counterfactual",
        uses_layer=True,
    ),
    MethodSpec(
        "d_ggcam",
        "discriminative",
        True,
        True,
        True,
        "Discriminative guided Grad-CAM: |D-GradCAM| x guided backprop at x' (per channel)",
        d_ggcam,
        explains="counterfactual",
        uses_layer=True,
    ),
):
    register(_spec)
