"""Provider ``"generator"``: counterfactuals from a conversion network trained on the data set."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from chanstat.counterfactual.base import CounterfactualProvider
from chanstat.counterfactual.generator.candidates import select_counterfactuals
from chanstat.counterfactual.generator.networks import ConversionNetwork, load_generator
from chanstat.counterfactual.generator.training import (
    LOG_COLUMNS,
    GeneratorTraining,
    train_generator,
)

GENERATOR_FILE = "generator.pt"
LOG_FILE = "generator_log.parquet"
CHECKPOINT_FOLDER = "generator_checkpoints"


class GeneratorCounterfactuals(CounterfactualProvider):
    """Counterfactuals from a StarGAN-v2-style conversion network (see :mod:`chanstat.counterfactual.generator`).

    Without ``generator`` one is trained on the data set (guided by the classifier unless
    ``loss = {classifier = 0}``); then every image gets ``n_latent + n_reference`` candidates
    and keeps the smallest change the classifier assigns to the target class.

    Parameters
    ----------
    generator : a trained :class:`ConversionNetwork`, or the path of a ``generator.pt``
        (:func:`save_generator`); None trains one.
    steps, train_batch_size, lr, architecture, augment, mixed_precision, checkpoint_every :
        training settings (:func:`train_generator`; ``architecture`` holds
        :class:`ConversionNetwork` keywords such as ``widths``, ``style_dim``). ``steps``,
        ``train_batch_size`` and ``architecture`` default to the device's profile (small and
        short on the CPU, full on CUDA; ``steps`` is the maximum, the stopping rule ends earlier).
    sparsity : channel-sparsity weight, ``"auto"`` (chosen from the flip rate), a number, or 0;
        unless 0, training also closes the per-(target class, channel) gates of channels the
        held-out conversions do not need (:mod:`~chanstat.counterfactual.generator.gates`).
    reweight : penalise each target class's small per-channel changes harder than its main one
        (iteratively reweighted group norm, :class:`~chanstat.counterfactual.generator.losses.ChannelReweighting`),
        so the change leaves the channels the conversion can do without.
    classifier_images : conversions per training batch the classifier loss sees (None: the
        device's profile, CPU 4 of 8, CUDA the whole batch).
    held_out, check_every, patience, min_steps, flip_target, time_budget : self-checking
        training (held-out share, check interval, plateau patience in checks, no stop before,
        flip rate of a usable generator, seconds of training at most); see :func:`train_generator`.
    threads : torch CPU threads while training (None: the current setting, at most the idle cores).
    loss : loss weights (``adversarial``, ``r1``, ``style``, ``diversity``, ``cycle``,
        ``classifier``, ``identity``); ``identity`` trades realism for minimal change.
    n_latent, n_reference : candidates per image from random latents / target-class references.
    seed : seeds training and candidate draws.
    checkpoint_dir : where training checkpoints go (``generator_checkpoint.pt``); with
        ``resume`` an interrupted training continues from there.

    The result's ``artifacts`` hold the network (``generator``, saved with
    ``network.save(path)``) and the training log (``generator_log``; empty for a given network).
    """

    name = "generator"
    needs_model = True
    description = "StarGAN-v2-style conversion network trained on the data; best of several candidates per image"

    def __init__(
        self,
        model=None,
        *,
        generator: ConversionNetwork | str | os.PathLike | None = None,
        steps: int | None = None,
        train_batch_size: int | None = None,
        lr: float = 1e-3,
        architecture: dict | None = None,
        loss: dict | None = None,
        augment: bool = True,
        mixed_precision: bool | str = "auto",
        checkpoint_every: int = 500,
        n_latent: int = 10,
        n_reference: int = 10,
        seed: int = 0,
        sparsity: float | str = "auto",
        reweight: bool = True,
        classifier_images: int | None = None,
        held_out: float = 0.15,
        check_every: int | None = None,
        patience: int | None = None,
        min_steps: int | None = None,
        flip_target: float = 0.9,
        time_budget: float | None = None,
        threads: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        **common,
    ):
        super().__init__(model, **common)
        if generator is not None and not isinstance(generator, (ConversionNetwork, str, os.PathLike)):
            raise TypeError(f"generator must be a ConversionNetwork or a path; got {type(generator).__name__}")
        if n_latent < 0 or n_reference < 0 or n_latent + n_reference < 1:
            raise ValueError(
                f"need n_latent, n_reference >= 0 and at least one candidate; got {n_latent}, {n_reference}"
            )
        self.generator = generator
        self.train_options = dict(
            steps=None if steps is None else int(steps),
            batch_size=None if train_batch_size is None else int(train_batch_size),
            lr=float(lr),
            architecture=dict(architecture or {}),
            augment=bool(augment),
            mixed_precision=mixed_precision,
            checkpoint_every=int(checkpoint_every),
            resume=bool(resume),
            sparsity=sparsity,
            reweight=bool(reweight),
            classifier_images=classifier_images,
            held_out=float(held_out),
            check_every=check_every,
            patience=patience,
            min_steps=min_steps,
            flip_target=float(flip_target),
            time_budget=time_budget,
            threads=threads,
            **dict(loss or {}),
        )
        self.n_latent, self.n_reference, self.seed = int(n_latent), int(n_reference), int(seed)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.training: GeneratorTraining | None = None
        self.network: ConversionNetwork | None = None

    def network_for(self, dataset) -> ConversionNetwork:
        """The given network (checked against the data set) or a newly trained one."""
        if self.generator is None:
            self.training = train_generator(
                dataset,
                self.model,
                seed=self.seed,
                device=self.device,
                checkpoint_dir=self.checkpoint_dir,
                progress=self.progress,
                **self.train_options,
            )
            network = self.training.network
        else:
            network = (
                self.generator if isinstance(self.generator, ConversionNetwork) else load_generator(self.generator)
            )
        for key, names in (("channels", dataset.channels), ("classes", dataset.classes)):
            stored = network.config.get(key)
            if stored is not None and list(stored) != list(names):
                raise ValueError(f"the generator was trained on {key} {stored}; the data set has {list(names)}")
        return network.to(self.device).eval()

    def _generate(self, dataset, target):
        targets = self.targets(dataset, target)
        network = self.network = self.network_for(dataset)
        counterfactuals, details = select_counterfactuals(
            network,
            self.model,
            dataset.images,
            targets,
            references=dataset.images,
            reference_labels=dataset.labels,
            n_latent=self.n_latent,
            n_reference=self.n_reference,
            confidence=self.confidence,
            seed=self.seed,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
        )
        info = {
            "n_candidates": int(self.n_latent + self.n_reference),
            "mean_accepted_candidates": float(details["n_accepted"].mean()),
            "any_accepted_rate": float((details["n_accepted"] > 0).mean()),
            "reference_share": float((details["candidate"] == "reference").mean()),
        }
        if self.training is not None:
            info.update(
                training_steps=self.training.steps,
                training_seconds=round(self.training.seconds, 2),
                training_profile=self.training.settings.get("profile"),
                # every resolved setting (profile defaults included) for provenance.json
                training_settings=dict(self.training.settings),
            )
            if self.training.quality:
                info["generator_quality"] = self.training.quality
        return counterfactuals, targets, details, info

    def artifacts(self) -> dict:
        """``generator`` (the network) and ``generator_log`` (training log; empty for a given network)."""
        if self.network is None:
            return {}
        log = self.training.log if self.training is not None else pd.DataFrame(columns=list(LOG_COLUMNS))
        return {"generator": self.network, "generator_log": log}


def generator_summary(training: GeneratorTraining | None) -> dict:
    """Plain numbers about a training run for provenance (last logged losses, steps, seconds)."""
    if training is None or not len(training.log):
        return {}
    last = training.log.iloc[-1]
    final = {
        k: float(last[k])
        for k in training.log.columns
        if k not in ("step", "seconds", "check_top_channel") and pd.api.types.is_numeric_dtype(training.log[k])
    }
    return {
        "steps": training.steps,
        "seconds": round(training.seconds, 2),
        "final": final,
        "quality": dict(training.quality),
    }


__all__ = ["GeneratorCounterfactuals", "GENERATOR_FILE", "LOG_FILE", "CHECKPOINT_FOLDER", "generator_summary"]
