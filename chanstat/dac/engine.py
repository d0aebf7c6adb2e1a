"""`dac`: Discriminative Attribution from Counterfactuals with channel-resolved masks.

For every sample, strategy and threshold step a mask ``m`` is built from the attribution map,
closed, blurred and used to paste the real image into its counterfactual,
``h = m * x + (1 - m) * x'``; the DAC curve is the class-``y`` probability gain of ``h`` over
``x'`` against the mask size, and the DAC score the area under it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from chanstat.dac.masks import MaskLayout, MaskStrategy, build_layout, check_strategies
from chanstat.dac.morphology import SHAPES, GaussianBlur, structuring_element
from chanstat.dac.scoring import (
    Baseline,
    class_probabilities,
    curve_area,
    default_batch_size,
    input_memory_format,
    interpolate_curves,
    minimal_steps,
    optimal_steps,
    samples_per_chunk,
    score_layout,
)
from chanstat.dac.thresholds import SCHEDULES, check_steps

CURVE_COLUMNS = ["sample", "strategy", "channel", "step", "threshold", "mask_size", "score", "prediction"]
SCORE_COLUMNS = ["sample", "strategy", "channel", "dac"]
STEP_COLUMNS = ["sample", "strategy", "channel", "step", "threshold", "mask_size", "score"]
DROPPED_COLUMNS = [
    "sample", "real_target", "real_prediction", "counterfactual_target", "counterfactual_prediction", "reason",
]


@dataclass
class DacResult:
    """What `dac` returns. Every table is tidy; ``sample`` is the row of the inputs.

    Attributes
    ----------
    curves : pandas.DataFrame
        One row per sample, strategy, channel and step: ``sample`` (int), ``strategy`` (str),
        ``channel`` (channel name for ``single_channel``, ``"all"`` otherwise), ``step``
        (0 .. steps; masks grow with the step), ``threshold`` (normalised-map threshold for
        the value schedule, planned mask fraction before smoothing for the rank schedule),
        ``mask_size`` (fraction of the closed mask's elements that are on, in [0, 1]),
        ``score`` (``p(y | h) - p(y | x')``) and ``prediction`` (class predicted for ``h``).
    scores : pandas.DataFrame
        ``sample, strategy, channel, dac``: area under the sample's curve interpolated onto a
        common mask-size grid (trapezoid); the mean over samples is the area under the mean curve.
    optimal : pandas.DataFrame
        The step minimising ``mask_size**2 + (1 - score)**2`` per curve (``STEP_COLUMNS``).
    minimal : pandas.DataFrame
        The first step from which the hybrid stays predicted as the real class, with
        ``flipped`` (bool); ``flipped`` False means it never does, and step, threshold,
        mask_size and score are missing.
    dropped : pandas.DataFrame
        Pairs removed by ``filter_pairs`` and why (empty otherwise).
    optimal_masks, minimal_masks : dict of str to numpy.ndarray, or None
        With ``return_masks``: per strategy the pasted (closed and blurred) masks, float32,
        shape (n_kept, 1, H, W) for ``aggregate`` and (n_kept, C, H, W) otherwise (for
        ``single_channel`` plane k is channel k's own mask); rows follow ``samples``.
        Minimal masks of curves that never flip are NaN.
    samples : numpy.ndarray
        Input rows that were scored (all unless ``filter_pairs`` dropped some).
    settings : dict
        The parameters used.
    stats : dict
        ``hybrids`` (curve points), ``forward_passes`` (hybrids that went through the model;
        the rest were empty, full or repeated masks) and ``seconds`` per strategy.
    """

    curves: pd.DataFrame
    scores: pd.DataFrame
    optimal: pd.DataFrame
    minimal: pd.DataFrame
    dropped: pd.DataFrame
    samples: np.ndarray
    settings: dict
    stats: dict = field(default_factory=dict)
    optimal_masks: dict[str, np.ndarray] | None = None
    minimal_masks: dict[str, np.ndarray] | None = None

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
            size = part["mask_size"].to_numpy().reshape(-1, n_steps)
            score = part["score"].to_numpy().reshape(-1, n_steps)
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
        """Mean DAC per strategy and channel: ``strategy, channel, dac, dac_sd, n``."""
        grouped = self.scores.groupby(["strategy", "channel"], sort=False)["dac"]
        out = grouped.agg(dac="mean", dac_sd="std", n="count").reset_index()
        return out


# --------------------------------------------------------------------------- input checks


def _as_images(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W); got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must be numeric; got {x.dtype}")
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _as_labels(y: Any, n: int, name: str) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must have shape ({n},), one class index per image; got {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
            raise ValueError(f"{name} must hold integer class indices")
    elif y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices; got dtype {y.dtype}")
    if n and y.min() < 0:
        raise ValueError(f"{name} holds negative class indices")
    return torch.as_tensor(y.astype(np.int64))


def _check_settings(closing, closing_shape, sigma, batch_size, schedule, steps) -> tuple[int, float]:
    check_steps(steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    closing = 0 if closing is None or closing is False else closing
    if isinstance(closing, bool) or not isinstance(closing, (int, np.integer)) or closing < 0:
        raise ValueError(f"closing must be a non-negative integer (element size in pixels; 0 = off); got {closing!r}")
    if closing_shape not in SHAPES:
        raise ValueError(f"unknown closing_shape {closing_shape!r}; choose one of {SHAPES}")
    sigma = 0.0 if sigma is None or sigma is False else sigma
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise ValueError(f"sigma must be a number >= 0 (0 = no blur); got {sigma!r}")
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (0 = no blur); got {sigma!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}")
    return int(closing), float(sigma)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def _evaluation(model: torch.nn.Module):
    """Eval mode and inference mode for the duration; the model's own mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- engine


def _curve_names(layout: MaskLayout, channels: list[str]) -> list[str]:
    return [channels[k] for k in layout.curve_channels] if layout.curve_channels is not None else ["all"]


@dataclass
class _Prepared:
    """Checked inputs of the kept pairs (on the CPU) and their baseline probabilities."""

    kept: np.ndarray
    counterfactual: torch.Tensor
    difference: torch.Tensor
    magnitudes: torch.Tensor
    target: torch.Tensor
    baseline: Baseline
    dropped: pd.DataFrame
    channels: list[str]
    batch_size: int
    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format


def _prepare(
    model, real, counterfactuals, attributions, real_target, strategies, batch_size, filter_pairs,
    counterfactual_target, channels,
) -> _Prepared:
    real = _as_images(real, "real").cpu()
    counterfactuals = _as_images(counterfactuals, "counterfactuals").cpu()
    if real.shape != counterfactuals.shape:
        raise ValueError(
            f"real and counterfactuals must have the same shape; got {tuple(real.shape)} and {tuple(counterfactuals.shape)}"
        )
    attributions = _as_images(attributions, "attributions").cpu()
    n, c, h, w = real.shape
    if attributions.shape[0] != n or attributions.shape[2:] != real.shape[2:] or attributions.shape[1] not in (1, c):
        raise ValueError(
            f"attributions must have shape ({n}, {c}, {h}, {w}) (one map per channel) or ({n}, 1, {h}, {w}) "
            f"(channel-agnostic) to match the images; got {tuple(attributions.shape)}"
        )
    if attributions.shape[1] == 1 and c > 1:
        resolved = [s.name for s in strategies if s.channel_resolved]
        if resolved:
            raise ValueError(
                f"strategies {resolved} need one map per channel, shape ({n}, {c}, {h}, {w}); the attributions are "
                f"channel-agnostic, shape ({n}, 1, {h}, {w}): use strategy='aggregate' for such maps"
            )
    target = _as_labels(real_target, n, "real_target")
    cf_target = None if counterfactual_target is None else _as_labels(counterfactual_target, n, "counterfactual_target")
    if channels is None:
        channels = [str(i) for i in range(c)]
    channels = [str(ch) for ch in channels]
    if len(channels) != c or len(set(channels)) != c:
        raise ValueError(f"channels must be {c} unique names, one per image channel; got {channels}")

    device = _model_device(model)
    batch_size = batch_size or default_batch_size(device, c * h * w)
    # baselines in the layout the hybrids will have, so an unchanged hybrid scores exactly 0
    memory_format = input_memory_format(model, counterfactuals[:4].to(device))
    p_real = class_probabilities(model, real, batch_size, device, memory_format)
    p_cf = class_probabilities(model, counterfactuals, batch_size, device, memory_format)
    n_classes = p_real.shape[1] if n else 0
    if n and int(target.max()) >= n_classes:
        raise ValueError(f"real_target holds class {int(target.max())} but the model has {n_classes} classes")
    if cf_target is not None and n and int(cf_target.max()) >= n_classes:
        raise ValueError(f"counterfactual_target holds class {int(cf_target.max())} but the model has {n_classes} classes")

    pred_real = p_real.argmax(1).cpu() if n else torch.zeros(0, dtype=torch.int64)
    pred_cf = p_cf.argmax(1).cpu() if n else torch.zeros(0, dtype=torch.int64)
    keep = np.ones(n, dtype=bool)
    reasons = np.array([""] * n, dtype=object)
    if filter_pairs:
        real_ok = (pred_real == target).numpy()
        cf_ok = (pred_cf == cf_target).numpy() if cf_target is not None else (pred_cf != target).numpy()
        keep = real_ok & cf_ok
        reasons = np.where(
            ~real_ok & ~cf_ok, "real and counterfactual misclassified",
            np.where(~real_ok, "real misclassified", np.where(~cf_ok, "counterfactual misclassified", "")),
        )
    drop = np.flatnonzero(~keep)
    dropped = pd.DataFrame(
        {
            "sample": drop.astype(np.int64),
            "real_target": target.numpy()[drop],
            "real_prediction": pred_real.numpy()[drop].astype(np.int64),
            "counterfactual_target": (cf_target.numpy()[drop] if cf_target is not None else np.full(len(drop), -1)),
            "counterfactual_prediction": pred_cf.numpy()[drop].astype(np.int64),
            "reason": pd.Series(reasons[drop], dtype="string"),
        },
        columns=DROPPED_COLUMNS,
    )
    kept = np.flatnonzero(keep)
    kept_t = torch.as_tensor(kept)
    real_k = real[kept_t]
    cf_k = counterfactuals[kept_t]
    kept_d = kept_t.to(device)
    return _Prepared(
        kept=kept,
        counterfactual=cf_k,
        difference=real_k - cf_k,
        magnitudes=attributions[kept_t].abs(),
        target=target[kept_t],
        baseline=Baseline(real=p_real[kept_d], counterfactual=p_cf[kept_d]),
        dropped=dropped,
        channels=channels,
        batch_size=int(batch_size),
        device=device,
        memory_format=memory_format,
    )


def _run_strategy(
    model, prep: _Prepared, strategy: MaskStrategy, steps: int, schedule: str, element, blur: GaussianBlur,
    return_masks: bool, progress: bool,
) -> dict:
    """Score one strategy, a chunk of samples at a time (device memory stays bounded for any N)."""
    t0 = time.perf_counter()
    n, c, h, w = prep.counterfactual.shape
    curves_per_sample = c if strategy.curve_per_plane else 1
    chunk = samples_per_chunk(c * h * w, curves_per_sample)
    sizes, scores_, predictions, optimal_masks, minimal_masks = [], [], [], [], []
    n_forward = 0
    layout = None
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        to_device = lambda t: t[part].to(prep.device)  # noqa: E731
        layout = build_layout(strategy, to_device(prep.magnitudes), schedule, steps, element)
        target = to_device(prep.target)
        baseline = Baseline(real=prep.baseline.real[part], counterfactual=prep.baseline.counterfactual[part])
        scored = score_layout(
            model, layout, to_device(prep.counterfactual), to_device(prep.difference), target, baseline, blur,
            prep.batch_size, progress=progress, description=f"DAC {strategy.name}", memory_format=prep.memory_format,
        )
        mask_size = layout.counts / layout.mask_elements
        sizes.append(mask_size)
        scores_.append(scored.score)
        predictions.append(scored.prediction)
        n_forward += scored.n_forward
        if return_masks:
            optimal_masks.append(layout.smoothed_masks(optimal_steps(mask_size, scored.score), blur, c, prep.batch_size))
            first = minimal_steps(scored.prediction, prep.target[part].numpy())
            minimal_masks.append(layout.smoothed_masks(first, blur, c, prep.batch_size))
    if layout is None:  # no pairs left
        layout = build_layout(strategy, prep.magnitudes.to(prep.device), schedule, steps, element)
        k, n_steps = layout.counts.shape[1:]
        sizes = [np.zeros((0, k, n_steps))]
        scores_ = [np.zeros((0, k, n_steps))]
        predictions = [np.zeros((0, k, n_steps), dtype=np.int64)]
    names = _curve_names(layout, prep.channels)
    mask_size = np.concatenate(sizes)
    score = np.concatenate(scores_)
    prediction = np.concatenate(predictions)
    thresholds = layout.thresholds
    _, k, n_steps = mask_size.shape

    curves = pd.DataFrame(
        {
            "sample": np.repeat(prep.kept, k * n_steps).astype(np.int64),
            "strategy": strategy.name,
            "channel": np.tile(np.repeat(np.asarray(names, dtype=object), n_steps), n),
            "step": np.tile(np.arange(n_steps), n * k).astype(np.int64),
            "threshold": np.tile(thresholds, n * k),
            "mask_size": mask_size.reshape(-1),
            "score": score.reshape(-1),
            "prediction": prediction.reshape(-1).astype(np.int64),
        }
    )
    per_curve = {
        "sample": np.repeat(prep.kept, k).astype(np.int64),
        "strategy": strategy.name,
        "channel": np.tile(np.asarray(names, dtype=object), n),
    }
    scores = pd.DataFrame({**per_curve, "dac": curve_area(mask_size, score).reshape(-1)})

    def step_table(chosen: np.ndarray) -> pd.DataFrame:
        valid = chosen >= 0
        safe = np.where(valid, chosen, 0)[..., None]
        pick = lambda a: np.take_along_axis(a, safe, axis=-1)[..., 0]  # noqa: E731
        table = pd.DataFrame(
            {
                **per_curve,
                "step": pd.array(np.where(valid, chosen, 0).reshape(-1), dtype="Int64"),
                "threshold": thresholds[safe[..., 0]].reshape(-1),
                "mask_size": pick(mask_size).reshape(-1),
                "score": pick(score).reshape(-1),
            }
        )
        invalid = ~valid.reshape(-1)
        table.loc[invalid, ["threshold", "mask_size", "score"]] = np.nan
        table.loc[invalid, "step"] = pd.NA
        return table

    first_flip = minimal_steps(prediction, prep.target.numpy())
    optimal = step_table(optimal_steps(mask_size, score))
    minimal = step_table(first_flip)
    minimal.insert(3, "flipped", (first_flip >= 0).reshape(-1))
    out = {
        "curves": curves, "scores": scores, "optimal": optimal, "minimal": minimal,
        "stats": {"hybrids": int(n * k * n_steps), "forward_passes": int(n_forward)},
    }
    if return_masks:
        empty = np.zeros((0, 1 if strategy.combine_channels else c, h, w), np.float32)
        out["optimal_masks"] = np.concatenate(optimal_masks) if optimal_masks else empty
        out["minimal_masks"] = np.concatenate(minimal_masks) if minimal_masks else empty
    out["stats"]["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    for col in ("strategy", "channel"):
        if col in out:
            out[col] = out[col].astype("string")
    return out


def dac(
    model: torch.nn.Module,
    real,
    counterfactuals,
    attributions,
    real_target,
    strategy: str | Sequence[str] = "aggregate",
    steps: int = 200,
    schedule: str = "value",
    closing: int | None = 10,
    closing_shape: str = "ellipse",
    sigma: float | None = 2.0,
    batch_size: int | None = None,
    filter_pairs: bool = False,
    return_masks: bool = False,
    progress: bool = False,
    counterfactual_target=None,
    channels: Sequence[str] | None = None,
) -> DacResult:
    """DAC curves and scores for real images, their counterfactuals and attribution maps.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits (batch, n_classes). Evaluated in eval mode on its own
        device (its training mode is restored afterwards).
    real, counterfactuals : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Real images ``x`` and their counterfactuals ``x'`` (same cells, other class).
    attributions : torch.Tensor or numpy.ndarray, shape (N, C, H, W) or (N, 1, H, W)
        Attribution maps; their magnitudes ``|a|`` rank the elements. Channel-agnostic maps
        (N, 1, H, W) only go with ``strategy="aggregate"``. Maps are normalised per sample.
    real_target : array-like of int, shape (N,)
        Real class ``y`` of every image; the score is ``p(y | h) - p(y | x')``.
    strategy : str or list of str
        ``"aggregate"`` (published behaviour), ``"joint"``, ``"per_channel"``,
        ``"single_channel"`` (see `chanstat.dac.masks`), or several.
    steps : int >= 2
        Threshold intervals; curves have ``steps + 1`` points (201 as in the DAC paper).
    schedule : {"value", "rank"}
        Evenly spaced thresholds on the normalised map, or mask sizes by element rank
        (finer at small masks, ties broken by element order); see `chanstat.dac.thresholds`.
    closing : int or None
        Size in pixels of the flat closing element (10 as published); 0 or None = off.
    closing_shape : {"ellipse", "square"}
    sigma : float or None
        Standard deviation in pixels of the Gaussian blur after the closing (2.0 as published,
        an 11 x 11 kernel); 0 or None = off.
    batch_size : int, optional
        Hybrids per forward pass; default from the device and image size.
    filter_pairs : bool
        Keep only pairs whose real image is predicted as ``real_target`` and whose
        counterfactual as ``counterfactual_target`` (when given; otherwise as any other
        class). What was dropped is in ``result.dropped``.
    return_masks : bool
        Also return the optimal and minimal masks (``result.optimal_masks`` / ``minimal_masks``).
    progress : bool
        Show a progress bar per strategy.
    counterfactual_target : array-like of int, shape (N,), optional
        Class of every counterfactual (only used by ``filter_pairs``).
    channels : list of str, optional
        Channel names for the ``channel`` column of ``single_channel`` (default "0", "1", ...).

    Returns
    -------
    DacResult
        Tidy ``curves``, ``scores``, ``optimal``, ``minimal`` and ``dropped`` tables.

    Notes
    -----
    Mask size is the fraction of the closed (not yet blurred) mask's elements that are on:
    out of ``H * W`` for ``aggregate`` and each ``single_channel`` curve, out of
    ``C * H * W`` for ``joint`` and ``per_channel``. Every curve runs from the empty mask
    (score 0) to the full mask. One grey-level closing per map replaces a binary closing per
    threshold (they are equal for a flat element); steps whose mask repeats the previous
    one, and empty or full masks, need no forward pass.
    """
    strategies = check_strategies(strategy)
    closing, sigma = _check_settings(closing, closing_shape, sigma, batch_size, schedule, steps)
    settings = dict(
        strategy=[s.name for s in strategies], steps=int(steps), schedule=schedule, closing=closing,
        closing_shape=closing_shape, sigma=sigma, batch_size=batch_size, filter_pairs=bool(filter_pairs),
    )
    with _evaluation(model):
        prep = _prepare(
            model, real, counterfactuals, attributions, real_target, strategies, batch_size, filter_pairs,
            counterfactual_target, channels,
        )
        settings["batch_size"] = prep.batch_size
        settings["memory_format"] = "channels_last" if prep.memory_format == torch.channels_last else "contiguous"
        return _dac_prepared(model, prep, strategies, steps, schedule, closing, closing_shape, sigma, return_masks, progress, settings)


def _dac_prepared(model, prep, strategies, steps, schedule, closing, closing_shape, sigma, return_masks, progress, settings) -> DacResult:
    element = structuring_element(closing, closing_shape) if closing > 1 else None
    h, w = prep.counterfactual.shape[-2:]
    blur = GaussianBlur(sigma, h, w, device=prep.device)
    parts = [
        _run_strategy(model, prep, s, steps, schedule, element, blur, return_masks, progress) for s in strategies
    ]
    return DacResult(
        curves=_concat([p["curves"] for p in parts], CURVE_COLUMNS),
        scores=_concat([p["scores"] for p in parts], SCORE_COLUMNS),
        optimal=_concat([p["optimal"] for p in parts], STEP_COLUMNS),
        minimal=_concat([p["minimal"] for p in parts], STEP_COLUMNS[:3] + ["flipped"] + STEP_COLUMNS[3:]),
        dropped=prep.dropped,
        samples=prep.kept,
        settings=settings,
        stats={s.name: p["stats"] for s, p in zip(strategies, parts)},
        optimal_masks={s.name: p["optimal_masks"] for s, p in zip(strategies, parts)} if return_masks else None,
        minimal_masks={s.name: p["minimal_masks"] for s, p in zip(strategies, parts)} if return_masks else None,
    )


def smoothing_sweep(
    model: torch.nn.Module,
    real,
    counterfactuals,
    attributions,
    real_target,
    closings: Sequence[int] = (0, 5, 10),
    sigmas: Sequence[float] = (0, 1, 2),
    strategy: str | Sequence[str] = "aggregate",
    steps: int = 200,
    schedule: str = "value",
    closing_shape: str = "ellipse",
    batch_size: int | None = None,
    filter_pairs: bool = False,
    progress: bool = False,
    counterfactual_target=None,
    channels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """DAC scores for every (closing, sigma) setting, to see whether smoothing hides biology.

    Parameters are those of `dac`; ``closings`` and ``sigmas`` are the grid (0 = off).

    Returns
    -------
    pandas.DataFrame
        ``closing, sigma, sample, strategy, channel, dac``: one row per setting and curve.
    """
    strategies = check_strategies(strategy)
    closings = list(closings)
    sigmas = list(sigmas)
    if not closings or not sigmas:
        raise ValueError("closings and sigmas must each hold at least one setting")
    checked = [_check_settings(c, closing_shape, s, batch_size, schedule, steps) for c in closings for s in sigmas]
    frames = []
    with _evaluation(model):
        prep = _prepare(
            model, real, counterfactuals, attributions, real_target, strategies, batch_size, filter_pairs,
            counterfactual_target, channels,
        )
        for closing, sigma in checked:
            result = _dac_prepared(model, prep, strategies, steps, schedule, closing, closing_shape, sigma, False, progress, {})
            scores = result.scores
            scores.insert(0, "sigma", sigma)
            scores.insert(0, "closing", closing)
            frames.append(scores)
    return _concat(frames, ["closing", "sigma"] + SCORE_COLUMNS)
