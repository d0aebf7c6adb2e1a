"""Channel Shapley values: how much of the decision change does each channel carry?

A coalition ``S`` of players (channels, or groups of channels) is valued by the model's
probability of the target class on the hybrid ``h_S`` that takes the real image in the channels
of ``S`` and the baseline image elsewhere: ``v(S) = p(target | h_S)``. With the counterfactual as
baseline, the values of all players sum to ``p(target | x) - p(target | x')`` (efficiency).

Up to :data:`MAX_EXACT_PLAYERS` players every one of the ``2^P`` coalitions is evaluated (in
large batches on the model's device) and the values are exact:
``phi_k = sum_{S not containing k} |S|! (P - |S| - 1)! / P! * (v(S + k) - v(S))``.
The pairwise Shapley interaction index (Grabisch 1997) uses the same values:
``I_ab = sum_{S without a, b} |S|! (P - |S| - 2)! / (P - 1)! * (v(S+ab) - v(S+a) - v(S+b) + v(S))``.
Above that count, random permutations are walked player by player (Castro et al. 2009): each
permutation gives one marginal gain per player, their mean estimates the value and their
standard error goes into the ``se`` column (efficiency still holds exactly per permutation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chanstat.tensors import (
    as_images,
    as_target,
    channel_names,
    device_of,
    evaluating,
    model_dtype,
)

#: Largest number of players valued exactly (2^10 = 1024 forward passes per image); above it the
#: permutation estimator runs.
MAX_EXACT_PLAYERS = 10
#: Permutations per image of the sampled estimator when ``n_permutations`` is not given.
DEFAULT_PERMUTATIONS = 128
BASELINES = ("counterfactual", "zero", "mean", "blur")
VALUE_COLUMNS = ["sample", "channel", "shapley", "se", "baseline"]
TOTAL_COLUMNS = ["sample", "target", "baseline", "p_real", "p_counterfactual", "total"]
INTERACTION_COLUMNS = ["sample", "channel_a", "channel_b", "interaction", "baseline"]
# hybrids per forward pass when batch_size is not given: ~655 k input elements on a CPU, 16 M on a GPU
_CPU_ELEMENTS, _GPU_ELEMENTS = 655_360, 2**24


@dataclass
class ChannelShapleyResult:
    """What :func:`channel_shapley` returns (no torch objects inside).

    Attributes
    ----------
    values : pandas.DataFrame
        One row per sample and player: ``sample`` (int, input row), ``channel`` (player name:
        the channel, or the group's name), ``shapley`` (float64, probability units),
        ``se`` (standard error of the permutation estimate; 0.0 for exact values),
        ``baseline`` (what stood in for the absent channels).
    total : pandas.DataFrame
        One row per sample: ``sample``, ``target`` (class whose probability is decomposed),
        ``baseline``, ``p_real`` = ``p(target | x)``, ``p_counterfactual`` = ``p(target | b)``
        with ``b`` the baseline image (the counterfactual only when ``baseline`` is
        ``"counterfactual"``), and ``total = p_real - p_counterfactual`` (= sum of the values).
    interactions : pandas.DataFrame
        ``sample, channel_a, channel_b, interaction, baseline``: pairwise Shapley interaction
        indices, one row per unordered player pair (a before b in player order). Empty (with
        these columns) unless ``interactions=True``.
    players : list of str
        Player names in order.
    groups : dict of str to list of str
        Channels of each player.
    settings : dict
        ``baseline``, ``estimator`` (``"exact"`` or ``"permutation"``), ``n_permutations``,
        ``coalition_values`` (values used: ``N * 2^P`` exact), ``forward_passes`` (hybrids that
        went through the model; fewer where coalitions were known, see Notes), ``batch_size``,
        ``device``, ``seed``.
    """

    values: pd.DataFrame
    total: pd.DataFrame
    interactions: pd.DataFrame
    players: list[str]
    groups: dict[str, list[str]]
    settings: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Mean value per player over samples: ``channel, shapley, sd, n, share_of_total``
        (``share_of_total`` = mean value / mean total)."""
        out = (
            self.values.groupby("channel", sort=False)["shapley"].agg(shapley="mean", sd="std", n="count").reset_index()
        )
        mean_total = float(self.total["total"].mean()) if len(self.total) else float("nan")
        out["share_of_total"] = out["shapley"] / mean_total if mean_total != 0 else np.nan
        return out


# --------------------------------------------------------------------------- players and coalitions


def _players(names: list[str], groups: Mapping[str, Sequence[str | int]] | None) -> tuple[list[str], list[list[int]]]:
    """Player names and the channel indices of each; channels outside every group play alone."""
    if groups is None:
        return list(names), [[k] for k in range(len(names))]
    if not isinstance(groups, Mapping):
        raise TypeError(f"groups must map a group name to its channels; got {type(groups).__name__}")
    owner: dict[int, str] = {}
    members: dict[str, list[int]] = {}
    for group, chans in groups.items():
        if isinstance(chans, (str, int)):
            chans = [chans]
        idx = []
        for ch in chans:
            k = ch if isinstance(ch, (int, np.integer)) else (names.index(str(ch)) if str(ch) in names else None)
            if k is None or not 0 <= int(k) < len(names):
                raise ValueError(f"groups[{group!r}] names channel {ch!r}, which is not among channels {names}")
            if int(k) in owner:
                raise ValueError(
                    f"channel {names[int(k)]!r} is in groups {owner[int(k)]!r} and {group!r}; groups must not overlap"
                )
            owner[int(k)] = str(group)
            idx.append(int(k))
        if not idx:
            raise ValueError(f"groups[{group!r}] holds no channel")
        if str(group) in names and names.index(str(group)) not in idx:
            raise ValueError(f"group name {group!r} is also the name of another channel; rename the group")
        members[str(group)] = idx
    players, indices, seen = [], [], set()
    for k, name in enumerate(names):  # players in channel order: a group sits at its first channel
        if k not in owner:
            players.append(name)
            indices.append([k])
        elif owner[k] not in seen:
            seen.add(owner[k])
            players.append(owner[k])
            indices.append(members[owner[k]])
    return players, indices


def _channel_masks(coalitions: np.ndarray, indices: list[list[int]], n_channels: int) -> np.ndarray:
    """Boolean channel masks (..., C) of player coalitions given as boolean arrays (..., P)."""
    member = np.zeros((len(indices), n_channels), bool)
    for p, idx in enumerate(indices):
        member[p, idx] = True
    return (coalitions.astype(np.int64) @ member.astype(np.int64)) > 0


def _all_coalitions(n_players: int) -> np.ndarray:
    """(2^P, P) booleans; row s holds the players of bitmask s (bit p = player p)."""
    s = np.arange(2**n_players)[:, None]
    return ((s >> np.arange(n_players)[None, :]) & 1).astype(bool)


# --------------------------------------------------------------------------- evaluation


def _baseline_images(baseline: str, images: torch.Tensor, counterfactuals, blur_sigma: float) -> torch.Tensor:
    if baseline == "counterfactual":
        if counterfactuals is None:
            raise ValueError(
                'baseline="counterfactual" needs counterfactuals; pass them or choose baseline="zero", "mean" or "blur"'
            )
        cf = as_images(counterfactuals, "counterfactuals")
        if cf.shape != images.shape:
            raise ValueError(
                f"counterfactuals must have the shape of images {tuple(images.shape)}; got {tuple(cf.shape)}"
            )
        return cf
    if baseline == "zero":
        return torch.zeros_like(images[:1]).expand_as(images)
    if baseline == "mean":  # the data set's mean image, one plane per channel
        return images.mean(dim=0, keepdim=True, dtype=torch.float64).float().expand_as(images)
    if baseline == "blur":
        from chanstat.dacscore import gaussian_blur

        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0; got {blur_sigma}")
        return torch.cat([gaussian_blur(images[i : i + 64], float(blur_sigma)) for i in range(0, len(images), 64)])
    raise ValueError(f"baseline must be one of {list(BASELINES)}; got {baseline!r}")


def _feed(model, probe: torch.Tensor, device: torch.device):
    """How hybrids are fed: the model's dtype, and the input layout DAC scores hybrids in
    (channels-last where the model gives the same probabilities and it pays, i.e. on CPUs),
    so both cost the same per forward pass and share remembered coalitions."""
    from chanstat.dacscore.scoring import ModelInput, input_memory_format

    dtype = model_dtype(model)
    return ModelInput(device, input_memory_format(model, probe.to(device), dtype), dtype)


def _evaluate(model, images, base, target, masks, batch_size: int, feed, memory, bar) -> tuple[np.ndarray, int]:
    """``p(target | h)`` for every image and coalition, float64 array (N, K), and the hybrids
    that went through the model (coalitions already known, or equal to another one because
    a channel is identical in the image and its baseline, are not evaluated again).

    ``masks`` is (K, C) (the same coalitions for every image) or (N, K, C).
    """
    from chanstat.dacscore.coalitions import coalition_probabilities

    probs, evaluated = coalition_probabilities(
        model, images, base, masks, batch_size=batch_size, feed=feed, memory=memory, bar=bar
    )
    if len(images) and int(target.max()) >= probs.shape[2]:
        raise ValueError(f"target holds class {int(target.max())} but the model returns {probs.shape[2]} classes")
    index = target.cpu()[:, None, None].expand(probs.shape[0], probs.shape[1], 1)
    return probs.gather(2, index)[..., 0].double().numpy(), evaluated


# --------------------------------------------------------------------------- estimators


def shapley_from_values(v: np.ndarray) -> np.ndarray:
    """Exact Shapley values from the values of all coalitions.

    Parameters
    ----------
    v : array (N, 2^P)
        ``v[:, s]`` is the value of the coalition with bitmask ``s`` (bit p = player p).

    Returns
    -------
    array (N, P), float64; rows sum to ``v[:, -1] - v[:, 0]``.
    """
    v = np.asarray(v, dtype=np.float64)
    n_players = int(round(math.log2(v.shape[1])))
    sizes = _all_coalitions(n_players).sum(axis=1)
    weight = np.array(
        [
            math.factorial(s) * math.factorial(n_players - s - 1) / math.factorial(n_players) if s < n_players else 0.0
            for s in sizes
        ]
    )
    s = np.arange(v.shape[1])
    phi = np.empty((v.shape[0], n_players))
    for p in range(n_players):
        without = s[(s >> p) & 1 == 0]
        phi[:, p] = (v[:, without | (1 << p)] - v[:, without]) @ weight[without]
    return phi


def interactions_from_values(v: np.ndarray) -> np.ndarray:
    """Pairwise Shapley interaction indices from the values of all coalitions.

    Returns an array (N, P, P), symmetric, NaN on the diagonal.
    """
    v = np.asarray(v, dtype=np.float64)
    n_players = int(round(math.log2(v.shape[1])))
    out = np.full((v.shape[0], n_players, n_players), np.nan)
    if n_players < 2:
        return out
    s = np.arange(v.shape[1])
    sizes = _all_coalitions(n_players).sum(axis=1)
    for a in range(n_players):
        for b in range(a + 1, n_players):
            rest = s[((s >> a) & 1 == 0) & ((s >> b) & 1 == 0)]
            w = np.array(
                [
                    math.factorial(z) * math.factorial(n_players - z - 2) / math.factorial(n_players - 1)
                    for z in sizes[rest]
                ]
            )
            delta = v[:, rest | (1 << a) | (1 << b)] - v[:, rest | (1 << a)] - v[:, rest | (1 << b)] + v[:, rest]
            out[:, a, b] = out[:, b, a] = delta @ w
    return out


def _permutation_coalitions(
    samples: np.ndarray, n_players: int, n_permutations: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prefix coalitions of random permutations: (N, R*(P+1), P) booleans and the orders (N, R, P)."""
    n_images = len(samples)
    orders = np.empty((n_images, n_permutations, n_players), dtype=np.int64)
    for i, sample in enumerate(samples):  # one stream per sample: its estimate does not depend on the others
        rng = np.random.default_rng([seed, int(sample)])
        orders[i] = np.argsort(rng.random((n_permutations, n_players)), axis=1)
    coalitions = np.zeros((n_images, n_permutations, n_players + 1, n_players), bool)
    for step in range(1, n_players + 1):
        coalitions[:, :, step] = coalitions[:, :, step - 1]
        np.put_along_axis(coalitions[:, :, step], orders[:, :, step - 1 : step], True, axis=2)
    return coalitions.reshape(n_images, n_permutations * (n_players + 1), n_players), orders


def _permutation_estimates(v: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean marginal gain per player and its standard error, each (N, P)."""
    n, r, p = orders.shape
    v = v.reshape(n, r, p + 1)
    gains = np.diff(v, axis=2)  # gain of the player added at each step
    per_player = np.empty_like(gains)
    np.put_along_axis(per_player, orders, gains, axis=2)
    mean = per_player.mean(axis=1)
    se = per_player.std(axis=1, ddof=1) / np.sqrt(r) if r > 1 else np.full((n, p), np.nan)
    return mean, se


# --------------------------------------------------------------------------- the verb


def channel_shapley(
    model: torch.nn.Module,
    images: Any,
    target: Any,
    *,
    counterfactuals: Any = None,
    baseline: str = "counterfactual",
    channels: Sequence[str] | None = None,
    groups: Mapping[str, Sequence[str | int]] | None = None,
    interactions: bool = False,
    batch_size: int | None = None,
    device: Any = None,
    progress: bool = False,
    n_permutations: int | None = None,
    seed: int = 0,
    blur_sigma: float = 4.0,
) -> ChannelShapleyResult:
    """Shapley values of channels (or channel groups) for the model's target-class probability.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning class scores (N, K), or one logit (N, 1) / (N,) read as a sigmoid
        for class 1. Evaluated in eval mode (its training flags are restored afterwards).
    images : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Real images ``x``.
    target : int or array-like (N,)
        Class whose probability is decomposed (usually the real class).
    counterfactuals : array (N, C, H, W), optional
        Counterfactuals ``x'``; required by ``baseline="counterfactual"``.
    baseline : {"counterfactual", "zero", "mean", "blur"}
        What stands in for the channels outside a coalition: the counterfactual; zeros; the
        mean image of ``images`` (per channel and pixel, over the N images given); or the image
        blurred by a Gaussian of ``blur_sigma`` pixels (mirrored borders). The name travels in
        every table's ``baseline`` column.
    channels : list of str, optional
        Channel names (default ``ch0, ch1, ...``).
    groups : dict of group name to channel names (or indices), optional
        Channel groups that play as one player (e.g. ``{"Brightfield": ["BF1", "BF2", "BF3"]}``);
        channels in no group play alone. Players keep channel order.
    interactions : bool
        Also compute pairwise Shapley interaction indices (exact estimator only).
    batch_size : int, optional
        Hybrids per forward pass (default from the device and image size: ~655 k input
        elements on a CPU, 16 M on a GPU).
    device : str or torch.device, optional
        Where hybrids are built and evaluated (default: the model's device; the model must be
        there already).
    progress : bool
        Show a progress bar over hybrids.
    n_permutations : int, optional
        Use the permutation estimator with this many permutations per image (``P + 1``
        forward passes each). Default: exact for at most :data:`MAX_EXACT_PLAYERS` players,
        else :data:`DEFAULT_PERMUTATIONS` permutations.
    seed : int
        Seed of the permutations (sample ``i`` draws from ``default_rng([seed, i])``).
    blur_sigma : float
        Gaussian sigma in pixels of ``baseline="blur"``.

    Returns
    -------
    ChannelShapleyResult
        ``.values`` (sample, channel, shapley, se, baseline), ``.total`` (sample, target,
        baseline, p_real, p_counterfactual, total), ``.interactions`` (sample, channel_a,
        channel_b, interaction, baseline; empty unless asked).

    Notes
    -----
    Exact cost: at most ``N * 2^P`` forward passes (32 per image for five stains); permutation
    cost: at most ``N * n_permutations * (P + 1)``. Coalitions already evaluated for the same
    model, pairs and input layout -- by an earlier call, or by `chanstat.dac` (the real image,
    the baseline and, for ``single_channel`` curves, every single channel) -- are reused, and
    coalitions whose hybrids are identical (they differ only in channels where the image
    equals its baseline) are evaluated once (`chanstat.dacscore.coalitions`). Values are
    exact to float rounding and sum to ``v(all) - v(empty)``, the model on the real image
    minus the model on the baseline.
    """
    from chanstat.dacscore.coalitions import remembered
    from chanstat.models.adapter import as_model

    model = as_model(model)
    x = as_images(images, "images")
    n, c = x.shape[:2]
    names = channel_names(channels, c)
    y = as_target(target, n)
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {list(BASELINES)}; got {baseline!r}")
    if baseline != "counterfactual" and counterfactuals is not None:
        raise ValueError(f'counterfactuals are only used by baseline="counterfactual"; got baseline={baseline!r}')
    base = _baseline_images(baseline, x, counterfactuals, blur_sigma)
    players, indices = _players(names, groups)
    n_players = len(players)
    exact = n_permutations is None and n_players <= MAX_EXACT_PLAYERS
    if n_permutations is not None and int(n_permutations) < 2:
        raise ValueError(f"n_permutations must be >= 2 (the standard error needs two); got {n_permutations}")
    if interactions and not exact:
        raise ValueError(
            f"interactions need the exact estimator (at most {MAX_EXACT_PLAYERS} players and "
            f"n_permutations=None); got {n_players} players, n_permutations={n_permutations}"
        )
    dev = device_of(device, model)
    if batch_size is None:
        budget = _GPU_ELEMENTS if dev.type == "cuda" else _CPU_ELEMENTS
        batch_size = int(max(1, min(4096, budget // max(1, x[0].numel()))))
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    batch_size = int(batch_size)

    n_perm = DEFAULT_PERMUTATIONS if n_permutations is None else int(n_permutations)  # used when not exact
    n_coalitions = 2**n_players if exact else n_perm * (n_players + 1)
    # images per chunk: coalition values, masks and values of a chunk stay ~ a few batches' worth
    chunk = max(1, min(n, (16 * batch_size) // n_coalitions))
    shared_masks = _channel_masks(_all_coalitions(n_players), indices, c) if exact else None
    phi, se = np.zeros((n, n_players)), np.zeros((n, n_players))
    passes = 0
    p_real, p_base = np.zeros(n), np.zeros(n)
    inter = np.full((n, n_players, n_players), np.nan)  # filled only when interactions are asked for
    desc = "channel Shapley" if exact else "channel Shapley (sampled)"
    with evaluating(model), tqdm(total=n * n_coalitions, desc=desc, disable=not progress, unit="hybrid") as bar:
        feed = _feed(model, x[:4], dev)
        memory = remembered(model, feed)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            if exact:
                v, done = _evaluate(model, x[lo:hi], base[lo:hi], y[lo:hi], shared_masks, batch_size, feed, memory, bar)
                passes += done
                phi[lo:hi] = shapley_from_values(v)
                p_real[lo:hi], p_base[lo:hi] = v[:, -1], v[:, 0]
                if interactions:
                    inter[lo:hi] = interactions_from_values(v)
            else:
                coalitions, orders = _permutation_coalitions(np.arange(lo, hi), n_players, n_perm, seed)
                masks = _channel_masks(coalitions, indices, c)
                v, done = _evaluate(model, x[lo:hi], base[lo:hi], y[lo:hi], masks, batch_size, feed, memory, bar)
                passes += done
                phi[lo:hi], se[lo:hi] = _permutation_estimates(v, orders)
                p_real[lo:hi], p_base[lo:hi] = v[:, n_players], v[:, 0]  # first permutation's full and empty sets

    sample = np.arange(n)
    values = pd.DataFrame(
        {
            "sample": np.repeat(sample, n_players),
            "channel": pd.array(np.tile(np.asarray(players, dtype=object), n), dtype="string"),
            "shapley": phi.ravel(),
            "se": se.ravel(),
            "baseline": pd.array([baseline] * (n * n_players), dtype="string"),
        }
    )
    total = pd.DataFrame(
        {
            "sample": sample,
            "target": y.numpy(),
            "baseline": pd.array([baseline] * n, dtype="string"),
            "p_real": p_real,
            "p_counterfactual": p_base,
            "total": p_real - p_base,
        }
    )
    pairs = [(a, b) for a in range(n_players) for b in range(a + 1, n_players)]
    if interactions and pairs:
        table = pd.DataFrame(
            {
                "sample": np.repeat(sample, len(pairs)),
                "channel_a": pd.array([players[a] for _ in sample for a, _b in pairs], dtype="string"),
                "channel_b": pd.array([players[b] for _ in sample for _a, b in pairs], dtype="string"),
                "interaction": np.concatenate([[inter[i, a, b] for a, b in pairs] for i in sample]),
                "baseline": pd.array([baseline] * (n * len(pairs)), dtype="string"),
            }
        )
    else:
        table = pd.DataFrame(
            {
                "sample": pd.Series(dtype="int64"),
                "channel_a": pd.Series(dtype="string"),
                "channel_b": pd.Series(dtype="string"),
                "interaction": pd.Series(dtype="float64"),
                "baseline": pd.Series(dtype="string"),
            }
        )
    settings = {
        "baseline": baseline,
        "estimator": "exact" if exact else "permutation",
        "n_permutations": None if exact else n_perm,
        "coalition_values": int(n * n_coalitions),
        "forward_passes": int(passes),
        "batch_size": batch_size,
        "device": str(dev),
        "seed": seed,
        "blur_sigma": blur_sigma if baseline == "blur" else None,
        "interactions": bool(interactions),
    }
    return ChannelShapleyResult(
        values=values,
        total=total,
        interactions=table,
        players=players,
        groups={p: [names[k] for k in idx] for p, idx in zip(players, indices)},
        settings=settings,
    )
