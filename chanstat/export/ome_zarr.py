"""Attribution maps, DAC masks and counterfactuals as OME-Zarr images napari opens over the image.

One OME-Zarr image (OME-NGFF 0.5, written by ome-zarr) per exported sample, axes ``c, y, x``,
with the source image's pixel size (``meta.attrs["pixel_size"]`` of the data set, recorded by
the OME readers; 1 otherwise). Its channels, named in the OMERO metadata:

- ``<channel>``: the image itself;
- ``<channel> · counterfactual``: its counterfactual;
- ``<channel> · <method>``: every attribution map (``all · <method>`` for channel-agnostic methods);
- ``<channel> · <method>.<strategy> mask``: the optimal DAC masks, where the run stored them.

``napari <out>/<name>.ome.zarr`` (with the napari-ome-zarr plugin) shows them as channels over
the image. Torch-free: it reads the run directory only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from chanstat.rundir import RunDirectory

SEPARATOR = " · "
#: Display colours of the Cell Painting stains (hex RGB); other channels cycle through PALETTE.
STAIN_COLOURS = {
    "DNA": "0000FF",
    "ER": "00FF00",
    "RNA": "FFFF00",
    "AGP": "FF0000",
    "Mito": "FF00FF",
    "Brightfield": "FFFFFF",
    "all": "FFFFFF",
}
PALETTE = ("00FFFF", "FF8000", "8000FF", "80FF00", "FF0080", "0080FF")
PARTS = ("images", "counterfactuals", "attributions", "dac_masks")


def _run(run) -> RunDirectory:
    return run if isinstance(run, RunDirectory) else RunDirectory(run)


def safe_name(text: str) -> str:
    """A file-name-safe version of metadata text (anything but letters, digits, ``-``, ``.`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", str(text)).strip("_") or "x"


def _colour(channel: str, k: int) -> str:
    return STAIN_COLOURS.get(channel, PALETTE[k % len(PALETTE)])


def _rows_of(samples_attr, n: int) -> dict[int, int]:
    """sample -> row of a group whose rows are ``samples_attr`` (rows 0..n-1 are samples 0..n-1 without it)."""
    if samples_attr is None:
        return {i: i for i in range(n)}
    return {int(s): i for i, s in enumerate(samples_attr)}


def channel_layers(run: RunDirectory, sample: int, parts: Sequence[str] = PARTS) -> list[tuple[str, np.ndarray, str]]:
    """(name, (H, W) plane, colour) of every layer of one sample, in export order."""
    channels = list(run.channels)
    layers: list[tuple[str, np.ndarray, str]] = []
    dataset = run.array_names("dataset") if run.has("dataset") else []
    for part, suffix in (("images", ""), ("counterfactuals", f"{SEPARATOR}counterfactual")):
        if part in parts and part in dataset:
            planes = run.array("dataset", part, [sample])[0]
            layers += [(f"{ch}{suffix}", planes[k], _colour(ch, k)) for k, ch in enumerate(channels)]
    for group, label in (("attributions", ""), ("dac_masks", " mask")):
        if group not in parts or not run.has(group):
            continue
        group_samples = run.group_attrs(group).get("samples")
        for key in run.array_names(group):
            attrs = run.array_attrs(group, key)
            rows = _rows_of(attrs.get("samples", group_samples), run.array_shape(group, key)[0])
            if sample not in rows:
                continue
            maps = np.asarray(run.array(group, key, [rows[sample]])[0], dtype=np.float32)
            names = [str(c) for c in (attrs.get("channels") or [])]
            if len(names) != maps.shape[0]:
                names = (
                    ["all"]
                    if maps.shape[0] == 1
                    else channels
                    if len(channels) == maps.shape[0]
                    else [str(k) for k in range(maps.shape[0])]
                )
            layers += [(f"{ch}{SEPARATOR}{key}{label}", maps[k], _colour(ch, k)) for k, ch in enumerate(names)]
    return layers


def _omero(layers) -> dict:
    out = []
    for name, plane, colour in layers:
        finite = plane[np.isfinite(plane)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        out.append(
            {"label": name, "color": colour, "active": True, "window": {"min": lo, "max": hi, "start": lo, "end": hi}}
        )
    return {"channels": out}


def export_ome_zarr(
    run,
    out: str | Path | None = None,
    samples: Sequence[int] | None = None,
    parts: Sequence[str] = PARTS,
    max_samples: int | None = None,
) -> list[Path]:
    """Write each sample's image, counterfactual, maps and masks as one OME-Zarr image.

    Parameters
    ----------
    run : a :class:`~chanstat.rundir.RunDirectory` or its path.
    out : folder to write into (default ``<run>/export``); one ``<sample>_<plate>_<well>_s<site>.ome.zarr``
        per sample.
    samples : sample indices to export (default every image with an attribution map, else all).
    parts : which of ``images``, ``counterfactuals``, ``attributions``, ``dac_masks`` to include.
    max_samples : export at most this many (the first ones).

    Returns
    -------
    The paths written, in sample order.

    Raises
    ------
    ValueError
        Unknown parts or samples, a run with nothing to export.
    """
    import zarr
    from ome_zarr.writer import write_image

    run = _run(run)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}")
    if not run.has("dataset") and not run.has("attributions"):
        raise ValueError(f"{run.path}: neither dataset.zarr nor attributions.zarr to export")
    n = run.n_images() if run.has("dataset") else run.array_shape("attributions", run.array_names("attributions")[0])[0]
    if samples is None:
        samples = list(range(n))
    samples = [int(s) for s in samples][:max_samples]
    bad = [s for s in samples if not 0 <= s < n]
    if bad:
        raise ValueError(f"{run.path}: samples {bad[:8]} out of range (the run has {n} images)")
    meta = run.table("meta").set_index("sample") if run.has("meta") else None
    pixel = (run.group_attrs("dataset").get("pixel_size") if run.has("dataset") else None) or {}
    scale = {"c": 1.0, "y": float(pixel.get("y", 1.0)), "x": float(pixel.get("x", 1.0))}
    units = {"y": pixel["unit"], "x": pixel["unit"]} if pixel.get("unit") else None
    out = Path(out) if out is not None else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in samples:
        layers = channel_layers(run, sample, parts)
        if not layers:
            raise ValueError(f"{run.path}: nothing to export for sample {sample} (parts {list(parts)})")
        name = f"{sample:05d}"
        if meta is not None and sample in meta.index:
            row = meta.loc[sample]
            name += "".join(f"_{safe_name(row[c])}" for c in ("Metadata_Plate", "Metadata_Well") if c in row.index)
            name += f"_s{safe_name(row['Metadata_Site'])}" if "Metadata_Site" in row.index else ""
        path = out / f"{name}.ome.zarr"
        group = zarr.open_group(str(path), mode="w")
        stack = np.stack([plane for _, plane, _ in layers]).astype(np.float32)
        write_image(stack, group, axes="cyx", scale_factors=[], scale=scale, axes_units=units, omero=_omero(layers))
        group.attrs["chanstat"] = {
            "run": str(run.path),
            "sample": sample,
            "channels": [name_ for name_, _, _ in layers],
        }
        written.append(path)
    return written
