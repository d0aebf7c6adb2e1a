"""Decompose a classifier's decision by channel and by compartment, and link it to CellProfiler.

- :func:`channel_shapley` — exact (or sampled) Shapley values of channels or channel groups
  for ``p(target | x)``, with the counterfactual (or a zero / mean / blurred image) as baseline.
- :func:`compartment_mass` — attribution mass per compartment (nuclei, cytoplasm,
  background) and channel, and per object (keyed like CellProfiler's per-object tables).
- :func:`labels_from_outlines`, :func:`segment_cells`, :func:`match_objects` — label images
  from CellProfiler outline images, or a built-in nuclei + cells segmentation.
- The per-cell link of this mass to CellProfiler features is
  :func:`chanstat.cellprofiler.attribution_feature_link` (it reads CellProfiler tables).

Names load on first use: only :func:`channel_shapley` imports torch.
"""

from __future__ import annotations

from chanstat._exports import lazy

_EXPORTS = {
    "channel_shapley": "shapley",
    "ChannelShapleyResult": "shapley",
    "shapley_from_values": "shapley",
    "interactions_from_values": "shapley",
    "MAX_EXACT_PLAYERS": "shapley",
    "BASELINES": "shapley",
    "compartment_mass": "compartments",
    "CompartmentMass": "compartments",
    "compartment_labels": "compartments",
    "labels_from_outlines": "segmentation",
    "segment_cells": "segmentation",
    "match_objects": "segmentation",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy(__name__, _EXPORTS)
