"""From per-strategy curve arrays to the tidy tables of `DacResult`; optimal and minimal steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from chanstat.dacscore.result import curve_area


def optimal_steps(mask_size: np.ndarray, score: np.ndarray, evaluated: np.ndarray | None = None) -> np.ndarray:
    """Evaluated step minimising ``mask_size**2 + (1 - score)**2`` (first one on ties), shape (...)."""
    distance = mask_size**2 + (1.0 - score) ** 2
    if evaluated is not None:
        distance = np.where(evaluated, distance, np.inf)
    return np.argmin(distance, axis=-1)


def minimal_steps(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """First step from which every evaluated hybrid is predicted as the real class, -1 if none.

    Parameters
    ----------
    prediction : numpy.ndarray, shape (N, K, S)
        Predicted class per step; -1 where the step was not evaluated (such steps take the
        prediction of the evaluated step before them, so the answer is an evaluated step).
    target : numpy.ndarray, shape (N,)
    """
    steps = np.arange(prediction.shape[-1])
    last_known = np.maximum.accumulate(np.where(prediction >= 0, steps, 0), axis=-1)
    filled = np.take_along_axis(prediction, last_known, axis=-1)
    correct = filled == target[:, None, None]
    stays = np.flip(np.logical_and.accumulate(np.flip(correct, -1), axis=-1), -1)
    first = np.argmax(stays, axis=-1)
    return np.where(stays[..., -1], first, -1)


@dataclass
class StrategyCurves:
    """Curves of one strategy, accumulated over chunks of samples; arrays (N, K, S)."""

    name: str
    channel_names: list[str]
    thresholds: np.ndarray
    mask_size: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    prediction: list[np.ndarray] = field(default_factory=list)
    evaluated: list[np.ndarray] = field(default_factory=list)
    optimal_masks: list[np.ndarray] = field(default_factory=list)
    minimal_masks: list[np.ndarray] = field(default_factory=list)
    forward_passes: int = 0

    def stacked(self, name: str, n_steps: int, dtype) -> np.ndarray:
        parts = getattr(self, name)
        if not parts:
            return np.zeros((0, len(self.channel_names), n_steps), dtype=dtype)
        return np.concatenate(parts)


def strategy_tables(part: StrategyCurves, kept: np.ndarray, target: np.ndarray) -> dict[str, pd.DataFrame]:
    """``curves``, ``scores``, ``optimal`` and ``minimal`` tables of one strategy."""
    thresholds = part.thresholds
    n_steps = len(thresholds)
    mask_size = part.stacked("mask_size", n_steps, float)
    score = part.stacked("score", n_steps, float)
    prediction = part.stacked("prediction", n_steps, np.int64)
    evaluated = part.stacked("evaluated", n_steps, bool)
    n, k, _ = mask_size.shape
    names = np.asarray(part.channel_names, dtype=object)
    curves = pd.DataFrame(
        {
            "sample": np.repeat(kept, k * n_steps).astype(np.int64),
            "strategy": part.name,
            "channel": np.tile(np.repeat(names, n_steps), n),
            "step": np.tile(np.arange(n_steps), n * k).astype(np.int64),
            "threshold": np.tile(thresholds, n * k),
            "mask_size": mask_size.reshape(-1),
            "score": score.reshape(-1),
            "prediction": pd.array(np.where(prediction >= 0, prediction, 0).reshape(-1), dtype="Int64"),
            "evaluated": evaluated.reshape(-1),
        }
    )
    curves.loc[prediction.reshape(-1) < 0, "prediction"] = pd.NA
    per_curve = {
        "sample": np.repeat(kept, k).astype(np.int64),
        "strategy": part.name,
        "channel": np.tile(names, n),
    }
    scores = pd.DataFrame({**per_curve, "dac": curve_area(mask_size, score).reshape(-1)})

    def step_table(chosen: np.ndarray) -> pd.DataFrame:
        valid = chosen >= 0
        safe = np.where(valid, chosen, 0)[..., None]
        pick = lambda a: np.take_along_axis(a, safe, axis=-1)[..., 0]  # noqa: E731
        table = pd.DataFrame(
            {
                **per_curve,
                "step": pd.array(safe[..., 0].reshape(-1), dtype="Int64"),
                "threshold": thresholds[safe[..., 0]].reshape(-1),
                "mask_size": pick(mask_size).reshape(-1),
                "score": pick(score).reshape(-1),
            }
        )
        invalid = ~valid.reshape(-1)
        table.loc[invalid, ["threshold", "mask_size", "score"]] = np.nan
        table.loc[invalid, "step"] = pd.NA
        return table

    first_flip = minimal_steps(prediction, target)
    minimal = step_table(first_flip)
    minimal.insert(3, "flipped", (first_flip >= 0).reshape(-1))
    return {
        "curves": curves,
        "scores": scores,
        "optimal": step_table(optimal_steps(mask_size, score, evaluated)),
        "minimal": minimal,
    }


def concat_tables(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Concatenate non-empty tables (an empty table with ``columns`` when none); names as strings."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    for col in ("strategy", "channel"):
        if col in out:
            out[col] = out[col].astype("string")
    return out
