"""Self-checking training: held-out quality, the checkpoint score, the stopping rule and the
data-chosen sparsity weight.

Every ``check_every`` steps :func:`held_out_quality` converts the held-out images (never
trained on) to their target class and measures

- ``flip_rate``: share whose conversion the classifier assigns to the target class;
- ``concentration``: the largest channel's share of ``mean |x' - x|`` (per-sample shares,
  averaged; the same definition as the quality table's ``change_share``). 1 means the change
  sits in one channel; 1 / C means it is spread evenly;
- ``open_gates``: how many (target class, channel) gates are open (K * C: none closed);
- ``realism_gap``: energy distance between the classifier's outputs (logits) on the
  conversions and on real images of the target class, in units of the energy distance
  between the real classes: 0 = the classifier sees the conversions like real target-class
  images, 1 = as far from them as the real classes are from each other.

:func:`checkpoint_score` ranks checks (QuAC keeps the checkpoint with the best conversion
rate): a check whose flip rate reaches ``flip_target`` is *usable* and scores
``1 + concentration - 0.1 * min(realism_gap, 1)``; any other scores its flip rate (< 1), so
every usable check beats every unusable one. :func:`stop_reason` ends training when the best
score has not risen by ``min_improvement`` over the last ``patience`` checks.

:class:`SparsityWeight` chooses the weight of the channel-sparsity penalty from the data:
it grows while the training batches flip above ``flip_target + margin`` and shrinks when
they fall below -- the largest penalty (the smallest, most concentrated change) that still
keeps the flip rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

#: What good held-out values look like (written next to the measured ones in provenance).
GOOD_VALUES = {
    "flip_rate": ">= 0.9",
    "concentration": ">= 0.8 (classes differing in one channel)",
    "realism_gap": "<= 0.5 (0: like real target-class images)",
}

CHECK_COLUMNS = (
    "check_flip_rate",
    "check_concentration",
    "check_top_channel",
    "check_realism_gap",
    "check_mean_change",
    "check_open_gates",
    "check_score",
)
"""Columns a held-out check adds to the training log (NaN / None on rows without a check)."""


def split_held_out(
    labels: torch.Tensor, fraction: float, seed: int, max_images: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-stratified split of row indices into (train, held_out).

    ``fraction`` of every class (at least one image per class when the class has two or more,
    at most ``max_images`` in total) is held out; 0 holds out nothing.
    """
    labels = torch.as_tensor(labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"held_out must lie in [0, 1); got {fraction}")
    if fraction == 0:
        return torch.arange(labels.shape[0]), torch.zeros(0, dtype=torch.int64)
    rng = torch.Generator().manual_seed(seed + 7919)
    classes = labels.unique().tolist()
    per_class = max(1, int(max_images // max(1, len(classes))))
    held: list[torch.Tensor] = []
    for k in classes:
        rows = torch.nonzero(labels == k).flatten()
        if rows.numel() < 2:
            continue
        take = min(per_class, rows.numel() - 1, max(1, int(round(fraction * rows.numel()))))
        held.append(rows[torch.randperm(rows.numel(), generator=rng)[:take]])
    held_out = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.int64)
    mask = torch.ones(labels.shape[0], dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def _energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|A-B| - E|A-A'| - E|B-B'| between two samples of vectors."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return float("nan")
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def change_shares(real: torch.Tensor, converted: torch.Tensor) -> torch.Tensor:
    """Per-sample share of ``mean |x' - x|`` in each channel, (N, C) (rows of no change: 1 / C)."""
    per_channel = (converted.float() - real.float()).abs().mean(dim=(2, 3))
    total = per_channel.sum(1, keepdim=True)
    even = torch.full_like(per_channel, 1.0 / per_channel.shape[1])
    return torch.where(total > 0, per_channel / total.clamp_min(1e-30), even)


@torch.no_grad()
def held_out_quality(
    network,
    classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    references: torch.Tensor,
    reference_labels: torch.Tensor,
    *,
    channels,
    n_latent: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    reference_logits: torch.Tensor | None = None,
) -> dict:
    """Flip rate, change concentration and realism gap of the held-out images' conversions.

    Each image goes to class ``(y + 1) mod K``; of ``n_latent`` latent styles the candidate with
    the highest target probability is kept. Returns a dict of the check's numbers (the keys of
    :data:`CHECK_COLUMNS` without ``check_``, plus ``change_share``, a dict per channel).
    ``reference_logits``: the classifier's logits on ``references`` when already known (a
    frozen classifier's do not change between checks).
    """
    was_training = network.training
    network.eval()
    device = network.input_std.device
    n_classes = network.n_classes
    rng = torch.Generator().manual_seed(seed)
    kept, logits_kept = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        t = ((labels[start : start + batch_size] + 1) % n_classes).to(device)
        best, best_p, best_logits = x.clone(), torch.full((x.shape[0],), -1.0, device=device), None
        for _ in range(max(1, n_latent)):
            z = torch.randn(x.shape[0], network.latent_dim, generator=rng).to(device)
            candidate = network.translate(x, network.style_from_latent(z, t), t).float()
            logits = classifier(candidate).float()
            p = _target_probability(logits, t)
            better = p > best_p
            best[better], best_p = candidate[better], torch.where(better, p, best_p)
            best_logits = logits if best_logits is None else torch.where(better[:, None], logits, best_logits)
        assert best_logits is not None  # the loop above runs at least once
        kept.append(best.cpu())
        logits_kept.append(best_logits.cpu())
    converted, logits = torch.cat(kept), torch.cat(logits_kept)
    target = (labels.cpu() + 1) % n_classes
    flip = float((_predicted(logits) == target).float().mean())
    shares = change_shares(images.cpu(), converted).mean(0)
    real_logits = (
        classifier_logits(classifier, references, device=device, batch_size=batch_size)
        if reference_logits is None
        else reference_logits.float().cpu()
    )
    gaps = []
    for k in target.unique().tolist():
        fake_k, real_k = logits[target == k], real_logits[reference_labels.cpu() == k]
        between = _energy_distance(real_logits[reference_labels.cpu() != k], real_k)
        if fake_k.shape[0] and real_k.shape[0] and between > 0:
            gaps.append(_energy_distance(fake_k, real_k) / between)
    top = int(shares.argmax())
    if was_training:
        network.train()
    return {
        "flip_rate": flip,
        "concentration": float(shares[top]),
        "top_channel": str(channels[top]),
        "realism_gap": float(np.mean(gaps)) if gaps else float("nan"),
        "mean_change": float((converted - images.cpu()).abs().mean()),
        "open_gates": float(network.channel_gate.sum()),
        "change_share": {str(c): round(float(s), 4) for c, s in zip(channels, shares)},
    }


@torch.no_grad()
def classifier_logits(classifier, images: torch.Tensor, *, device, batch_size: int = 64) -> torch.Tensor:
    """The classifier's logits (N, K) on ``images``, float32 on the CPU."""
    return torch.cat(
        [
            classifier(images[i : i + batch_size].to(device, torch.float32)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    )


def _predicted(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def _target_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.where(target == 1, p1, 1 - p1)
    return torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)


def checkpoint_score(flip_rate: float, concentration: float, realism_gap: float, flip_target: float) -> float:
    """Rank of one held-out check (higher is better); every usable check beats every unusable one."""
    if not math.isfinite(flip_rate):
        return float("nan")
    if flip_rate + 1e-9 < flip_target:
        return float(flip_rate) * 0.999
    gap = min(realism_gap, 1.0) if math.isfinite(realism_gap) else 0.0
    conc = concentration if math.isfinite(concentration) else 0.0
    return 1.0 + conc - 0.1 * gap


def best_check(checks: pd.DataFrame) -> int | None:
    """Row label of the best check (highest ``check_score``; the earliest among ties), None if none."""
    scores = pd.to_numeric(checks.get("check_score", pd.Series(dtype=float)), errors="coerce").dropna()
    if scores.empty:
        return None
    return scores.index[int(np.argmax(scores.to_numpy()))]


def stop_reason(checks: pd.DataFrame, *, patience: int, min_improvement: float = 0.01) -> str | None:
    """Why to stop now, or None: the best ``check_score`` has not risen by ``min_improvement``
    within the last ``patience`` checks (a plateau)."""
    scores = pd.to_numeric(checks.get("check_score", pd.Series(dtype=float)), errors="coerce").dropna().to_numpy()
    if patience < 1 or scores.size <= patience:
        return None
    before = scores[:-patience].max()
    if scores[-patience:].max() < before + min_improvement:
        usable = "usable" if before >= 1 else "not usable"
        return f"plateau: no gain of {min_improvement} in the last {patience} checks (best {usable})"
    return None


@dataclass
class SparsityWeight:
    """Weight of the channel-sparsity penalty, fixed or chosen from the flip rate ("auto").

    ``auto``: the weight stays at its start until the training batches first flip at
    ``flip_target + margin`` (a generator that has not learnt the conversion yet says nothing
    about how much sparsity it can afford); from then on
    ``w <- w * exp(rate * clip((ema_flip - (flip_target + margin)) / margin, -1, 1))`` after every
    step, within ``[low, high]``; ``ema_flip`` is an exponential moving average (``smoothing``)
    of the training batches' flip rate.
    """

    value: float = 1.0
    auto: bool = True
    flip_target: float = 0.9
    margin: float = 0.05
    rate: float = 0.05
    low: float = 1e-3
    high: float = 100.0
    smoothing: float = 0.9
    ema_flip: float = float("nan")
    armed: bool = False

    @classmethod
    def from_option(cls, option, flip_target: float, start: float = 0.1) -> "SparsityWeight":
        """``"auto"`` (data-chosen, starting at ``start``), a number >= 0 (fixed) or 0 (off)."""
        if isinstance(option, str):
            if option != "auto":
                raise ValueError(f"sparsity must be 'auto' or a number >= 0; got {option!r}")
            return cls(value=float(start), auto=True, flip_target=float(flip_target))
        value = float(option)
        if not value >= 0:
            raise ValueError(f"sparsity must be 'auto' or a number >= 0; got {option!r}")
        return cls(value=value, auto=False, flip_target=float(flip_target))

    def update(self, batch_flip_rate: float) -> float:
        """Fold in one training batch's flip rate; returns the weight for the next step."""
        if not self.auto or not math.isfinite(batch_flip_rate):
            return self.value
        self.ema_flip = (
            batch_flip_rate
            if not math.isfinite(self.ema_flip)
            else (self.smoothing * self.ema_flip + (1 - self.smoothing) * batch_flip_rate)
        )
        goal = self.flip_target + self.margin
        self.armed = self.armed or self.ema_flip >= goal
        if not self.armed:
            return self.value
        push = max(-1.0, min(1.0, (self.ema_flip - goal) / self.margin))
        self.value = float(min(self.high, max(self.low, self.value * math.exp(self.rate * push))))
        return self.value

    def state(self) -> dict:
        return {"value": self.value, "ema_flip": self.ema_flip, "armed": self.armed}

    def load(self, state: dict) -> None:
        self.value, self.ema_flip = float(state["value"]), float(state["ema_flip"])
        self.armed = bool(state.get("armed", True))


def weight_settled(weights, patience: int, factor: float = 1.5) -> bool:
    """Whether the sparsity weight moved by less than ``factor`` over the last ``patience + 1``
    checks (the stopping rule waits for a data-chosen weight to settle)."""
    recent = [float(w) for w in list(weights)[-(patience + 1) :] if math.isfinite(float(w)) and float(w) > 0]
    return len(recent) < 2 or max(recent) / min(recent) < factor


def progress_postfix(rows: list[dict]) -> dict[str, str]:
    """What the progress bar shows: the latest training row's losses, flip rate and penalty
    weight, and the latest held-out check (flip rate, concentration, realism gap, open gates)."""
    row = rows[-1]
    postfix = dict(
        cls=f"{row['classifier']:.2f}",
        id=f"{row['identity']:.3f}",
        batch_flip=f"{row['batch_flip_rate']:.2f}",
        λ=f"{row['sparsity_weight']:.3g}",
    )
    last = next((r for r in reversed(rows) if r["check_top_channel"] is not None), None)
    if last is not None:
        postfix.update(
            flip=f"{last['check_flip_rate']:.2f}",
            conc=f"{last['check_concentration']:.2f}",
            gap=f"{last['check_realism_gap']:.2f}",
            gates=f"{last['check_open_gates']:.0f}",
        )
    return postfix
