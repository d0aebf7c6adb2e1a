"""Attribution mass per compartment and channel, and per object.

The compartments follow CellProfiler: nuclei (primary objects), cells (secondary objects grown
from the nuclei), cytoplasm = cell minus nucleus (tertiary objects, numbered like their cell),
and the background outside every cell. Per image the pixels are split into the disjoint
compartments nuclei / cytoplasm / background, so the compartment masses of a channel add up to
its :func:`chanstat.stats.channel_mass`.

This module does not import torch (maps are read with ``numpy.asarray``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from chanstat.objects import compartment_labels  # noqa: F401  (the decompose API)
from chanstat.vocabulary import mass_transform

#: Disjoint compartments of the per-image table, in this order.
PARTITION = ("nuclei", "cytoplasm", "background")
#: Compartments of the per-object table (cells overlap nuclei and cytoplasm, as in CellProfiler).
OBJECT_COMPARTMENTS = ("nuclei", "cytoplasm", "cells")
COMPARTMENT_COLUMNS = ["sample", "compartment", "channel", "mass", "share", "area_fraction"]
OBJECT_COLUMNS = ["sample", "compartment", "object", "cell", "channel", "mass", "area"]


@dataclass
class CompartmentMass:
    """What :func:`compartment_mass` returns.

    Attributes
    ----------
    compartments : pandas.DataFrame
        One row per sample, compartment (``nuclei``, ``cytoplasm``, ``background``) and
        channel: ``sample`` (int64), ``compartment`` (string), ``channel`` (string), ``mass``
        (float64, sum of ``|a|`` over the compartment's pixels), ``share`` (mass / the sample's
        total over every compartment and channel; NaN when that total is 0),
        ``area_fraction`` (the compartment's fraction of the image's pixels), then every
        ``meta`` column.
    objects : pandas.DataFrame
        One row per sample, object and channel for compartments ``nuclei``, ``cytoplasm`` and
        ``cells``: ``sample``, ``compartment``, ``object`` (int64, the object's label id in its
        own label image = CellProfiler's ObjectNumber; a cytoplasm is numbered like its
        cell), ``cell`` (int64, id of the cell the object belongs to; 0 for a nucleus outside
        every cell), ``channel``, ``mass``, ``area`` (pixels), then every ``meta`` column
        (e.g. ``Metadata_ImageNumber`` for the join on ImageNumber + ObjectNumber).
    """

    compartments: pd.DataFrame
    objects: pd.DataFrame


def _pick(labels: Mapping[str, np.ndarray], key: str):
    for k, v in labels.items():
        if str(k).lower() == key:
            return v
    return None


def _check_objects(labels, n: int, hw: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not isinstance(labels, Mapping):
        raise TypeError(
            f"objects must map a compartment name ('nuclei', 'cells') to label images; got {type(labels).__name__}"
        )
    unknown = [k for k in labels if str(k).lower() not in ("nuclei", "cells")]
    if unknown:
        raise ValueError(
            f"objects has unknown compartment(s) {unknown}; give 'nuclei' and/or 'cells' "
            "(cytoplasm and background are derived)"
        )
    out = []
    for key in ("nuclei", "cells"):
        value = _pick(labels, key)
        if value is not None:
            value = np.asarray(value)
            if value.shape != (n,) + hw:
                raise ValueError(
                    f"objects[{key!r}] must have shape {(n,) + hw} (N, H, W) like the maps; got {value.shape}"
                )
            if value.dtype.kind not in "iub":
                raise TypeError(f"objects[{key!r}] must hold integer label ids; got dtype {value.dtype}")
            if value.size and value.min() < 0:
                raise ValueError(f"objects[{key!r}] holds negative label ids")
        out.append(value)
    if out[0] is None and out[1] is None:
        raise ValueError("objects holds neither 'nuclei' nor 'cells'")
    return out[0], out[1]


def _repeat_meta(meta: pd.DataFrame | None, rows_per_sample: np.ndarray) -> pd.DataFrame | None:
    if meta is None:
        return None
    return meta.loc[np.repeat(np.arange(len(meta)), rows_per_sample)].reset_index(drop=True)


def compartment_mass(
    maps,
    objects: Mapping[str, np.ndarray],
    channels: Sequence[str] | None = None,
    meta: pd.DataFrame | None = None,
    *,
    transform: str = "absolute",
    method: str | None = None,
) -> CompartmentMass:
    """Attribution mass per compartment and channel, and per object.

    Parameters
    ----------
    maps : array-like (N, C, H, W), or dict of method name to such arrays
        Attribution maps (numpy or torch). A channel-agnostic map (N, 1, H, W) gets channel
        ``"all"`` unless ``channels`` names it. A dict gives both tables a ``method`` column,
        as :func:`chanstat.stats.channel_mass` does.
    objects : mapping of ``"nuclei"`` and/or ``"cells"`` to int label images (N, H, W)
        From CellProfiler (:func:`~chanstat.decompose.labels_from_outlines`), the synthetic
        generator (``imageset.objects``) or :func:`~chanstat.decompose.segment_cells`.
        Cytoplasm = cell minus nucleus; background = outside cells and nuclei.
    channels : list of str, optional
        Channel names (default ``ch0, ch1, ...``).
    meta : DataFrame, N rows, optional
        Per-image metadata; every column is carried into both tables (row i describes sample
        i). A ``sample`` column, when present, gives the sample ids.
    transform : {"absolute", "positive", "signed"}
        Sum ``|a|`` (default, as :func:`chanstat.stats.channel_mass`), its positive part, or the
        signed values (:data:`chanstat.vocabulary.MASS_TRANSFORMS`).
    method : str, optional
        For an array ``maps``: the value of a ``method`` column in both tables (none when left out).

    Returns
    -------
    CompartmentMass
        ``.compartments`` (sample, compartment, channel, mass, share, area_fraction + meta) and
        ``.objects`` (sample, compartment, object, cell, channel, mass, area + meta).
    """
    if isinstance(maps, Mapping):
        if method is not None:
            raise ValueError("method= names the method of an array; a dict of maps is keyed by method already")
        parts = [
            compartment_mass(m, objects, channels, meta, transform=transform, method=str(name))
            for name, m in maps.items()
        ]
        if not parts:
            raise ValueError("maps is an empty dict")
        return CompartmentMass(
            compartments=pd.concat([p.compartments for p in parts], ignore_index=True),
            objects=pd.concat([p.objects for p in parts], ignore_index=True),
        )
    convert = mass_transform(transform)
    a = np.asarray(maps)
    if a.ndim != 4:
        raise ValueError(f"maps must have shape (N, C, H, W); got {a.shape}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"maps must hold real numbers; got dtype {a.dtype}")
    n, c, h, w = a.shape
    if channels is None:
        names = ["all"] if c == 1 else [f"ch{k}" for k in range(c)]
    else:
        names = [str(ch) for ch in channels]
        if len(names) != c or len(set(names)) != c:
            raise ValueError(f"channels must be {c} unique names for the maps' {c} channels; got {names}")
    if not np.isfinite(a).all():
        raise ValueError(f"maps hold {int((~np.isfinite(a)).sum())} NaN/inf values")
    if meta is not None:
        if not isinstance(meta, pd.DataFrame):
            raise TypeError(f"meta must be a pandas DataFrame; got {type(meta).__name__}")
        if len(meta) != n:
            raise ValueError(f"meta has {len(meta)} rows but the maps hold {n} samples")
        meta = meta.reset_index(drop=True)
    sample_ids = meta["sample"].to_numpy() if meta is not None and "sample" in meta.columns else np.arange(n)
    extra = None if meta is None else meta.drop(columns=["sample"], errors="ignore")
    nuclei_all, cells_all = _check_objects(objects, n, (h, w))

    comp_mass = np.zeros((n, len(PARTITION), c))
    comp_area = np.zeros((n, len(PARTITION)))
    object_blocks, object_rows = [], np.zeros(n, np.int64)
    for i in range(n):
        value = convert(a[i])
        value = value.reshape(c, -1).astype(np.float64)
        regions = compartment_labels(
            None if nuclei_all is None else nuclei_all[i], None if cells_all is None else cells_all[i]
        )
        nuc, cyt, cel = regions["nuclei"], regions["cytoplasm"], regions["cells"]
        region = np.where(nuc > 0, 0, np.where(cel > 0, 1, 2)).ravel()  # index into PARTITION
        comp_area[i] = np.bincount(region, minlength=3) / region.size
        for k in range(c):
            comp_mass[i, :, k] = np.bincount(region, weights=value[k], minlength=3)
        blocks = []
        for compartment, lab in (("nuclei", nuc), ("cytoplasm", cyt), ("cells", cel)):
            flat = lab.ravel()
            ids = np.unique(flat)
            ids = ids[ids > 0]
            if ids.size == 0:
                continue
            size = int(flat.max()) + 1
            area = np.bincount(flat, minlength=size)[ids]
            mass = np.stack([np.bincount(flat, weights=value[k], minlength=size)[ids] for k in range(c)], axis=1)
            cell = regions["nucleus_cell"][ids] if compartment == "nuclei" else ids
            blocks.append(
                pd.DataFrame(
                    {
                        "compartment": compartment,
                        "object": np.repeat(ids, c),
                        "cell": np.repeat(cell, c),
                        "channel": np.tile(np.asarray(names, dtype=object), ids.size),
                        "mass": mass.ravel(),
                        "area": np.repeat(area, c),
                    }
                )
            )
        if blocks:
            block = pd.concat(blocks, ignore_index=True)
            block.insert(0, "sample", sample_ids[i])
            object_blocks.append(block)
            object_rows[i] = len(block)

    total = comp_mass.sum(axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total != 0, comp_mass / np.where(total != 0, total, 1.0), np.nan)
    per_sample = len(PARTITION) * c
    compartments = pd.DataFrame(
        {
            "sample": np.repeat(sample_ids, per_sample),
            "compartment": pd.array(np.tile(np.repeat(np.asarray(PARTITION, dtype=object), c), n), dtype="string"),
            "channel": pd.array(np.tile(np.asarray(names, dtype=object), n * len(PARTITION)), dtype="string"),
            "mass": comp_mass.ravel(),
            "share": share.ravel(),
            "area_fraction": np.repeat(comp_area.ravel(), c),
        }
    )
    if extra is not None:
        compartments = pd.concat([compartments, _repeat_meta(extra, np.full(n, per_sample))], axis=1)

    if object_blocks:
        object_table = pd.concat(object_blocks, ignore_index=True)
        object_table = object_table.astype({"object": "int64", "cell": "int64", "area": "int64", "mass": "float64"})
        if extra is not None:
            object_table = pd.concat([object_table, _repeat_meta(extra, object_rows)], axis=1)
    else:
        object_table = pd.DataFrame(
            {
                c_: pd.Series(dtype=t)
                for c_, t in zip(OBJECT_COLUMNS, ["int64", "string", "int64", "int64", "string", "float64", "int64"])
            }
        )
        if extra is not None:
            object_table = pd.concat([object_table, extra.iloc[:0]], axis=1)
    object_table["compartment"] = object_table["compartment"].astype("string")
    object_table["channel"] = object_table["channel"].astype("string")
    if method is not None:
        compartments.insert(1, "method", pd.array([method] * len(compartments), dtype="string"))
        object_table.insert(1, "method", pd.array([method] * len(object_table), dtype="string"))
    return CompartmentMass(compartments=compartments, objects=object_table)
