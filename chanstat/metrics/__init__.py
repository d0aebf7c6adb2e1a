"""Localisation and faithfulness of attribution maps, per channel and overall.

Every verb returns a tidy :class:`pandas.DataFrame` with a ``channel`` column: ``"all"`` for
the figure over all (channel, pixel) elements, else a channel name for the figure computed on
that channel alone (maps and masks restricted to channel k; for the perturbation metrics only
channel k's elements are perturbed). Channel-agnostic maps, (N, 1, H, W), are broadcast to
every channel and their rows say ``channel_resolved = False``.

- :func:`pxap` — pixel average precision against ground-truth masks.
- :func:`localisation` — PxAP, Dice and mIoU at a validation-chosen threshold, pointing game,
  relevance mass and relevance rank accuracy.
- :func:`deletion`, :func:`insertion` — perturbation curves and their AUC.
- :func:`road` — remove-and-debias with the noisy linear imputer (MoRF and LeRF).
- :func:`randomisation_check` — cascading model-parameter randomisation, Spearman per layer.
"""

from chanstat.metrics.faithfulness import deletion, insertion, road
from chanstat.metrics.imputation import linear_impute, noisy_linear_impute
from chanstat.metrics.localisation import localisation, pxap
from chanstat.metrics.randomisation import randomisable_layers, randomisation_check

__all__ = [
    "pxap",
    "localisation",
    "deletion",
    "insertion",
    "road",
    "randomisation_check",
    "randomisable_layers",
    "linear_impute",
    "noisy_linear_impute",
]
