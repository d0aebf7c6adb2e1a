"""Gradient family (vanilla): integrated gradients, DeepLift, saliency, input x gradient.

All four keep the channel axis: maps are (n, C, H, W). Thin wrappers over Captum; the only
additions are a baseline that may be a number or one image, and an integrated-gradients batching
rule that does not depend on how many images share a chunk.
"""

from __future__ import annotations

import math
import numbers
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from captum.attr import DeepLift, IntegratedGradients

from chanstat.attribution.adaptive import MIN_STEPS, adaptive_integrated_gradients, input_gradient
from chanstat.attribution.modelstate import deeplift_model
from chanstat.attribution.registry import AttributionBatch, MethodSpec, register

#: Path points of integrated gradients evaluated per forward pass (times the chunk size).
DEFAULT_STEPS_PER_PASS = 10

#: Completeness tolerance: |sum(map) - (f(x) - f(baseline))| <= 1 % of |f(x) - f(baseline)|.
DEFAULT_TOLERANCE = 0.01

#: The first two step counts ``n_steps="auto"`` tries (later ones are predicted per sample).
STEP_LADDER = (8, 16)

#: Most steps ``n_steps="auto"`` gives one sample's map.
MAX_STEPS = 128

#: ``quadrature=`` value of the hand-written nested adaptive trapezoid rule
#: (:mod:`chanstat.attribution.adaptive`); the default with ``n_steps="auto"``.
ADAPTIVE = "adaptive"

_RECORDS: ContextVar[list | None] = ContextVar("chanstat_integration_records", default=None)


class CompletenessWarning(UserWarning):
    """DeepLift's maps do not add up to the output change (Captum's convergence delta is large)."""


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
    n_steps: int | str,
    method: str,
    steps_per_pass: int | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = MAX_STEPS,
    local_bound: float | None = None,
    refine: str = "worst",
    min_steps: int = MIN_STEPS,
    name: str = "ig",
) -> torch.Tensor:
    """IG maps with their completeness errors recorded (:func:`recording_integration`).

    ``method`` (the ``quadrature`` option) :data:`ADAPTIVE` (the default with ``n_steps="auto"``):
    the nested adaptive trapezoid rule of
    :func:`~chanstat.attribution.adaptive.adaptive_integrated_gradients`, per sample from
    ``min_steps`` points until ``|sum(map) - (f(x) - f(b))| <= tolerance * |f(x) - f(b)|`` or
    ``max_steps`` points; with a fixed ``n_steps``, a uniform trapezoid grid of that many points.

    Any other ``method`` is Captum's (``"gausslegendre"``, the default with a fixed ``n_steps``):
    Captum IG with ``internal_batch_size = n * steps_per_pass`` and a completeness check.
    Captum splits the path into groups of ``internal_batch_size // n`` steps; tying the
    internal batch to ``n`` makes the grouping (and so the floating-point summation order)
    the same whatever the chunk size, which keeps a sample's map batch-independent.

    ``n_steps="auto"``: every sample starts with :data:`STEP_LADDER`'s first two counts (8, then
    16 where 8 misses ``tolerance``); a sample still outside the tolerance then jumps to the
    count its own two errors predict (error ~ steps^-p, p fitted from them; rounded up to a
    multiple of 8, at least twice the last count, at most ``max_steps``), and so on until its
    completeness error (:func:`completeness_error`) is within ``tolerance`` or it has used
    ``max_steps``. The choice is per sample (a sample's steps, like its map, never depend on the
    rest of the batch). A fixed ``n_steps`` is run once. Either way the steps, the steps
    evaluated in all (the cost) and the errors are recorded (:func:`recording_integration`).
    """
    per_pass = DEFAULT_STEPS_PER_PASS if steps_per_pass is None else positive_int(steps_per_pass, "steps_per_pass")
    auto = n_steps == "auto"
    top = positive_int(max_steps, "max_steps") if auto else positive_int(n_steps, "n_steps")
    if not (isinstance(tolerance, numbers.Real) and tolerance > 0):
        raise ValueError(f"tolerance must be a number > 0; got {tolerance!r}")
    method = resolve_quadrature(method, auto)
    if local_bound is not None and not (isinstance(local_bound, numbers.Real) and local_bound > 0):
        raise ValueError(f"local_bound must be a number > 0 or None; got {local_bound!r}")
    if refine not in ("worst", "variation", "all"):
        raise ValueError(f"refine must be 'worst', 'variation' or 'all'; got {refine!r}")
    n = inputs.shape[0]
    if method == ADAPTIVE:
        if not auto and top < 2:
            raise ValueError(f"quadrature='adaptive' with a fixed n_steps needs n_steps >= 2; got {top}")
        out = adaptive_integrated_gradients(
            model,
            inputs,
            baselines,
            target,
            tolerance=float(tolerance),
            max_steps=max(top, 2),
            per_pass=per_pass,
            n_steps=None if auto else top,
            bound=local_bound,
            refine=refine,
            min_steps=positive_int(min_steps, "min_steps"),
        )
        rule = "adaptive_trapezoid" if auto else "trapezoid_uniform"
        _record(name, out["steps"], out["errors"], tolerance, rule, out["steps"], out["change"])
        return out["maps"]
    change = output_change(model, inputs, baselines, target)
    result = torch.empty_like(inputs)
    steps_used = torch.zeros(n, dtype=torch.int64)
    evaluated = torch.zeros(n, dtype=torch.int64)
    errors = torch.full((n,), float("inf"), dtype=torch.float64)
    previous = torch.full((n,), float("nan"), dtype=torch.float64)
    planned = torch.full((n,), min(STEP_LADDER[0], top) if auto else top, dtype=torch.int64)
    ig = IntegratedGradients(model)
    todo = torch.arange(n)
    while todo.numel():
        for steps in planned[todo].unique().tolist():
            rows = todo[planned[todo] == steps]
            on_device = rows.to(inputs.device)
            attributions, delta = ig.attribute(
                inputs[on_device],
                baselines=baselines[on_device],
                target=target[on_device],
                n_steps=steps,
                method=method,
                internal_batch_size=rows.numel() * min(per_pass, steps),
                return_convergence_delta=True,
            )
            result[on_device] = attributions.to(result.dtype)  # Captum may return float32 for a bf16 model
            previous[rows], errors[rows] = errors[rows], completeness_error(delta, change[on_device]).double().cpu()
            steps_used[rows] = steps
            evaluated[rows] += steps
        unfinished = todo[(errors[todo] > tolerance) & (steps_used[todo] < top)] if auto else todo[:0]
        planned[unfinished] = _next_steps(
            steps_used[unfinished], errors[unfinished], previous[unfinished], tolerance, top
        )
        todo = unfinished
    _record(name, steps_used, errors, tolerance, method, evaluated, change)
    return result


