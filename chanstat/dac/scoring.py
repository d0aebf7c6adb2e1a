"""Batched hybrid scoring, curve areas and the optimal / minimal step of a DAC curve.

Score of a hybrid ``h``: ``softmax(f(h))[y] - softmax(f(x'))[y]`` with ``y`` the real class;
the empty mask gives 0 and the full mask ``softmax(f(x))[y] - softmax(f(x'))[y]``.

Work is skipped wherever the answer is known:

- steps whose closed mask equals the previous step's (nested masks are equal exactly when
  they have as many elements on) share its forward pass;
- empty masks score 0 and full masks (of strategies that paste every channel) score the real
  image, with no forward pass;
- curves whose channels are identical in ``x`` and ``x'`` paste nothing and score 0;
- empty and full mask *planes* skip the blur (they are their own blur).

The remaining hybrids go through the model in large batches under ``torch.inference_mode``,
built directly in the input layout the model runs fastest on (`input_memory_format`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from chanstat.dac.masks import Items, MaskLayout
from chanstat.dac.morphology import GaussianBlur

#: mask-size grid the per-sample curves are interpolated onto before the trapezoid
GRID_POINTS = 1001


#: input elements per chunk of samples whose masks are built at once (bounds device memory)
CHUNK_ELEMENTS = 2**24


def samples_per_chunk(elements_per_image: int, curves_per_sample: int = 1) -> int:
    """Samples per chunk: closed rank maps, images and differences of about ``CHUNK_ELEMENTS`` each."""
    return int(max(1, CHUNK_ELEMENTS // max(1, elements_per_image * curves_per_sample)))


def default_batch_size(device: torch.device, elements_per_image: int) -> int:
    """Hybrids per forward pass: about 655 k input elements on the CPU (32 images of
    5 x 64 x 64; larger batches fall out of cache and run slower there), 16 M on a GPU
    (launch-bound below)."""
    budget = 2**24 if torch.device(device).type == "cuda" else 655_360
    return int(max(1, min(4096, budget // max(1, elements_per_image))))


@dataclass
class Baseline:
    """Class probabilities of the real images and their counterfactuals, shape (N, n_classes)."""

    real: torch.Tensor
    counterfactual: torch.Tensor

    @property
    def real_prediction(self) -> torch.Tensor:
        return self.real.argmax(dim=1)

    @property
    def counterfactual_prediction(self) -> torch.Tensor:
        return self.counterfactual.argmax(dim=1)


def class_probabilities(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int, device=None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """``softmax(model(images))`` in batches (each moved to ``device``), shape (N, n_classes)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device or images.device)
        logits = model(batch.contiguous(memory_format=memory_format))
        if logits.ndim != 2:
            raise ValueError(f"model must return logits of shape (batch, n_classes); got {tuple(logits.shape)}")
        out.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(out) if out else torch.zeros((0, 0), device=device or images.device)


def input_memory_format(model: torch.nn.Module, images: torch.Tensor) -> torch.memory_format:
    """The layout hybrids are built in: ``channels_last`` where it is safe and pays.

    On the CPU, oneDNN convolutions run several times faster on channels-last input (about
    2-3x for the reference VGG). It is used only if the model accepts it and gives the same
    probabilities (to 1e-4) on ``images`` as with contiguous input; models that reshape their
    input with ``view`` fail the probe and keep the contiguous layout. On GPUs float32
    convolutions gain nothing from it, so contiguous is kept there.
    """
    if images.device.type != "cpu" or images.ndim != 4 or len(images) == 0:
        return torch.contiguous_format
    try:
        plain = torch.softmax(model(images).float(), dim=1)
        last = torch.softmax(model(images.contiguous(memory_format=torch.channels_last)).float(), dim=1)
    except RuntimeError:
        return torch.contiguous_format
    if last.shape != plain.shape or not torch.allclose(last, plain, atol=1e-4, rtol=0):
        return torch.contiguous_format
    return torch.channels_last


@dataclass
class CurveScores:
    """Scores and hybrid predictions of every step, shape (N, K, S)."""

    score: np.ndarray
    prediction: np.ndarray
    n_forward: int


def plan_forward_passes(layout: MaskLayout) -> tuple[np.ndarray, np.ndarray]:
    """Which steps need a forward pass, and which step each step takes its result from.

    Returns
    -------
    needed : numpy.ndarray, shape (N, K, S), bool
        First step of every distinct, non-empty mask (and not a full mask that pastes the
        whole real image).
    source : numpy.ndarray, shape (N, K, S), int
        The first step with the same mask as step ``s``.
    """
    counts = layout.counts
    n_steps = counts.shape[-1]
    changed = np.ones_like(counts, dtype=bool)
    changed[..., 1:] = counts[..., 1:] != counts[..., :-1]
    source = np.maximum.accumulate(np.where(changed, np.arange(n_steps), 0), axis=-1)
    needed = changed & (counts > 0)
    if layout.full_mask_is_real:
        needed &= counts < layout.mask_elements
    return needed, source


