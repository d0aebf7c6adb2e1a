"""Integrated gradients by adaptive trapezoid quadrature, and input gradients shared across methods.

Why not Captum here. Captum's ``IntegratedGradients`` evaluates one fixed set of path points
per call and throws away the model outputs it computes on the way. Along the straight path
``p(a) = b + a (x - b)`` of a ReLU / max-pool network ``F(a) = f_t(p(a))`` is piecewise linear,
so the integrand ``F'(a) = grad f_t(p(a)) . (x - b)`` is piecewise constant: Gauss-Legendre
gains nothing from its high polynomial order, and a fixed grid spends its points evenly where
only a few kinks matter. Every gradient evaluation also gives ``F`` at that point for free, so
each interval ``[a0, a1]`` of the grid has an *exact* local reference, ``F(a1) - F(a0)``. The
trapezoid estimate of that interval, ``(a1 - a0) (F'(a0) + F'(a1)) / 2``, misses it by the
interval's local completeness error; the local errors add up exactly to the completeness error
of the whole map. :func:`adaptive_integrated_gradients` bisects the intervals with the largest
local errors until the total is within the tolerance. Bisection is nested: every evaluated
point stays in the rule (nothing is thrown away when refining), the end points are ordinary
nodes (``F(x) - F(b)`` costs no extra forward pass) and the gradient at ``x`` is the one
saliency / input x gradient need (:func:`sharing_gradients`).

The map of a sample depends only on that sample: its grid is refined from its own errors, and
the points of several samples are merely evaluated in the same forward passes.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

import torch

#: Points of the first, uniform grid (end points included): the fewest gradient evaluations a
#: sample's map gets. Completeness alone would often stop at 9 points, helped by local errors of
#: opposite sign cancelling; measured against a 257-point reference the maps of a ReLU VGG are then
#: 2-5 % off (L1), at 17 points about 1-2.5 % (fixed 50 Gauss-Legendre: about 1 %), see
#: ``analyses/benchmarks/integration_steps.py``.
MIN_STEPS = 17

#: One interval is bisected per this many intervals of the grid in each round.
INTERVALS_PER_SPLIT = 8


@dataclass
class _Store:
    """Input gradients kept by :func:`sharing_gradients`: entries of (model, inputs, target,
    output, gradient), all on the CPU, at most ``budget`` bytes of inputs and gradients."""

    budget: int
    entries: list = field(default_factory=list)


_SHARED: ContextVar[_Store | None] = ContextVar("chanstat_shared_gradients", default=None)


def evaluate_points(
    model, points: torch.Tensor, target: torch.Tensor, per_pass: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f_target(points)`` and its input gradient, ``per_pass`` points per forward pass.

    Returns the outputs as float64 (k,) and the gradients in the points' dtype (k, C, H, W).
    """
    values = torch.empty(points.shape[0], dtype=torch.float64, device=points.device)
    grads = torch.empty_like(points)
    for start in range(0, points.shape[0], per_pass):
        part = points[start : start + per_pass].detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(part)
            picked = out.gather(1, target[start : start + per_pass, None].to(out.device)).squeeze(1)
            (grad,) = torch.autograd.grad(picked.sum(), part)
        values[start : start + per_pass] = picked.detach().double()
        grads[start : start + per_pass] = grad.detach()
    return values, grads


