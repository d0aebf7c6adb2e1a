"""Training the conversion network on a data set, with checkpoints, resume and a loss log.

Each step draws a batch of real images ``x`` (class ``y``) and a target class ``t != y`` per
image, alternating between latent-guided styles (``M(z, t)``) and reference-guided styles
(``E(x_ref, t)`` of a random image of class ``t``), as StarGAN v2 does; then one
discriminator update (adversarial + R1) and one update of generator, mapping network and
style encoder (see :mod:`~chanstat.counterfactual.generator.losses`). All randomness (batches,
targets, references, latents, augmentation) comes from one seeded ``torch.Generator``
whose state is checkpointed, so a resumed run continues exactly where it stopped (on the CPU).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

import chanstat.counterfactual.generator.losses as L
from chanstat.counterfactual.generator.networks import ConversionNetwork
from chanstat.runtime import seed_everything
from chanstat.tensors import device_of

LOG_COLUMNS = (
    "step", "d_real", "d_fake", "r1", "adversarial", "style", "diversity", "cycle", "classifier", "identity",
    "generator_total", "discriminator_total", "batch_flip_rate", "seconds",
)
"""Columns of :attr:`GeneratorTraining.log` (one row per logged step; losses are batch means,
``batch_flip_rate`` the share of the batch's ``x'`` the classifier assigns to the target, NaN
without a classifier, ``seconds`` the training time so far)."""

CHECKPOINT_NAME = "generator_checkpoint.pt"


@dataclass
class GeneratorTraining:
    """What :func:`train_generator` returns.

    Attributes
    ----------
    network : ConversionNetwork, eval mode, on the training device.
    log : pandas.DataFrame, columns :data:`LOG_COLUMNS`.
    steps : int, steps trained in total (including resumed ones).
    seconds : float, wall time of training (including resumed runs).
    settings : dict, JSON-serialisable training settings (loss weights, lr, seed, ...).
    """

    network: ConversionNetwork
    log: pd.DataFrame
    steps: int
    seconds: float
    settings: dict = field(default_factory=dict)


def _autocast(device: torch.device, mixed_precision: bool | str):
    """bf16 autocast on CUDA (no loss scaling needed); off on the CPU, where it is slower."""
    use = device.type == "cuda" and (mixed_precision is True or (mixed_precision == "auto" and torch.cuda.is_bf16_supported()))
    return torch.autocast("cuda", dtype=torch.bfloat16) if use else nullcontext()


def _augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random flips and (square images) transposition of a whole batch."""
    flips = torch.rand(3, generator=rng)
    if flips[0] < 0.5:
        x = x.flip(-1)
    if flips[1] < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2] and flips[2] < 0.5:
        x = x.transpose(-1, -2)
    return x


def _class_pools(labels: torch.Tensor, n_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == k).flatten() for k in range(n_classes)]


