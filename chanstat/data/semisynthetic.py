"""Semi-synthetic two-class sets from real images: plant a known phenotype in one channel.

A single real field of view (one well, one condition) cannot test a classifier or an
attribution method: there is no class difference. :func:`plant` makes one. It takes real tiles,
locates the cells, and for half of the tiles changes one channel inside the cells in a
controlled way (brighter, or with added punctate spots). Everything else -- the cells, their
shapes, the other four stains, the camera noise -- stays real. Because the change is known
exactly, each tile's *oracle counterfactual* is simply its other version (planted <-> unplanted),
and ``signal_masks`` say exactly which pixels of which channel carry the class difference.

Replication: a single field has no wells to replicate over, so tiles are grouped into
**pseudo-wells by spatial block** (the field is cut into a grid of blocks; every tile goes to the
block holding its centre). ``Metadata_Well`` becomes ``<well>_b<k>`` (e.g. ``C03_b0``), and the
original well is kept in ``Metadata_SourceWell``. Pseudo-wells are neighbouring regions of one
well: they share the well's staining and imaging, so they are *not* independent biological
replicates -- they only make well-grouped code paths (validation splits, per-well statistics)
runnable on a single field.
"""

from __future__ import annotations

from typing import Sequence, cast

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from chanstat.data.imageset import ImageSet

KINDS = ("intensity", "texture")
CELL_SOURCES = ("auto", "dna", "objects")
ASSIGNMENTS = ("tile", "well")


