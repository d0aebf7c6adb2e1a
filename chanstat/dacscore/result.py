"""What `dac` returns, and the one DAC summary: NumPy and pandas only (importable without torch).

``DacResult`` holds tidy tables; `summarise_dac` is the mean DAC per (method,) strategy and
channel that the pipeline stage, the run comparison and ``DacResult.summary`` all use;
`curve_area` is the DAC of a curve (trapezoid under the score interpolated onto a common
mask-size grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: mask-size grid the per-sample curves are interpolated onto before the trapezoid
GRID_POINTS = 1001

CURVE_COLUMNS = ["sample", "strategy", "channel", "step", "threshold", "mask_size", "score", "prediction", "evaluated"]
SCORE_COLUMNS = ["sample", "strategy", "channel", "dac"]
STEP_COLUMNS = ["sample", "strategy", "channel", "step", "threshold", "mask_size", "score"]
MINIMAL_COLUMNS = STEP_COLUMNS[:3] + ["flipped"] + STEP_COLUMNS[3:]
DROPPED_COLUMNS = [
    "sample",
    "real_target",
    "real_prediction",
    "counterfactual_target",
    "counterfactual_prediction",
    "reason",
]
SUMMARY_COLUMNS = ["strategy", "channel", "dac", "dac_sd", "n"]


def curve_area(mask_size: np.ndarray, score: np.ndarray, grid_points: int = GRID_POINTS) -> np.ndarray:
    """DAC of each curve: trapezoid area of the score interpolated onto a common mask-size grid.

    Parameters
    ----------
    mask_size, score : numpy.ndarray, shape (..., S)
        Mask sizes non-decreasing from 0 to 1 along the last axis.
    grid_points : int
        Number of grid points in [0, 1].

    Returns
    -------
    numpy.ndarray, shape (...)
        Because every curve lives on the same grid, the mean of these areas is the area under
        the mean curve.
    """
    grid = np.linspace(0.0, 1.0, grid_points)
    flat_size = mask_size.reshape(-1, mask_size.shape[-1])
    flat_score = score.reshape(-1, score.shape[-1])
    areas = np.empty(len(flat_size))
    for i, (x, y) in enumerate(zip(flat_size, flat_score)):
        areas[i] = np.trapezoid(np.interp(grid, x, y), grid)
    return areas.reshape(mask_size.shape[:-1])


def interpolate_curves(mask_size: np.ndarray, score: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Scores of each curve (rows of (M, S) arrays) at the mask sizes ``grid``, shape (M, len(grid))."""
    if not len(mask_size):
        return np.empty((0, len(grid)))
    return np.stack([np.interp(grid, x, y) for x, y in zip(mask_size, score)])


def summarise_dac(scores: pd.DataFrame | None) -> pd.DataFrame:
    """Mean DAC per method (when the table has one), strategy and channel.

    Parameters
    ----------
    scores : pandas.DataFrame or None
        A ``dac_scores`` table: ``dac`` and ``strategy``, optionally ``method`` and
        ``channel`` (missing or NA channels count as ``"all"``).

    Returns
    -------
    pandas.DataFrame
        ``[method,] strategy, channel, dac, dac_sd, n``: mean, sample standard deviation
        (NaN for one pair) and number of scored pairs, groups in order of appearance.
    """
    keys = ["method", "strategy", "channel"]
    if scores is None or not len(scores):
        has_method = scores is not None and "method" in scores
        return pd.DataFrame(columns=(["method"] if has_method else []) + SUMMARY_COLUMNS)
    for required in ("strategy", "dac"):
        if required not in scores:
            raise ValueError(f"DAC scores need a {required!r} column; got {list(scores.columns)}")
    frame = scores.copy()
    if "channel" not in frame:
        frame["channel"] = "all"
    frame["channel"] = frame["channel"].astype(object).where(frame["channel"].notna(), "all")
    keys = [k for k in keys if k in frame]
    for key in keys:
        frame[key] = frame[key].astype(str)
    grouped = frame.groupby(keys, sort=False)["dac"]
    return grouped.agg(dac="mean", dac_sd="std", n="count").reset_index()


