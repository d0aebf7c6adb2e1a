"""Candidate selection as QuAC does it: several conversions per image, keep the best.

For every image ``x`` with target class ``t`` the network makes ``n_latent`` candidates from
random latents (``M(z, t)``) and ``n_reference`` from random images of class ``t`` (``E(x_ref,
t)``). A candidate is *accepted* when the classifier assigns it to ``t`` (argmax) with
``p(t | x') >= confidence``; among the accepted ones the one with the smallest change
``mean |x' - x|`` is kept. When no candidate is accepted the one with the highest
``p(t | x')`` is kept (and the image counts as not flipped in the quality table).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chanstat.counterfactual.generator.networks import ConversionNetwork
from chanstat.tensors import class_probabilities

CANDIDATE_COLUMNS = (
    "n_candidates",
    "n_accepted",
    "candidate",
    "candidate_index",
    "candidate_change",
    "candidate_p_target",
)
"""Per-sample columns :func:`select_counterfactuals` adds to the quality table:
``n_candidates`` (tried), ``n_accepted`` (assigned to the target with enough confidence),
``candidate`` (``"latent"`` / ``"reference"``), ``candidate_index`` (which latent draw,
or the data-set row of the reference image), ``candidate_change`` (``mean |x' - x|`` of the
kept candidate, data units) and ``candidate_p_target``."""


@torch.no_grad()
def select_counterfactuals(
    network: ConversionNetwork,
    model: torch.nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    *,
    references: torch.Tensor,
    reference_labels: torch.Tensor,
    n_latent: int = 10,
    n_reference: int = 10,
    confidence: float = 0.5,
    seed: int = 0,
    batch_size: int = 64,
    device=None,
    progress: bool = False,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Best of ``n_latent + n_reference`` candidate counterfactuals per image.

    Parameters
    ----------
    network : trained :class:`ConversionNetwork` (used in eval mode on ``device``).
    model : classifier (logits out) on ``device``.
    images : torch.Tensor, shape (N, C, H, W) -- real images.
    target : torch.Tensor, shape (N,) -- target class per image.
    references, reference_labels : pool of reference images (M, C, H, W) and their classes (M,);
        every target class needs at least one when ``n_reference > 0``.
    n_latent, n_reference : candidates per image from latents and from reference images.
    confidence : acceptance needs ``p(t | x') >= confidence`` besides argmax ``t``.
    seed : seeds the latents and the choice of reference images.
    batch_size, device, progress : batching, where to compute, progress bar.

    Returns
    -------
    counterfactuals : torch.Tensor, shape (N, C, H, W), float32, CPU
    details : pandas.DataFrame, N rows, columns :data:`CANDIDATE_COLUMNS`.
    """
    if n_latent < 0 or n_reference < 0 or n_latent + n_reference < 1:
        raise ValueError(f"need n_latent, n_reference >= 0 and at least one candidate; got {n_latent}, {n_reference}")
    device = torch.device(device) if device is not None else network.input_std.device
    network = network.to(device).eval()
    n = images.shape[0]
    target = torch.as_tensor(target).to(torch.int64)
    pools = [torch.nonzero(reference_labels == k).flatten() for k in range(network.n_classes)]
    if n_reference > 0:
        missing = sorted({int(k) for k in target.unique().tolist() if pools[int(k)].numel() == 0})
        if missing:
            raise ValueError(f"no reference images of target classes {missing}; set n_reference = 0 or add some")
    rng = torch.Generator().manual_seed(seed)
    out = torch.empty(images.shape, dtype=torch.float32)
    details = {k: np.zeros(n, dtype=np.int64) for k in ("n_candidates", "n_accepted", "candidate_index")}
    kind = np.empty(n, dtype=object)
    change = np.zeros(n)
    p_best = np.zeros(n)
    bar = tqdm(total=n, desc="generator candidates", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        t = target[start : start + batch_size].to(device)
        b = x.shape[0]
        best = x.clone()
        best_key = torch.full((b,), float("inf"), device=device)  # lower is better
        best_kind = np.array(["latent"] * b, dtype=object)
        best_index = torch.zeros(b, dtype=torch.int64)
        best_change = torch.zeros(b, device=device)
        best_p = torch.zeros(b, device=device)
        accepted_count = torch.zeros(b, dtype=torch.int64, device=device)
        draws = [("latent", j) for j in range(n_latent)] + [("reference", j) for j in range(n_reference)]
        for source, j in draws:
            if source == "latent":
                z = torch.randn(b, network.latent_dim, generator=rng).to(device)
                style = network.style_from_latent(z, t)
                index = torch.full((b,), j, dtype=torch.int64)
            else:
                u = torch.rand(b, generator=rng)
                index = torch.empty(b, dtype=torch.int64)
                for k in t.unique().tolist():
                    rows = (t == k).cpu()
                    pool = pools[k]
                    index[rows] = pool[(u[rows] * pool.numel()).long().clamp_max(pool.numel() - 1)]
                style = network.style_from_reference(references[index].to(device, torch.float32), t)
            candidate = network.translate(x, style, t).float()
            p = class_probabilities(model(candidate))
            p_t = p.gather(1, t[:, None]).squeeze(1)
            accepted = (p.argmax(1) == t) & (p_t >= confidence)
            dist = (candidate - x).abs().flatten(1).mean(1)
            # accepted candidates rank by change (keys >= 0), the others by -p (keys in [-1, 0)
            # shifted above every accepted key so any accepted candidate wins)
            key = torch.where(accepted, dist, 1e6 - p_t)
            better = key < best_key
            best[better] = candidate[better]
            best_key = torch.where(better, key, best_key)
            best_change = torch.where(better, dist, best_change)
            best_p = torch.where(better, p_t, best_p)
            better_cpu = better.cpu()
            best_index[better_cpu] = index[better_cpu]
            best_kind[better_cpu.numpy()] = source
            accepted_count += accepted.long()
        stop = start + b
        out[start:stop] = best.cpu()
        details["n_candidates"][start:stop] = len(draws)
        details["n_accepted"][start:stop] = accepted_count.cpu().numpy()
        details["candidate_index"][start:stop] = best_index.numpy()
        kind[start:stop] = best_kind
        change[start:stop] = best_change.double().cpu().numpy()
        p_best[start:stop] = best_p.double().cpu().numpy()
        bar.update(b)
    bar.close()
    table = pd.DataFrame(
        {
            "n_candidates": details["n_candidates"],
            "n_accepted": details["n_accepted"],
            "candidate": kind,
            "candidate_index": details["candidate_index"],
            "candidate_change": change,
            "candidate_p_target": p_best,
        }
    )
    return out, table[list(CANDIDATE_COLUMNS)]