def resolve_quadrature(quadrature: str, auto: bool) -> str:
    """``"auto"``: :data:`ADAPTIVE` with ``n_steps="auto"``, Captum's Gauss-Legendre with a fixed count."""
    if quadrature == "auto":
        return ADAPTIVE if auto else "gausslegendre"
    if not isinstance(quadrature, str):
        raise ValueError(f"quadrature must be a string; got {quadrature!r}")
    return quadrature


def _next_steps(
    steps: torch.Tensor, error: torch.Tensor, previous: torch.Tensor, tolerance: float, top: int
) -> torch.Tensor:
    """Per sample: the next step count, predicted from its last two errors (see ``integrated_gradients``)."""
    second = STEP_LADDER[1] if len(STEP_LADDER) > 1 else 2 * STEP_LADDER[0]
    out = torch.full_like(steps, min(second, top))
    fitted = torch.isfinite(previous) & (steps >= second)
    if bool(fitted.any()):
        rate = torch.log2(previous[fitted] / error[fitted].clamp_min(1e-30)).clamp(0.5, 6.0)
        needed = steps[fitted].double() * (error[fitted] / tolerance).clamp_min(1.0) ** (1.0 / rate)
        needed = (torch.ceil(needed / 8) * 8).long()
        out[fitted] = torch.maximum(needed, 2 * steps[fitted])
    return out.clamp_max(top)


