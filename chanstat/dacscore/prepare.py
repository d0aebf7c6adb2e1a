"""Checked inputs of `dac`: settings, images, maps, targets, pair filtering and baselines."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from chanstat.dacscore.coalitions import coalition_probabilities, pair_keys, remembered
from chanstat.dacscore.masks import MaskStrategy
from chanstat.dacscore.morphology import SHAPES
from chanstat.dacscore.result import DROPPED_COLUMNS
from chanstat.dacscore.scoring import Baseline, ModelInput, default_batch_size, input_memory_format
from chanstat.dacscore.thresholds import SCHEDULES, check_steps, check_tolerance
from chanstat.tensors import as_images, as_target, channel_names, model_device, model_dtype


@dataclass(frozen=True)
class Settings:
    """Checked smoothing and schedule settings of one DAC evaluation."""

    schedule: str
    steps: int
    tolerance: float
    closing: int
    closing_shape: str
    sigma: float


def check_settings(schedule, steps, tolerance, closing, closing_shape, sigma, batch_size=None) -> Settings:
    """Validate the settings of `dac` (one-line errors naming the argument)."""
    steps = check_steps(steps)
    tolerance = check_tolerance(tolerance)
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
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}")
    return Settings(schedule, steps, tolerance, int(closing), closing_shape, float(sigma))


@dataclass
class Prepared:
    """Checked inputs of the kept pairs (on the CPU) and their baseline probabilities."""

    kept: np.ndarray
    real: torch.Tensor
    counterfactual: torch.Tensor
    difference: torch.Tensor
    magnitudes: torch.Tensor
    target: torch.Tensor
    baseline: Baseline  # on the model's device
    dropped: pd.DataFrame
    channels: list[str]
    batch_size: int
    feed: ModelInput
    keys: list[bytes]  # `pair_keys` of the kept pairs
    memory: dict  # remembered coalition probabilities of the model (`chanstat.dacscore.coalitions`)


def _drop_table(drop, target, pred_real, cf_target, pred_cf, reasons) -> pd.DataFrame:
    return pd.DataFrame(
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


def prepare(
    model: torch.nn.Module,
    images: Any,
    target: Any,
    maps: Any,
    counterfactuals: Any,
    counterfactual_target: Any,
    channels: Sequence[str] | None,
    strategies: list[MaskStrategy],
    batch_size: int | None,
    filter_pairs: bool,
) -> Prepared:
    """Check the inputs, score the real images and counterfactuals, and filter the pairs."""
    images = as_images(images, "images").cpu()
    counterfactuals = as_images(counterfactuals, "counterfactuals").cpu()
    if images.shape != counterfactuals.shape:
        raise ValueError(
            f"images and counterfactuals must have the same shape; got {tuple(images.shape)} and {tuple(counterfactuals.shape)}"
        )
    maps = as_images(maps, "maps").cpu()
    n, c, h, w = images.shape
    if maps.shape[0] != n or maps.shape[2:] != images.shape[2:] or maps.shape[1] not in (1, c):
        raise ValueError(
            f"maps must have shape ({n}, {c}, {h}, {w}) (one map per channel) or ({n}, 1, {h}, {w}) "
            f"(channel-agnostic) to match the images; got {tuple(maps.shape)}"
        )
    if maps.shape[1] == 1 and c > 1:
        resolved = [s.name for s in strategies if s.channel_resolved]
        if resolved:
            raise ValueError(
                f"strategies {resolved} need one map per channel, shape ({n}, {c}, {h}, {w}); the maps are "
                f"channel-agnostic, shape ({n}, 1, {h}, {w}): use strategy='aggregate' for such maps"
            )
    target = as_target(target, n, "target")
    cf_target = None if counterfactual_target is None else as_target(counterfactual_target, n, "counterfactual_target")
    channels = channel_names(channels, c)

    device = model_device(model)
    dtype = model_dtype(model)
    batch_size = int(batch_size or default_batch_size(device, c * h * w))
    # baselines in the layout and dtype the hybrids will have, so an unchanged hybrid scores exactly 0
    feed = ModelInput(device, input_memory_format(model, counterfactuals[:4].to(device), dtype), dtype)
    # the coalitions "every channel real" (x) and "none" (x'), shared with channel_shapley
    keys = pair_keys(images, counterfactuals)
    memory = remembered(model, feed)
    both = np.array([[True] * c, [False] * c])
    probabilities, _ = coalition_probabilities(
        model, images, counterfactuals, both, batch_size=batch_size, feed=feed, keys=keys, memory=memory
    )
    p_real, p_cf = probabilities[:, 0].to(device), probabilities[:, 1].to(device)
    n_classes = p_real.shape[1] if n else 0
    if n and int(target.max()) >= n_classes:
        raise ValueError(f"target holds class {int(target.max())} but the model has {n_classes} classes")
    if cf_target is not None and n and int(cf_target.max()) >= n_classes:
        raise ValueError(
            f"counterfactual_target holds class {int(cf_target.max())} but the model has {n_classes} classes"
        )

    pred_real = p_real.argmax(1).cpu()
    pred_cf = p_cf.argmax(1).cpu()
    keep = np.ones(n, dtype=bool)
    reasons = np.array([""] * n, dtype=object)
    if filter_pairs:
        real_ok = (pred_real == target).numpy()
        cf_ok = (pred_cf == cf_target).numpy() if cf_target is not None else (pred_cf != target).numpy()
        keep = real_ok & cf_ok
        reasons = np.where(
            ~real_ok & ~cf_ok,
            "real and counterfactual misclassified",
            np.where(~real_ok, "real misclassified", np.where(~cf_ok, "counterfactual misclassified", "")),
        )
    dropped = _drop_table(np.flatnonzero(~keep), target, pred_real, cf_target, pred_cf, reasons)
    kept = np.flatnonzero(keep)
    if filter_pairs and n and not len(kept):
        counts = pd.Series(reasons).value_counts().to_dict()
        warnings.warn(
            f"filter_pairs=True kept no pair of the {n}: the classifier gets no real image and its counterfactual "
            f"both right ({counts}); every table is empty (see dropped). Check the model and the targets, or score "
            "all pairs with filter_pairs=False",
            UserWarning,
            stacklevel=4,
        )
    kept_t = torch.as_tensor(kept)
    kept_d = kept_t.to(device)
    return Prepared(
        kept=kept,
        real=images[kept_t],
        counterfactual=counterfactuals[kept_t],
        difference=images[kept_t] - counterfactuals[kept_t],
        magnitudes=maps[kept_t].abs(),
        target=target[kept_t],
        baseline=Baseline(real=p_real[kept_d], counterfactual=p_cf[kept_d]),
        dropped=dropped,
        channels=channels,
        batch_size=batch_size,
        feed=feed,
        keys=[keys[i] for i in kept],
        memory=memory,
    )
