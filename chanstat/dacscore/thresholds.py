"""Threshold schedules: which elements each DAC step puts into the mask.

A DAC curve has ``steps + 1`` points, ``k = 0 .. steps``; step 0 is the empty mask and step
``steps`` the full mask, and masks grow (are nested) from step to step.

Two schedules:

- ``"value"`` (the DAC paper): attribution magnitudes are normalised to [0, 1] per ranking
  group (divided by the group's maximum), and step ``k`` selects the elements above
  ``t_k = 1 - k / steps``; the last step selects everything, zero-attribution elements
  included. Equal values are selected together, as any threshold does.
- ``"rank"`` (the Cell Painting follow-up): step ``k`` selects the ``round(q_k * P)``
  highest-ranked of the group's ``P`` elements, with mask fractions ``q_k`` spaced
  ``RANK_HEAD_DENSITY`` times finer over the first ``RANK_HEAD_STEPS`` share of the steps
  (small masks, where the score changes fastest). Ties are broken by element order (the
  element with the lower flat index ranks lower), so each step adds exactly the planned
  number of elements and equal values never make a mask jump.

- ``"adaptive"``: the value schedule's thresholds, but only some steps go through the model --
  a coarse grid in mask size, then bisection where the score jumps (see `chanstat.dacscore.adaptive`);
  the other steps' scores are interpolated in mask size.

All reduce to one representation: a strict *rank map* (every element's position in the
group's ascending order, ties broken by index) and, per step, how many top-ranked elements are
selected. A selection of the top ``n`` is ``rank >= P - n``; thresholding a rank map commutes
with flat grey-level closing, so one closing of the rank map serves every step.
"""

from __future__ import annotations

import numpy as np
import torch

SCHEDULES = ("value", "rank", "adaptive")

#: rank schedule: the first 70 % of the steps cover mask fractions 5x more finely than the rest
RANK_HEAD_STEPS = 0.7
RANK_HEAD_DENSITY = 5.0


def check_steps(steps) -> int:
    """Validate the number of threshold intervals (an integer >= 2)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (number of threshold intervals); got {steps!r}")
    return int(steps)


def check_tolerance(tolerance) -> float:
    """Validate the adaptive schedule's tolerance (a finite number > 0, in units of DAC)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise ValueError(f"tolerance must be a number > 0 (largest DAC error of a curve); got {tolerance!r}")
    if not np.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f"tolerance must be a finite number > 0 (largest DAC error of a curve); got {tolerance!r}")
    return float(tolerance)


def value_thresholds(steps: int) -> np.ndarray:
    """Thresholds ``t_k = 1 - k / steps`` on the normalised map, shape (steps + 1,), float64."""
    steps = check_steps(steps)
    return 1.0 - np.arange(steps + 1, dtype=np.float64) / steps


def rank_fractions(
    steps: int, head_steps: float = RANK_HEAD_STEPS, head_density: float = RANK_HEAD_DENSITY
) -> np.ndarray:
    """Mask fractions ``q_k`` of the rank schedule, shape (steps + 1,), from 0 to 1.

    ``q`` is piecewise linear in ``k / steps``: over the first ``head_steps`` share of the
    steps its slope is ``head_density`` times smaller than over the rest.
    """
    steps = check_steps(steps)
    if not 0 < head_steps < 1 or head_density <= 0:
        raise ValueError("head_steps must lie in (0, 1) and head_density be > 0")
    u = np.arange(steps + 1, dtype=np.float64) / steps
    total = head_steps + head_density * (1 - head_steps)
    q = np.where(u <= head_steps, u, head_steps + head_density * (u - head_steps)) / total
    q[0], q[-1] = 0.0, 1.0
    return q


def rank_dtype(n_elements: int) -> torch.dtype:
    """float32 holds integer ranks exactly up to 2**24 elements; larger groups use float64."""
    return torch.float32 if n_elements <= 2**24 else torch.float64


def element_ranks(values: torch.Tensor) -> torch.Tensor:
    """Strict ranks of every row's elements, ascending, ties broken by position.

    Parameters
    ----------
    values : torch.Tensor, shape (G, P)
        One ranking group per row (e.g. a channel's pixels).

    Returns
    -------
    torch.Tensor, shape (G, P), float (exact integers 0 .. P - 1)
        The largest value has rank ``P - 1``; of equal values the one with the lower index
        ranks lower.
    """
    n_groups, n_elements = values.shape
    order = torch.argsort(values, dim=1, stable=True)
    positions = torch.arange(n_elements, device=values.device, dtype=rank_dtype(n_elements)).expand(n_groups, -1)
    return torch.empty(values.shape, dtype=positions.dtype, device=values.device).scatter_(1, order, positions)


def normalise_groups(values: torch.Tensor) -> torch.Tensor:
    """Divide each row by its maximum (rows of zeros stay zero). ``values`` must be >= 0."""
    peak = values.amax(dim=1, keepdim=True)
    return torch.where(peak > 0, values / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(values))


def selection_counts(values: torch.Tensor, schedule: str, steps: int) -> tuple[torch.Tensor, np.ndarray]:
    """How many top-ranked elements each step selects, per ranking group.

    Parameters
    ----------
    values : torch.Tensor, shape (G, P), >= 0
        Attribution magnitudes, one ranking group per row.
    schedule : {"value", "rank", "adaptive"}
        ``"adaptive"`` selects as ``"value"`` does (it evaluates fewer of the steps).
    steps : int >= 2

    Returns
    -------
    counts : torch.Tensor, shape (G, steps + 1), int64
        Non-decreasing from 0 to ``P``.
    thresholds : numpy.ndarray, shape (steps + 1,)
        ``t_k`` on the normalised map (value and adaptive schedules) or the planned mask fraction ``q_k``
        before smoothing (rank schedule).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    steps = check_steps(steps)
    n_groups, n_elements = values.shape
    if schedule == "rank":
        fractions = rank_fractions(steps)
        counts = np.rint(fractions * n_elements).astype(np.int64)
        return torch.as_tensor(counts, device=values.device).expand(n_groups, -1).clone(), fractions
    thresholds = value_thresholds(steps)
    normalised, _ = torch.sort(normalise_groups(values), dim=1)
    level = torch.as_tensor(thresholds, dtype=normalised.dtype, device=values.device).expand(n_groups, -1).contiguous()
    # elements strictly above t_k = P - (elements <= t_k)
    counts = n_elements - torch.searchsorted(normalised, level, right=True)
    counts[:, -1] = n_elements  # the last step is the full mask, zero-attribution elements included
    return counts.to(torch.int64), thresholds
