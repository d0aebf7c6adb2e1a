"""Per-channel attribution maps (vanilla and discriminative) with one entry point.

>>> from chanstat.attribution import attribute, METHODS
>>> maps = attribute(model, images, labels, "d_ig",
...                  counterfactuals=cf_images, counterfactual_target=cf_labels)  # (N, C, H, W)

Methods live in one module per family; each module registers its methods in :data:`METHODS`
when imported. To add a family, write ``chanstat/attribution/<family>.py`` that calls
:func:`register` and add its module name to :data:`FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib

from chanstat.attribution.core import attribute
from chanstat.attribution.maps import (
    AGGREGATIONS,
    NORMALIZATIONS,
    aggregate_channels,
    cumulative_mass_threshold,
    normalize,
)
from chanstat.attribution.registry import METHODS, AttributionBatch, MethodSpec, get_method, register

#: Family modules imported (and so registered) with the package, in this order.
FAMILY_MODULES = ("gradients", "cam", "discriminative", "baselines", "pixelcam")

for _module in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "attribute",
    "METHODS",
    "MethodSpec",
    "AttributionBatch",
    "register",
    "get_method",
    "aggregate_channels",
    "normalize",
    "cumulative_mass_threshold",
    "AGGREGATIONS",
    "NORMALIZATIONS",
    "FAMILY_MODULES",
]
