"""Training the conversion network on a data set, with checkpoints, resume and a loss log.

Each step draws a batch of real images ``x`` (class ``y``) and a target class ``t != y`` per
image, alternating between latent-guided styles (``M(z, t)``) and reference-guided styles
(``E(x_ref, t)`` of a random image of class ``t``), as StarGAN v2 does; then one
discriminator update (adversarial + R1) and one update of generator, mapping network and
style encoder (see :mod:`~chanstat.counterfactual.generator.losses`). All randomness (batches,
targets, references, latents, augmentation) comes from one seeded ``torch.Generator``
whose state is checkpointed, so a resumed run continues exactly where it stopped (on the CPU).

Self-checking (with a classifier): a class-stratified share of the images is held out of
training; every ``check_every`` steps their conversions are measured (flip rate, change
concentration, realism gap: :mod:`~chanstat.counterfactual.generator.monitor`), the best
network so far is kept, and training stops when the checks plateau (or at ``steps``, or after
``time_budget`` seconds). The network returned is the best checked one. A channel-sparsity
penalty (group norm of the change per channel) with a weight chosen from the flip rate makes
the conversion change as few channels as it can. At the first plateau (or the end of training)
the best network's unneeded (target class, channel) gates are closed
(:mod:`~chanstat.counterfactual.generator.gates`; a converged network is pruned, not the first,
still adversarial one that flips) and training goes on with the others to the next (shorter) plateau.
"""

from __future__ import annotations

import copy
import numbers
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

import chanstat.counterfactual.generator.batches as B
import chanstat.counterfactual.generator.gates as G
import chanstat.counterfactual.generator.losses as L
import chanstat.counterfactual.generator.monitor as M
from chanstat.counterfactual.generator.defaults import training_profile
from chanstat.counterfactual.generator.networks import ConversionNetwork
from chanstat.runtime import available_cores, seed_everything
from chanstat.tensors import device_of, model_device