@dataclass
class DacResult:
    """What `dac` returns. Every table is tidy; ``sample`` is the row of the inputs.

    Attributes
    ----------
    curves : pandas.DataFrame
        One row per sample, strategy, channel and step (``CURVE_COLUMNS``): ``sample`` (int),
        ``strategy`` (str), ``channel`` (channel name for ``single_channel``, ``"all"``
        otherwise), ``step`` (0 .. steps; masks grow with the step), ``threshold``
        (normalised-map threshold for the value and adaptive schedules, planned mask fraction
        before smoothing for the rank schedule), ``mask_size`` (fraction of the closed mask's
        elements that are on, in [0, 1]), ``score`` (``p(y | h) - p(y | x')``),
        ``prediction`` (class predicted for ``h``; nullable, NA where the step was not
        evaluated) and ``evaluated`` (bool: the score is exact -- from a forward pass or known
        without one, empty / full / repeated mask; False: linearly interpolated in mask size
        between evaluated steps by the adaptive schedule).
    scores : pandas.DataFrame
        ``sample, strategy, channel, dac``: area under the sample's curve interpolated onto a
        common mask-size grid (trapezoid); the mean over samples is the area under the mean curve.
    optimal : pandas.DataFrame
        The evaluated step minimising ``mask_size**2 + (1 - score)**2`` per curve (``STEP_COLUMNS``).
    minimal : pandas.DataFrame
        The first evaluated step from which the evaluated hybrids stay predicted as the real
        class, with ``flipped`` (bool); ``flipped`` False means they never do, and step,
        threshold, mask_size and score are missing.
    dropped : pandas.DataFrame
        Pairs removed by ``filter_pairs`` and why (empty otherwise).
    samples : numpy.ndarray
        Input rows that were scored (all unless ``filter_pairs`` dropped some).
    settings : dict
        The parameters used.
    stats : dict
        Per strategy: ``curves``, ``hybrids`` (curve points), ``forward_passes`` (hybrids that
        went through the model) and ``forward_passes_per_curve``.
    seconds : float
        Wall time of the call.
    optimal_masks, minimal_masks : dict of str to numpy.ndarray
        Per strategy the pasted (closed and blurred) masks, float32, shape (n_kept, 1, H, W)
        for ``aggregate`` and (n_kept, C, H, W) otherwise (for ``single_channel`` plane k is
        channel k's own mask); rows follow ``samples``. Minimal masks of curves that never
        flip are NaN. Empty dicts unless ``return_masks``.
    """

    curves: pd.DataFrame
    scores: pd.DataFrame
    optimal: pd.DataFrame
    minimal: pd.DataFrame
    dropped: pd.DataFrame
    samples: np.ndarray
    settings: dict
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    optimal_masks: dict[str, np.ndarray] = field(default_factory=dict)
    minimal_masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def never_flipped(self) -> pd.DataFrame:
        """Curves whose hybrid never settles on the real class (``sample, strategy, channel``)."""
        return self.minimal.loc[~self.minimal["flipped"], ["sample", "strategy", "channel"]].reset_index(drop=True)

    def mean_curves(self, grid_points: int = 101) -> pd.DataFrame:
        """Mean curve per strategy and channel on a common mask-size grid.

        Returns a DataFrame with ``strategy, channel, mask_size, score`` (mean over samples),
        ``score_sd`` and ``n`` (samples).
        """
        grid = np.linspace(0.0, 1.0, grid_points)
        rows = []
        for (strategy, channel), part in self.curves.groupby(["strategy", "channel"], sort=False):
            part = part.sort_values(["sample", "step"])
            n_steps = part["step"].nunique()
            size = part["mask_size"].to_numpy(dtype=float).reshape(-1, n_steps)
            score = part["score"].to_numpy(dtype=float).reshape(-1, n_steps)
            values = interpolate_curves(size, score, grid)
            rows.append(
                pd.DataFrame(
                    {
                        "strategy": strategy,
                        "channel": channel,
                        "mask_size": grid,
                        "score": values.mean(axis=0),
                        "score_sd": values.std(axis=0, ddof=1) if len(values) > 1 else np.nan,
                        "n": len(values),
                    }
                )
            )
        if not rows:
            return pd.DataFrame(columns=["strategy", "channel", "mask_size", "score", "score_sd", "n"])
        return pd.concat(rows, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """Mean DAC per strategy and channel: ``strategy, channel, dac, dac_sd, n`` (`summarise_dac`)."""
        return summarise_dac(self.scores)
