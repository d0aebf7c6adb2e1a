"""Batched hybrid scoring across strategies, and the scores known without a forward pass.

Score of a hybrid ``h``: ``p(y | h) - p(y | x')`` with ``y`` the real class and ``p`` the
model's class probabilities (softmax, or sigmoid for a single-logit model:
`chanstat.tensors.class_probabilities`); the empty mask gives 0 and the full mask
``p(y | x) - p(y | x')``.

Work is skipped wherever the answer is known:

- steps whose closed mask equals the previous step's share its result (`chanstat.dacscore.adaptive`);
- empty masks score 0 and full masks (of strategies that paste every channel) score the real
  image, with no forward pass;
- curves whose channels are identical in ``x`` and ``x'`` paste nothing and score 0;
- empty and full mask *planes* skip the blur (they are their own blur).

The remaining hybrids -- of every sample, strategy and channel of a chunk -- go through the
model together in batches of ``batch_size`` (`score_requests`), built directly in the input
layout the model runs fastest on (`input_memory_format`) and cast to the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from chanstat.dacscore.masks import Items, MaskLayout
from chanstat.dacscore.morphology import GaussianBlur
from chanstat.tensors import class_probabilities

#: input elements per chunk of samples whose masks are built at once (bounds device memory)
CHUNK_ELEMENTS = 2**24


def samples_per_chunk(elements_per_image: int, planes_per_sample: int = 1) -> int:
    """Samples per chunk: closed rank maps, images and differences of about ``CHUNK_ELEMENTS`` each.

    ``planes_per_sample`` is the number of closed map planes of all strategies together, in
    units of one image (e.g. aggregate 1/C, single_channel 1).
    """
    return int(max(1, CHUNK_ELEMENTS // max(1, elements_per_image * planes_per_sample)))


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

    def __getitem__(self, part) -> "Baseline":
        return Baseline(real=self.real[part], counterfactual=self.counterfactual[part])


@dataclass
class ModelInput:
    """How batches are fed to the model: device, memory layout and floating dtype."""

    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    dtype: torch.dtype = torch.float32

    def __call__(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float32) of a float32 batch on ``device``."""
        batch = batch.contiguous(memory_format=self.memory_format)
        if batch.dtype != self.dtype:
            batch = batch.to(self.dtype)
        return class_probabilities(model(batch))


