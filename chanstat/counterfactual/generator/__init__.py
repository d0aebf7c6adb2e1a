"""Learned counterfactuals: a StarGAN-v2-style conversion network trained on the user's images.

::

    from chanstat.counterfactual import generate_counterfactuals
    from chanstat.counterfactual.generator import train_generator, save_generator, load_generator

    training = train_generator(dataset, model, seed=0, checkpoint_dir="ckpt")   # device profile, stopping rule
    training.log                     # step, d_real, d_fake, r1, adversarial, style, ..., check_* per logged step
    training.quality                 # held-out flip rate, concentration, realism gap of the kept network
    save_generator(training.network, "generator.pt")
    result = generate_counterfactuals(dataset, "generator", model=model, generator=training.network)
    result.quality                   # + n_candidates, n_accepted, candidate, candidate_change, ...

Modules: ``networks`` (generator with AdaIN, mapping network, style encoder, multi-class
discriminator), ``losses`` (adversarial + R1, style reconstruction, diversity, cycle,
classifier, identity, channel sparsity and its per-class reweighting), ``gates`` (data-chosen per-(target class, channel)
gates: the fewest changed channels that keep the held-out flip rate), ``training`` (:func:`train_generator`, checkpoints,
resume, :func:`save_generator` / :func:`load_generator`), ``monitor`` (held-out checks,
checkpoint score, stopping rule, data-chosen sparsity weight), ``defaults`` (CPU / CUDA
profiles), ``candidates`` (QuAC-style selection), ``provider`` (the ``"generator"`` provider).

Good values (held-out, written to ``training.quality`` and the counterfactual stage's
provenance as ``generator_quality``): flip rate >= 0.9; concentration (largest channel's
share of the change) >= 0.8 when the classes differ in one channel; realism gap <= 0.5.
``open_channels`` lists, per target class, the channels the conversion may change (the rest
were closed because the held-out flip rate stayed >= ``flip_target`` without them).

How to judge a generator: the quality table's flip rate (share of images whose kept
candidate the classifier assigns to the target) and ``change_share`` per channel (where the
change went: with a phenotype in one channel most of it should be there), ``n_accepted``
(how many candidates flip: 0 for many images means the network has not learnt the
conversion), the training log (classifier loss falling, identity loss small, adversarial
losses of generator and discriminator both bounded), DAC of the ``residual`` baseline (the
change itself as a map: it should score well when the change is where the class
difference is), and a few galleries of real / counterfactual / difference images. A larger
``identity`` weight gives smaller, sparser changes (less realism, fewer flips); a smaller
one more realistic but more spread-out changes.
"""

from chanstat.counterfactual.generator.candidates import CANDIDATE_COLUMNS, select_counterfactuals
from chanstat.counterfactual.generator.defaults import PROFILES, training_profile
from chanstat.counterfactual.generator.losses import LossWeights
from chanstat.counterfactual.generator.monitor import CHECK_COLUMNS, GOOD_VALUES, held_out_quality
from chanstat.counterfactual.generator.networks import ConversionNetwork, load_generator, save_generator
from chanstat.counterfactual.generator.provider import (
    CHECKPOINT_FOLDER,
    GENERATOR_FILE,
    LOG_FILE,
    GeneratorCounterfactuals,
    generator_summary,
)
from chanstat.counterfactual.generator.training import (
    LOG_COLUMNS,
    GeneratorTraining,
    train_generator,
)

__all__ = [
    "CANDIDATE_COLUMNS",
    "CHECKPOINT_FOLDER",
    "CHECK_COLUMNS",
    "GENERATOR_FILE",
    "GOOD_VALUES",
    "LOG_COLUMNS",
    "LOG_FILE",
    "PROFILES",
    "ConversionNetwork",
    "GeneratorCounterfactuals",
    "GeneratorTraining",
    "LossWeights",
    "generator_summary",
    "held_out_quality",
    "load_generator",
    "save_generator",
    "select_counterfactuals",
    "train_generator",
    "training_profile",
]
