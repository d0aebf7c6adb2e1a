"""Pipeline stage: build the ImageSet and write it into the run directory."""
from __future__ import annotations

import numpy as np

from chanstat.data.readers import read, tile
from chanstat.data.synthetic import synthetic
from chanstat.io import write_arrays, write_table


def _load(ctx):
    cfg = ctx.section("data")
    source = cfg.get("source", "synthetic")
    if source == "synthetic":
        return synthetic(**ctx.section("data.synthetic"), seed=ctx.seed, progress=ctx.progress)
    if source in ("loaddata", "arrays"):
        spec = dict(ctx.section(f"data.{source}"))
        if "path" not in spec and "csv" not in spec:
            raise ValueError(f"[data.{source}] needs a path (or csv)")
        path = ctx.resolve_path(spec.pop("path", None) or spec.pop("csv"))
        if source == "loaddata":
            spec["progress"] = ctx.progress
        return read(path, **spec)
    raise ValueError(f"unknown data source {source!r}; use 'synthetic', 'loaddata' or 'arrays'")


def run(ctx) -> dict:
    dataset = _load(ctx)
    tiles = ctx.section("data.tiles")
    if tiles:
        dataset = tile(dataset, **tiles)
    plant = ctx.section("data.plant")
    if plant:
        from chanstat.data.semisynthetic import plant as plant_phenotype

        dataset = plant_phenotype(dataset, **plant, seed=ctx.seed)
    select = ctx.section("data").get("channels")
    if select:
        dataset = dataset.select_channels(select)
    ctx.dataset = dataset

    arrays = {"images": dataset.images.numpy(), "labels": dataset.labels.numpy()}
    if dataset.counterfactuals is not None:
        arrays["counterfactuals"] = dataset.counterfactuals.numpy()
    if dataset.counterfactual_labels is not None:
        arrays["counterfactual_labels"] = dataset.counterfactual_labels.numpy()
    if dataset.signal_masks is not None:
        arrays["signal_masks"] = dataset.signal_masks.numpy()
    for name, labels in (dataset.objects or {}).items():
        arrays[f"objects_{name}"] = labels
    write_arrays(
        ctx.out / "dataset.zarr",
        arrays,
        group_attrs={"channels": list(dataset.channels), "classes": list(dataset.classes), **dict(dataset.meta.attrs)},
        mode="w",
    )
    meta = dataset.meta.copy()
    meta.insert(0, "sample", np.arange(len(dataset)))
    write_table(meta, ctx.out / "meta.parquet")
    write_table(dataset.summary(), ctx.out / "data_summary.parquet")
    n_wells = meta[["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0]
    return {
        "n_images": len(dataset),
        "shape": list(dataset.shape),
        "channels": list(dataset.channels),
        "classes": list(dataset.classes),
        "n_wells": int(n_wells),
        **({"planted_channel": dataset.meta.attrs["planted_channel"]} if "planted_channel" in dataset.meta.attrs else {}),
    }
