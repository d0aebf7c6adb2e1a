"""OME readers: an OME-Zarr HCS plate (OME-NGFF 0.4 / 0.5) and OME-TIFF files, as an ImageSet.

An OME-Zarr plate is a Zarr group ``plate -> row/column (well) -> field (image)``; each field
is a multiscale image whose axes include ``c``, ``y`` and ``x`` and whose ``omero`` metadata
names the channels. Reading is lazy: only the plate, well and image metadata are read up
front, then every selected field is read channel by channel at the chosen resolution level
(Zarr reads the chunks that hold it), so a plate is never loaded whole; select wells and
fields with ``wells`` / ``fields`` to read part of one.

Both readers give the same :class:`~chanstat.data.ImageSet` a LoadData CSV of the same images
gives: ``Metadata_Plate``, ``Metadata_Well`` (``A01``), ``Metadata_Site`` (1-based field),
``Metadata_Row`` and ``Metadata_Column``, per-plate scaling, and the pixel size in
``meta.attrs["pixel_size"]`` (the writers in :mod:`chanstat.export` keep it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from chanstat.data.imageset import ImageSet
from chanstat.data.lazy import scale_lazily
from chanstat.data.scaling import Scaling, check_percentiles


def well_name(row: str, column: str | int) -> str:
    """CellProfiler's well name: row letter(s) and a two-digit column (``"A", "1"`` -> ``"A01"``)."""
    column = str(column)
    return f"{row}{int(column):02d}" if column.isdigit() else f"{row}{column}"


def assemble(
    read: Callable[[int], np.ndarray],
    shape: tuple[int, int, int],
    meta: pd.DataFrame,
    channels: Sequence[str],
    *,
    label_column: str | None,
    scaling: Scaling,
    percentiles: Sequence[float],
    control_column: str | None,
    control_values: list[str] | str | None,
    where: str,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> ImageSet:
    """An ImageSet from fields read one at a time (``read(i)`` -> raw (C, H, W)) and their metadata.

    The same steps :func:`chanstat.data.read_loaddata` takes after reading its files (per-plate
    scaling, labels, records), with the same numbers, but no more than one plate's percentile
    sample of raw pixels in memory (:func:`chanstat.data.lazy.scale_lazily`).
    """
    check_percentiles(percentiles)
    if (control_column is None) != (control_values is None):
        raise ValueError("control_column and control_values go together (e.g. 'Metadata_Treatment' and 'DMSO')")
    control = None
    if control_column is not None:
        if scaling != "plate":
            raise ValueError(f"control_column applies to scaling='plate' only; got scaling={scaling!r}")
        if control_column not in meta.columns:
            raise ValueError(f"control column {control_column!r} not in the metadata of {where}")
        assert control_values is not None  # given together with control_column (checked above)
        values = [control_values] if isinstance(control_values, str) else [str(v) for v in control_values]
        control = meta[control_column].astype(str).isin(values).to_numpy()
        if not control.any():
            raise ValueError(f"no field of {where} has {control_column} in {values}")
    if label_column is not None and label_column not in meta.columns:
        raise ValueError(f"label column {label_column!r} not in the metadata of {where}")
    images, record = scale_lazily(
        read, shape, meta["Metadata_Plate"].to_numpy(), list(channels), scaling, percentiles, control, progress=progress
    )
    if control_column is not None:
        record["control_column"], record["control_values"] = control_column, control_values
    meta = meta[[c for c in meta.columns if c.startswith("Metadata_")]].reset_index(drop=True).copy()
    if label_column is None:
        classes, labels = ["unlabelled"], np.zeros(len(meta), dtype=int)
    else:
        codes, uniques = pd.factorize(meta[label_column].astype(str), sort=True)
        classes, labels = list(uniques), codes
    meta.attrs["scaling"] = record
    meta.attrs.update(dict(attrs or {}))
    return ImageSet(
        images=torch.from_numpy(images),
        channels=list(channels),
        labels=torch.as_tensor(labels),
        classes=classes,
        meta=meta,
    )


def join_platemap(meta: pd.DataFrame, platemap: str | Path | pd.DataFrame | None) -> pd.DataFrame:
    """``meta`` joined with a per-well table (a CSV or DataFrame with ``Metadata_Well`` and, to tell
    plates apart, ``Metadata_Plate``); every field must find its well."""
    if platemap is None:
        return meta
    where = "the platemap" if isinstance(platemap, pd.DataFrame) else str(platemap)
    if isinstance(platemap, pd.DataFrame):
        plate_table = platemap
    else:
        from chanstat.cellprofiler.readers import read_csv_table

        if not Path(platemap).is_file():
            raise FileNotFoundError(f"platemap not found: {platemap}")
        plate_table = read_csv_table(Path(platemap))
    if "Metadata_Well" not in plate_table.columns:
        raise ValueError(f"{where} has no Metadata_Well column; columns are {list(plate_table.columns)[:12]}")
    keys = [k for k in ("Metadata_Plate", "Metadata_Well") if k in plate_table.columns]
    extra = [c for c in plate_table.columns if c not in meta.columns or c in keys]
    table = plate_table[extra].copy()
    for k in keys:
        table[k] = table[k].astype(str)
    if table.duplicated(keys).any():
        raise ValueError(f"{where} lists a well twice ({', '.join(keys)})")
    out = meta.assign(**{k: meta[k].astype(str) for k in keys}).merge(table, on=keys, how="left", indicator=True)
    lost = out.loc[out["_merge"] != "both", "Metadata_Well"].unique().tolist()
    if lost:
        raise ValueError(f"{where} has no row for wells {lost[:8]}")
    return out.drop(columns="_merge")


# ---- OME-Zarr ----------------------------------------------------------------------------------
def _ome(attrs: Mapping) -> dict:
    """The OME metadata of a group: under ``"ome"`` (NGFF 0.5) or at the top (0.4)."""
    return dict(attrs.get("ome", attrs))


def _open(path: Path):
    import zarr

    if not path.exists():
        raise FileNotFoundError(f"OME-Zarr not found: {path}")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a non-group
        raise ValueError(f"{path}: not a Zarr group ({type(exc).__name__})") from None


def _pick(names: list[str], wanted: Sequence | None, what: str, where: str) -> list[str]:
    if wanted is None:
        return names
    wanted = [str(w) for w in wanted]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"{where}: unknown {what} {unknown[:8]}; it has {names[:12]}")
    return [n for n in names if n in wanted]


