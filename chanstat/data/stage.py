"""Pipeline stage ``data``: build the ImageSet (synthetic, LoadData, arrays; tiles; planted phenotype)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chanstat.config import Section, kwargs_model
from chanstat.data.jump import read_jump
from chanstat.data.ome import read_ome_tiff, read_ome_zarr
from chanstat.data.readers import from_arrays, read, read_loaddata, tile
from chanstat.data.semisynthetic import plant
from chanstat.data.synthetic import synthetic
from chanstat.stage import Stage

SyntheticOptions = kwargs_model(
    synthetic,
    "SyntheticOptions",
    exclude=("seed", "progress"),
    doc="Options of the synthetic Cell Painting generator (chanstat.data.synthetic).",
)
LoadDataOptions = kwargs_model(
    read_loaddata,
    "LoadDataOptions",
    exclude=("csv", "progress"),
    path=(str, ...),
    doc="A LoadData CSV (path) and the options of chanstat.data.read_loaddata.",
)
ArrayOptions = kwargs_model(
    from_arrays,
    "ArrayOptions",
    exclude=("images", "channels", "meta"),
    path=(str, ...),
    array=(str, "images"),
    channels=(list[str] | None, None),
    doc="A .npy/.npz/.zarr file (path) of (N, C, H, W) images, channel names and labels.",
)
OmeZarrOptions = kwargs_model(
    read_ome_zarr,
    "OmeZarrOptions",
    exclude=("path", "progress"),
    path=(str, ...),
    doc="An OME-Zarr HCS plate (path) and the options of chanstat.data.ome.read_ome_zarr.",
)
OmeTiffOptions = kwargs_model(
    read_ome_tiff,
    "OmeTiffOptions",
    exclude=("paths", "progress"),
    path=(str, ...),
    doc="OME-TIFF files (a file or folder: path) and the options of chanstat.data.ome.read_ome_tiff.",
)
JumpOptions = kwargs_model(
    read_loaddata,
    "JumpOptions",
    exclude=("csv", "progress"),
    path=(str, ...),
    plates=(list[str] | None, None),
    platemap=(str | None, None),
    doc="A JUMP folder (path: load_data_csv, images, illum), its plates, and read_loaddata's options.",
)
TileOptions = kwargs_model(
    tile, "TileOptions", exclude=("imageset",), doc="Cut every image into tiles (chanstat.data.tile)."
)
PlantOptions = kwargs_model(
    plant,
    "PlantOptions",
    exclude=("imageset", "seed"),
    doc="Plant a phenotype into half of the real tiles (chanstat.data.semisynthetic.plant).",
)


class DataConfig(Section):
    """``[data]``: where the images come from."""

    source: Literal["synthetic", "loaddata", "arrays", "ome_zarr", "ome_tiff", "jump"] = Field(
        "synthetic", description="Synthetic set, a LoadData CSV, arrays, an OME-Zarr plate, OME-TIFFs or a JUMP folder."
    )
    channels: list[str] | None = Field(None, description="Keep only these channels, in this order.")
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions)  # type: ignore[valid-type]
    loaddata: LoadDataOptions | None = None  # type: ignore[valid-type]
    arrays: ArrayOptions | None = None  # type: ignore[valid-type]
    ome_zarr: OmeZarrOptions | None = None  # type: ignore[valid-type]
    ome_tiff: OmeTiffOptions | None = None  # type: ignore[valid-type]
    jump: JumpOptions | None = None  # type: ignore[valid-type]
    tiles: TileOptions | None = None  # type: ignore[valid-type]
    plant: PlantOptions | None = None  # type: ignore[valid-type]

    @staticmethod
    def preflight(section: dict, config_dir) -> None:
        from pathlib import Path

        from chanstat.config import ConfigError

        source = section.get("source", "synthetic")
        if source == "synthetic":
            return
        options = section.get(source)
        if not options:
            raise ConfigError(f"[data] source = {source!r} needs a [data.{source}] table with a path")
        path = Path(options["path"]).expanduser()
        path = path if path.is_absolute() else Path(config_dir) / path
        if not path.exists():
            raise ConfigError(f"[data.{source}] path: file not found: {path}")


FILE_READERS = {"loaddata": read_loaddata, "ome_zarr": read_ome_zarr, "ome_tiff": read_ome_tiff, "jump": read_jump}


def _load(ctx):
    cfg = ctx.section("data")
    source = cfg["source"]
    if source == "synthetic":
        return synthetic(**cfg["synthetic"], seed=ctx.seed, progress=ctx.progress)
    options = dict(cfg[source])
    path = ctx.resolve_path(options.pop("path"))
    if source in FILE_READERS:
        for key in ("platemap", "meta"):  # per-well / per-file tables: relative to the config too
            if isinstance(options.get(key), str):
                options[key] = str(ctx.resolve_path(options[key]))
        return FILE_READERS[source](path, **options, progress=ctx.progress)
    if not str(path).endswith(".zarr"):
        options.pop("array")
    return read(path, **options)


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    cfg = ctx.section("data")
    dataset = _load(ctx)
    if cfg.get("tiles"):
        dataset = tile(dataset, **cfg["tiles"])
    if cfg.get("plant"):
        dataset = plant(dataset, **cfg["plant"], seed=ctx.seed)
    if cfg.get("channels"):
        dataset = dataset.select_channels(cfg["channels"])
    meta = dataset.meta
    n_wells = meta[["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0]
    info = {
        "n_images": len(dataset),
        "shape": list(dataset.shape),
        "channels": list(dataset.channels),
        "classes": list(dataset.classes),
        "n_wells": int(n_wells),
    }
    for key in ("planted_channel", "scaling", "pseudo_replicates", "illumination", "pixel_size", "image_source"):
        if key in meta.attrs:
            info[key] = meta.attrs[key]
    if "illumination" in meta.attrs:  # one line for the report's stage table
        from chanstat.data.illumination import summary

        info["illum"] = summary(meta.attrs["illumination"])
    return {"dataset": dataset, "data_summary": dataset.summary()}, info


STAGE = Stage(
    name="data",
    config=DataConfig,
    writes=("dataset", "meta", "data_summary"),
    whole_set=whole_set,
    always=True,
)
