"""`dac`: Discriminative Attribution from Counterfactuals with channel-resolved masks.

For every sample, strategy and threshold step a mask ``m`` is built from the attribution map,
closed, blurred and used to paste the real image into its counterfactual,
``h = m * x + (1 - m) * x'``; the DAC curve is the class-``y`` probability gain of ``h`` over
``x'`` against the mask size, and the DAC score the area under it.

Samples are processed in chunks (device memory stays bounded for any N); within a chunk the
masks of every strategy are built once, and each round of requested steps -- all of them for
the fixed schedules, the next bisections for the adaptive one -- is scored in shared forward
passes across samples, strategies and channels.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chanstat.dacscore.adaptive import make_plan
from chanstat.dacscore.coalitions import coalition_probabilities
from chanstat.dacscore.masks import MaskStrategy, build_layout, check_strategies
from chanstat.dacscore.morphology import GaussianBlur, structuring_element
from chanstat.dacscore.prepare import Prepared, Settings, check_settings, prepare
from chanstat.dacscore.result import CURVE_COLUMNS, MINIMAL_COLUMNS, SCORE_COLUMNS, STEP_COLUMNS, DacResult
from chanstat.dacscore.scoring import Chunk, inert_curves, known_scores, samples_per_chunk, score_requests
from chanstat.dacscore.tables import StrategyCurves, concat_tables, minimal_steps, optimal_steps, strategy_tables
from chanstat.dacscore.thresholds import rank_fractions, value_thresholds
from chanstat.models.adapter import as_model
from chanstat.tensors import ALL, check_device, evaluating

#: default largest DAC error of an adaptive curve against the fixed value grid it samples
DEFAULT_TOLERANCE = 0.0025


def _chunk_size(strategies: list[MaskStrategy], shape: tuple[int, ...]) -> int:
    c, h, w = shape
    # closed maps of every strategy, plus the counterfactuals and differences, in image units
    planes = sum(1.0 / c if s.combine_channels else 1.0 for s in strategies) + 2
    return samples_per_chunk(c * h * w, math.ceil(planes))


def _single_channels(
    model, prep: Prepared, part: slice, curve_channels: list[int], n_channels: int, y: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """Gain and prediction of the hybrids that paste the whole of one channel, shape (n, K) each,
    and the forward passes they took (coalitions known from an earlier call cost none)."""
    single = np.zeros((len(curve_channels), n_channels), dtype=bool)
    single[np.arange(len(curve_channels)), curve_channels] = True
    probs, evaluated = coalition_probabilities(
        model,
        prep.real[part],
        prep.counterfactual[part],
        single,
        batch_size=prep.batch_size,
        feed=prep.feed,
        keys=prep.keys[part],
        memory=prep.memory,
    )
    rows = np.arange(len(y))
    p = probs.numpy()
    p_cf = prep.baseline.counterfactual[part].cpu().numpy()[rows, y]
    return (p[rows, :, y] - p_cf[:, None], p.argmax(axis=2)), evaluated


def _evaluate(
    model, prep: Prepared, strategies: list[MaskStrategy], settings: Settings, return_masks: bool, progress: bool
) -> list[StrategyCurves]:
    """Curves of every strategy, a chunk of samples at a time."""
    n, c, h, w = prep.counterfactual.shape
    device = prep.feed.device
    element = structuring_element(settings.closing, settings.closing_shape) if settings.closing > 1 else None
    blur = GaussianBlur(settings.sigma, h, w, device=device)
    thresholds = rank_fractions(settings.steps) if settings.schedule == "rank" else value_thresholds(settings.steps)
    parts = [
        StrategyCurves(s.name, list(prep.channels) if s.curve_per_plane else [ALL], thresholds) for s in strategies
    ]
    chunk_size = _chunk_size(strategies, (c, h, w))
    bar = tqdm(desc="DAC", unit="hybrid", disable=not progress, leave=False)
    for start in range(0, n, chunk_size):
        part = slice(start, start + chunk_size)
        on_device = lambda t: t[part].to(device)  # noqa: E731
        chunk = Chunk(
            on_device(prep.counterfactual), on_device(prep.difference), on_device(prep.target), prep.baseline[part]
        )
        magnitudes = on_device(prep.magnitudes)
        layouts = [build_layout(s, magnitudes, settings.schedule, settings.steps, element) for s in strategies]
        del magnitudes
        y = prep.target[part].numpy()
        rows = np.arange(len(y))
        p_real, p_cf = chunk.baseline.real.cpu().numpy(), chunk.baseline.counterfactual.cpu().numpy()
        real_gain = p_real[rows, y] - p_cf[rows, y]
        plans, predictions = [], []
        for layout, curves in zip(layouts, parts):
            full = None
            if layout.curve_channels is not None:  # a full single-channel mask is the coalition {k}
                full, passes = _single_channels(model, prep, part, layout.curve_channels, c, y)
                curves.forward_passes += passes
            known, known_prediction = known_scores(
                layout, inert_curves(layout, chunk.difference), real_gain, p_real.argmax(1), p_cf.argmax(1), full
            )
            flat = (-1, layout.counts.shape[-1])
            plans.append(
                make_plan(
                    settings.schedule,
                    (layout.counts / layout.mask_elements).reshape(flat),
                    layout.counts.reshape(flat),
                    known.reshape(flat),
                    settings.tolerance,
                )
            )
            predictions.append(known_prediction.reshape(flat))
        while True:
            asked = [plan.requests() for plan in plans]
            if not any(len(ids) for ids, _ in asked):
                break
            requests = [(ids // lay.n_curves, ids % lay.n_curves, steps) for (ids, steps), lay in zip(asked, layouts)]
            scored = score_requests(model, layouts, requests, chunk, blur, prep.batch_size, prep.feed, bar)
            for q, ((ids, steps), (score, prediction)) in enumerate(zip(asked, scored)):
                plans[q].update(ids, steps, score)
                predictions[q][ids, steps] = prediction
                parts[q].forward_passes += len(ids)
        for layout, plan, prediction, curves in zip(layouts, plans, predictions, parts):
            shape = layout.counts.shape
            score, exact = plan.scores()
            picked = np.take_along_axis(prediction, plan.source, axis=-1)
            mask_size = layout.counts / layout.mask_elements
            score, exact = score.reshape(shape), exact.reshape(shape)
            picked = np.where(exact, picked.reshape(shape), -1)
            curves.mask_size.append(mask_size)
            curves.score.append(score)
            curves.prediction.append(picked)
            curves.evaluated.append(exact)
            if return_masks:
                best = optimal_steps(mask_size, score, exact)
                curves.optimal_masks.append(layout.smoothed_masks(best, blur, c, prep.batch_size))
                curves.minimal_masks.append(layout.smoothed_masks(minimal_steps(picked, y), blur, c, prep.batch_size))
        del layouts, chunk
    bar.close()
    return parts


def _result(
    prep: Prepared,
    strategies,
    parts: list[StrategyCurves],
    settings: dict,
    return_masks: bool,
    shape: tuple[int, ...],
    started: float,
) -> DacResult:
    c, h, w = shape
    tables = [strategy_tables(p, prep.kept, prep.target.numpy()) for p in parts]
    stats = {}
    for p in parts:
        n_curves = len(prep.kept) * len(p.channel_names)
        stats[p.name] = {
            "curves": int(n_curves),
            "hybrids": int(n_curves * len(p.thresholds)),
            "forward_passes": int(p.forward_passes),
            "forward_passes_per_curve": round(p.forward_passes / n_curves, 3) if n_curves else 0.0,
        }
    masks: dict[str, dict[str, np.ndarray]] = {"optimal_masks": {}, "minimal_masks": {}}
    if return_masks:
        for s, p in zip(strategies, parts):
            empty = np.zeros((0, 1 if s.combine_channels else c, h, w), np.float32)
            masks["optimal_masks"][s.name] = np.concatenate(p.optimal_masks) if p.optimal_masks else empty
            masks["minimal_masks"][s.name] = np.concatenate(p.minimal_masks) if p.minimal_masks else empty
    return DacResult(
        curves=concat_tables([t["curves"] for t in tables], CURVE_COLUMNS),
        scores=concat_tables([t["scores"] for t in tables], SCORE_COLUMNS),
        optimal=concat_tables([t["optimal"] for t in tables], STEP_COLUMNS),
        minimal=concat_tables([t["minimal"] for t in tables], MINIMAL_COLUMNS),
        dropped=prep.dropped,
        samples=prep.kept,
        settings=settings,
        stats=stats,
        seconds=round(time.perf_counter() - started, 4),
        **masks,
    )


def dac(
    model: torch.nn.Module,
    images: Any,
    target: Any,
    maps: Any,
    *,
    counterfactuals: Any,
    counterfactual_target: Any = None,
    channels: Sequence[str] | None = None,
    strategy: str | Sequence[str] = "aggregate",
    schedule: str = "adaptive",
    steps: int = 200,
    tolerance: float = DEFAULT_TOLERANCE,
    closing: int | None = 10,
    closing_shape: str = "ellipse",
    sigma: float | None = 2.0,
    batch_size: int | None = None,
    filter_pairs: bool = False,
    return_masks: bool = False,
    progress: bool = False,
    device=None,
) -> DacResult:
    """DAC curves and scores for real images, their counterfactuals and attribution maps.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning class scores (N, n_classes), or one logit (N, 1) read as a
        sigmoid for class 1. Evaluated in eval mode on its own device and in its own dtype
        (hybrids are cast to it); every module's training flag is restored afterwards.
    images : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Real images ``x``.
    target : int or array-like of int, shape (N,)
        Real class ``y`` of every image; the score is ``p(y | h) - p(y | x')``.
    maps : torch.Tensor or numpy.ndarray, shape (N, C, H, W) or (N, 1, H, W)
        Attribution maps; their magnitudes ``|a|`` rank the elements. Channel-agnostic maps
        (N, 1, H, W) only go with ``strategy="aggregate"``. Maps are normalised per sample.
    counterfactuals : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Counterfactuals ``x'`` (same cells, other class, or any paired image of it).
    counterfactual_target : int or array-like of int, shape (N,), optional
        Class of every counterfactual (only used by ``filter_pairs``).
    channels : list of str, optional
        Channel names for the ``channel`` column of ``single_channel`` ("ch0", ... by default).
    strategy : str or list of str
        ``"aggregate"`` (published behaviour), ``"joint"``, ``"per_channel"``,
        ``"single_channel"`` (see `chanstat.dacscore.masks`), or several; their hybrids share
        forward passes.
    schedule : {"adaptive", "value", "rank"}
        ``"value"``: every step of ``steps + 1`` evenly spaced thresholds on the normalised
        map; ``"rank"``: mask sizes by element rank (finer at small masks, ties broken by
        element order); ``"adaptive"``: the value grid's steps, of which only a coarse grid
        and bisections where the score jumps go through the model, the rest interpolated in
        mask size (`chanstat.dacscore.adaptive`).
    steps : int >= 2
        Threshold intervals; curves have ``steps + 1`` points (201 as in the DAC paper).
    tolerance : float > 0
        Adaptive schedule: largest estimated DAC error of each curve against the value grid
        of ``steps`` (at 0.0025: 2-11 forward passes per curve and differences below 0.001 on
        64 x 64 synthetic crops with D-IG maps, see ``analyses/benchmarks/README.md``);
        ignored by the fixed schedules.
    closing : int or None
        Size in pixels of the flat closing element (10 as published); 0 or None = off.
    closing_shape : {"ellipse", "square"}
    sigma : float or None
        Standard deviation in pixels of the Gaussian blur after the closing (2.0 as published,
        an 11 x 11 kernel); 0 or None = off. The kernel reaches at most the image side.
    batch_size : int, optional
        Hybrids per forward pass; default from the device and image size.
    filter_pairs : bool
        Keep only pairs whose real image is predicted as ``target`` and whose counterfactual
        as ``counterfactual_target`` (when given; otherwise as any other class). What was
        dropped is in ``result.dropped``.
    return_masks : bool
        Also fill ``result.optimal_masks`` / ``minimal_masks`` (empty dicts otherwise).
    progress : bool
        Show a progress bar of the hybrids scored.
    device : str or torch.device, optional
        Where the hybrids are scored: the model's device (default); given, it must be the
        model's (a one-line error otherwise).

    Returns
    -------
    DacResult
        Tidy ``curves`` (with ``evaluated``), ``scores``, ``optimal``, ``minimal`` and
        ``dropped`` tables (see `chanstat.dacscore.result.DacResult`).

    Notes
    -----
    Mask size is the fraction of the closed (not yet blurred) mask's elements that are on:
    out of ``H * W`` for ``aggregate`` and each ``single_channel`` curve, out of
    ``C * H * W`` for ``joint`` and ``per_channel``. Every curve runs from the empty mask
    (score 0) to the full mask. One grey-level closing per map replaces a binary closing per
    threshold (they are equal for a flat element); steps whose mask repeats the previous
    one, and empty or full masks, need no forward pass. ``p(. | x)``, ``p(. | x')`` and the
    full mask of a ``single_channel`` curve (channel ``k`` of ``x`` pasted whole) are channel
    coalitions: they are remembered per model and pair and shared with later calls and with
    `chanstat.decompose.channel_shapley` (`chanstat.dacscore.coalitions`).
    """
    started = time.perf_counter()
    strategies = check_strategies(strategy)
    checked = check_settings(schedule, steps, tolerance, closing, closing_shape, sigma, batch_size)
    model = as_model(model)
    check_device(model, device)
    with evaluating(model):
        prep = prepare(
            model,
            images,
            target,
            maps,
            counterfactuals,
            counterfactual_target,
            channels,
            strategies,
            batch_size,
            filter_pairs,
        )
        parts = _evaluate(model, prep, strategies, checked, return_masks, progress)
    settings = dict(
        strategy=[s.name for s in strategies],
        schedule=checked.schedule,
        steps=checked.steps,
        tolerance=checked.tolerance if checked.schedule == "adaptive" else None,
        closing=checked.closing,
        closing_shape=checked.closing_shape,
        sigma=checked.sigma,
        batch_size=prep.batch_size,
        filter_pairs=bool(filter_pairs),
        dtype=str(prep.feed.dtype).replace("torch.", ""),
        memory_format="channels_last" if prep.feed.memory_format == torch.channels_last else "contiguous",
    )
    return _result(prep, strategies, parts, settings, return_masks, tuple(prep.counterfactual.shape[1:]), started)


def smoothing_sweep(
    model: torch.nn.Module,
    images: Any,
    target: Any,
    maps: Any,
    *,
    counterfactuals: Any,
    counterfactual_target: Any = None,
    channels: Sequence[str] | None = None,
    closings: Sequence[int] = (0, 5, 10),
    sigmas: Sequence[float] = (0, 1, 2),
    strategy: str | Sequence[str] = "aggregate",
    schedule: str = "adaptive",
    steps: int = 200,
    tolerance: float = DEFAULT_TOLERANCE,
    closing_shape: str = "ellipse",
    batch_size: int | None = None,
    filter_pairs: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """DAC scores for every (closing, sigma) setting, to see whether smoothing hides biology.

    Parameters are those of `dac`; ``closings`` and ``sigmas`` are the grid (0 = off). The
    inputs are checked and the baselines scored once.

    Returns
    -------
    pandas.DataFrame
        ``closing, sigma, sample, strategy, channel, dac``: one row per setting and curve.
    """
    strategies = check_strategies(strategy)
    closings, sigmas = list(closings), list(sigmas)
    if not closings or not sigmas:
        raise ValueError("closings and sigmas must each hold at least one setting")
    grid = [
        check_settings(schedule, steps, tolerance, c, closing_shape, s, batch_size) for c in closings for s in sigmas
    ]
    frames = []
    model = as_model(model)
    with evaluating(model):
        prep = prepare(
            model,
            images,
            target,
            maps,
            counterfactuals,
            counterfactual_target,
            channels,
            strategies,
            batch_size,
            filter_pairs,
        )
        for checked in grid:
            parts = _evaluate(model, prep, strategies, checked, False, progress)
            scores = concat_tables(
                [strategy_tables(p, prep.kept, prep.target.numpy())["scores"] for p in parts], SCORE_COLUMNS
            )
            scores.insert(0, "sigma", checked.sigma)
            scores.insert(0, "closing", checked.closing)
            frames.append(scores)
    return concat_tables(frames, ["closing", "sigma"] + SCORE_COLUMNS)
