"""Losses of the conversion network (StarGAN v2 objectives plus two for counterfactuals).

Notation: ``x`` real images of class ``y``, ``s`` a style code of target class ``t`` (from
the mapping network or the style encoder), ``x' = G(x, s)``.

- adversarial (non-saturating): the discriminator minimises ``softplus(-D(x, y)) +
  softplus(D(x', t))``, the generator ``softplus(-D(x', t))``;
- R1: ``r1/2 * E ||grad_x D(x, y)||^2`` on real images (zero-centred gradient penalty);
- style reconstruction: ``E |E(x', t) - s|``;
- style diversity: ``E |G(x, s1) - G(x, s2)|``, *maximised* (its weight decays to 0);
- cycle consistency: ``E |G(x', E(x, y)) - x|``;
- classifier (optional, frozen classifier f): ``CE(f(x'), t)``;
- identity: ``E |x' - x| / std`` per channel (standardised units): the price of a
  change, so the network prefers the smallest change that does the job;
- channel sparsity (group lasso): ``E_n sum_c sqrt(mean_pixels((x' - x)_c / std_c)^2)``, the
  sum over channels of each channel's RMS change: a channel costs as soon as it changes at
  all, so the network changes as few channels as it can (its weight is set by
  :class:`~chanstat.counterfactual.generator.monitor.SparsityWeight`); by default each
  channel's term is weighted per target class by :class:`ChannelReweighting`, which brings
  the sum closer to a count of changed channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """Weights of the loss terms (0 switches a term off).

    ``diversity`` decays linearly to 0 over training, as in StarGAN v2. ``classifier`` needs a
    classifier; ``identity`` trades realism for minimal change (larger: smaller, sparser
    changes; too large and the counterfactuals stop flipping the classifier).
    """

    adversarial: float = 1.0
    r1: float = 1.0
    style: float = 1.0
    diversity: float = 0.5
    cycle: float = 1.0
    classifier: float = 1.0
    identity: float = 2.0

    @classmethod
    def from_options(cls, options: dict | None) -> "LossWeights":
        options = dict(options or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown loss weights {unknown}; known: {names}")
        weights = cls(**{k: float(v) for k, v in options.items()})
        negative = [k for k, v in asdict(weights).items() if not v >= 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0; got {[(k, asdict(weights)[k]) for k in negative]}")
        return weights

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss of discriminator logits (N,) against label real/fake."""
    logits = logits.float()
    return F.softplus(-logits).mean() if real else F.softplus(logits).mean()


def r1_penalty(logits_real: torch.Tensor, images_real: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean_n ||d D(x_n) / d x_n||^2``; ``images_real`` must require grad."""
    (grad,) = torch.autograd.grad(logits_real.float().sum(), images_real, create_graph=True)
    return 0.5 * grad.float().pow(2).flatten(1).sum(1).mean()


def style_reconstruction_loss(style_predicted: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    return (style_predicted.float() - style.float()).abs().mean()


def diversity_term(fake1: torch.Tensor, fake2: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean |x'_1 - x'_2| in standardised units (to be maximised)."""
    return ((fake1.float() - fake2.float()) / std).abs().mean()


def cycle_loss(reconstructed: torch.Tensor, images: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((reconstructed.float() - images.float()) / std).abs().mean()


def identity_loss(fake: torch.Tensor, images: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((fake.float() - images.float()) / std).abs().mean()


def classifier_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the frozen classifier's logits (N, K) on ``x'`` toward the target class."""
    logits = logits.float()
    if logits.ndim == 2 and logits.shape[1] == 1:  # single-logit model: sigmoid for class 1
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    return F.cross_entropy(logits, target)


def channel_change_rms(fake: torch.Tensor, images: torch.Tensor, std: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RMS of the standardised change per image and channel, (N, C)."""
    delta = (fake.float() - images.float()) / std
    return (delta.pow(2).mean(dim=(2, 3)) + eps).sqrt()


def channel_sparsity_loss(fake: torch.Tensor, images: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Group norm of the change over channels: mean over images of ``sum_c RMS_c((x' - x) / std)``
    (training weights the terms per channel with :class:`ChannelReweighting`)."""
    return channel_change_rms(fake, images, std).sum(1).mean()


class ChannelReweighting:
    """Per-(target class, channel) weights of the group norm that approach a count of changed channels.

    Iteratively reweighted group lasso (the reweighted l1 of Candes, Wakin & Boyd 2008, per
    channel): the weight of channel ``c`` for target class ``t`` is
    ``min(cap, r[t].max() / (r[t, c] + floor * r[t].max()))``, where ``r`` is an exponential
    moving average (``smoothing`` per step) of the conversions' RMS change per channel. The
    channel that carries a class's change keeps weight 1; a channel with a small change is
    penalised up to ``cap`` times harder, so the conversion stops spreading a little change over
    channels it could leave alone (a plain group norm costs a small change almost as much per
    unit as a large one, and so leaves it).
    """

    def __init__(
        self, n_classes: int, n_channels: int, smoothing: float = 0.98, floor: float = 0.05, cap: float = 20.0
    ):
        self.smoothing, self.floor, self.cap = float(smoothing), float(floor), float(cap)
        self.scale = torch.full((n_classes, n_channels), float("nan"))

    def weights(self, targets: torch.Tensor) -> torch.Tensor:
        """(N, C) weights for conversions toward ``targets`` (N,); 1 before a class's first update."""
        r = self.scale.to(targets.device)
        top = r.max(dim=1, keepdim=True).values
        w = (top / (r + self.floor * top)).clamp(max=self.cap)
        return torch.where(torch.isfinite(w), w, torch.ones_like(w))[targets]

    @torch.no_grad()
    def update(self, rms: torch.Tensor, targets: torch.Tensor) -> None:
        """Fold in one batch's RMS change (N, C) toward ``targets`` (N,) (no device synchronisation)."""
        rms = rms.detach().float()
        scale = self.scale.to(rms.device)
        sums = torch.zeros_like(scale).index_add_(0, targets, rms)
        counts = torch.zeros(scale.shape[0], device=rms.device).index_add_(0, targets, torch.ones_like(rms[:, 0]))
        batch = sums / counts.clamp_min(1)[:, None]
        moved = torch.where(torch.isfinite(scale), self.smoothing * scale + (1 - self.smoothing) * batch, batch)
        self.scale = torch.where(counts[:, None] > 0, moved, scale)

    def state(self) -> dict:
        return {"scale": self.scale.detach().cpu().clone()}

    def load(self, state: dict) -> None:
        self.scale = state["scale"].clone().float()