def score_layout(
    model: torch.nn.Module,
    layout: MaskLayout,
    counterfactual: torch.Tensor,
    difference: torch.Tensor,
    target: torch.Tensor,
    baseline: Baseline,
    blur: GaussianBlur,
    batch_size: int,
    progress: bool = False,
    description: str = "DAC",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> CurveScores:
    """Score every step of every curve of ``layout``.

    Parameters
    ----------
    model : classifier in eval mode, on the tensors' device.
    layout : the strategy's masks.
    counterfactual, difference : torch.Tensor, shape (N, C, H, W)
        ``x'`` and ``x - x'``.
    target : torch.Tensor, shape (N,), int64
        Real class ``y`` of every sample.
    baseline : probabilities of ``x`` and ``x'``.
    blur : the Gaussian applied to every closed mask.
    batch_size : hybrids per forward pass.
    memory_format : layout of the hybrid batches (see `input_memory_format`).
    """
    n, k, n_steps = layout.counts.shape
    needed, source = plan_forward_passes(layout)
    # a curve whose channels are identical in x and x' pastes nothing: every hybrid is x'
    if layout.strategy.curve_per_plane:
        inert = (difference.abs().amax(dim=(2, 3)) == 0).cpu().numpy()  # (N, C) = (N, K)
    else:
        inert = (difference.abs().reshape(n, -1).amax(dim=1) == 0).cpu().numpy()[:, None]  # (N, 1)
    needed &= ~inert[..., None]
    sample, curve, step = np.nonzero(needed)
    evaluated_score = np.zeros((n, k, n_steps))
    evaluated_prediction = np.zeros((n, k, n_steps), dtype=np.int64)
    device = counterfactual.device
    batches = range(0, len(sample), batch_size)
    for start in tqdm(batches, desc=description, disable=not progress, leave=False):
        stop = start + batch_size
        items = Items(sample[start:stop], curve[start:stop], step[start:stop], device)
        weights = layout.smoothed(layout.masks(items), items, blur)
        hybrids = layout.hybrids(weights, items, counterfactual, difference, memory_format)
        del weights
        logits = model(hybrids)
        probabilities = torch.softmax(logits.float(), dim=1)
        y = target[items.sample_t]
        rows = torch.arange(len(items), device=device)
        gain = probabilities[rows, y] - baseline.counterfactual[items.sample_t, y]
        idx = (sample[start:stop], curve[start:stop], step[start:stop])
        evaluated_score[idx] = gain.cpu().numpy()
        evaluated_prediction[idx] = probabilities.argmax(dim=1).cpu().numpy()

    # every step copies the result of the first step with the same mask
    take = np.take_along_axis
    score = take(evaluated_score, source, axis=-1)
    prediction = take(evaluated_prediction, source, axis=-1)
    src_counts = take(layout.counts, source, axis=-1)
    rows = np.arange(n)
    y = target.cpu().numpy()
    real_gain = (baseline.real[rows, y] - baseline.counterfactual[rows, y]).cpu().numpy()
    empty = (src_counts == 0) | inert[..., None]
    score[empty] = 0.0
    prediction[empty] = np.broadcast_to(baseline.counterfactual_prediction.cpu().numpy()[:, None, None], empty.shape)[empty]
    if layout.full_mask_is_real:
        full = (src_counts == layout.mask_elements) & ~inert[..., None]
        score[full] = np.broadcast_to(real_gain[:, None, None], full.shape)[full]
        prediction[full] = np.broadcast_to(baseline.real_prediction.cpu().numpy()[:, None, None], full.shape)[full]
    return CurveScores(score=score, prediction=prediction, n_forward=int(needed.sum()))


def curve_area(mask_size: np.ndarray, score: np.ndarray, grid_points: int = GRID_POINTS) -> np.ndarray:
    """DAC of each curve: trapezoid area of the score interpolated onto a common mask-size grid.

    Parameters
    ----------
    mask_size, score : numpy.ndarray, shape (..., S)
        Mask sizes non-decreasing from 0 to 1 along the last axis.
    grid_points : number of grid points in [0, 1].

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
    return np.stack([np.interp(grid, x, y) for x, y in zip(mask_size, score)]) if len(mask_size) else np.empty((0, len(grid)))


def optimal_steps(mask_size: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Step minimising ``mask_size**2 + (1 - score)**2`` (first one on ties), shape (...)."""
    return np.argmin(mask_size**2 + (1.0 - score) ** 2, axis=-1)


def minimal_steps(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """First step from which every hybrid is predicted as the real class, -1 if none.

    Parameters
    ----------
    prediction : numpy.ndarray, shape (N, K, S)
    target : numpy.ndarray, shape (N,)
    """
    correct = prediction == target[:, None, None]
    stays = np.flip(np.logical_and.accumulate(np.flip(correct, -1), axis=-1), -1)
    first = np.argmax(stays, axis=-1)
    return np.where(stays[..., -1], first, -1)
