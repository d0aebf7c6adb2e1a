"""Data-chosen channel gates: the fewest channels per target class that keep the flip rate.

The conversion network multiplies its change by a gate ``g[t, c]`` in {0, 1} per target class
``t`` and channel ``c`` (:attr:`ConversionNetwork.channel_gate
<chanstat.counterfactual.generator.networks.ConversionNetwork>`). :func:`prune_gates` closes,
for each target class, the gates of channels whose change the conversion does not need, by
greedy backward elimination: of the open channels it closes the one whose removal keeps the
held-out images' flip rate (then their mean target probability) highest, as long as that flip
rate stays >= ``flip_target`` -- the smallest set of changed channels that keeps the flip rate. Training calls it
at every held-out check whose flip rate reaches the target and then keeps training, so the
generator learns to make the flip with the channels left open; a gate once closed stays closed
(its channel's output gets no gradient any more, so reopening it would bring back a stale
change). No weight is set by hand: the flip target is the only criterion.
"""

from __future__ import annotations

import torch

from chanstat.counterfactual.generator.monitor import _predicted, _target_probability


@torch.no_grad()
def _candidates(network, images: torch.Tensor, target: int, n_latent: int, seed: int, batch_size: int):
    """The ungated changes of ``images`` toward class ``target`` for ``n_latent`` latent styles (on the CPU)."""
    device = network.input_std.device
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max(1, n_latent)):
        changes = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device, torch.float32)
            t = torch.full((x.shape[0],), target, dtype=torch.int64, device=device)
            z = torch.randn(x.shape[0], network.latent_dim, generator=rng).to(device)
            changes.append(network.residual(x, network.style_from_latent(z, t)).float().cpu())
        out.append(torch.cat(changes))
    return out


@torch.no_grad()
def gated_flip_rate(
    network,
    classifier,
    images: torch.Tensor,
    changes: list[torch.Tensor],
    target: int,
    gate_row: torch.Tensor,
    batch_size: int = 64,
) -> tuple[float, float]:
    """Share of ``images`` whose best candidate (highest target probability among ``changes``,
    gated by ``gate_row`` (C,)) the classifier assigns to ``target``, and the best candidates'
    mean target probability (which breaks ties between equal flip rates)."""
    device = network.input_std.device
    gate = gate_row.to(device, torch.float32)[None, :, None, None]
    hits, p_sum = 0, 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        t = torch.full((x.shape[0],), target, dtype=torch.int64, device=device)
        best_p = torch.full((x.shape[0],), -1.0, device=device)
        best_pred = torch.zeros(x.shape[0], dtype=torch.int64, device=device)
        for change in changes:
            r = change[start : start + batch_size].to(device)
            logits = classifier(network.apply_change(x, r * gate)).float()
            p = _target_probability(logits, t)
            better = p > best_p
            best_p = torch.where(better, p, best_p)
            best_pred = torch.where(better, _predicted(logits), best_pred)
        hits += int((best_pred == t).sum())
        p_sum += float(best_p.sum())
    n = max(1, images.shape[0])
    return hits / n, p_sum / n


@torch.no_grad()
def prune_gates(
    network,
    classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    flip_target: float,
    *,
    n_latent: int = 2,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Close the gates of the channels each target class's conversion does not need.

    For every target class ``k``, the images of the other classes are converted to ``k``
    (``n_latent`` latent styles, best candidate kept, as in the held-out check); then, while
    more than one channel is open, every open channel is tried closed and the one whose removal
    keeps the flip rate (then the mean target probability) highest is closed if that flip rate
    stays >= ``flip_target``; otherwise pruning of that class ends. Changes
    ``network.channel_gate`` in place.

    Returns
    -------
    dict : ``closed`` (list of ``[class, channel]`` names closed now), ``flip_rate`` (per
        class name, the flip rate with the final gates) and ``open`` (per class, open channels).
    """
    was_training = network.training
    network.eval()
    channels = network.config["channels"] or [str(c) for c in range(network.config["in_channels"])]
    classes = network.config["classes"] or [str(k) for k in range(network.n_classes)]
    labels = torch.as_tensor(labels).cpu()
    closed: list[list[str]] = []
    flips: dict[str, float] = {}
    for k in range(network.n_classes):
        rows = torch.nonzero(labels != k).flatten()
        if rows.numel() == 0 or int((network.channel_gate[k] > 0).sum()) <= 1:
            continue  # nothing to convert, or nothing left to close
        x = images[rows]
        changes = _candidates(network, x, k, n_latent, seed + 7919 * k, batch_size)
        row = network.channel_gate[k].detach().cpu().clone()
        flip, _ = gated_flip_rate(network, classifier, x, changes, k, row, batch_size)
        while flip + 1e-9 >= flip_target and int((row > 0).sum()) > 1:
            trials = []
            for c in (c for c in range(row.numel()) if row[c] > 0):
                trial = row.clone()
                trial[c] = 0.0
                trials.append((gated_flip_rate(network, classifier, x, changes, k, trial, batch_size), c, trial))
            (trial_flip, _), c, trial = max(trials, key=lambda item: item[0])
            if trial_flip + 1e-9 < flip_target:
                break
            row, flip = trial, trial_flip
            closed.append([str(classes[k]), str(channels[c])])
        network.channel_gate[k].copy_(row.to(network.channel_gate.device))
        flips[str(classes[k])] = float(flip)
    if was_training:
        network.train()
    return {"closed": closed, "flip_rate": flips, "open": network.open_channels()}