def batch_probabilities(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int, feed: ModelInput
) -> torch.Tensor:
    """Class probabilities of ``images`` (N, C, H, W) in batches moved to the model, shape (N, n_classes)."""
    out = [
        feed(model, images[start : start + batch_size].to(feed.device)) for start in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros((0, 0), device=feed.device)


def input_memory_format(
    model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.memory_format:
    """The layout hybrids are built in: ``channels_last`` where it is safe and pays.

    On the CPU, oneDNN convolutions run several times faster on channels-last input (about
    2-3x for the reference VGG); on CUDA, cuDNN prefers it for half precision and tensor
    cores. It is used only if the model accepts it and gives the same probabilities (to 1e-4)
    on ``images`` as with contiguous input; models that reshape their input with ``view``
    fail the probe and keep the contiguous layout. On CUDA in float32 it gains nothing, so
    contiguous is kept there.
    """
    if images.ndim != 4 or len(images) == 0:
        return torch.contiguous_format
    if images.device.type == "cuda" and dtype == torch.float32 and not torch.is_autocast_enabled("cuda"):
        return torch.contiguous_format
    if images.device.type not in ("cpu", "cuda"):
        return torch.contiguous_format
    images = images.to(dtype)
    try:
        plain = class_probabilities(model(images))
        last = class_probabilities(model(images.contiguous(memory_format=torch.channels_last)))
    except (RuntimeError, ValueError):
        return torch.contiguous_format
    if last.shape != plain.shape or not torch.allclose(last, plain, atol=1e-4, rtol=0):
        return torch.contiguous_format
    return torch.channels_last


def inert_curves(layout: MaskLayout, difference: torch.Tensor) -> np.ndarray:
    """Curves that paste nothing (their channels are identical in ``x`` and ``x'``), shape (N, K)."""
    n = difference.shape[0]
    if layout.strategy.curve_per_plane:
        return (difference.abs().amax(dim=(2, 3)) == 0).cpu().numpy()  # (N, C) = (N, K)
    return np.broadcast_to(
        (difference.abs().reshape(n, -1).amax(dim=1) == 0).cpu().numpy()[:, None], (n, layout.n_curves)
    ).copy()


def known_scores(
    layout: MaskLayout,
    inert: np.ndarray,
    real_gain: np.ndarray,
    real_prediction: np.ndarray,
    counterfactual_prediction: np.ndarray,
    full: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and predictions known without a forward pass, shape (N, K, S); NaN / -1 elsewhere.

    Empty masks and inert curves: 0 and the counterfactual's prediction; full masks of
    strategies that paste every channel: the real image's gain and prediction; full masks of
    the other strategies: ``full`` = (gain, prediction) per sample and curve, shape (N, K)
    each, when given (a full ``single_channel`` mask is the channel coalition ``{k}``,
    `chanstat.dacscore.coalitions`).
    """
    counts = layout.counts
    score = np.full(counts.shape, np.nan)
    prediction = np.full(counts.shape, -1, dtype=np.int64)
    empty = (counts == 0) | inert[..., None]
    score[empty] = 0.0
    prediction[empty] = np.broadcast_to(counterfactual_prediction[:, None, None], counts.shape)[empty]
    is_full = (counts == layout.mask_elements) & ~inert[..., None]
    if layout.full_mask_is_real:
        score[is_full] = np.broadcast_to(real_gain[:, None, None], counts.shape)[is_full]
        prediction[is_full] = np.broadcast_to(real_prediction[:, None, None], counts.shape)[is_full]
    elif full is not None:
        score[is_full] = np.broadcast_to(full[0][:, :, None], counts.shape)[is_full]
        prediction[is_full] = np.broadcast_to(full[1][:, :, None], counts.shape)[is_full]
    return score, prediction


@dataclass
class Chunk:
    """The tensors of a chunk of samples on the model's device."""

    counterfactual: torch.Tensor  # (n, C, H, W)
    difference: torch.Tensor  # real - counterfactual
    target: torch.Tensor  # (n,), int64
    baseline: Baseline


def score_requests(
    model: torch.nn.Module,
    layouts: list[MaskLayout],
    requests: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    chunk: Chunk,
    blur: GaussianBlur,
    batch_size: int,
    feed: ModelInput,
    bar: tqdm | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Score the requested hybrids of several layouts, mixing them in shared forward passes.

    Parameters
    ----------
    layouts : the masks of each strategy, for the same samples.
    requests : per layout, ``(sample, curve, step)`` int arrays of equal length.
    chunk : counterfactuals, differences, targets and baselines of those samples.
    batch_size : hybrids per forward pass, whatever layouts they come from.

    Returns
    -------
    list of (score, prediction) per layout, aligned with its requests.
    """
    which = (
        np.concatenate([np.full(len(r[0]), i, dtype=np.int64) for i, r in enumerate(requests)])
        if requests
        else np.zeros(0, np.int64)
    )
    sample = np.concatenate([r[0] for r in requests]) if requests else np.zeros(0, np.int64)
    curve = np.concatenate([r[1] for r in requests]) if requests else np.zeros(0, np.int64)
    step = np.concatenate([r[2] for r in requests]) if requests else np.zeros(0, np.int64)
    # items of one layout, sample and curve next to each other: masks and hybrids are built per run
    order = np.lexsort((step, curve, sample, which))
    score = np.zeros(len(order))
    prediction = np.zeros(len(order), dtype=np.int64)
    device = chunk.counterfactual.device
    image_shape = tuple(chunk.counterfactual.shape[1:])
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        batch = torch.empty(
            (len(picked), *image_shape), dtype=torch.float32, device=device, memory_format=feed.memory_format
        )
        bounds = np.r_[0, np.flatnonzero(np.diff(which[picked])) + 1, len(picked)]
        for first, last in zip(bounds[:-1], bounds[1:]):
            rows = picked[first:last]
            layout = layouts[int(which[rows[0]])]
            items = Items(sample[rows], curve[rows], step[rows], device)
            weights = layout.smoothed(layout.masks(items), items, blur)
            layout.hybrids(weights, items, chunk.counterfactual, chunk.difference, out=batch[first:last])
            del weights
        probabilities = feed(model, batch)
        index = torch.as_tensor(sample[picked], device=device)
        y = chunk.target[index]
        gain = probabilities[torch.arange(len(picked), device=device), y] - chunk.baseline.counterfactual[index, y]
        score[picked] = gain.cpu().numpy()
        prediction[picked] = probabilities.argmax(dim=1).cpu().numpy()
        if bar is not None:
            bar.update(len(picked))
    out, offset = [], 0
    for r in requests:
        out.append((score[offset : offset + len(r[0])], prediction[offset : offset + len(r[0])]))
        offset += len(r[0])
    return out
