"""Per-image and per-well results as AnnData (``.h5ad`` or AnnData-Zarr) for the scverse tools.

``obs`` holds the images' (or wells') ``Metadata_*`` columns; ``var`` one column per
channel x method x quantity (``channel``, ``method``, ``quantity``; named
``"<channel> · <method> · <quantity>"``); ``X`` the numbers of the run's tables:

- ``channel_mass``: attribution ``mass`` and ``share`` per channel and method;
- ``dac_scores``: ``dac.<strategy>`` per method (channel ``all`` for whole-image strategies);
- ``channel_shapley``: ``shapley`` per channel (method ``shapley``);
- ``compartment_mass``: ``share.<compartment>`` per channel and method.

The well table averages the images of each (plate, well); its ``obs`` keeps the metadata that
is constant within a well and ``n_images``. Missing combinations are NaN. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from chanstat.export.ome_zarr import SEPARATOR, _run
from chanstat.rundir import RunDirectory

if TYPE_CHECKING:
    import anndata

WELL_KEYS = ("Metadata_Plate", "Metadata_Well")


def long_results(run: RunDirectory) -> pd.DataFrame:
    """Every per-image, per-channel number of the run as ``sample, channel, method, quantity, value``."""
    parts = []
    if run.has("channel_mass"):
        mass = run.table("channel_mass")
        for q in ("mass", "share"):
            parts.append(mass[["sample", "channel", "method"]].assign(quantity=q, value=mass[q].astype(float)))
    if run.has("dac_scores"):
        dac = run.table("dac_scores")
        parts.append(
            pd.DataFrame(
                {
                    "sample": dac["sample"],
                    "channel": dac["channel"],
                    "method": dac["method"],
                    "quantity": "dac." + dac["strategy"].astype(str),
                    "value": dac["dac"].astype(float),
                }
            )
        )
    if run.has("channel_shapley"):
        sh = run.table("channel_shapley")
        parts.append(
            pd.DataFrame(
                {
                    "sample": sh["sample"],
                    "channel": sh["channel"],
                    "method": "shapley",
                    "quantity": "shapley",
                    "value": sh["shapley"].astype(float),
                }
            )
        )
    if run.has("compartment_mass"):
        cm = run.table("compartment_mass")
        parts.append(
            pd.DataFrame(
                {
                    "sample": cm["sample"],
                    "channel": cm["channel"],
                    "method": cm["method"],
                    "quantity": "share." + cm["compartment"].astype(str),
                    "value": cm["share"].astype(float),
                }
            )
        )
    if not parts:
        raise ValueError(
            f"{run.path}: no per-image results to export (channel_mass, dac_scores, channel_shapley, "
            "compartment_mass are all absent)"
        )
    out = pd.concat(parts, ignore_index=True)
    for col in ("channel", "method", "quantity"):
        out[col] = out[col].astype(str)
    return out


def _wide(long: pd.DataFrame, index: str) -> tuple[np.ndarray, pd.DataFrame, list]:
    """(X, var, obs keys): one column per channel x method x quantity (mean over duplicates)."""
    cube = long.pivot_table(
        index=index, columns=["channel", "method", "quantity"], values="value", aggfunc="mean", dropna=False, sort=False
    )
    var = pd.DataFrame(list(cube.columns), columns=["channel", "method", "quantity"])
    var.index = [SEPARATOR.join(t) for t in cube.columns]
    return cube.to_numpy(dtype=np.float32), var, list(cube.index)


def _objects(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns and the index as plain Python strings (what the h5ad writer stores as text)."""
    df = df.copy()
    for col in df.columns:
        if pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object:
            df[col] = pd.Series([None if pd.isna(v) else str(v) for v in df[col]], index=df.index, dtype=object)
    df.index = pd.Index([str(i) for i in df.index], dtype=object)
    df.columns = [str(c) for c in df.columns]
    return df


def image_table(run) -> anndata.AnnData:
    """The per-image AnnData of a run (obs: ``sample`` and ``Metadata_*``)."""
    import anndata

    run = _run(run)
    long = long_results(run)
    X, var, samples = _wide(long, "sample")
    if run.has("meta"):
        meta = run.table("meta").set_index("sample")
        obs = meta.reindex(samples)[[c for c in meta.columns if str(c).startswith("Metadata_")]]
    else:
        obs = pd.DataFrame(index=samples)
    obs.insert(0, "sample", np.asarray(samples, dtype=np.int64))
    obs.index = [str(s) for s in samples]
    adata = anndata.AnnData(X=X, obs=_objects(obs), var=_objects(var))
    adata.uns["chanstat"] = {
        "run": str(run.path),
        "level": "image",
        "channels": list(run.channels),
        "classes": list(run.classes),
    }
    return adata


def well_table(run) -> anndata.AnnData:
    """The per-well AnnData: images averaged per (plate, well); ``n_images`` in obs."""
    import anndata

    images = image_table(run)
    obs = images.obs.copy()
    missing = [k for k in WELL_KEYS if k not in obs.columns]
    if missing:
        raise ValueError(f"{_run(run).path}: meta.parquet lacks {missing}; per-well results need them")
    keys = obs[list(WELL_KEYS)].astype(str).agg("/".join, axis=1).to_numpy()
    wells = list(dict.fromkeys(keys))
    X = pd.DataFrame(np.asarray(images.X)).groupby(keys, sort=False).mean().reindex(wells).to_numpy(np.float32)
    constant = [
        c for c in obs.columns if c != "sample" and (obs.groupby(keys, sort=False)[c].nunique(dropna=False) <= 1).all()
    ]
    well_obs = obs.groupby(keys, sort=False)[constant].first().reindex(wells)
    well_obs["n_images"] = pd.Series(keys).value_counts().reindex(wells).to_numpy().astype(np.int64)
    adata = anndata.AnnData(X=X, obs=_objects(well_obs), var=_objects(images.var.copy()))
    adata.uns["chanstat"] = {**images.uns["chanstat"], "level": "well"}
    return adata


def export_anndata(
    run,
    out: str | Path | None = None,
    format: Literal["h5ad", "zarr"] = "h5ad",
    levels: tuple[str, ...] = ("image", "well"),
) -> list[Path]:
    """Write the run's per-image and per-well results as AnnData files.

    Parameters
    ----------
    run : a :class:`~chanstat.rundir.RunDirectory` or its path.
    out : folder (default ``<run>/export``); files ``images.h5ad`` and ``wells.h5ad``
        (``.zarr`` folders with ``format="zarr"``).
    format : ``"h5ad"`` (HDF5) or ``"zarr"`` (AnnData-Zarr).
    levels : ``"image"`` and/or ``"well"``.

    Returns
    -------
    The paths written.
    """
    if format not in ("h5ad", "zarr"):
        raise ValueError(f"format must be 'h5ad' or 'zarr'; got {format!r}")
    unknown = [lv for lv in levels if lv not in ("image", "well")]
    if unknown:
        raise ValueError(f"unknown levels {unknown}; choose from ['image', 'well']")
    run = _run(run)
    out = Path(out) if out is not None else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for level in levels:
        adata = image_table(run) if level == "image" else well_table(run)
        path = out / f"{level}s.{format}"
        if format == "h5ad":
            adata.write_h5ad(path)
        else:
            adata.write_zarr(path)
        written.append(path)
    return written