def output_change(model, inputs: torch.Tensor, baselines: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``f_target(inputs) - f_target(baselines)`` per sample (one forward pass of both)."""
    with torch.no_grad():
        out = model(torch.cat([inputs, baselines]))
    n = inputs.shape[0]
    picked = out.gather(1, torch.cat([target, target])[:, None].to(out.device)).squeeze(1).float()
    return picked[:n] - picked[n:]


def completeness_error(delta: torch.Tensor, change: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """``|sum(map) - (f(x) - f(baseline))| / |f(x) - f(baseline)|`` per sample (Captum's
    convergence delta relative to the output change; a change below ``floor`` counts as ``floor``)."""
    return delta.detach().float().abs() / change.detach().float().abs().clamp_min(floor)


@contextmanager
def recording_integration() -> Iterator[list[dict]]:
    """Collect one record per integrated-gradients / DeepLift call made inside the block.

    Each record: ``method``, ``steps`` (per-sample step count of the map kept; 0 for DeepLift),
    ``evaluated`` (per-sample steps evaluated in all: the cost), ``errors`` (per-sample
    completeness errors), ``tolerance``, ``rule``. Summarise with
    :func:`summarise_integration`::

        with recording_integration() as records:
            maps = attribute(model, x, y, "ig")
        summarise_integration(records)   # {"ig": {"mean_steps": ..., "max_error": ...}}
    """
    records: list[dict] = []
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)


def summarise_integration(records: list[dict]) -> dict[str, dict]:
    """Per method: images, mean / max steps of the maps kept, mean steps evaluated in all, steps
    histogram, median / max completeness error, share of images within the tolerance."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        steps = torch.cat([r["steps"] for r in mine]).double()
        evaluated = torch.cat([r["evaluated"] for r in mine]).double()
        errors = torch.cat([r["errors"] for r in mine]).double()
        tolerance = float(mine[-1]["tolerance"])
        changes = [r.get("change") for r in mine]
        batch_error = float("nan")
        if changes and all(c is not None for c in changes) and errors.numel():
            change = torch.cat([c for c in changes if c is not None]).double().abs()
            # the batch criterion: total absolute error over total output change
            batch_error = float((errors * change.clamp_min(1e-6)).sum() / change.sum().clamp_min(1e-12))
        out[method] = {
            "images": int(steps.numel()),
            "rule": mine[-1]["rule"],
            "tolerance": tolerance,
            "mean_steps": round(float(steps.mean()), 2) if steps.numel() else 0.0,
            "max_steps": int(steps.max()) if steps.numel() else 0,
            "mean_evaluated_steps": round(float(evaluated.mean()), 2) if evaluated.numel() else 0.0,
            "steps_histogram": {int(k): int((steps == k).sum()) for k in steps.unique().tolist()},
            "median_error": float(errors.median()) if errors.numel() else float("nan"),
            "max_error": float(errors.max()) if errors.numel() else float("nan"),
            "within_tolerance": float((errors <= tolerance).double().mean()) if errors.numel() else float("nan"),
            "batch_error": batch_error,
        }
    return out


def _record(
    method: str,
    steps: torch.Tensor,
    errors: torch.Tensor,
    tolerance: float,
    rule: str,
    evaluated: torch.Tensor | None = None,
    change: torch.Tensor | None = None,
) -> None:
    records = _RECORDS.get()
    if records is not None:
        records.append(
            {
                "method": method,
                "steps": steps.cpu(),
                "errors": errors.cpu().double(),
                "evaluated": (steps if evaluated is None else evaluated).cpu(),
                "change": None if change is None else change.detach().cpu().double(),
                "tolerance": float(tolerance),
                "rule": rule,
            }
        )


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; a float like 2.7 (or 2.0) is an error, never truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a whole number >= 1; got {value!r}")
    return int(value)


def ig(
    model,
    batch: AttributionBatch,
    *,
    baselines=None,
    n_steps: int | str = "auto",
    quadrature: str = "auto",
    steps_per_pass: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = MAX_STEPS,
    local_bound: float | None = None,
    refine: str = "worst",
    min_steps: int = MIN_STEPS,
) -> torch.Tensor:
    """Integrated gradients of ``f_target`` from ``baselines`` (default 0) to the image.

    Options: ``baselines`` (number or one image); ``n_steps`` (``"auto"``: steps chosen per sample
    from the completeness error, until it is within ``tolerance`` or ``max_steps`` gradient
    evaluations are used; or a fixed count); ``quadrature`` (``"auto"``: with ``n_steps="auto"``
    the nested adaptive trapezoid rule, ``"adaptive"`` (:mod:`chanstat.attribution.adaptive`),
    with a fixed count Captum's Gauss-Legendre; ``"adaptive"`` with a fixed count: a uniform
    trapezoid grid of that many points; or any Captum ``method``, ``"gausslegendre"``,
    ``"riemann_trapezoid"``, ..., with ``"auto"`` stepping through 8, 16, ... steps);
    ``steps_per_pass`` (memory knob: path points per forward pass, per image); for the adaptive
    rule ``min_steps`` (points of its first uniform grid), ``refine`` (which intervals it bisects)
    and ``local_bound`` (also bound the sum of |local errors|), see
    :func:`~chanstat.attribution.adaptive.adaptive_integrated_gradients`.
    """
    x = batch.images
    assert batch.target is not None  # attribute() requires target= for methods that explain the real class
    return integrated_gradients(
        model,
        x,
        broadcast_baseline(baselines, x),
        batch.target,
        n_steps,
        quadrature,
        steps_per_pass,
        tolerance=tolerance,
        max_steps=max_steps,
        local_bound=local_bound,
        refine=refine,
        min_steps=min_steps,
        name="ig",
    )


def deeplift_checked(
    model, inputs: torch.Tensor, baselines: torch.Tensor, target: torch.Tensor, *, tolerance: float, name: str
) -> torch.Tensor:
    """Captum DeepLift with its convergence delta checked: warns (:class:`CompletenessWarning`)
    when a sample's maps miss the output change by more than ``tolerance`` (relative), e.g. for
    nonlinearities the rescale rule does not see (functional calls, products of activations)."""
    maps, delta = DeepLift(model).attribute(inputs, baselines=baselines, target=target, return_convergence_delta=True)
    change = output_change(model, inputs, baselines, target)
    errors = completeness_error(delta, change)
    _record(name, torch.zeros(inputs.shape[0], dtype=torch.int64), errors, tolerance, "deeplift", None, change)
    worst = float(errors.max()) if errors.numel() else 0.0
    if worst > tolerance:
        warnings.warn(
            CompletenessWarning(
                f"{name}: the maps of {int((errors > tolerance).sum())} of {errors.numel()} images miss f(x) - f(baseline) "
                f"by more than {tolerance:.0%} (worst {worst:.1%}); the model likely has nonlinearities DeepLift's rescale "
                "rule does not handle (functional calls, products); prefer ig / d_ig for this model"
            ),
            stacklevel=2,
        )
    return maps


def dl(model, batch: AttributionBatch, *, baselines=None, tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """DeepLift (rescale rule) of ``f_target`` relative to ``baselines`` (default 0); warns when the
    maps miss the output change by more than ``tolerance`` (relative)."""
    x = batch.images
    assert batch.target is not None  # attribute() requires target= for methods that explain the real class
    return deeplift_checked(model, x, broadcast_baseline(baselines, x), batch.target, tolerance=tolerance, name="dl")


def saliency(model, batch: AttributionBatch, *, abs: bool = True) -> torch.Tensor:  # noqa: A002 - Captum's name
    """|d f_target / d x| (``abs=False``: the signed gradient); computed once per chunk for
    ``saliency``, ``ixg`` and the adaptive ``ig`` inside :func:`~chanstat.attribution.adaptive.sharing_gradients`."""
    assert batch.target is not None  # attribute() requires target= for methods that explain the real class
    grad = input_gradient(model, batch.images, batch.target)
    return grad.abs() if abs else grad


def ixg(model, batch: AttributionBatch) -> torch.Tensor:
    """x * d f_target / d x (the gradient shared with ``saliency``, see there)."""
    assert batch.target is not None  # attribute() requires target= for methods that explain the real class
    return batch.images * input_gradient(model, batch.images, batch.target)


for _spec in (
    MethodSpec("ig", "gradients", True, False, True, "Integrated gradients from a zero (or given) baseline", ig),
    MethodSpec(
        "dl",
        "gradients",
        True,
        False,
        True,
        "DeepLift (rescale) from a zero (or given) baseline",
        dl,
        prepare=deeplift_model,
    ),
    MethodSpec("saliency", "gradients", True, False, False, "Absolute input gradient", saliency),
    MethodSpec("ixg", "gradients", True, False, True, "Input times gradient", ixg),
):
    register(_spec)
