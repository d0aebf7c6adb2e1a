"""Object label images from CellProfiler's outputs.

- :func:`labels_from_outlines` turns an outline image (``SaveImages`` of ``OverlayOutlines``)
  back into a label image;
- :func:`compartment_labels` gives nuclei, cytoplasm (cell minus nucleus) and cells, with the
  cell each nucleus belongs to, as CellProfiler's compartments;
- :func:`match_objects` renumbers its regions to CellProfiler's ObjectNumbers from the object
  centres of the per-object table.

Torch-free: the LoadData reader, :mod:`chanstat.decompose` and :mod:`chanstat.cellprofiler` use them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi


def labels_from_outlines(outlines: np.ndarray, min_area: int = 20, max_area: int | None = None) -> np.ndarray:
    """Label image from a CellProfiler outline image.

    Parameters
    ----------
    outlines : array (H, W) or (H, W, 3)
        Non-zero on object boundaries (any colour). Boundaries of touching objects may be shared.
    min_area : int
        Enclosed regions smaller than this (pixels) are gaps between outlines, not objects.
    max_area : int, optional
        Regions larger than this are background. By default the largest region is the
        background (objects cut by the image border and left open there merge into it).

    Returns
    -------
    numpy.ndarray (H, W), int32
        0 = background; objects 1..K in raster order of their first pixel. Outline pixels go
        to the object they bound (the nearest region within 2 pixels).
    """
    from skimage.segmentation import expand_labels

    o = np.asarray(outlines)
    if o.ndim == 3:
        o = o.reshape(o.shape[0], o.shape[1], -1).max(axis=2)
    if o.ndim != 2:
        raise ValueError(f"outlines must have shape (H, W) or (H, W, colours); got {np.asarray(outlines).shape}")
    boundary = o > 0
    # 4-connected regions: a one-pixel diagonal outline still separates them
    regions, n = ndi.label(~boundary)
    if n == 0:
        return np.zeros(o.shape, np.int32)
    area = np.bincount(regions.ravel())
    keep = area >= min_area
    keep[0] = False
    if max_area is None:
        keep[np.argmax(area[1:]) + 1] = False
    else:
        keep &= area <= max_area
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    objects = lut[regions]
    grown = expand_labels(objects, distance=2)
    return np.where(boundary & (objects == 0), grown, objects).astype(np.int32)


def match_objects(
    labels: np.ndarray, x: Sequence[float], y: Sequence[float], object_numbers: Sequence[int]
) -> np.ndarray:
    """Renumber a label image to the ObjectNumbers of a per-object table.

    Each table object takes the region whose centroid is nearest its centre
    (``Location_Center_X/Y``, pixels). Regions matched by no table row get numbers above the
    largest ObjectNumber, so they stay in the image without colliding.

    Parameters
    ----------
    labels : int array (H, W)
    x, y : sequences of float
        Object centres (column, row) from the table.
    object_numbers : sequence of int
        ObjectNumber of each centre.

    Returns
    -------
    numpy.ndarray (H, W), int64
    """
    lab = np.asarray(labels)
    xs, ys, numbers = np.asarray(x, float), np.asarray(y, float), np.asarray(object_numbers, np.int64)
    if not (len(xs) == len(ys) == len(numbers)):
        raise ValueError(
            f"x, y and object_numbers must have one entry per object; got {len(xs)}, {len(ys)}, {len(numbers)}"
        )
    ids = np.unique(lab)
    ids = ids[ids > 0]
    out = np.zeros(lab.shape, np.int64)
    if ids.size == 0:
        return out
    centres = np.asarray(ndi.center_of_mass(np.ones_like(lab), lab, ids))  # (K, 2) row, col
    new = np.zeros(int(lab.max()) + 1, np.int64)
    taken = set()
    for cx, cy, number in zip(xs, ys, numbers):
        order = np.argsort(np.hypot(centres[:, 0] - cy, centres[:, 1] - cx))
        free = [k for k in order if k not in taken]
        if free:
            taken.add(free[0])
            new[ids[free[0]]] = number
    next_id = int(numbers.max(initial=0)) + 1
    for k, region in enumerate(ids):
        if k not in taken:
            new[region] = next_id
            next_id += 1
    return new[lab]


def compartment_labels(nuclei: np.ndarray | None, cells: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-image label images of nuclei, cytoplasm and cells, and the cell of every nucleus.

    Parameters
    ----------
    nuclei, cells : int arrays (H, W) or None
        Label images (0 = no object). One of them may be missing.

    Returns
    -------
    dict with ``nuclei``, ``cytoplasm``, ``cells`` (int64 label images; cytoplasm numbered by
    cell) and ``nucleus_cell`` (int64 array: ``nucleus_cell[j]`` is the cell that nucleus ``j``
    overlaps most, 0 when none).
    """
    given = nuclei if nuclei is not None else cells
    if given is None:
        raise ValueError("compartment_labels needs nuclei or cells (or both); got neither")
    shape = given.shape
    nuc = np.zeros(shape, np.int64) if nuclei is None else np.asarray(nuclei, dtype=np.int64)
    cel = np.zeros(shape, np.int64) if cells is None else np.asarray(cells, dtype=np.int64)
    n_max, c_max = int(nuc.max(initial=0)), int(cel.max(initial=0))
    both = (nuc > 0) & (cel > 0)
    overlap = np.zeros((n_max + 1, c_max + 1), dtype=np.int64)
    np.add.at(overlap, (nuc[both], cel[both]), 1)
    nucleus_cell = overlap.argmax(axis=1)
    nucleus_cell[overlap.max(axis=1) == 0] = 0
    nucleus_cell[0] = 0
    return {
        "nuclei": nuc,
        "cytoplasm": np.where(nuc > 0, 0, cel),
        "cells": cel,
        "nucleus_cell": nucleus_cell,
    }
