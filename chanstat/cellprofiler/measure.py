"""CellProfiler-style features of synthetic (or any labelled) images, with cp-measure.

cp-measure re-implements CellProfiler's measurement modules as plain functions of a label
image and a pixel image. :func:`measure_synthetic` runs a chosen subset on every image of an
ImageSet, with the objects its generator drew (``objects["nuclei"]``, ``objects["cells"]``;
the cytoplasm is the cell minus its nucleus), and names the results the way CellProfiler
does (``Cells_Texture_Contrast_Mito_3_00_16``), so that the rest of this package parses them
like any real CellProfiler table.

This module must not import torch: images are read with ``numpy.asarray``, which works on
torch tensors without importing torch here.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from chanstat.objects import compartment_labels

#: Which measurement runs on which compartment by default: intensity everywhere, shape of
#: nuclei and cells, texture/granularity/colocalisation on whole cells. Chosen to keep a few
#: hundred 48-64 px tiles under a minute while covering every channel-resolved category.
DEFAULT_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    "intensity": ("Nuclei", "Cells", "Cytoplasm"),
    "sizeshape": ("Nuclei", "Cells"),
    "texture": ("Cells",),
    "granularity": ("Cells",),
    "correlation": ("Cells",),
    "radial_distribution": (),
}
COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
_CHANNEL_FAMILIES = ("intensity", "texture", "granularity", "radial_distribution")


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous 1..N labels and the original id of each (cp-measure wants 1..N)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels], ids


def _compartment_labels(nuclei: np.ndarray, cells: np.ndarray) -> dict[str, np.ndarray]:
    """Label images of nuclei, cells and cytoplasm, all numbered by their cell's id (nuclei
    outside any cell are dropped), as cp-measure measures them."""
    parts = compartment_labels(nuclei, cells)
    return {
        "Nuclei": parts["nucleus_cell"][parts["nuclei"]].astype(np.int32),
        "Cells": parts["cells"].astype(np.int32),
        "Cytoplasm": parts["cytoplasm"].astype(np.int32),
    }


def _channel_name(family: str, key: str, compartment: str, channel: str) -> str | None:
    """CellProfiler name of a cp-measure per-channel result (None: leave it out)."""
    parts = key.split("_")
    if family == "intensity":
        if parts[0] == "Location":  # positions, not phenotypes
            return None
        return f"{compartment}_{key}_{channel}"  # Intensity_MeanIntensity -> ..._DNA
    if family == "texture":  # AngularSecondMoment_3_00_16 -> Texture_AngularSecondMoment_DNA_3_00_16
        return f"{compartment}_Texture_{parts[0]}_{channel}_{'_'.join(parts[1:])}"
    if family == "granularity":  # Granularity_3 -> Granularity_3_DNA (scale before channel)
        return f"{compartment}_{key}_{channel}"
    if family == "radial_distribution":  # RadialDistribution_FracAtD_1of4 -> ..._FracAtD_DNA_1of4
        return f"{compartment}_{parts[0]}_{parts[1]}_{channel}_{'_'.join(parts[2:])}"
    return None


def _pair_name(key: str, compartment: str, first: str, second: str) -> str:
    """``Correlation_Pearson`` -> ``Correlation_Correlation_DNA_Mito``; ``_1``/``_2`` -> order."""
    parts = key.split("_")
    measurement = "Correlation" if parts[1] == "Pearson" else parts[1]
    if parts[-1] == "2":
        first, second = second, first
    return f"{compartment}_Correlation_{measurement}_{first}_{second}"


def measure_synthetic(
    imageset,
    measurements: Mapping[str, Sequence[str]] | None = None,
    channels: Sequence[str] | None = None,
    texture_scale: int = 3,
    gray_levels: int = 16,
    granularity_spectrum: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """Measure CellProfiler-style per-cell features on an ImageSet's images and objects.

    Parameters
    ----------
    imageset : ImageSet (or any object with ``images`` (N, C, H, W) array-like, ``channels``,
        ``meta`` (N rows) and ``objects`` with int label images ``"nuclei"`` and ``"cells"``
        of shape (N, H, W)).
    measurements : family -> compartments, families ``"intensity"``, ``"sizeshape"``,
        ``"texture"``, ``"granularity"``, ``"correlation"`` (Pearson, slope, Manders, RWC
        over every channel pair), ``"radial_distribution"``; compartments from
        ``Nuclei``, ``Cells``, ``Cytoplasm``. Default :data:`DEFAULT_MEASUREMENTS`.
    channels : channels to measure (default all of ``imageset.channels``).
    texture_scale : Haralick offset in pixels.
    gray_levels : grey levels of the texture co-occurrence matrix (appears in the name).
    granularity_spectrum : number of granularity scales (1..n).
    progress : show a progress bar over images.

    Returns
    -------
    pandas.DataFrame
        One row per cell: every column of ``imageset.meta``, ``Metadata_ImageNumber`` (image
        index), ``Metadata_ObjectNumber`` (cell id in its image), then features named
        ``Compartment_Category_Feature_Channel[_params]``. Objects missing a compartment
        (a cell without cytoplasm) have NaN there. Aggregate with
        :func:`~chanstat.cellprofiler.aggregate_wells` for well-level profiles.
    """
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    plan = {k: tuple(v) for k, v in (DEFAULT_MEASUREMENTS if measurements is None else measurements).items()}
    known = set(DEFAULT_MEASUREMENTS)
    unknown = [k for k in plan if k not in known]
    if unknown:
        raise ValueError(f"unknown measurement families {unknown}; known: {sorted(known)}")
    bad = sorted({c for comps in plan.values() for c in comps if c not in COMPARTMENTS})
    if bad:
        raise ValueError(f"unknown compartments {bad}; use {list(COMPARTMENTS)}")
    if not any(plan.values()):
        raise ValueError("no measurement selected")
    objects = getattr(imageset, "objects", None)
    if not objects or "nuclei" not in objects or "cells" not in objects:
        raise ValueError("the image set has no objects['nuclei'] and objects['cells'] label images to measure")
    images = np.asarray(imageset.images, dtype=np.float32)  # works on torch tensors without importing torch
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {images.shape}")
    all_channels = [str(c) for c in imageset.channels]
    chosen = all_channels if channels is None else [str(c) for c in channels]
    missing = [c for c in chosen if c not in all_channels]
    if missing:
        raise ValueError(f"unknown channels {missing}; the image set has {all_channels}")
    ch_idx = [all_channels.index(c) for c in chosen]
    nuclei_all, cells_all = np.asarray(objects["nuclei"]), np.asarray(objects["cells"])
    if nuclei_all.shape != images.shape[:1] + images.shape[2:] or cells_all.shape != nuclei_all.shape:
        raise ValueError(
            f"objects must have shape {images.shape[:1] + images.shape[2:]}; got "
            f"nuclei {nuclei_all.shape}, cells {cells_all.shape}"
        )
    meta = imageset.meta.reset_index(drop=True)
    if len(meta) != len(images):
        raise ValueError(f"meta has {len(meta)} rows for {len(images)} images")

    core = get_core_measurements(sanitize=False)
    corr = get_correlation_measurements(sanitize=False)
    channel_params: dict[str, dict[str, Any]] = {
        "intensity": {},
        "texture": {"scale": texture_scale, "gray_levels": gray_levels},
        "granularity": {
            "granular_spectrum_length": granularity_spectrum,
            "subsample_size": 0.5,
            "image_sample_size": 0.5,
        },
        "radial_distribution": {},
    }
    pair_functions = ("pearson", "manders_fold", "rwc")

    frames = []
    columns: list[str] | None = None
    for i in tqdm(range(len(images)), desc="cp-measure", disable=not progress):
        comps = _compartment_labels(nuclei_all[i], cells_all[i])
        cell_ids = np.unique(comps["Cells"])
        cell_ids = cell_ids[cell_ids > 0]
        if cell_ids.size == 0:
            continue
        row_of = {cid: r for r, cid in enumerate(cell_ids)}
        feats: dict[str, np.ndarray] = {}

        def put(
            name: str,
            ids: np.ndarray,
            values,
            feats: dict[str, np.ndarray] = feats,
            cell_ids: np.ndarray = cell_ids,
            row_of: dict = row_of,
        ) -> None:  # this image's (bound now)
            col = feats.setdefault(name, np.full(len(cell_ids), np.nan))
            col[[row_of[c] for c in ids]] = np.asarray(values, dtype=float)

        for compartment in COMPARTMENTS:
            families = [f for f, comps_ in plan.items() if compartment in comps_]
            if not families:
                continue
            labels, ids = _relabel(comps[compartment])
            if ids.size == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # empty radial bins etc. give NaN with a warning
                if "sizeshape" in families:
                    for key, values in core["sizeshape"](labels, None, calculate_advanced=False).items():
                        put(f"{compartment}_AreaShape_{key}", ids, values)
                for family in (f for f in families if f in _CHANNEL_FAMILIES):
                    for ch, c in zip(chosen, ch_idx):
                        for key, values in core[family](labels, images[i, c], **channel_params[family]).items():
                            name = _channel_name(family, key, compartment, ch)
                            if name is not None:
                                put(name, ids, values)
                if "correlation" in families:
                    for (a, ca), (b, cb) in itertools.combinations(list(zip(chosen, ch_idx)), 2):
                        for fname in pair_functions:
                            for key, values in corr[fname](
                                pixels_1=images[i, ca], pixels_2=images[i, cb], masks=labels
                            ).items():
                                put(_pair_name(key, compartment, a, b), ids, values)
        if columns is None:
            columns = list(feats)
        block = pd.DataFrame({c: feats.get(c, np.full(len(cell_ids), np.nan)) for c in columns})
        head = meta.iloc[[i] * len(cell_ids)].reset_index(drop=True)
        head["Metadata_ImageNumber"] = i
        head["Metadata_ObjectNumber"] = cell_ids.astype(np.int64)
        frames.append(pd.concat([head, block], axis=1))
    if not frames:
        raise ValueError("no image holds a labelled cell")
    return pd.concat(frames, ignore_index=True)
