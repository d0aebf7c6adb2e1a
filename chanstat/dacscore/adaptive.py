"""Which steps of a DAC curve go through the model: all distinct masks, or an adaptive few.

A DAC curve is a one-dimensional function of mask size, and its DAC is the area under the
points ``(mask_size_k, score_k)`` joined by straight lines. Mask sizes of every step are known
without the model (they are counts of the closed masks); only scores cost forward passes.

Fixed schedules (``value``, ``rank``) evaluate every distinct, non-trivial mask. The
``adaptive`` schedule evaluates a subset of the same steps and joins the rest by straight
lines in mask size, so its curve is the fixed grid's curve wherever that curve is straight:

1. every trivial step is known (empty mask: 0; full mask pasting the real image: the real
   image's gain; a curve whose pasted channels are identical in ``x`` and ``x'``: 0);
2. a coarse grid: the steps nearest to mask sizes ``1/G, 2/G, ...`` (``COARSE_INTERVALS = G``),
   every ``S / G``-th step (``COARSE_STEP_INTERVALS``: value thresholds crowd at small masks,
   where a bump between two mask-size points would go unseen) and the last step when it is
   not known;
3. bisection in mask size: each open interval between evaluated steps carries an estimate of
   the area its straight line may miss (`interval_error`: the triangle between the chord and
   its neighbours' extended chords where the curve bends one way, ``w * |dy| / 2`` -- the most
   a monotone piece can miss -- at a jump or an inflection). While a curve's estimates add up
   to more than ``tolerance``, its largest intervals are bisected at the step whose mask size
   is nearest the interval's middle (all of them in one round, so the hybrids of every curve
   share forward passes), and the estimates are recomputed. An interval with no step inside
   is exact.

A jump of height ``J`` is therefore bracketed until the interval holding it is narrower than
about ``2 * tolerance / J`` in mask size (or the steps run out), and straight stretches cost
nothing beyond the coarse grid. A bump that starts and ends inside one coarse interval at
the same score is not seen; DAC curves (score rising with the pasted share of the real image)
rarely have one.
"""

from __future__ import annotations

import numpy as np

#: intervals of the adaptive schedule's first, coarse grid in mask size
COARSE_INTERVALS = 8

#: intervals of the coarse grid in step index (threshold), added to the grid in mask size
COARSE_STEP_INTERVALS = 6