def _choose_splits(errors: torch.Tensor, budget: int) -> list[int]:
    """Intervals to bisect: the ones with the largest local errors, one per
    :data:`INTERVALS_PER_SPLIT` intervals of the grid (at least one, at most ``budget``).

    Few splits per round waste few evaluations once the error is met (measured on the demo's
    ReLU VGG from 9 points: 11.8 points per image, against 25.9 when every interval needed to
    bring the sum of |local errors| within half the tolerance is bisected at once); a share of
    the grid keeps the number of rounds logarithmic in the points of a hard sample.
    """
    order = torch.argsort(errors.abs(), descending=True)
    count = max(1, errors.numel() // INTERVALS_PER_SPLIT)
    return order[: max(1, min(count, budget))].tolist()


def adaptive_integrated_gradients(
    model,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor,
    *,
    tolerance: float,
    max_steps: int,
    per_pass: int,
    n_steps: int | None = None,
    min_steps: int = MIN_STEPS,
    floor: float = 1e-6,
    bound: float | None = None,
    refine: str = "worst",
) -> dict:
    """IG maps by nested adaptive trapezoid quadrature (see the module docstring).

    Parameters
    ----------
    model, inputs, baselines, target
        As for Captum's IG: the maps integrate ``grad f_target`` from ``baselines`` to ``inputs``.
    tolerance : completeness tolerance; a sample is done once
        ``|sum(map) - (f(x) - f(b))| <= tolerance * |f(x) - f(b)|``.
    max_steps : most gradient evaluations (grid points, end points included) per sample.
    per_pass : points per forward pass per sample (the pass holds ``n * per_pass`` points).
    n_steps : a fixed uniform grid of ``n_steps`` points (>= 2) instead of the adaptive rule.
    min_steps : points of the first uniform grid (at least 2, at most ``max_steps``).
    floor : output changes below this count as this (as in ``completeness_error``).
    bound : also require the sum of the intervals' absolute local errors to be within ``bound``
        (relative), so that local errors of opposite sign cannot meet ``tolerance`` by cancelling.
    refine : ``"worst"``: bisect the intervals with the largest local errors
        (:func:`_choose_splits`); ``"variation"``: those where the gradient (times ``x - b``)
        changes most (L1); ``"all"``: every interval (nested trapezoid doubling). On a ReLU VGG
        ``"worst"`` meets the tolerance with the fewest points; none of them makes the maps more
        accurate per point than a uniform grid (the many small kinks of a ReLU network spread
        the map's error over the whole path).

    Returns
    -------
    dict with ``maps`` (n, C, H, W) in the inputs' dtype, ``steps`` (gradient evaluations per
    sample, int64), ``errors`` (relative completeness error of each map, float64, from the map's
    own sum), ``change`` (``f(x) - f(b)``, float64) and ``rounds`` (forward/backward rounds).
    """
    n = inputs.shape[0]
    device = inputs.device
    diff = inputs - baselines
    first = max(1, (n_steps if n_steps is not None else min(min_steps, max_steps)) - 1)  # intervals
    top = n_steps if n_steps is not None else max(max_steps, first + 1)
    grid = [[j / first for j in range(first + 1)] for _ in range(n)]  # 0.0 and 1.0 exactly
    alphas: list[list[float]] = [[] for _ in range(n)]  # evaluated points per sample, sorted
    values: list[dict[float, float]] = [{} for _ in range(n)]
    slopes: list[dict[float, float]] = [{} for _ in range(n)]
    grads: list[dict[float, torch.Tensor]] = [{} for _ in range(n)]
    pending = grid  # points still to evaluate, per sample
    rounds = 0
    while any(pending):
        owners = [i for i, pts in enumerate(pending) for _ in pts]
        where = [a for pts in pending for a in pts]
        rows = torch.tensor(owners, device=device)
        a = torch.tensor(where, dtype=inputs.dtype, device=device)[:, None, None, None]
        points = baselines[rows] + a * diff[rows]
        ends_1 = torch.tensor([w == 1.0 for w in where], device=device)
        ends_0 = torch.tensor([w == 0.0 for w in where], device=device)
        points[ends_1] = inputs[rows[ends_1]]  # the end points exactly, not up to rounding
        points[ends_0] = baselines[rows[ends_0]]
        value, grad = _evaluate_with_shared(model, points, target[rows], rows, where, inputs, per_pass * n)
        slope = (grad.double() * diff[rows].double()).flatten(1).sum(1).cpu().tolist()
        value_list = value.cpu().tolist()
        for k, (i, w) in enumerate(zip(owners, where)):
            values[i][w], slopes[i][w], grads[i][w] = value_list[k], slope[k], grad[k]
            alphas[i].append(w)
        rounds += 1
        pending = [[] for _ in range(n)]
        for i in range(n):
            alphas[i].sort()
            if n_steps is not None or len(alphas[i]) >= top:
                continue
            pts = torch.tensor(alphas[i], dtype=torch.float64)
            f = torch.tensor([values[i][w] for w in alphas[i]], dtype=torch.float64)
            s = torch.tensor([slopes[i][w] for w in alphas[i]], dtype=torch.float64)
            h = pts[1:] - pts[:-1]
            local = h * (s[1:] + s[:-1]) / 2 - (f[1:] - f[:-1])
            scale = max(abs(float(f[-1] - f[0])), floor)
            if abs(float(local.sum())) <= tolerance * scale and (
                bound is None or float(local.abs().sum()) <= bound * scale
            ):
                continue
            budget = top - len(alphas[i])
            if refine == "all":
                picks = list(range(min(budget, len(h))))
            elif refine == "variation":  # where the gradient (times x - b) changes most
                g = torch.stack([grads[i][w] for w in alphas[i]]).double() * diff[i].double()
                change_l1 = (g[1:] - g[:-1]).flatten(1).abs().sum(1).cpu()
                picks = _choose_splits(h * change_l1, budget)
            else:
                picks = _choose_splits(local, budget)
            pending[i] = [float((pts[j] + pts[j + 1]) / 2) for j in picks]
    maps = torch.empty_like(inputs)
    change = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        pts = torch.tensor(alphas[i], dtype=torch.float64)
        h = pts[1:] - pts[:-1]
        weights = torch.zeros_like(pts)
        weights[1:] += h / 2
        weights[:-1] += h / 2
        total = torch.zeros_like(inputs[i], dtype=torch.float32 if inputs.dtype != torch.float64 else torch.float64)
        for w, alpha in zip(weights.tolist(), alphas[i]):  # fixed order: batch-independent sums
            total += w * grads[i][alpha].to(total.dtype)
        maps[i] = (total * diff[i].to(total.dtype)).to(inputs.dtype)
        change[i] = values[i][1.0] - values[i][0.0]
    summed = maps.double().flatten(1).sum(1).cpu()
    errors = (summed - change).abs() / change.abs().clamp_min(floor)
    steps = torch.tensor([len(p) for p in alphas], dtype=torch.int64)
    return {"maps": maps, "steps": steps, "errors": errors, "change": change, "rounds": rounds}


def _evaluate_with_shared(model, points, target, rows, where, inputs, per_pass):
    """:func:`evaluate_points`, taking the gradients at ``inputs`` (a = 1) from the shared store
    when another method already computed them, and offering them to it otherwise."""
    store = _SHARED.get()
    if store is None:
        return evaluate_points(model, points, target, per_pass)
    value = torch.empty(points.shape[0], dtype=torch.float64, device=points.device)
    grad = torch.empty_like(points)
    todo = torch.ones(points.shape[0], dtype=torch.bool)
    ends = [k for k, w in enumerate(where) if w == 1.0]
    if ends:
        index = torch.tensor(ends, device=points.device)
        hit = _lookup(store, model, inputs[rows[index]], target[index])
        if hit is not None:
            value[index], grad[index] = hit
            todo[ends] = False
    if bool(todo.any()):
        index = todo.nonzero().squeeze(1).to(points.device)
        value[index], grad[index] = evaluate_points(model, points[index], target[index], per_pass)
    if ends and not bool((~todo).any()):
        index = torch.tensor(ends, device=points.device)
        _offer(store, model, inputs[rows[index]], target[index], value[index], grad[index])
    return value, grad


#: Most bytes of inputs and gradients :func:`sharing_gradients` keeps (the oldest go first).
SHARED_BYTES = 2 * 1024**3


@contextmanager
def sharing_gradients(max_bytes: int = SHARED_BYTES) -> Iterator[None]:
    """Compute each input gradient ``grad f_t(x)`` once for all methods run inside the block.

    ``saliency``, ``ixg``, ``d_ixg`` and the end point of the adaptive ``ig`` / ``d_ig`` all need the
    gradient of the explained class at the explained image (``ig``, ``saliency`` and ``ixg``: class
    ``target`` at the real image; ``d_ig`` and ``d_ixg``: the counterfactual class at the
    counterfactual). Inside the block the first method to need it stores it (on the CPU, with the
    inputs it belongs to) and the others take it from there, chunk by chunk; a chunk matches only
    when the model, the inputs (bit for bit) and the classes are the same. At most ``max_bytes`` of
    inputs and gradients are kept: past that the oldest chunks are dropped (and computed again by
    a method that needs them), so memory stays bounded for any number of images. The pipeline's
    attribution stage wraps its methods in this block.
    """
    token = _SHARED.set(_Store(int(max_bytes)))
    try:
        yield
    finally:
        _SHARED.reset(token)


def input_gradient(model, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``grad f_target(inputs)`` (one backward pass), taken from / offered to the shared store
    when one is open (:func:`sharing_gradients`)."""
    store = _SHARED.get()
    if store is not None:
        hit = _lookup(store, model, inputs, target)
        if hit is not None:
            return hit[1]
    value, grad = evaluate_points(model, inputs, target, max(1, inputs.shape[0]))
    if store is not None:
        _offer(store, model, inputs, target, value, grad)
    return grad


def _owner(model) -> tuple:
    """What identifies a model across ``attribute`` calls: the user's module (each call wraps it
    in a new adapter) and the adapter's output selector."""
    from chanstat.models.adapter import unwrap

    return (unwrap(model), repr(getattr(model, "output", None)))


def _lookup(store: _Store, model, inputs: torch.Tensor, target: torch.Tensor):
    cpu_inputs, cpu_target = inputs.detach().cpu(), target.detach().cpu()
    me = _owner(model)
    for owner, x, t, value, grad in store.entries:
        if (
            owner == me
            and x.shape == cpu_inputs.shape
            and x.dtype == cpu_inputs.dtype
            and torch.equal(t, cpu_target)
            and torch.equal(x, cpu_inputs)
        ):
            return value.to(inputs.device), grad.to(inputs.device)
    return None


def _offer(store: _Store, model, inputs, target, value, grad) -> None:
    entry = (_owner(model), inputs.detach().cpu(), target.detach().cpu(), value.detach().cpu(), grad.detach().cpu())
    store.entries.append(entry)
    size = [e[1].nbytes + e[4].nbytes for e in store.entries]
    while store.entries and sum(size) > store.budget:  # the oldest chunks go first
        store.entries.pop(0)
        size.pop(0)