def is_ome_plate(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr group with OME-NGFF ``plate`` metadata."""
    try:
        return bool(_ome(_open(Path(path)).attrs).get("plate"))
    except (FileNotFoundError, ValueError):
        return False


class OmeZarrField:
    """One field (multiscale image) of a plate: metadata read, pixels not yet."""

    def __init__(self, group, path: Path, resolution: int):
        ome = _ome(group.attrs)
        multiscales = ome.get("multiscales")
        if not multiscales:
            raise ValueError(f"{path}: no 'multiscales' metadata (not an OME-Zarr image)")
        ms = multiscales[0]
        datasets = ms.get("datasets") or []
        if not 0 <= resolution < len(datasets):
            raise ValueError(f"{path}: resolution level {resolution} not present ({len(datasets)} levels)")
        axes = [a["name"] if isinstance(a, Mapping) else str(a) for a in ms.get("axes", [])] or list("tczyx")
        self.array = group[datasets[resolution]["path"]]
        if len(axes) != self.array.ndim or not {"c", "y", "x"} <= set(axes):
            raise ValueError(f"{path}: axes {axes} do not fit an array of shape {self.array.shape} with c, y, x")
        self.axes, self.path = axes, path
        omero = ome.get("omero") or {}
        labels = [c.get("label") for c in omero.get("channels", [])]
        n_c = self.array.shape[axes.index("c")]
        self.channels = (
            [str(lab) if lab else str(i) for i, lab in enumerate(labels)]
            if len(labels) == n_c
            else [str(i) for i in range(n_c)]
        )
        scale = {}
        for transform in datasets[resolution].get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = dict(zip(axes, transform["scale"]))
        units = {a["name"]: a.get("unit") for a in ms.get("axes", []) if isinstance(a, Mapping)}
        self.pixel_size = {
            "y": float(scale.get("y", 1.0)),
            "x": float(scale.get("x", 1.0)),
            "unit": units.get("x") or units.get("y"),
        }

    def read(self, channel_index: Sequence[int], t: int = 0, z: int = 0) -> np.ndarray:
        """The (C, H, W) planes of ``channel_index`` at time ``t`` and plane ``z``, one channel at a time."""
        planes = []
        for c in channel_index:
            index = tuple({"c": c, "t": t, "z": z}.get(a, slice(None)) for a in self.axes)
            planes.append(np.asarray(self.array[index]))
        return np.stack(planes)


def plate_fields(
    path: str | Path, wells: Sequence[str] | None = None, fields: Sequence[int] | None = None
) -> pd.DataFrame:
    """The fields of an OME-Zarr HCS plate, one row each (metadata only; no pixels read).

    Returns
    -------
    DataFrame with ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Row``, ``Metadata_Column``,
    ``Metadata_Site`` (1-based position of the field in its well) and ``path`` (the field's
    group, relative to the plate). ``wells`` (``"A01"`` names) and ``fields`` (sites) select.
    """
    path = Path(path)
    root = _open(path)
    plate = _ome(root.attrs).get("plate")
    if not plate:
        raise ValueError(f"{path}: no 'plate' metadata (not an OME-Zarr HCS plate)")
    rows = [r["name"] for r in plate.get("rows", [])]
    columns = [c["name"] for c in plate.get("columns", [])]
    name = str(plate.get("name") or path.name.split(".")[0])
    records = []
    for well in plate.get("wells", []):
        well_path = str(well["path"])
        if "rowIndex" in well:
            row, column = rows[well["rowIndex"]], columns[well["columnIndex"]]
        else:
            row, column = well_path.split("/")[:2]
        label = well_name(row, column)
        if wells is not None and label not in set(map(str, wells)):
            continue
        try:
            images = _ome(root[well_path].attrs).get("well", {}).get("images", [])
        except KeyError:
            raise ValueError(f"{path}: the plate lists well {well_path!r} but it is missing") from None
        for site, image in enumerate(images, start=1):
            if fields is not None and site not in {int(f) for f in fields}:
                continue
            records.append(
                {
                    "Metadata_Plate": name,
                    "Metadata_Well": label,
                    "Metadata_Row": str(row),
                    "Metadata_Column": int(column) if str(column).isdigit() else str(column),
                    "Metadata_Site": site,
                    "path": f"{well_path}/{image['path']}",
                }
            )
    if not records:
        raise ValueError(f"{path}: no field left to read (wells={wells}, fields={fields})")
    return pd.DataFrame(records)


def read_ome_zarr(
    path: str | Path,
    channels: Sequence[str] | None = None,
    channel_map: Mapping[str, str] | None = None,
    wells: Sequence[str] | None = None,
    fields: Sequence[int] | None = None,
    platemap: str | None = None,
    label_column: str | None = None,
    scaling: Scaling = "plate",
    percentiles: tuple[float, float] = (1.0, 99.5),
    control_column: str | None = None,
    control_values: list[str] | str | None = None,
    resolution: int = 0,
    progress: bool = False,
) -> ImageSet:
    """Read an OME-Zarr HCS plate (plate -> wells -> fields) as an ImageSet.

    Parameters
    ----------
    path : the plate's ``.zarr`` folder (OME-NGFF 0.4 or 0.5).
    channels : channel names to keep, in this order (after ``channel_map``); default all.
    channel_map : renames the OMERO channel labels (unlabelled channels are ``"0"``, ``"1"``, ...).
    wells, fields : read only these wells (``"A01"``) and sites (1-based); default all.
    platemap : CSV with ``Metadata_Well`` (and ``Metadata_Plate``) and more ``Metadata_*``
        columns per well (treatment, dose) joined onto every field.
    label_column : metadata column (from ``platemap``) holding the class; default one class.
    scaling, percentiles, control_column, control_values : as in
        :func:`chanstat.data.read_loaddata` (per plate and channel by default).
    resolution : pyramid level read (0 = full resolution).

    Fields with time points or z planes are read at the first of each (``t = 0``, ``z = 0``).

    Returns
    -------
    ImageSet; ``meta.attrs`` records ``scaling``, ``pixel_size`` (``y``, ``x``, ``unit``) and
    ``image_source`` (format and path).
    """
    path = Path(path)
    table = join_platemap(plate_fields(path, wells, fields), platemap)
    root = _open(path)
    rename = dict(channel_map or {})

    def open_field(i: int) -> tuple[OmeZarrField, list[str]]:
        where = table["path"].iloc[i]
        try:
            group = root[where]
        except KeyError:
            raise ValueError(f"{path}: the well lists field {where!r} but it is missing") from None
        field = OmeZarrField(group, path / where, resolution)
        return field, [rename.get(c, c) for c in field.channels]

    first, mapped = open_field(0)  # metadata only: channel names, shape, pixel size
    _pick(mapped, channels, "channels", str(path))
    names = list(channels) if channels is not None else mapped
    shape = (len(names), *(first.array.shape[first.axes.index(a)] for a in ("y", "x")))

    def read(i: int) -> np.ndarray:
        field, found = open_field(i)
        if not set(names) <= set(found):
            raise ValueError(f"{field.path}: channels {found} differ from the plate's first field")
        return field.read([found.index(n) for n in names])

    return assemble(
        read,
        shape,
        table.drop(columns="path"),
        names,
        label_column=label_column,
        scaling=scaling,
        percentiles=percentiles,
        control_column=control_column,
        control_values=control_values,
        where=str(path),
        progress=progress,
        attrs={"pixel_size": first.pixel_size, "image_source": {"format": "ome-zarr", "path": str(path)}},
    )


# ---- OME-TIFF ----------------------------------------------------------------------------------
def ome_tiff_channels(path: str | Path) -> tuple[list[str], dict]:
    """Channel names and pixel size from an OME-TIFF's OME-XML (via ome-types)."""
    import tifffile
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        raise ValueError(f"{path}: no OME-XML metadata (not an OME-TIFF)")
    ome = from_xml(xml)
    if not ome.images:
        raise ValueError(f"{path}: OME-XML lists no image")
    pixels = ome.images[0].pixels
    names = [ch.name or str(i) for i, ch in enumerate(pixels.channels)]
    unit = getattr(pixels.physical_size_x_unit, "value", None)
    size = {"y": float(pixels.physical_size_y or 1.0), "x": float(pixels.physical_size_x or 1.0), "unit": unit}
    return names, size


def read_ome_tiff(
    paths: str | Path | Sequence[str | Path],
    channels: Sequence[str] | None = None,
    channel_map: Mapping[str, str] | None = None,
    meta: pd.DataFrame | str | None = None,
    label_column: str | None = None,
    scaling: Scaling = "plate",
    percentiles: tuple[float, float] = (1.0, 99.5),
    control_column: str | None = None,
    control_values: list[str] | str | None = None,
    progress: bool = False,
) -> ImageSet:
    """Read OME-TIFF fields (one file per field, all channels in it) as an ImageSet.

    Parameters
    ----------
    paths : one file, a folder (its ``*.ome.tif*`` files, sorted) or a list of files.
    channels, channel_map : as in :func:`read_ome_zarr`; names come from the OME-XML ``Channel``
        ``Name`` attributes.
    meta : per-file metadata (a CSV path or DataFrame, one row per file in order) with
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``; default plate ``"plate"``, the
        file name as well, site 1.
    Other parameters as in :func:`read_ome_zarr`.
    """
    import tifffile

    if isinstance(paths, (str, Path)):
        paths = Path(paths)
        if paths.is_dir():
            files = sorted(p for p in paths.iterdir() if p.name.lower().endswith((".ome.tif", ".ome.tiff")))
            if not files:
                raise ValueError(f"{paths}: no .ome.tif / .ome.tiff files")
        else:
            files = [paths]
    else:
        files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"OME-TIFF not found: {f}")
    if meta is None:
        meta = pd.DataFrame(
            {"Metadata_Plate": "plate", "Metadata_Well": [f.name.split(".")[0] for f in files], "Metadata_Site": 1}
        )
    elif not isinstance(meta, pd.DataFrame):
        from chanstat.cellprofiler.readers import read_csv_table

        meta = read_csv_table(Path(meta))
    if len(meta) != len(files):
        raise ValueError(f"meta has {len(meta)} rows for {len(files)} OME-TIFF files")
    rename = dict(channel_map or {})
    found, pixel = ome_tiff_channels(files[0])
    mapped = [rename.get(c, c) for c in found]
    names = list(channels) if channels is not None else mapped
    _pick(mapped, names, "channels", str(files[0]))

    def read(i: int) -> np.ndarray:
        f = files[i]
        here = [rename.get(c, c) for c in ome_tiff_channels(f)[0]]
        if not set(names) <= set(here):
            raise ValueError(f"{f}: channels {here} differ from the first file's")
        with tifffile.TiffFile(f) as tif:
            series = tif.series[0]
            axes = series.axes.upper()
            data = series.asarray()
        if "C" not in axes or "Y" not in axes or "X" not in axes:
            raise ValueError(f"{f}: axes {axes} lack C, Y or X")
        data = data[tuple(slice(None) if a in "CYX" else 0 for a in axes)]
        data = np.moveaxis(data, [a for a in axes if a in "CYX"].index("C"), 0)
        return data[[here.index(n) for n in names]]

    with tifffile.TiffFile(files[0]) as tif:
        axes, dims = tif.series[0].axes.upper(), tif.series[0].shape
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{files[0]}: axes {axes} lack Y or X")
    shape = (len(names), dims[axes.index("Y")], dims[axes.index("X")])
    return assemble(
        read,
        shape,
        meta,
        names,
        label_column=label_column,
        scaling=scaling,
        percentiles=percentiles,
        control_column=control_column,
        control_values=control_values,
        where=str(files[0].parent),
        progress=progress,
        attrs={"pixel_size": pixel, "image_source": {"format": "ome-tiff", "files": len(files)}},
    )
