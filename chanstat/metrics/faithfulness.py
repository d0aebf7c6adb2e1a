"""Faithfulness of attribution maps: deletion, insertion and ROAD, per channel and overall.

Each verb perturbs the images along the ranking that a map gives and records the model's
score for the target class after every step.

* ``channel = "all"``: all (channel, pixel) elements of an image are ranked together by the
  map and the top fraction is perturbed in whatever channels it falls.
* ``channel = k``: only channel k's pixels are ranked (by map plane k) and perturbed; the
  other channels stay as they are. This asks "how much of the decision rides on the
  relevant pixels of channel k?".

A channel-agnostic map (N, 1, H, W) is broadcast to every channel: ``"all"`` then perturbs a
pixel in every channel at once, and channel k uses the same plane; its rows carry
``channel_resolved = False``.

Everything is batched on the model's device: hybrids of many images, channels and steps go
through the model together, ``batch_size`` at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from chanstat.metrics._common import view_flat, views
from chanstat.metrics.imputation import noisy_linear_impute
from chanstat.models.adapter import as_model
from chanstat.tensors import ALL, as_images, as_target, channel_names, device_of

SCORES = ("probability", "logit")


@dataclass
class FaithfulnessResult:
    """What :func:`deletion`, :func:`insertion` and :func:`road` return.

    Attributes
    ----------
    summary : one row per sample and view: ``sample``, ``channel`` (``"all"`` or a channel
        name), ``channel_resolved``, [``order`` for ROAD], ``auc``, ``score_original``,
        ``score_final``.
    curves : every point: ``sample``, ``channel``, ``channel_resolved``, [``order``],
        ``fraction``, ``score``.
    """

    summary: pd.DataFrame
    curves: pd.DataFrame


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Rank of every element of each row of (B, E), 0 = largest value (ties by position)."""
    order = torch.argsort(values, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order).contiguous())
    return ranks


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = torch.nn.functional.pad(y, (radius, radius, 0, 0), mode="replicate")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = torch.nn.functional.pad(y, (0, 0, radius, radius), mode="replicate")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _baseline_fn(baseline, blur_sigma: float) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    """A function (images chunk, slice into the set) -> baseline of the same shape."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return lambda x, sl: torch.zeros_like(x)
        if baseline == "mean":
            return lambda x, sl: x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        if baseline == "blur":
            return lambda x, sl: _gaussian_blur(x, blur_sigma)
        raise ValueError(f"unknown baseline {baseline!r}; use 'zero', 'mean', 'blur', a number or a tensor")
    if isinstance(baseline, (int, float)):
        return lambda x, sl: torch.full_like(x, float(baseline))
    base = as_images(baseline if np.ndim(baseline) == 4 else np.asarray(baseline)[None], "baseline", allow_empty=True)

    def fn(x, sl):
        b = base if base.shape[0] == 1 else base[sl]
        return b.to(x.device).expand_as(x)

    return fn


def _check_inputs(model, images, maps, target, channels):
    if not isinstance(model, nn.Module):
        raise TypeError("model must be a torch.nn.Module")
    x = as_images(images, "images", allow_empty=True)
    m = as_images(maps, "maps", allow_empty=True)
    n, c, h, w = x.shape
    if m.shape[0] != n or m.shape[2:] != x.shape[2:] or m.shape[1] not in (1, c):
        raise ValueError(f"maps {tuple(m.shape)} must be (N, C, H, W) or (N, 1, H, W) for images {tuple(x.shape)}")
    t = as_target(target, n)
    names = channel_names(channels, c)
    return x, m, t, names


def _perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    names: list[str],
    fractions: np.ndarray,
    selections: Sequence[str],
    fill: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], torch.Tensor],
    per_channel: bool,
    score: str,
    batch_size: int,
    device: torch.device,
    samples: np.ndarray,
    progress: bool,
    desc: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Score of every (image, view, selection, fraction) hybrid; also the unperturbed scores.

    ``selections``: "top" perturbs the k highest-ranked elements, "bottom" the k lowest.
    ``fill(x, perturbed_mask, chunk_base_index_rows, chunk_slice)`` makes the hybrids.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n, c, h, w = images.shape
    view_list = views(c, names) if per_channel else [(ALL, None)]
    n_views, n_steps, n_sel = len(view_list), len(fractions), len(selections)
    per_image = n_views * n_steps * n_sel
    image_chunk = max(1, batch_size // per_image)
    frac_t = torch.as_tensor(fractions, device=device, dtype=torch.float64)
    e_all, e_plane = c * h * w, h * w
    k_all = torch.round(frac_t * e_all).long()
    k_plane = torch.round(frac_t * e_plane).long()
    is_top = torch.as_tensor([s == "top" for s in selections], device=device)
    channel_ids = torch.as_tensor([-1 if ch is None else ch for _, ch in view_list], device=device)
    out = np.empty((n, n_views, n_sel, n_steps))
    original = np.empty(n)
    resolved = maps.shape[1] == c

    adapter = as_model(model)

    def model_score(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = adapter(x)
        if score == "probability":
            logits = torch.softmax(logits, dim=1)
        return logits.gather(1, y[:, None]).squeeze(1)

    bar = tqdm(total=n * per_image, desc=desc, disable=not progress, leave=False)
    with torch.no_grad():
        for start in range(0, n, image_chunk):
            sl = slice(start, min(n, start + image_chunk))
            x = images[sl].to(device)
            m = maps[sl].to(device)
            y = target[sl].to(device)
            b = x.shape[0]
            original[sl] = model_score(x, y).double().cpu().numpy()
            ranks_all = _ranks(view_flat(m, None, c))  # (b, C*H*W)
            planes = m.expand(-1, c, -1, -1) if m.shape[1] == 1 else m
            ranks_plane = _ranks(planes.reshape(b * c, e_plane)).view(b, c, e_plane)
            grid = torch.stack(
                torch.meshgrid(
                    torch.arange(b, device=device),
                    torch.arange(n_views, device=device),
                    torch.arange(n_sel, device=device),
                    torch.arange(n_steps, device=device),
                    indexing="ij",
                ),
                dim=-1,
            ).reshape(-1, 4)
            for j0 in range(0, grid.shape[0], batch_size):
                jobs = grid[j0 : j0 + batch_size]
                img_i, view_i, sel_i, step_i = jobs.unbind(1)
                top = is_top[sel_i]
                ra = ranks_all[img_i]
                ka = k_all[step_i][:, None]
                mask_all = torch.where(top[:, None], ra < ka, ra >= e_all - ka).view(-1, c, h, w)
                rp = ranks_plane[img_i]
                kp = k_plane[step_i][:, None, None]
                mask_plane = torch.where(top[:, None, None], rp < kp, rp >= e_plane - kp)
                only_k = torch.arange(c, device=device)[None, :] == channel_ids[view_i][:, None]
                mask_plane = (mask_plane & only_k[:, :, None]).view(-1, c, h, w)
                mask = torch.where((channel_ids[view_i] < 0)[:, None, None, None], mask_all, mask_plane)
                hybrid = fill(x[img_i], mask, img_i, sl)
                s = model_score(hybrid, y[img_i]).double().cpu().numpy()
                out[(img_i + start).cpu().numpy(), view_i.cpu().numpy(), sel_i.cpu().numpy(), step_i.cpu().numpy()] = s
                bar.update(len(jobs))
    bar.close()
    ii, vv, ss, ff = np.meshgrid(np.arange(n), np.arange(n_views), np.arange(n_sel), np.arange(n_steps), indexing="ij")
    curves = pd.DataFrame(
        dict(
            sample=samples[ii.ravel()],
            channel=np.asarray([name for name, _ in view_list], dtype=object)[vv.ravel()],
            channel_resolved=resolved,
            selection=np.asarray(list(selections), dtype=object)[ss.ravel()],
            fraction=fractions[ff.ravel()],
            score=out.ravel(),
        )
    )
    return curves, original


def _summarise(
    curves: pd.DataFrame, original: np.ndarray, samples: np.ndarray, by: list[str], normalise: bool
) -> pd.DataFrame:
    rows = []
    orig = dict(zip(samples.tolist(), original.tolist()))
    for key, grp in curves.groupby(by, sort=False):
        f = grp["fraction"].to_numpy()
        s = grp["score"].to_numpy()
        span = f[-1] - f[0]
        if len(f) == 1:
            auc = float(s[0])
        else:
            auc = float(np.trapezoid(s, f) / (span if normalise else 1.0))
        row = dict(zip(by, key))
        row.update(auc=auc, score_original=orig[row["sample"]], score_final=float(s[-1]))
        rows.append(row)
    return pd.DataFrame(rows)


def _samples(samples, n: int) -> np.ndarray:
    if samples is None:
        return np.arange(n)
    arr = np.asarray(samples)
    if arr.shape != (n,):
        raise ValueError(f"samples must have shape ({n},); got {arr.shape}")
    if len(np.unique(arr)) != n:
        raise ValueError("samples must be unique ids")
    return arr


def _deletion_like(
    mode,
    model,
    images,
    maps,
    target,
    steps,
    baseline,
    blur_sigma,
    channels,
    per_channel,
    score,
    batch_size,
    device,
    samples,
    progress,
) -> FaithfulnessResult:
    x, m, t, names = _check_inputs(model, images, maps, target, channels)
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    dev = device_of(device, model)
    ids = _samples(samples, x.shape[0])
    base_of = _baseline_fn(baseline, blur_sigma)
    cache: dict[int, torch.Tensor] = {}

    def fill(xb, mask, img_i, sl):
        key = sl.start
        if key not in cache:
            cache.clear()
            cache[key] = base_of(x[sl].to(dev), sl)
        base = cache[key][img_i]
        return torch.where(mask, base, xb) if mode == "deletion" else torch.where(mask, xb, base)

    fractions = np.linspace(0.0, 1.0, steps + 1)
    table, original = _perturbation_curves(
        model, x, m, t, names, fractions, ["top"], fill, per_channel, score, batch_size, dev, ids, progress, mode
    )
    table = table.drop(columns="selection")
    summary = _summarise(table, original, ids, ["sample", "channel", "channel_resolved"], normalise=False)
    return FaithfulnessResult(summary, table)


def deletion(
    model: nn.Module,
    images,
    target,
    maps,
    steps: int = 20,
    baseline="zero",
    blur_sigma: float = 5.0,
    channels: Sequence[str] | None = None,
    per_channel: bool = True,
    score: str = "probability",
    batch_size: int = 256,
    device=None,
    samples=None,
    progress: bool = False,
) -> FaithfulnessResult:
    """Deletion curves: remove the most relevant elements first and watch the score fall.

    At step ``j`` the ``round(j / steps * E)`` highest-ranked elements of a view are replaced
    by the baseline (E = C*H*W for ``"all"``, H*W for one channel) and the model scores the
    hybrid. A faithful map makes the score drop fast: **lower AUC is better**.

    Parameters
    ----------
    model : classifier returning logits (N, n_classes); used in its current mode (call
        ``model.eval()`` first) on its own device unless ``device`` is given.
    images : (N, C, H, W) images.
    maps : (N, C, H, W) or (N, 1, H, W) attribution maps; higher = more relevant.
    target : class index (int) or one per image (N,); whose score is tracked.
    steps : number of removal steps (``steps + 1`` points including the intact image).
    baseline : what removed elements become: ``"zero"``, ``"mean"`` (per image and channel),
        ``"blur"`` (Gaussian, ``blur_sigma`` pixels), a number, or a tensor (N|1, C, H, W).
    channels : channel names (default ``"0"``, ``"1"``, ...).
    per_channel : also compute one curve per channel (only that channel perturbed).
    score : ``"probability"`` (softmax of the target) or ``"logit"``.
    batch_size : hybrids per forward pass.
    samples : ids for the ``sample`` column (default 0..N-1).

    Returns
    -------
    FaithfulnessResult
        summary: ``sample``, ``channel`` (``"all"`` or a channel name), ``channel_resolved``,
        ``auc`` (trapezoid of score over the removed fraction in [0, 1]), ``score_original``
        (intact image), ``score_final`` (everything removed).
        curves: ``sample``, ``channel``, ``channel_resolved``, ``fraction``, ``score``.
    """
    return _deletion_like(
        "deletion",
        model,
        images,
        maps,
        target,
        steps,
        baseline,
        blur_sigma,
        channels,
        per_channel,
        score,
        batch_size,
        device,
        samples,
        progress,
    )


def insertion(
    model: nn.Module,
    images,
    target,
    maps,
    steps: int = 20,
    baseline="blur",
    blur_sigma: float = 5.0,
    channels: Sequence[str] | None = None,
    per_channel: bool = True,
    score: str = "probability",
    batch_size: int = 256,
    device=None,
    samples=None,
    progress: bool = False,
) -> FaithfulnessResult:
    """Insertion curves: start from the baseline and put the most relevant elements back first.

    The mirror of :func:`deletion` (same parameters); for channel ``k`` only channel k starts
    from the baseline and is filled in, the other channels stay intact. A faithful map makes
    the score rise fast: **higher AUC is better**. The default baseline is a blurred image
    (as in RISE), so the starting point keeps coarse intensity but no fine structure.
    """
    return _deletion_like(
        "insertion",
        model,
        images,
        maps,
        target,
        steps,
        baseline,
        blur_sigma,
        channels,
        per_channel,
        score,
        batch_size,
        device,
        samples,
        progress,
    )


def road(
    model: nn.Module,
    images,
    target,
    maps,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "both",
    noise: float = 0.01,
    channels: Sequence[str] | None = None,
    per_channel: bool = True,
    score: str = "probability",
    batch_size: int = 128,
    device=None,
    samples=None,
    seed: int = 0,
    tol: float = 1e-5,
    progress: bool = False,
) -> FaithfulnessResult:
    """ROAD: remove and debias (Rong et al., ICML 2022), per channel and overall.

    For each fraction ``f`` the ``round(f * E)`` most relevant (``"morf"``) or least relevant
    (``"lerf"``) elements of a view are removed and filled by the noisy linear imputer
    (:func:`chanstat.metrics.imputation.noisy_linear_impute`: each removed pixel the weighted
    mean of its 8 neighbours within its own channel plane, solved jointly by conjugate
    gradients on the device, plus N(0, ``noise``^2)). A faithful map drops the score fast
    under MoRF (low AUC) and keeps it under LeRF (high AUC); LeRF AUC - MoRF AUC summarises both.

    Parameters
    ----------
    model, images, target, maps, channels, per_channel, score, batch_size, device, samples,
    progress : as in :func:`deletion`.
    fractions : removed fractions, each in (0, 1].
    order : ``"morf"``, ``"lerf"`` or ``"both"``.
    noise : standard deviation of the imputation noise, image units.
    seed : seeds the imputation noise.
    tol : relative residual at which the conjugate gradients stop.

    Returns
    -------
    FaithfulnessResult
        summary: ``sample``, ``channel``, ``channel_resolved``, ``order``, ``auc`` (trapezoid
        of score over ``fractions`` divided by their span: the mean score along the curve),
        ``score_original``, ``score_final`` (at the largest fraction).
        curves: ``sample``, ``channel``, ``channel_resolved``, ``order``, ``fraction``, ``score``.
    """
    x, m, t, names = _check_inputs(model, images, maps, target, channels)
    fr = np.asarray(sorted(float(f) for f in fractions))
    if fr.size == 0 or fr.min() <= 0 or fr.max() > 1:
        raise ValueError(f"fractions must lie in (0, 1]; got {list(fractions)}")
    orders = {"both": ["morf", "lerf"], "morf": ["morf"], "lerf": ["lerf"]}.get(order)
    if orders is None:
        raise ValueError(f"order must be 'morf', 'lerf' or 'both'; got {order!r}")
    dev = device_of(device, model)
    ids = _samples(samples, x.shape[0])
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))

    def fill(xb, mask, img_i, sl):
        return noisy_linear_impute(xb, mask, noise=noise, generator=gen, tol=tol)

    selections = ["top" if o == "morf" else "bottom" for o in orders]
    table, original = _perturbation_curves(
        model, x, m, t, names, fr, selections, fill, per_channel, score, batch_size, dev, ids, progress, "road"
    )
    table["selection"] = table["selection"].map({"top": "morf", "bottom": "lerf"})
    table = table.rename(columns={"selection": "order"})
    summary = _summarise(table, original, ids, ["sample", "channel", "channel_resolved", "order"], normalise=True)
    return FaithfulnessResult(summary, table)
