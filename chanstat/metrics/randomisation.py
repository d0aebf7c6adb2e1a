"""Model-parameter randomisation sanity check (Adebayo et al., "Sanity checks for saliency
maps", NeurIPS 2018), cascading from the top layer down, per channel and overall.

A map that explains the *model* must change when the model's weights are destroyed. The check
re-initialises the layers one after another, starting at the output (top) and keeping the
earlier randomisations (cascading), recomputes the maps after every layer and reports the
Spearman rank correlation between each sample's original and randomised map. High
correlations that survive randomising most of the network mean the method shows the image
(edges, intensity), not what the model learned.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn
from tqdm.auto import tqdm

from chanstat.metrics._common import view_flat, views
from chanstat.tensors import as_images, as_target, channel_names, transform_maps


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers with a weight matrix/kernel, top (output) first.

    A layer counts when it has ``reset_parameters`` and a ``weight`` of two or more
    dimensions (convolutions, linear layers); normalisation layers are left alone.
    """
    found = [
        (name, m)
        for name, m in model.named_modules()
        if name
        and hasattr(m, "reset_parameters")
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and m.weight.ndim >= 2
    ]
    return list(reversed(found))


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of every row pair of (N, E) arrays (average ranks for ties);
    NaN where a row is constant."""
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _method_fn(method, method_options: dict) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(method):
        return lambda model, x, y: method(model, x, y, **method_options)
    if isinstance(method, str):
        from chanstat.attribution import attribute

        return lambda model, x, y: attribute(model, x, y, method, **method_options)
    raise TypeError(
        f"method must be a registered method name or a callable (model, images, target) -> maps; got {type(method).__name__}"
    )


def randomisation_check(
    model: nn.Module,
    images,
    target,
    method: str | Callable,
    layers: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    transform: str = "absolute",
    method_options: dict | None = None,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Cascading parameter randomisation, with per-channel rank correlations.

    Parameters
    ----------
    model : classifier; it is deep-copied (the original is never changed) and run in eval mode.
    images : (N, C, H, W) images; target : class index or (N,) indices explained.
    method : a registered attribution method name (run through
        :func:`chanstat.attribution.attribute` with ``method_options``; methods that need
        counterfactuals get them via ``method_options``) or a callable
        ``(model, images, target) -> maps`` returning (N, C, H, W) or (N, 1, H, W).
    layers : names of the layers to randomise, in the order given (default: every
        conv/linear layer, top first — :func:`randomisable_layers`).
    channels : channel names (default ``"0"``, ``"1"``, ...).
    transform : compare ``|map|`` (``"absolute"``, the usual visualisation; default), the positive
        part (``"positive"``) or the signed maps (``"signed"``).
    seed : seeds the re-initialisations (layer ``i`` uses ``seed + i``).

    Returns
    -------
    pandas.DataFrame
        One row per (sample, layer step, view): ``sample``, ``layer_index`` (1 = only the top
        layer randomised, 2 = the top two, ...), ``layer`` (name of the layer randomised at
        that step), ``channel`` (``"all"`` or a channel name), ``channel_resolved``,
        ``spearman`` (rank correlation of original and randomised map; NaN for a constant map).
    """
    if not isinstance(model, nn.Module):
        raise TypeError("model must be a torch.nn.Module")
    x = as_images(images, "images", allow_empty=True)
    n, c, _, _ = x.shape
    y = as_target(target, n)
    names = channel_names(channels, c)
    fn = _method_fn(method, dict(method_options or {}))
    from chanstat.models.adapter import as_model

    work = as_model(copy.deepcopy(model)).eval()
    available = randomisable_layers(work.model)  # the user's own layer names
    if layers is None:
        chosen = available
    else:
        lookup = dict(work.model.named_modules())
        unknown = [name for name in layers if name not in lookup]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; randomisable layers are {[nm for nm, _ in available]}")
        chosen = [(name, lookup[name]) for name in layers]
    if not chosen:
        raise ValueError("model has no layers to randomise")

    def compute(m: nn.Module) -> torch.Tensor:
        maps = fn(m, x, y)
        maps = as_images(maps, "maps", allow_empty=True).cpu()
        if maps.shape[0] != n or maps.shape[2:] != x.shape[2:] or maps.shape[1] not in (1, c):
            raise ValueError(f"method returned maps of shape {tuple(maps.shape)} for images {tuple(x.shape)}")
        return transform_maps(maps, transform)

    original = compute(work)
    resolved = original.shape[1] == c
    vws = views(c, names)
    flat_orig = {name: view_flat(original, ch, c).double().numpy() for name, ch in vws}
    rows = []
    for step, (layer_name, module) in enumerate(
        tqdm(chosen, desc="randomise layers", disable=not progress, leave=False), 1
    ):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + step)
            module.reset_parameters()
        randomised = compute(work)
        for name, ch in vws:
            rho = _spearman_rows(flat_orig[name], view_flat(randomised, ch, c).double().numpy())
            rows.append(
                pd.DataFrame(
                    dict(
                        sample=np.arange(n),
                        layer_index=step,
                        layer=layer_name,
                        channel=name,
                        channel_resolved=resolved,
                        spearman=rho,
                    )
                )
            )
    return pd.concat(rows, ignore_index=True)
