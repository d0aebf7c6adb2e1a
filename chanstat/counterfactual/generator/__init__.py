"""Learned counterfactuals: a StarGAN-v2-style conversion network trained on the user's images.

::

    from chanstat.counterfactual import generate_counterfactuals
    from chanstat.counterfactual.generator import train_generator, save_generator, load_generator

    training = train_generator(dataset, model, steps=2000, seed=0, checkpoint_dir="ckpt")
    training.log                     # step, d_real, d_fake, r1, adversarial, style, ... per logged step
    save_generator(training.network, "generator.pt")
    result = generate_counterfactuals(dataset, "generator", model=model, generator=training.network)
    result.quality                   # + n_candidates, n_accepted, candidate, candidate_change, ...

Modules: ``networks`` (generator with AdaIN, mapping network, style encoder, multi-class
discriminator), ``losses`` (adversarial + R1, style reconstruction, diversity, cycle,
classifier, identity), ``training`` (:func:`train_generator`, checkpoints, resume,
:func:`save_generator` / :func:`load_generator`), ``candidates`` (QuAC-style selection),
``provider`` (the ``"generator"`` provider).

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
from chanstat.counterfactual.generator.losses import LossWeights
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
    "CANDIDATE_COLUMNS", "CHECKPOINT_FOLDER", "GENERATOR_FILE", "LOG_COLUMNS", "LOG_FILE", "ConversionNetwork",
    "GeneratorCounterfactuals", "GeneratorTraining", "LossWeights", "generator_summary", "load_generator",
    "save_generator", "select_counterfactuals", "train_generator",
]