def distinct_steps(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First step of every distinct mask, and the step each step takes its result from.

    Nested masks are equal exactly when they have as many elements on.

    Parameters
    ----------
    counts : numpy.ndarray, shape (..., S), int
        Elements on per step, non-decreasing along the last axis.

    Returns
    -------
    first : numpy.ndarray, shape (..., S), bool
    source : numpy.ndarray, shape (..., S), int
        The first step with the same mask as step ``s``.
    """
    n_steps = counts.shape[-1]
    first = np.ones(counts.shape, dtype=bool)
    first[..., 1:] = counts[..., 1:] != counts[..., :-1]
    source = np.maximum.accumulate(np.where(first, np.arange(n_steps), 0), axis=-1)
    return first, source


def interval_error(x: np.ndarray, y: np.ndarray, q: int) -> float:
    """Estimated area between the chord of interval ``q`` (points ``q``, ``q + 1``) and the curve.

    ``x``, ``y``: the measured points of a curve, ``x`` strictly increasing. Where the chords
    on either side bend the same way as a convex or concave piece does, the curve lies between
    the chord and the extensions of its neighbours' chords, and the estimate is that
    triangle's area (zero on a straight stretch); at the ends only one neighbour is there and
    the level of the far end caps its extension. Otherwise (a jump, an inflection, noise) it is
    ``w * |dy| / 2``, the most a monotone piece can miss.
    """
    w = x[q + 1] - x[q]
    dy = y[q + 1] - y[q]
    bound = w * abs(dy) / 2
    if bound == 0:
        return 0.0
    slope = dy / w
    left = (y[q] - y[q - 1]) / (x[q] - x[q - 1]) if q > 0 else None
    right = (y[q + 2] - y[q + 1]) / (x[q + 2] - x[q + 1]) if q + 2 < len(x) else None
    # slopes equal to rounding are equal (a straight stretch must cost nothing)
    eps = 1e-9 * max(abs(slope), abs(left or 0.0), abs(right or 0.0))
    if left is not None and right is not None:
        if abs(left - slope) <= eps and abs(right - slope) <= eps:
            return 0.0
        concave = left >= slope - eps and slope >= right - eps
        convex = left <= slope + eps and slope <= right + eps
        if not (concave or convex):
            return bound
        apex = (dy + left * x[q] - right * x[q + 1]) / (left - right)  # where the extensions meet
        return float(min(bound, abs((left - slope) * (apex - x[q])) * w / 2))
    side = left if left is not None else right
    if side is not None and abs(side - slope) <= eps:
        return 0.0
    if side is None or side * slope <= 0 or abs(side) <= abs(slope):
        return bound
    # the neighbour's extension reaches the far end's level after |dy| / |side|
    return float(min(bound, abs(dy) * (w - abs(dy / side)) / 2))


class _Curve:
    """One curve's distinct steps, their mask sizes and the scores measured so far."""

    __slots__ = ("steps", "x", "y", "measured")

    def __init__(self, steps: np.ndarray, x: np.ndarray, y: np.ndarray):
        self.steps = steps  # step index of each distinct mask, increasing
        self.x = x  # mask sizes, strictly increasing
        self.y = y  # scores, NaN where unknown
        self.measured = ~np.isnan(y)

    def splits(self, tolerance: float) -> list[int]:
        """Candidates to score next: middles of the intervals with the largest estimates, until
        the remaining estimates add up to at most ``tolerance``."""
        at = np.flatnonzero(self.measured)
        x, y = self.x[at], self.y[at]
        errors = [interval_error(x, y, q) if at[q + 1] > at[q] + 1 else 0.0 for q in range(len(at) - 1)]
        remaining = sum(errors)
        out = []
        for q in np.argsort(errors)[::-1]:
            if remaining <= tolerance or errors[q] == 0:
                break
            remaining -= errors[q]
            out.append(self.middle(int(at[q]), int(at[q + 1])))
        return out

    def middle(self, i: int, j: int) -> int:
        """Candidate strictly between ``i`` and ``j`` whose mask size is nearest the middle."""
        inside = np.arange(i + 1, j)
        centre = (self.x[i] + self.x[j]) / 2
        return int(inside[np.argmin(np.abs(self.x[inside] - centre))])


class AdaptivePlan:
    """Adaptive step placement for a set of curves (see the module docstring).

    Parameters
    ----------
    mask_size : numpy.ndarray, shape (M, S)
        Mask size of every step of ``M`` curves, non-decreasing from 0.
    counts : numpy.ndarray, shape (M, S), int
        Elements on per step (equal counts = the same mask).
    known : numpy.ndarray, shape (M, S), float
        Scores known without a forward pass, NaN elsewhere.
    tolerance : float
        Largest summed interval estimate a curve may keep (units of DAC).
    coarse : int
        Intervals of the first grid in mask size.

    Use: ``requests()`` -> ``(curve, step)`` arrays to score -> ``update(curve, step, score)``
    -> ... until ``requests()`` returns nothing; then ``scores()``.
    """

    def __init__(
        self,
        mask_size: np.ndarray,
        counts: np.ndarray,
        known: np.ndarray,
        tolerance: float,
        coarse: int = COARSE_INTERVALS,
        coarse_steps: int | None = None,
    ):
        self.n_steps = mask_size.shape[1]
        self.tolerance = float(tolerance)
        first, self.source = distinct_steps(counts)
        self.curves: list[_Curve] = []
        for m in range(len(mask_size)):
            steps = np.flatnonzero(first[m])
            self.curves.append(_Curve(steps, mask_size[m, steps].astype(float), known[m, steps].astype(float)))
        self.coarse = int(coarse)
        self.coarse_steps = int(coarse_steps if coarse_steps is not None else COARSE_STEP_INTERVALS)
        self._started = False
        self.rounds = 0

    def _coarse_picks(self, curve: _Curve) -> list[int]:
        n = len(curve.steps)
        picks = {0, n - 1}
        if n > 2:
            targets = np.arange(1, self.coarse) / self.coarse
            picks.update((np.abs(curve.x[1:-1, None] - targets[None, :]).argmin(axis=0) + 1).tolist())
            # and evenly in threshold: where the steps crowd (small masks), bumps hide from the grid above
            step_targets = np.rint(np.arange(1, self.coarse_steps) / self.coarse_steps * (self.n_steps - 1))
            picks.update((np.searchsorted(curve.steps, step_targets, side="right") - 1).tolist())
        return sorted(p for p in picks if not curve.measured[p])

    def requests(self) -> tuple[np.ndarray, np.ndarray]:
        """``(curve, step)`` pairs to score next (empty arrays when every curve is done)."""
        curve_ids: list[int] = []
        steps: list[int] = []
        for m, curve in enumerate(self.curves):
            picks = self._coarse_picks(curve) if not self._started else curve.splits(self.tolerance)
            curve_ids.extend([m] * len(picks))
            steps.extend(int(curve.steps[p]) for p in picks)
        if not self._started:
            self._started = True
            if not curve_ids:  # every coarse pick was known
                return self.requests()
        self.rounds += bool(curve_ids)
        return np.asarray(curve_ids, dtype=np.int64), np.asarray(steps, dtype=np.int64)

    def update(self, curve_ids: np.ndarray, steps: np.ndarray, score: np.ndarray) -> None:
        """Record the scores of the requested ``(curve, step)`` pairs."""
        for m, step, value in zip(
            np.asarray(curve_ids).tolist(), np.asarray(steps).tolist(), np.asarray(score).tolist()
        ):
            curve = self.curves[m]
            p = int(np.searchsorted(curve.steps, step))
            curve.y[p] = value
            curve.measured[p] = True

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every step and whether each is exact, shape (M, S) each.

        Steps between measured ones are interpolated linearly in mask size; repeated masks
        take the score (and exactness) of their first step.
        """
        score = np.zeros((len(self.curves), self.n_steps))
        exact = np.zeros((len(self.curves), self.n_steps), dtype=bool)
        for m, curve in enumerate(self.curves):
            y = curve.y.copy()
            missing = ~curve.measured
            if missing.any():
                y[missing] = np.interp(curve.x[missing], curve.x[curve.measured], y[curve.measured])
            score[m, curve.steps] = y
            exact[m, curve.steps] = curve.measured
        rows = np.arange(len(self.curves))[:, None]
        return score[rows, self.source], exact[rows, self.source]


class FixedPlan:
    """Every distinct mask whose score is not known is scored, in one round (``value``, ``rank``).

    Same interface as `AdaptivePlan`.
    """

    def __init__(self, counts: np.ndarray, known: np.ndarray):
        first, self.source = distinct_steps(counts)
        self.score = np.where(np.isnan(known), 0.0, known)
        self.needed = first & np.isnan(known)
        self._asked = False

    def requests(self) -> tuple[np.ndarray, np.ndarray]:
        if self._asked:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self._asked = True
        curve_ids, steps = np.nonzero(self.needed)
        return curve_ids.astype(np.int64), steps.astype(np.int64)

    def update(self, curve_ids: np.ndarray, steps: np.ndarray, score: np.ndarray) -> None:
        self.score[curve_ids, steps] = score

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(self.score))[:, None]
        return self.score[rows, self.source], np.ones(self.score.shape, dtype=bool)


def make_plan(schedule: str, mask_size: np.ndarray, counts: np.ndarray, known: np.ndarray, tolerance: float):
    """The step plan of a schedule for curves given as (M, S) arrays."""
    if schedule == "adaptive":
        return AdaptivePlan(mask_size, counts, known, tolerance)
    return FixedPlan(counts, known)
