"""chanstat's one vocabulary: argument names, shared defaults and the words tables use.

Every public verb takes its arguments under these names and with these defaults;
``tests/test_vocabulary.py`` reads every public signature and fails on a synonym listed in
:data:`SYNONYMS` or on a default that differs from :data:`DEFAULTS`. Torch-free.

Names
-----
``images``                 real images (N, C, H, W)
``target``                 the class of each real image (what a method explains)
``counterfactuals``        counterfactual images (N, C, H, W), same cells, other class
``counterfactual_target``  the class of each counterfactual
``maps``                   attribution maps (N, C, H, W) or (N, 1, H, W)
``channels``               channel names, in the order of axis 1
``objects``                object label images by compartment (``{"nuclei": ..., "cells": ...}``)
``samples``                data-set rows (sample ids) a verb works on; ``sample`` is the column holding them
``device``                 where tensors go (default: the model's device)
``n_boot``, ``ci``, ``padjust``, ``alpha``   bootstrap resamples, interval level, p-value adjustment, test level
``well``, ``plate``        metadata columns of the unit of replication and of its batch
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: Bootstrap resamples of every interval and resampling test.
N_BOOT = 2000
#: Level of every interval.
CI = 0.95
#: Level of every test and confidence set.
ALPHA = 0.05
#: p-value adjustment of a confirmatory family (channels, transitions): Holm, the family-wise error.
PADJUST = "holm"
#: p-value adjustment of a screen (hundreds of features or perturbations, where a few false
#: leads are acceptable and Holm would find nothing): Benjamini-Hochberg, the false discovery rate.
PADJUST_SCREEN = "bh"
#: The verbs that screen, and so default to :data:`PADJUST_SCREEN`; every other verb uses :data:`PADJUST`.
SCREENING_VERBS = frozenset({"differential", "activity", "attribution_feature_link"})
#: Metadata columns that identify a well (the unit of replication: wells are numbered within a plate).
WELL = ("Metadata_Plate", "Metadata_Well")
#: The metadata column of the plate (the batch wells are nested in).
PLATE = "Metadata_Plate"

#: The shared defaults, by argument name (checked against every public signature). ``well`` /
#: ``plate`` may also default to None where a verb's rows need not come from wells (then each row
#: is a unit unless they are given).
DEFAULTS = {"n_boot": N_BOOT, "ci": CI, "alpha": ALPHA, "padjust": PADJUST, "well": WELL, "plate": PLATE}
#: Arguments that are keyword-only in every public verb (never positional: their order is not meaningful).
KEYWORD_ONLY = ("n_boot", "ci", "alpha", "padjust")

#: How a transition between two classes is written everywhere (tables, report, logs).
TRANSITION_ARROW = " → "


def transition(source: str, destination: str) -> str:
    """``"control → treated"``: the one spelling of a class transition."""
    return f"{source}{TRANSITION_ARROW}{destination}"


#: How a map becomes mass: ``|a|`` (default), its positive part, or the signed value.
MASS_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "absolute": np.abs,
    "positive": lambda a: np.maximum(a, 0),
    "signed": lambda a: a,
}


def mass_transform(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The map transform called ``name`` (one of :data:`MASS_TRANSFORMS`)."""
    try:
        return MASS_TRANSFORMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"transform must be one of {list(MASS_TRANSFORMS)}; got {name!r}") from None


#: Argument names that must not appear in a public signature, and the name to use instead.
SYNONYMS = {
    "counterfactual_labels": "counterfactual_target",
    "target_labels": "counterfactual_target",
    "target_label": "counterfactual_target",
    "cf_target": "counterfactual_target",
    "sample_ids": "samples (rows) or sample (the id column)",
    "label_images": "objects",
    "level": "unit",
    "n_bootstrap": "n_boot",
    "n_resamples": "n_boot",
    "p_adjust": "padjust",
    "correction": "padjust",
    "positive_only": "transform",
    "absolute": "transform",
    "attributions": "maps",
    "attribution_maps": "maps",
    "imgs": "images",
}