def _sample_from_pools(pools: list[torch.Tensor], classes: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One random index per entry of ``classes`` from that class's pool."""
    out = torch.empty_like(classes)
    u = torch.rand(classes.shape[0], generator=rng)
    for k, pool in enumerate(pools):
        rows = classes == k
        if bool(rows.any()):
            out[rows] = pool[(u[rows] * pool.numel()).long().clamp_max(pool.numel() - 1)]
    return out


def _frozen(model: torch.nn.Module | None, device: torch.device):
    """The classifier on ``device`` in eval mode with gradients off (a copy if it lives elsewhere)."""
    if model is None:
        return None, []
    from chanstat.tensors import model_device

    if model_device(model) != device:
        import copy

        model = copy.deepcopy(model).to(device)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    return model.eval(), flags


def train_generator(
    dataset,
    model: torch.nn.Module | None = None,
    *,
    network: ConversionNetwork | None = None,
    architecture: dict | None = None,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    mapping_lr: float | None = None,
    betas: tuple[float, float] = (0.0, 0.99),
    seed: int = 0,
    device=None,
    augment: bool = True,
    mixed_precision: bool | str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    log_every: int = 10,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **loss_weights: float,
) -> GeneratorTraining:
    """Train a conversion network on ``dataset`` (optionally guided by a frozen classifier).

    Parameters
    ----------
    dataset : ImageSet with N images (C, H, W) of at least two classes.
    model : frozen classifier (logits out) for the classifier loss; None trains without it
        (set ``classifier=0`` to train without it even when given).
    network : a :class:`ConversionNetwork` to continue training; default a new one built from
        ``architecture`` (keyword arguments of :class:`ConversionNetwork`, e.g. ``widths``).
    steps : total training steps (a resumed run trains up to this many).
    batch_size : images per step.
    lr : Adam learning rate of generator, style encoder and discriminator.
    mapping_lr : learning rate of the mapping network (default ``lr / 10``; StarGAN v2 uses
        a hundredth).
    betas : Adam betas (StarGAN v2: (0, 0.99)).
    seed : seeds the network initialisation and every random draw of training.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``...; None: the classifier's device (CPU without).
    augment : random flips / transposition of the real images.
    mixed_precision : ``"auto"`` (bf16 autocast on CUDA when supported), True or False; the
        R1 penalty always runs in float32.
    checkpoint_dir : where ``generator_checkpoint.pt`` (networks, optimisers, random state and
        the log) is written every ``checkpoint_every`` steps and at the end.
    resume : continue from ``checkpoint_dir``'s checkpoint when there is one.
    log_every : steps between rows of the training log (and progress-bar updates).
    progress : tqdm bar with the current losses.
    log : callable receiving one-line messages (resume, checkpoints).
    **loss_weights : weights of :class:`~chanstat.counterfactual.generator.losses.LossWeights`
        (``adversarial``, ``r1``, ``style``, ``diversity``, ``cycle``, ``classifier``,
        ``identity``).

    Returns
    -------
    GeneratorTraining
    """
    weights = L.LossWeights.from_options(loss_weights)
    if steps < 0 or batch_size < 1 or checkpoint_every < 1 or log_every < 1:
        raise ValueError(
            f"steps must be >= 0 and batch_size, checkpoint_every, log_every >= 1; got {steps}, {batch_size}, "
            f"{checkpoint_every}, {log_every}"
        )
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    say = log or (lambda message: None)
    images, labels = dataset.images, dataset.labels
    n_classes = len(dataset.classes)
    pools = _class_pools(labels, n_classes)
    empty = [dataset.classes[k] for k, pool in enumerate(pools) if pool.numel() == 0]
    if n_classes < 2 or empty:
        raise ValueError(f"the generator needs images of every class; none of {empty} in the data set")
    dev = device_of(device, model)
    seed_everything(seed)
    if network is None:
        torch.manual_seed(seed)
        network = ConversionNetwork(len(dataset.channels), n_classes, channels=dataset.channels,
                                    classes=dataset.classes, **(architecture or {}))
        network.set_data_statistics(images)
    elif network.config["in_channels"] != images.shape[1] or network.n_classes != n_classes:
        raise ValueError(
            f"network takes {network.config['in_channels']} channels and {network.n_classes} classes; the data set "
            f"has {images.shape[1]} and {n_classes}"
        )
    network.to(dev)
    classifier, flags = _frozen(model if weights.classifier > 0 else None, dev)
    gen_params = list(network.generator.parameters()) + list(network.style_encoder.parameters())
    opt_g = torch.optim.Adam(
        [{"params": gen_params, "lr": lr},
         {"params": network.mapping.parameters(), "lr": lr / 10 if mapping_lr is None else mapping_lr}],
        betas=betas,
    )
    opt_d = torch.optim.Adam(network.discriminator.parameters(), lr=lr, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    start_step, seconds_before = 0, 0.0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        rng.set_state(state["rng"])
        rows = [dict(r) for r in state["log"]]
        start_step, seconds_before = int(state["step"]), float(state["seconds"])
        say(f"generator: resumed from {ckpt_path} at step {start_step}")
    settings = dict(steps=int(steps), batch_size=int(batch_size), lr=float(lr), mapping_lr=mapping_lr, betas=list(betas),
                    seed=int(seed), augment=bool(augment), device=str(dev), loss_weights=weights.as_dict(),
                    architecture={k: v for k, v in network.config.items() if k not in ("channels", "classes")},
                    classifier=classifier is not None)

    def save_checkpoint(step: int, seconds: float) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save({"step": step, "seconds": seconds, "network": network.state_dict(), "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(), "rng": rng.get_state(), "log": rows}, tmp)
        os.replace(tmp, ckpt_path)  # a crash mid-write leaves the previous checkpoint intact

    std = network.input_std
    images_on_device = images.to(dev, torch.float32)  # one copy, so a step moves no images between devices
    def autocast():
        return _autocast(dev, mixed_precision)

    network.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=min(start_step, steps), desc="train generator", disable=not progress)
    try:
        for step in range(start_step + 1, steps + 1):
            idx = torch.randint(0, images.shape[0], (batch_size,), generator=rng)
            y = labels[idx]
            shift = torch.randint(1, n_classes, (batch_size,), generator=rng)
            t = (y + shift) % n_classes
            ref1, ref2 = _sample_from_pools(pools, t, rng), _sample_from_pools(pools, t, rng)
            z1 = torch.randn(batch_size, network.latent_dim, generator=rng)
            z2 = torch.randn(batch_size, network.latent_dim, generator=rng)
            batch = images_on_device[torch.cat([idx, ref1, ref2]).to(dev)]
            if augment:
                batch = _augment(batch, rng)
            x, x_ref1, x_ref2 = batch.split(batch_size)
            y, t, z1, z2 = y.to(dev), t.to(dev), z1.to(dev), z2.to(dev)
            by_reference = step % 2 == 0

            def styles():
                if by_reference:
                    return network.style_from_reference(x_ref1, t), network.style_from_reference(x_ref2, t)
                return network.style_from_latent(z1, t), network.style_from_latent(z2, t)

            # discriminator: real images of their class vs converted images of the target class
            x_real = x.detach().requires_grad_(True)
            d_real_logits = network.discriminate(x_real, y)  # float32: the R1 gradient needs it
            d_real = L.adversarial_loss(d_real_logits, real=True)
            r1 = L.r1_penalty(d_real_logits, x_real) if weights.r1 > 0 else torch.zeros((), device=dev)
            with torch.no_grad(), autocast():
                fake = network.translate(x, styles()[0])
            with autocast():
                d_fake = L.adversarial_loss(network.discriminate(fake.float(), t), real=False)
            d_total = d_real + d_fake + weights.r1 * r1
            opt_d.zero_grad(set_to_none=True)
            d_total.backward()
            opt_d.step()

            # generator, mapping network and style encoder
            diversity_weight = weights.diversity * max(0.0, 1.0 - (step - 1) / max(1, steps))
            with autocast():
                s1, s2 = styles()
                fake = network.translate(x, s1)
                adversarial = L.adversarial_loss(network.discriminate(fake, t), real=True)
                style = L.style_reconstruction_loss(network.style_from_reference(fake, t), s1)
                if diversity_weight > 0:
                    diversity = L.diversity_term(fake, network.translate(x, s2).detach(), std)
                else:
                    diversity = torch.zeros((), device=dev)
                if weights.cycle > 0:
                    cycle = L.cycle_loss(network.translate(fake, network.style_from_reference(x, y)), x, std)
                else:
                    cycle = torch.zeros((), device=dev)
                identity = L.identity_loss(fake, x, std)
                if classifier is not None:
                    logits = classifier(fake)
                    cls = L.classifier_loss(logits, t)
                    flip_rate = float((logits.detach().argmax(1) == t).float().mean()) if logits.shape[1] > 1 else float(
                        ((logits.detach()[:, 0] > 0).long() == t).float().mean())
                else:
                    cls, flip_rate = torch.zeros((), device=dev), float("nan")
            g_total = (weights.adversarial * adversarial + weights.style * style - diversity_weight * diversity
                       + weights.cycle * cycle + weights.classifier * cls + weights.identity * identity)
            opt_g.zero_grad(set_to_none=True)
            g_total.backward()
            opt_g.step()

            if step % log_every == 0 or step == steps:
                row = dict(step=step, d_real=d_real.item(), d_fake=d_fake.item(), r1=r1.item(),
                           adversarial=adversarial.item(), style=style.item(), diversity=diversity.item(),
                           cycle=cycle.item(), classifier=cls.item() if classifier is not None else float("nan"),
                           identity=identity.item(), generator_total=g_total.item(),
                           discriminator_total=d_total.item(), batch_flip_rate=flip_rate,
                           seconds=seconds_before + time.perf_counter() - t0)
                rows.append(row)
                bar.set_postfix(adv=f"{row['adversarial']:.2f}", cls=f"{row['classifier']:.2f}",
                                id=f"{row['identity']:.3f}", cyc=f"{row['cycle']:.3f}", flip=f"{flip_rate:.2f}")
            bar.update(1)
            if step % checkpoint_every == 0 and step < steps:
                save_checkpoint(step, seconds_before + time.perf_counter() - t0)
                say(f"generator: checkpoint at step {step} in {ckpt_path}")
        seconds = seconds_before + time.perf_counter() - t0
        save_checkpoint(max(steps, start_step), seconds)
    finally:
        bar.close()
        for p, flag in flags:
            p.requires_grad_(flag)
    network.eval()
    log_table = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    return GeneratorTraining(network=network, log=log_table, steps=max(steps, start_step), seconds=seconds,
                             settings=settings)
