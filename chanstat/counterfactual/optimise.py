"""Gradient-based counterfactuals in image space.

For a real image ``x`` and target class ``t``, find ``x'`` minimising::

    CE(f(x'), t) + l1 * mean|x' - x| + tv * TV(x')

with Adam (default) or plain gradient descent, where ``mean|.|`` is taken over all C*H*W
elements (so ``l1`` does not depend on the image size) and TV is the mean absolute difference
between horizontally and vertically neighbouring pixels of ``x'`` (anisotropic total
variation). The image is parametrised as ``x' = x + s_c * delta`` with a per-channel step size
``s_c``: Adam moves each element of ``delta`` by about ``lr`` per step whatever the gradient's
scale, so ``s_c`` sets how far channel ``c`` may move per step (0 freezes a channel).
``optimizer="gradient"`` instead steps along the raw gradient, scaled so that its largest
element moves by ``lr``: slower, but the change keeps the gradient's relative sizes across
pixels and channels rather than Adam's element-wise normalisation. After every step ``x'`` is
projected back into the data range. Each sample stops as soon as ``p(t | x') >= confidence``
(its ``x'`` is frozen at that point); samples that never reach it keep their last iterate and
count as failures.

Batches run on the chosen device; the optimiser state is per sample, so a sample's result does
not depend on what else is in its batch.

What to expect: image-space optimisation finds the *closest* image the classifier assigns to
the target class, not the biologically changed cell. Small CNNs flip with small changes spread
over every channel (adversarial directions), so these counterfactuals usually differ from the
real image in all channels. On the semi-synthetic real field (Mito doubled inside cells;
``analyses/real_field_optimise.toml``) the optimised changes were spread nearly evenly (share
of ``|x - x'|`` per channel 0.17-0.23, Mito highest) where the oracle's were 100 % Mito;
single-channel DAC still ranked Mito first, but attribution mass of D-IG named AGP. Compare
any such run with its oracle run (``analyses/compare_counterfactuals.py``) before trusting
channel conclusions drawn from optimised counterfactuals.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from chanstat.counterfactual.base import CounterfactualProvider

OPTIMIZERS = ("adam", "gradient")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per sample: mean |dx| + mean |dy| over channels, (N,) tensor."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1) if x.shape[2] > 1 else x.new_zeros(x.shape[0])
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1) if x.shape[3] > 1 else x.new_zeros(x.shape[0])
    return dx + dy


def channel_step_sizes(step_size, channels: Sequence[str]) -> torch.Tensor:
    """Per-channel step sizes (C,) from a number, a sequence of C numbers, or {channel: number}.

    A mapping may name a subset of channels; the others get its ``"default"`` entry (1.0 if absent).
    """
    channels = list(channels)
    if isinstance(step_size, Mapping):
        unknown = [k for k in step_size if k != "default" and k not in channels]
        if unknown:
            raise ValueError(f"step_size names unknown channels {unknown}; channels are {channels}")
        default = float(step_size.get("default", 1.0))
        values = [float(step_size.get(ch, default)) for ch in channels]
    elif isinstance(step_size, (int, float)):
        values = [float(step_size)] * len(channels)
    else:
        values = [float(v) for v in step_size]
        if len(values) != len(channels):
            raise ValueError(f"step_size has {len(values)} values for {len(channels)} channels {channels}")
    if any(v < 0 or not np.isfinite(v) for v in values):
        raise ValueError(f"step sizes must be finite and >= 0; got {values}")
    return torch.tensor(values, dtype=torch.float32)


def optimise_counterfactuals(
    model: torch.nn.Module,
    images: torch.Tensor,
    counterfactual_target: torch.Tensor,
    *,
    l1: float = 0.05,
    tv: float = 0.01,
    lr: float = 0.01,
    step_size: torch.Tensor | float = 1.0,
    max_steps: int = 200,
    confidence: float = 0.9,
    data_range: tuple[float, float] = (0.0, 1.0),
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    batch_size: int = 64,
    device="cpu",
    progress: bool = False,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Optimise a counterfactual for every image (see the module docstring for the objective).

    Parameters
    ----------
    model : classifier returning logits (N, K), eval mode.
    images : torch.Tensor, shape (N, C, H, W) -- real images ``x``.
    counterfactual_target : torch.Tensor, shape (N,) -- target class of each counterfactual.
    l1, tv : weights of the L1 distance and total-variation terms.
    lr : Adam learning rate (in units of ``delta``).
    step_size : per-channel step size, tensor (C,) or a number.
    max_steps : iteration limit per batch.
    optimizer : ``"adam"`` or ``"gradient"`` (see the module docstring).
    confidence : a sample stops once ``p(target | x') >= confidence``.
    data_range : (low, high) every ``x'`` is clamped to.
    batch_size, device, progress : batching, where to compute, progress bar.

    Returns
    -------
    counterfactuals : torch.Tensor, shape (N, C, H, W), float32, CPU
    details : pandas.DataFrame, N rows: ``n_steps`` (steps taken; 0 when ``x`` already reached
        the confidence), ``converged`` (bool), ``final_loss`` (objective at the returned ``x'``).
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
    n, c = images.shape[:2]
    counterfactual_target = torch.as_tensor(counterfactual_target).to(torch.int64)
    if counterfactual_target.shape != (n,):
        raise ValueError(f"counterfactual_target must have shape ({n},); got {tuple(counterfactual_target.shape)}")
    low, high = float(data_range[0]), float(data_range[1])
    if not low < high:
        raise ValueError(f"data_range must be (low, high) with low < high; got {data_range}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0; got {max_steps}")
    device = torch.device(device)
    steps = torch.as_tensor(step_size, dtype=torch.float32)
    steps = (steps.expand(c) if steps.ndim == 0 else steps).to(device).view(1, c, 1, 1)
    if steps.numel() != c:
        raise ValueError(f"step_size must have {c} entries; got {steps.numel()}")
    beta1, beta2 = betas
    was_training = model.training
    model.eval()
    requires_grad = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # gradients w.r.t. the image only
    out = torch.empty_like(images, dtype=torch.float32, device="cpu")
    n_steps = np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    final_loss = np.zeros(n)
    bar = tqdm(total=n, desc="optimise counterfactuals", disable=not progress, leave=False)
    try:
        safe_steps = torch.where(steps > 0, steps, torch.ones_like(steps))
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size].to(device, torch.float32)
            t = counterfactual_target[start : start + batch_size].to(device)
            b = x.shape[0]
            # x' = x + s * delta must stay in [low, high]: bounds on delta (0 where s = 0)
            delta_low = torch.where(steps > 0, (low - x) / safe_steps, torch.zeros_like(x))
            delta_high = torch.where(steps > 0, (high - x) / safe_steps, torch.zeros_like(x))
            delta = torch.zeros_like(x)
            m = torch.zeros_like(x)
            v = torch.zeros_like(x)
            active = torch.ones(b, dtype=torch.bool, device=device)
            taken = torch.zeros(b, dtype=torch.int64, device=device)
            p_last = torch.zeros(b, device=device)
            loss_last = torch.zeros(b, device=device)
            for step in range(max_steps + 1):
                rows = torch.nonzero(active).flatten()
                if rows.numel() == 0:
                    break
                # only samples still optimising are evaluated: frozen ones keep their x'
                delta_rows = delta[rows].requires_grad_(True)
                x_rows = x[rows]
                with torch.enable_grad():
                    x_cf = x_rows + steps * delta_rows
                    logits = model(x_cf).float()
                    ce = F.cross_entropy(logits, t[rows], reduction="none")
                    dist = (x_cf - x_rows).abs().flatten(1).mean(1)
                    loss = ce + l1 * dist + tv * total_variation(x_cf)
                p_target = torch.softmax(logits.detach(), dim=1).gather(1, t[rows, None]).squeeze(1)
                p_last[rows] = p_target
                loss_last[rows] = loss.detach()
                done = p_target >= confidence
                active[rows[done]] = False
                if step == max_steps or bool(done.all()):
                    break
                (grad,) = torch.autograd.grad(loss.sum(), delta_rows)
                with torch.no_grad():
                    keep = ~done
                    upd = rows[keep]
                    g = grad[keep]
                    k = (taken[upd] + 1).to(x.dtype).view(-1, 1, 1, 1)
                    if optimizer == "adam":
                        m[upd] = beta1 * m[upd] + (1 - beta1) * g
                        v[upd] = beta2 * v[upd] + (1 - beta2) * g * g
                        step_delta = lr * (m[upd] / (1 - beta1**k)) / ((v[upd] / (1 - beta2**k)).sqrt() + eps)
                    else:  # gradient descent, step scaled so its largest element is lr
                        step_delta = lr * g / (g.flatten(1).abs().amax(1).view(-1, 1, 1, 1) + eps)
                    delta[upd] = torch.maximum(torch.minimum(delta[upd] - step_delta, delta_high[upd]), delta_low[upd])
                    taken[upd] += 1
            with torch.no_grad():
                x_final = (x + steps * delta).clamp(low, high)
            out[start : start + b] = x_final.cpu()
            n_steps[start : start + b] = taken.cpu().numpy()
            converged[start : start + b] = (p_last >= confidence).cpu().numpy()
            final_loss[start : start + b] = loss_last.double().cpu().numpy()
            bar.update(b)
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
        model.train(was_training)
    details = pd.DataFrame({"n_steps": n_steps, "converged": converged, "final_loss": final_loss})
    return out, details


class OptimisedCounterfactuals(CounterfactualProvider):
    """Counterfactuals found by gradient descent on the image (see the module docstring).

    Parameters
    ----------
    l1 : weight of ``mean|x' - x|`` (larger: closer to the real image, sparser change).
    tv : weight of the total variation of ``x'`` (larger: smoother change).
    lr : Adam learning rate.
    step_size : per-channel step size: a number, a list (one per channel) or a table
        ``{channel: size, default: size}``; 0 freezes a channel.
    max_steps : iteration limit.
    confidence : early stop (and success) once ``p(target | x') >= confidence``.
    data_range : ``"auto"`` (the data set's min and max) or ``[low, high]``.
    optimizer : ``"adam"`` (default) or ``"gradient"``.
    """

    name = "optimise"
    needs_model = True
    description = "gradient descent on the image: CE(target) + L1 distance + total variation, early stop"

    def __init__(
        self,
        model=None,
        *,
        l1: float = 0.05,
        tv: float = 0.01,
        lr: float = 0.01,
        step_size=1.0,
        max_steps: int = 200,
        data_range="auto",
        confidence: float = 0.9,
        optimizer: str = "adam",
        **common,
    ):
        super().__init__(model, confidence=confidence, **common)
        for key, value in (("l1", l1), ("tv", tv), ("lr", lr)):
            if not float(value) >= 0:
                raise ValueError(f"{key} must be >= 0; got {value}")
        self.l1, self.tv, self.lr = float(l1), float(tv), float(lr)
        self.step_size = step_size
        self.max_steps = int(max_steps)
        if data_range != "auto" and (len(data_range) != 2 or not float(data_range[0]) < float(data_range[1])):
            raise ValueError(f"data_range must be 'auto' or [low, high] with low < high; got {data_range}")
        self.data_range = data_range
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
        self.optimizer = optimizer

    def _generate(self, dataset, target):
        targets = self.targets(dataset, target)
        steps = channel_step_sizes(self.step_size, dataset.channels)
        if self.data_range == "auto":
            data_range = (float(dataset.images.min()), float(dataset.images.max()))
            if not data_range[0] < data_range[1]:
                data_range = (data_range[0], data_range[0] + 1.0)
        else:
            data_range = (float(self.data_range[0]), float(self.data_range[1]))
        counterfactuals, details = optimise_counterfactuals(
            self.model,
            dataset.images,
            targets,
            l1=self.l1,
            tv=self.tv,
            lr=self.lr,
            step_size=steps,
            max_steps=self.max_steps,
            confidence=self.confidence,
            data_range=data_range,
            optimizer=self.optimizer,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
        )
        already = (details["n_steps"].to_numpy() == 0) & details["converged"].to_numpy()
        details = details.assign(already_target=already)
        if already.any():
            import warnings

            first = np.flatnonzero(already)[:10].tolist()
            warnings.warn(
                f"optimise: {int(already.sum())} image(s) the classifier already puts in the target class "
                f"(samples {first}{' ...' if already.sum() > 10 else ''}) are their own counterfactual; "
                "they are not counted as flipped (column already_target)",
                stacklevel=3,
            )
        info = {
            "converged_rate": float(details["converged"].mean()),
            "mean_steps": float(details["n_steps"].mean()),
            "data_range": list(data_range),
            "n_already_target": int(already.sum()),
        }
        return counterfactuals, targets, details, info