def locate_cells(
    dna: np.ndarray,
    dilation: int = 8,
    threshold: float | str = "otsu",
    min_nucleus_area: int = 30,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Nuclei by a global threshold on DNA, and cells by growing each nucleus.

    Parameters
    ----------
    dna : array, shape (N, H, W) -- the DNA channel of every tile.
    dilation : pixels each nucleus is grown by (without merging neighbours:
        :func:`skimage.segmentation.expand_labels`) to cover the perinuclear cytoplasm.
    threshold : ``"otsu"`` (Otsu's threshold over all tiles pooled, so every tile uses the same
        cut) or a number in the images' units.
    min_nucleus_area : connected components smaller than this (pixels) are dropped as debris.

    Returns
    -------
    nuclei, cells : int32 arrays (N, H, W), label images (0 = background; labels per tile)
    threshold : the threshold used.
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import expand_labels

    dna = np.asarray(dna, dtype=np.float32)
    if dna.ndim != 3:
        raise ValueError(f"dna must have shape (N, H, W); got {dna.shape}")
    if threshold == "otsu":
        values = dna.ravel()
        if values.size > 2_000_000:  # a fixed, seeded subsample keeps Otsu fast on big sets
            values = np.random.default_rng(0).choice(values, 2_000_000, replace=False)
        if values.min() == values.max():
            raise ValueError("the DNA channel is constant: cannot locate nuclei by threshold")
        threshold = float(threshold_otsu(values))
    elif isinstance(threshold, str):
        raise ValueError(f"threshold must be 'otsu' or a number; got {threshold!r}")
    threshold = float(threshold)
    nuclei = np.zeros(dna.shape, np.int32)
    cells = np.zeros(dna.shape, np.int32)
    for i, plane in enumerate(dna):
        fg = plane > threshold
        if min_nucleus_area > 1:
            fg = remove_small_objects(fg, max_size=int(min_nucleus_area) - 1)
        nuc = label(fg).astype(np.int32)
        nuclei[i] = nuc
        cells[i] = expand_labels(nuc, distance=int(dilation)) if dilation > 0 else nuc
    return nuclei, cells, threshold


def _pseudo_wells(meta: pd.DataFrame, height: int, width: int, grid: tuple[int, int]) -> np.ndarray:
    """Block index (0 .. gy*gx-1) of every tile within its source field."""
    gy, gx = grid
    block = np.zeros(len(meta), dtype=np.int64)
    has_coords = {"Metadata_TileY", "Metadata_TileX"} <= set(meta.columns)
    source_cols = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_SourceImage") if c in meta]
    groups = meta[source_cols].astype(str).agg("|".join, axis=1).to_numpy()
    for g in pd.unique(groups):
        rows = np.flatnonzero(groups == g)
        if has_coords:
            cy = meta["Metadata_TileY"].to_numpy(float)[rows] + height / 2
            cx = meta["Metadata_TileX"].to_numpy(float)[rows] + width / 2
            extent_y = meta["Metadata_TileY"].to_numpy(float)[rows].max() + height
            extent_x = meta["Metadata_TileX"].to_numpy(float)[rows].max() + width
            by = np.minimum((cy / extent_y * gy).astype(int), gy - 1)
            bx = np.minimum((cx / extent_x * gx).astype(int), gx - 1)
            block[rows] = by * gx + bx
        else:  # no tile coordinates: contiguous runs in file order
            block[rows] = np.minimum(np.arange(rows.size) * (gy * gx) // max(rows.size, 1), gy * gx - 1)
    return block


def _spot_field(rng: np.random.Generator, mask: np.ndarray, density: float, sigma: float) -> np.ndarray:
    """Gaussian spots of peak height 1 at random positions inside ``mask``, cut to ``mask``."""
    inside = np.flatnonzero(mask)
    field = np.zeros(mask.shape, np.float64)
    if inside.size == 0:
        return field.astype(np.float32)
    n_spots = max(1, rng.poisson(density * inside.size))
    centres = rng.choice(inside, size=n_spots, replace=True)
    np.add.at(field.reshape(-1), centres, 1.0)
    # a unit impulse blurred with a normalised Gaussian peaks at 1 / (2 pi sigma^2)
    field = ndi.gaussian_filter(field, sigma, truncate=3.0) * (2 * np.pi * sigma**2)
    return (np.minimum(field, 1.0) * mask).astype(np.float32)


def plant(
    imageset: ImageSet,
    channel: str = "Mito",
    kind: str = "intensity",
    effect: float = 0.5,
    fraction: float = 0.5,
    cells: str = "auto",
    dna_channel: str = "DNA",
    dilation: int = 8,
    threshold: float | str = "otsu",
    min_nucleus_area: int = 30,
    min_cell_fraction: float = 0.05,
    spot_density: float = 0.01,
    spot_sigma: float = 1.0,
    pseudo_wells: int | Sequence[int] = (2, 2),
    assign: str = "tile",
    classes: Sequence[str] = ("control", "planted"),
    clip: bool = True,
    seed: int = 0,
) -> ImageSet:
    """Two-class semi-synthetic set: a known phenotype planted in one channel of half the tiles.

    Parameters
    ----------
    imageset : ImageSet of real tiles (N, C, H, W) with a single class.
    channel : the channel that carries the phenotype (e.g. ``"Mito"``).
    kind : ``"intensity"`` -- inside cells the channel is multiplied by ``1 + effect``;
        ``"texture"`` -- punctate spots (Gaussian, sigma ``spot_sigma`` px, peak ``effect`` in
        image units, ``spot_density`` spots per cell pixel) are added inside cells.
    effect : size of the change (see ``kind``); > -1 for intensity, != 0.
    fraction : share of tiles that get the phenotype (class ``classes[1]``).
    cells : where cells are: ``"objects"`` -- ``imageset.objects["cells"] > 0`` (user masks,
        e.g. from CellProfiler); ``"dna"`` -- Otsu threshold on ``dna_channel`` then each nucleus
        grown by ``dilation`` px (:func:`locate_cells`); ``"auto"`` -- objects when present.
    dna_channel, dilation, threshold, min_nucleus_area : see :func:`locate_cells`.
    min_cell_fraction : tiles whose cell area is below this fraction are dropped (a phenotype
        cannot be planted where there are no cells; keeping them would be label noise).
    pseudo_wells : grid ``(rows, cols)`` (or one number ``k`` for ``k x k``) of spatial blocks
        that become pseudo-wells (see the module docstring).
    assign : ``"tile"`` -- within every pseudo-well and site, ``fraction`` of the tiles are
        planted (both classes in every pseudo-well); ``"well"`` -- whole pseudo-wells are
        planted (``fraction`` of them), as treatments are assigned in a real screen.
    classes : names of the (unplanted, planted) classes.
    clip : keep planted values within the data set's range of that channel.
    seed : seeds which tiles are planted and where spots go.

    Returns
    -------
    ImageSet
        The kept tiles (M <= N), labels 0 = ``classes[0]`` / 1 = ``classes[1]``;
        ``counterfactuals`` = the other version of the same tile, ``counterfactual_target`` =
        the other class; ``signal_masks`` True where the planted channel differs between the two
        versions (False in every other channel); ``objects`` = the input's objects, with
        ``"nuclei"`` and ``"cells"`` replaced by the located ones when cells come from DNA.
        ``meta`` gains ``Metadata_SourceWell``, ``Metadata_PseudoWell`` (block index) and
        ``Metadata_CellFraction``; ``meta.attrs`` records ``planted_channel``, ``plant_kind``,
        ``plant_effect``, ``pseudo_wells``, ``plant_assign`` and ``dna_threshold``.
    """
    if len(imageset.classes) != 1 or bool((imageset.labels != 0).any()):
        raise ValueError(
            f"plant() takes tiles of a single condition; this set has classes {list(imageset.classes)} -- "
            "subset one condition first"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown phenotype kind {kind!r}; use one of {list(KINDS)}")
    if cells not in CELL_SOURCES:
        raise ValueError(f"cells must be one of {list(CELL_SOURCES)}; got {cells!r}")
    if assign not in ASSIGNMENTS:
        raise ValueError(f"assign must be one of {list(ASSIGNMENTS)}; got {assign!r}")
    effect = float(effect)
    if effect == 0 or (kind == "intensity" and effect <= -1):
        raise ValueError(f"effect must be non-zero (and > -1 for intensity); got {effect}")
    if not 0 < float(fraction) < 1:
        raise ValueError(f"fraction must lie strictly between 0 and 1; got {fraction}")
    classes = [str(k) for k in classes]
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"classes must be two distinct names; got {classes}")
    # casts: numpy's isscalar narrows to numpy/complex/str scalars, leaving a plain int on the other side
    grid: tuple[int, ...]
    if np.isscalar(pseudo_wells):
        grid = (int(cast(int, pseudo_wells)), int(cast(int, pseudo_wells)))
    else:
        grid = tuple(int(g) for g in cast(Sequence[int], pseudo_wells))
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"pseudo_wells must be k or [rows, cols] with positive entries; got {pseudo_wells}")
    target = imageset.channel_index(channel)[0]
    rng = np.random.default_rng(seed)
    n, c, h, w = imageset.shape

    # --- where the cells are
    objects: dict[str, np.ndarray] = {}
    use_objects = cells == "objects" or (cells == "auto" and imageset.objects and "cells" in imageset.objects)
    if use_objects:
        if not imageset.objects or "cells" not in imageset.objects:
            raise ValueError("cells='objects' needs imageset.objects['cells'] (label images of the cells)")
        cell_labels = np.asarray(imageset.objects["cells"], np.int32)
        objects = dict(imageset.objects)
        used_threshold = None
    else:
        dna = imageset.images[:, imageset.channel_index(dna_channel)[0]].numpy()
        nuclei, cell_labels, used_threshold = locate_cells(dna, dilation, threshold, min_nucleus_area)
        objects = {**(imageset.objects or {}), "nuclei": nuclei, "cells": cell_labels}
    cell_mask = cell_labels > 0
    cell_fraction = cell_mask.reshape(n, -1).mean(axis=1)
    keep = np.flatnonzero(cell_fraction >= float(min_cell_fraction))
    if keep.size < 2:
        raise ValueError(
            f"only {keep.size} of {n} tiles have a cell area >= {min_cell_fraction:.0%}; lower min_cell_fraction "
            "or check the DNA channel / masks"
        )

    # --- pseudo-wells and which tiles are planted
    meta = imageset.meta.iloc[keep].reset_index(drop=True).copy()
    block = _pseudo_wells(meta, h, w, grid)
    meta["Metadata_SourceWell"] = meta["Metadata_Well"].astype(str)
    meta["Metadata_PseudoWell"] = block
    meta["Metadata_Well"] = [f"{well}_b{b}" for well, b in zip(meta["Metadata_SourceWell"], block)]
    meta["Metadata_CellFraction"] = cell_fraction[keep]
    planted = np.zeros(keep.size, dtype=bool)
    if assign == "tile":
        units = meta[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].astype(str).agg("|".join, axis=1).to_numpy()
        for unit in pd.unique(units):
            rows = rng.permutation(np.flatnonzero(units == unit))
            exact = rows.size * float(fraction)
            n_planted = int(np.floor(exact)) + int(rng.random() < exact - np.floor(exact))
            planted[rows[:n_planted]] = True
    else:
        wells = meta[["Metadata_Plate", "Metadata_Well"]].astype(str).agg("|".join, axis=1).to_numpy()
        unique_wells = rng.permutation(pd.unique(wells))
        if unique_wells.size < 2:
            raise ValueError("assign='well' needs at least two pseudo-wells; increase pseudo_wells")
        n_planted = min(max(1, int(round(unique_wells.size * float(fraction)))), unique_wells.size - 1)
        planted = np.isin(wells, unique_wells[:n_planted])
    if planted.all() or not planted.any():
        raise ValueError(f"with {keep.size} tiles the planting left one class empty; use more tiles")

    # --- the two versions of every kept tile
    original = imageset.images[torch.as_tensor(keep)].clone()
    mask = torch.as_tensor(cell_mask[keep])
    plane = original[:, target]
    if kind == "intensity":
        changed_plane = plane * (1.0 + effect * mask.to(plane.dtype))
    else:
        spots = np.stack([_spot_field(rng, m, float(spot_density), float(spot_sigma)) for m in cell_mask[keep]])
        changed_plane = plane + effect * torch.as_tensor(spots)
    if clip:
        low, high = float(imageset.images[:, target].min()), float(imageset.images[:, target].max())
        changed_plane = changed_plane.clamp(low, high)
    with_phenotype = original.clone()
    with_phenotype[:, target] = changed_plane
    signal = torch.zeros(original.shape, dtype=torch.bool)
    signal[:, target] = changed_plane != plane

    is_planted = torch.as_tensor(planted)[:, None, None, None]
    images = torch.where(is_planted, with_phenotype, original)
    counterfactuals = torch.where(is_planted, original, with_phenotype)
    labels = planted.astype(np.int64)
    meta["Metadata_Class"] = [classes[k] for k in labels]
    meta.attrs.update(
        planted_channel=channel,
        plant_kind=kind,
        plant_effect=effect,
        pseudo_wells=list(grid),
        # the "wells" are spatial blocks of the same fields: every table and the report say so
        pseudo_replicates=f"{grid[0]} x {grid[1]} spatial blocks of each field (Metadata_Well), not independent wells",
        plant_assign=assign,
        dna_threshold=used_threshold,
    )
    result = ImageSet(
        images=images,
        channels=list(imageset.channels),
        labels=torch.from_numpy(labels),
        classes=classes,
        meta=meta,
        counterfactuals=counterfactuals,
        counterfactual_target=torch.from_numpy(1 - labels),
        signal_masks=signal,
        objects={k: np.asarray(v)[keep] for k, v in objects.items()},
    )
    result.meta.attrs.update(meta.attrs)  # ImageSet copies meta; keep the record explicit
    return result