LOG_COLUMNS = (
    "step",
    "d_real",
    "d_fake",
    "r1",
    "adversarial",
    "style",
    "diversity",
    "cycle",
    "classifier",
    "identity",
    "sparsity",
    "sparsity_weight",
    "generator_total",
    "discriminator_total",
    "batch_flip_rate",
    "seconds",
) + M.CHECK_COLUMNS
"""Columns of :attr:`GeneratorTraining.log` (one row per logged step; losses are batch means,
``sparsity`` the channel group norm and ``sparsity_weight`` its current weight,
``batch_flip_rate`` the share of the batch's ``x'`` the classifier assigns to the target, NaN
without a classifier, ``seconds`` the training time so far; ``check_*`` the held-out check of
that step, NaN on rows without one)."""

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
    quality : dict, the held-out quality of the returned (best) network, the step it comes
        from, why training stopped and what good values look like (empty without checks).
    """

    network: ConversionNetwork
    log: pd.DataFrame
    steps: int
    seconds: float
    settings: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)


def _autocast(device: torch.device, mixed_precision: bool | str):
    """bf16 autocast on CUDA (no loss scaling needed); off on the CPU, where it is slower."""
    use = device.type == "cuda" and (
        mixed_precision is True or (mixed_precision == "auto" and torch.cuda.is_bf16_supported())
    )
    return torch.autocast("cuda", dtype=torch.bfloat16) if use else nullcontext()


def _frozen(model: torch.nn.Module | None, device: torch.device):
    """The classifier on ``device`` in eval mode with gradients off (a copy if it lives elsewhere)."""
    if model is None:
        return None, []
    if model_device(model) != device:
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
    steps: int | None = None,
    batch_size: int | None = None,
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
    sparsity: float | str = "auto",
    reweight: bool = True,
    held_out: float = 0.15,
    check_every: int | None = None,
    patience: int | None = None,
    min_steps: int | None = None,
    flip_target: float = 0.9,
    time_budget: float | None = None,
    r1_every: int | None = None,
    classifier_images: int | None = None,
    threads: int | None = None,
    **loss_weights: float,
) -> GeneratorTraining:
    """Train a conversion network on ``dataset`` (optionally guided by a frozen classifier).

    Parameters
    ----------
    dataset : ImageSet with N images (C, H, W) of at least two classes.
    model : frozen classifier (logits out) for the classifier loss and the held-out checks;
        None trains without either (set ``classifier=0`` to train without the loss).
    network : a :class:`ConversionNetwork` to continue training; default a new one built from
        ``architecture`` (keyword arguments of :class:`ConversionNetwork`, e.g. ``widths``;
        missing keys come from the device's profile, :mod:`~chanstat.counterfactual.generator.defaults`).
    steps : the most training steps (a resumed run trains up to this many); None: the
        device's profile (CPU 1500, CUDA 20000). The stopping rule usually ends training earlier.
    batch_size : images per step; None: the device's profile (CPU 8, CUDA 16).
    lr : Adam learning rate of generator, style encoder and discriminator.
    mapping_lr : learning rate of the mapping network (default ``lr / 10``; StarGAN v2 uses
        a hundredth).
    betas : Adam betas (StarGAN v2: (0, 0.99)).
    seed : seeds the network initialisation, the held-out split and every random draw.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``...; None: the classifier's device (CPU without).
    augment : random flips / transposition of the real images.
    mixed_precision : ``"auto"`` (bf16 autocast on CUDA when supported), True or False; the
        R1 penalty always runs in float32.
    checkpoint_dir : where ``generator_checkpoint.pt`` (networks, optimisers, random state,
        the best network so far and the log) is written every ``checkpoint_every`` steps and at the end.
    resume : continue from ``checkpoint_dir``'s checkpoint when there is one.
    log_every : steps between rows of the training log (and progress-bar updates).
    progress : tqdm bar with the current losses and the last held-out check (``flip``,
        ``conc`` = concentration, ``gap`` = realism gap, ``gates`` = open (class, channel) gates,
        ``λ`` = sparsity weight).
    log : callable receiving one-line messages (resume, checkpoints, stop).
    sparsity : weight of the channel-sparsity penalty (group norm of the change per channel);
        ``"auto"`` (default) chooses it from the data: it grows while the training batches
        flip above ``flip_target + 0.05`` and shrinks below (the largest weight that keeps the
        flip rate); a number fixes it; 0 switches it off. Without a classifier ``"auto"`` is off.
        Unless it is 0 (and with held-out checks), the channel gates are pruned too: at the first
        plateau (or the end of training), per target class, the channels whose change the
        held-out conversions do not need to reach ``flip_target`` are closed for good
        (:func:`~chanstat.counterfactual.generator.gates.prune_gates`) and training continues
        (to the next plateau, within ``max(2, patience // 2)`` checks) with the others.
    reweight : weight the penalty's channels per target class by the inverse of their running RMS
        change (:class:`~chanstat.counterfactual.generator.losses.ChannelReweighting`); with sparsity on.
    held_out : share of every class held out of training for the checks (at most 64 images;
        0 or no classifier: no checks, no early stop, the last network is returned).
    check_every, patience, min_steps : a held-out check every ``check_every`` steps; stop when
        the best check score has not risen by 0.01 in ``patience`` checks, not before
        ``min_steps``. None: the device's profile (CPU 25 / 8 / 750, CUDA 250 / 6 / 1000).
    flip_target : held-out flip rate of a usable generator (checkpoint score, sparsity schedule).
    time_budget : stop after this many seconds of training (None: no limit).
    r1_every : the R1 penalty every this many steps, scaled up to match (lazy regularisation);
        None: the device's profile (CPU 4, CUDA 1).
    classifier_images : how many of each batch's conversions the classifier loss sees (a random
        subset: the batch is drawn at random; the mean over a subset has the same expected
        gradient, at about half the classifier's cost on the CPU). None: the device's profile
        (CPU 4, CUDA the whole batch).
    threads : torch CPU threads while training on the CPU (restored afterwards); None: torch's
        current setting, lowered to the idle cores (:func:`chanstat.runtime.available_cores`). More threads than idle cores makes the
        small networks' steps many times slower on a shared machine.
    **loss_weights : weights of :class:`~chanstat.counterfactual.generator.losses.LossWeights`
        (``adversarial``, ``r1``, ``style``, ``diversity``, ``cycle``, ``classifier``,
        ``identity``); missing ones: the profile's (CPU: no diversity, no cycle) or the class defaults.

    Returns
    -------
    GeneratorTraining
    """
    dev = device_of(device, model)
    profile = training_profile(dev)
    weights = L.LossWeights.from_options({**profile["loss"], **loss_weights})
    steps = profile["steps"] if steps is None else steps
    batch_size = profile["batch_size"] if batch_size is None else batch_size
    check_every = profile["check_every"] if check_every is None else check_every
    patience = profile["patience"] if patience is None else patience
    # the pruned network starts from the best check, so its refinement needs a shorter wait
    refine_patience = max(2, patience // 2)
    min_steps = profile["min_steps"] if min_steps is None else min_steps
    r1_every = profile["r1_every"] if r1_every is None else r1_every
    if classifier_images is None:
        classifier_images = profile["classifier_images"] or batch_size
    counts = dict(batch_size=batch_size, checkpoint_every=checkpoint_every, log_every=log_every)
    counts.update(check_every=check_every, r1_every=r1_every, classifier_images=classifier_images)
    whole = {"steps": steps, "patience": patience, "min_steps": min_steps, **counts}
    not_whole = {k: v for k, v in whole.items() if isinstance(v, bool) or not isinstance(v, numbers.Integral)}
    if not_whole:
        raise TypeError(f"{', '.join(not_whole)} must be whole numbers; got {not_whole}")
    if steps < 0 or patience < 0 or min(counts.values()) < 1:
        raise ValueError(
            f"steps, patience must be >= 0 and {', '.join(counts)} >= 1; got {steps}, {patience}, {counts}"
        )
    classifier_images = min(int(classifier_images), batch_size)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    say = log or (lambda message: None)
    images, labels = dataset.images, dataset.labels
    n_classes = len(dataset.classes)
    empty = [dataset.classes[k] for k, pool in enumerate(B.class_pools(labels, n_classes)) if pool.numel() == 0]
    if n_classes < 2 or empty:
        raise ValueError(f"the generator needs images of every class; none of {empty} in the data set")
    seed_everything(seed)
    if network is None:
        torch.manual_seed(seed)
        network = ConversionNetwork(
            len(dataset.channels),
            n_classes,
            channels=dataset.channels,
            classes=dataset.classes,
            **{**profile["architecture"], **(architecture or {})},
        )
        network.set_data_statistics(images)
    elif network.config["in_channels"] != images.shape[1] or network.n_classes != n_classes:
        raise ValueError(
            f"network takes {network.config['in_channels']} channels and {network.n_classes} classes; the data set "
            f"has {images.shape[1]} and {n_classes}"
        )
    network.to(dev)
    classifier, flags = _frozen(model if weights.classifier > 0 or held_out > 0 else None, dev)
    checking = classifier is not None and held_out > 0
    train_rows, held_rows = M.split_held_out(labels, held_out if checking else 0.0, seed)
    if checking and held_rows.numel() == 0:
        checking = False
    sparse = M.SparsityWeight.from_option(
        sparsity if (classifier is not None or sparsity != "auto") else 0.0, flip_target
    )
    pruning = checking and (sparse.auto or sparse.value > 0)
    reweighting = L.ChannelReweighting(n_classes, images.shape[1]) if reweight and sparse.value > 0 else None
    train_labels = labels[train_rows]
    pools = B.class_pools(train_labels, n_classes)
    if any(pool.numel() == 0 for pool in pools):
        raise ValueError("after holding out images for the checks a class has no training image; lower held_out")
    gen_params = list(network.generator.parameters()) + list(network.style_encoder.parameters())
    opt_g = torch.optim.Adam(
        [
            {"params": gen_params, "lr": lr},
            {"params": network.mapping.parameters(), "lr": lr / 10 if mapping_lr is None else mapping_lr},
        ],
        betas=betas,
    )
    opt_d = torch.optim.Adam(network.discriminator.parameters(), lr=lr, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    best: dict = {"score": float("-inf"), "state": None, "row": None}
    stop: str | None = None
    pruned_at: int | None = None  # the step whose check pruned the gates (None: not yet)
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
        best = dict(state.get("best") or best)
        stop = state.get("stop")
        pruned_at = state.get("pruned_at")
        if state.get("sparsity"):
            sparse.load(state["sparsity"])
        if reweighting is not None and state.get("reweighting"):
            reweighting.load(state["reweighting"])
        say(f"generator: resumed from {ckpt_path} at step {start_step}")
    settings = dict(
        steps=int(steps),
        batch_size=int(batch_size),
        lr=float(lr),
        mapping_lr=mapping_lr,
        betas=list(betas),
        seed=int(seed),
        augment=bool(augment),
        device=str(dev),
        profile=profile["profile"],
        loss_weights=weights.as_dict(),
        sparsity=sparsity,
        reweight=reweighting is not None,
        held_out=float(held_out) if checking else 0.0,
        n_held_out=int(held_rows.numel()),
        check_every=int(check_every),
        patience=int(patience),
        min_steps=int(min_steps),
        flip_target=float(flip_target),
        time_budget=time_budget,
        r1_every=int(r1_every),
        classifier_images=classifier_images,
        architecture={k: v for k, v in network.config.items() if k not in ("channels", "classes")},
        classifier=classifier is not None,
        prune_gates=bool(pruning),
    )

    def prune_best(step: int) -> bool:
        """Load the best network so far and close its unneeded gates; whether any closed."""
        if best["state"] is None or best["row"]["check_flip_rate"] + 1e-9 < flip_target:
            return False  # no usable network: nothing to keep the flip rate of
        network.load_state_dict(best["state"])
        pruned = G.prune_gates(network, classifier, held_images, held_labels, flip_target, seed=seed + step)
        say(f"generator: step {step}, pruned the best network (step {best['row']['step']}): open {pruned['open']}")
        return bool(pruned["closed"])

    def save_checkpoint(step: int, seconds: float) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(
            {
                "step": step,
                "seconds": seconds,
                "network": network.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "rng": rng.get_state(),
                "log": rows,
                "best": best,
                "stop": stop,
                "pruned_at": pruned_at,
                "sparsity": sparse.state(),
                "reweighting": reweighting.state() if reweighting is not None else None,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)  # a crash mid-write leaves the previous checkpoint intact

    std = network.input_std
    train_images = images[train_rows].to(dev, torch.float32)  # one copy, so a step moves no images between devices
    held_images, held_labels = images[held_rows], labels[held_rows]
    reference_rows = train_rows[torch.randperm(train_rows.numel(), generator=torch.Generator().manual_seed(seed))[:256]]

    def autocast():
        return _autocast(dev, mixed_precision)

    reference_logits: list[torch.Tensor] = []  # the frozen classifier's logits on the references, computed once

    def run_check(step: int) -> dict:
        if not reference_logits:
            reference_logits.append(M.classifier_logits(classifier, images[reference_rows], device=dev))
        quality = M.held_out_quality(
            network,
            classifier,
            held_images,
            held_labels,
            images[reference_rows],
            labels[reference_rows],
            channels=list(dataset.channels),
            seed=seed + step,
            reference_logits=reference_logits[0],
        )
        score = M.checkpoint_score(quality["flip_rate"], quality["concentration"], quality["realism_gap"], flip_target)
        out = {
            f"check_{k}": quality[k]
            for k in ("flip_rate", "concentration", "top_channel", "realism_gap", "mean_change", "open_gates")
        }
        out["check_score"] = score
        if score > best["score"]:
            best.update(
                score=score,
                row={**out, "step": step, "change_share": quality["change_share"]},
                state={k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
            )
        return out

    threads_before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(int(threads) if threads else max(1, min(threads_before, available_cores())))
    network.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=min(start_step, steps), desc="train generator", disable=not progress)
    step = start_step
    try:
        for step in range(start_step + 1, steps + 1):
            if stop is not None:
                step -= 1
                break
            idx = train_rows[torch.randint(0, train_rows.numel(), (batch_size,), generator=rng)]
            y = labels[idx]
            shift = torch.randint(1, n_classes, (batch_size,), generator=rng)
            t = (y + shift) % n_classes
            ref1, ref2 = B.sample_from_pools(pools, t, rng), B.sample_from_pools(pools, t, rng)
            z1 = torch.randn(batch_size, network.latent_dim, generator=rng)
            z2 = torch.randn(batch_size, network.latent_dim, generator=rng)
            batch_rows = torch.cat([torch.searchsorted(train_rows, idx), ref1, ref2])
            batch = train_images[batch_rows.to(dev)]
            if augment:
                batch = B.augment(batch, rng)
            x, x_ref1, x_ref2 = batch.split(batch_size)
            y, t, z1, z2 = y.to(dev), t.to(dev), z1.to(dev), z2.to(dev)
            by_reference = step % 2 == 0

            def styles():
                if by_reference:
                    return network.style_from_reference(x_ref1, t), network.style_from_reference(x_ref2, t)
                return network.style_from_latent(z1, t), network.style_from_latent(z2, t)

            # one conversion serves both updates: the discriminator step changes no generator weight,
            # so StarGAN v2's second translation (same style, same generator) would repeat this one
            with autocast():
                s1, s2 = styles()
                fake = network.translate(x, s1, t)

            # discriminator: real images of their class vs converted images of the target class
            with_r1 = weights.r1 > 0 and step % r1_every == 0
            x_real = x.detach().requires_grad_(with_r1)
            d_real_logits = network.discriminate(x_real, y)  # float32: the R1 gradient needs it
            d_real = L.adversarial_loss(d_real_logits, real=True)
            r1 = L.r1_penalty(d_real_logits, x_real) if with_r1 else torch.zeros((), device=dev)
            with autocast():
                d_fake = L.adversarial_loss(network.discriminate(fake.detach().float(), t), real=False)
            d_total = d_real + d_fake + weights.r1 * r1_every * r1
            opt_d.zero_grad(set_to_none=True)
            d_total.backward()
            opt_d.step()

            # generator, mapping network and style encoder
            diversity_weight = weights.diversity * max(0.0, 1.0 - (step - 1) / max(1, steps))
            network.discriminator.requires_grad_(False)  # its step is done: no weight gradients to compute
            with autocast():
                adversarial = L.adversarial_loss(network.discriminate(fake, t), real=True)
                style = L.style_reconstruction_loss(network.style_from_reference(fake, t), s1)
                if diversity_weight > 0:
                    diversity = L.diversity_term(fake, network.translate(x, s2, t).detach(), std)
                else:
                    diversity = torch.zeros((), device=dev)
                if weights.cycle > 0:
                    cycle = L.cycle_loss(network.translate(fake, network.style_from_reference(x, y), y), x, std)
                else:
                    cycle = torch.zeros((), device=dev)
                identity = L.identity_loss(fake, x, std)
                rms = L.channel_change_rms(fake, x, std)
                # reweighted once the penalty is in force: before, the conversion is still learning the flip
                weighted = rms
                if reweighting is not None and (sparse.armed or not sparse.auto):
                    weighted = rms * reweighting.weights(t)
                group = weighted.sum(1).mean()
                if classifier is not None and weights.classifier > 0:
                    seen = t[:classifier_images]
                    logits = classifier(fake[:classifier_images])
                    cls = L.classifier_loss(logits, seen)
                    flip_rate = float((M._predicted(logits.detach()) == seen).float().mean())
                else:
                    cls, flip_rate = torch.zeros((), device=dev), float("nan")
            sparsity_weight = sparse.value
            g_total = (
                weights.adversarial * adversarial
                + weights.style * style
                - diversity_weight * diversity
                + weights.cycle * cycle
                + weights.classifier * cls
                + weights.identity * identity
                + sparsity_weight * group
            )
            opt_g.zero_grad(set_to_none=True)
            g_total.backward()
            network.discriminator.requires_grad_(True)
            opt_g.step()
            sparse.update(flip_rate)
            if reweighting is not None:
                reweighting.update(rms, t)

            out_of_time = time_budget is not None and seconds_before + time.perf_counter() - t0 >= time_budget
            check = checking and (step % check_every == 0 or step == steps or out_of_time)
            if step % log_every == 0 or step == steps or check:
                row: dict[str, Any] = dict(
                    step=step,
                    d_real=d_real.item(),
                    d_fake=d_fake.item(),
                    r1=r1.item(),
                    adversarial=adversarial.item(),
                    style=style.item(),
                    diversity=diversity.item(),
                    cycle=cycle.item(),
                    classifier=cls.item() if classifier is not None else float("nan"),
                    identity=identity.item(),
                    sparsity=group.item(),
                    sparsity_weight=sparsity_weight,
                    generator_total=g_total.item(),
                    discriminator_total=d_total.item(),
                    batch_flip_rate=flip_rate,
                    seconds=seconds_before + time.perf_counter() - t0,
                )
                row.update({k: float("nan") for k in M.CHECK_COLUMNS}, check_top_channel=None)
                if check:
                    row.update(run_check(step))
                    if step >= min_steps:
                        checks = pd.DataFrame(rows + [row])
                        wait = patience
                        if pruned_at is not None:  # after pruning, a plateau of the pruned network's checks
                            checks = checks[checks["step"] >= pruned_at]
                            wait = refine_patience
                        stop = M.stop_reason(checks, patience=wait)
                        weights_at_checks = checks.loc[checks["check_score"].notna(), "sparsity_weight"]
                        # no plateau before the data-chosen penalty is in force (on real images the change
                        # concentrates only after it arms); without gates it must also have settled
                        settled = sparse.armed and (pruning or M.weight_settled(weights_at_checks, patience))
                        stop = None if sparse.auto and not settled else stop
                        if stop and pruning and pruned_at is None and prune_best(step):
                            row.update(run_check(step))  # the pruned network's check (a candidate for the best)
                            pruned_at, stop = step, None
                rows.append(row)
                bar.set_postfix(M.progress_postfix(rows))
            bar.update(1)
            elapsed = seconds_before + time.perf_counter() - t0
            if stop is None and out_of_time:
                stop = f"time budget of {time_budget} s spent"
            if stop is not None:
                say(f"generator: stopped at step {step} ({stop})")
                break
            if step % checkpoint_every == 0 and step < steps:
                save_checkpoint(step, elapsed)
                say(f"generator: checkpoint at step {step} in {ckpt_path}")
        trained = max(step, start_step)
        if pruning and pruned_at is None and rows and prune_best(trained):
            # out of steps or time before a plateau: the best network, pruned, is checked once more
            rows.append({**rows[-1], **run_check(trained)})
            pruned_at = trained
        seconds = seconds_before + time.perf_counter() - t0
        save_checkpoint(trained, seconds)
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
        network.discriminator.requires_grad_(True)
        for p, flag in flags:
            p.requires_grad_(flag)
    quality: dict = {}
    if best["state"] is not None:
        network.load_state_dict(best["state"])
        chosen = best["row"]
        quality = {
            "held_out_flip_rate": chosen["check_flip_rate"],
            "held_out_concentration": chosen["check_concentration"],
            "held_out_top_channel": chosen["check_top_channel"],
            "held_out_realism_gap": chosen["check_realism_gap"],
            "held_out_mean_change": chosen["check_mean_change"],
            "held_out_change_share": chosen["change_share"],
            "best_step": int(chosen["step"]),
            "stopped_at": int(trained),
            "stop_reason": stop or ("maximum steps reached" if trained >= steps else "interrupted"),
            "usable": bool(chosen["check_flip_rate"] >= flip_target),
            "n_held_out": int(held_rows.numel()),
            "sparsity_weight": float(sparse.value),
            "open_channels": network.open_channels(),
            "gates_pruned": bool(pruning),
            "pruned_at_step": pruned_at,
            "good_values": dict(M.GOOD_VALUES),
        }
    network.eval()
    log_table = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    return GeneratorTraining(
        network=network, log=log_table, steps=trained, seconds=seconds, settings=settings, quality=quality
    )
