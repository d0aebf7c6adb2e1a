"""Readers for images listed in CellProfiler LoadData CSVs, NumPy and Zarr arrays; tiling."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from chanstat.cellprofiler.readers import read_csv_table
from chanstat.data.illumination import Illumination, IllumMode
from chanstat.data.imageset import REQUIRED_META, ImageSet
from chanstat.data.scaling import Scaling, check_percentiles, scale_images
from chanstat.tensors import as_images

LOADDATA_FILE = {
    prefix: re.compile(rf"^(?:Image_)?FileName_{prefix}(?P<channel>[A-Za-z0-9]+)$") for prefix in ("Orig", "Corr", "")
}


def loaddata_channels(columns: Sequence[str]) -> list[str]:
    """Channel tokens named by ``FileName_Orig<Ch>`` columns of a LoadData table, in order.

    ``Orig`` columns win; without them ``Corr`` ones, then plain ``FileName_<Ch>``
    (illumination functions, ``FileName_Illum*``, are never images).
    """
    for prefix, pattern in LOADDATA_FILE.items():
        tokens = [m.group("channel") for c in columns if (m := pattern.match(c))]
        tokens = [t for t in tokens if not t.startswith(("Illum", "Orig", "Corr"))] if prefix == "" else tokens
        if tokens:
            return tokens
    return []


def read_loaddata(
    csv: str | Path,
    channels: Sequence[str] | None = None,
    channel_map: Mapping[str, str] | None = None,
    label_column: str | None = None,
    scaling: Scaling = "plate",
    percentiles: tuple[float, float] = (1.0, 99.5),
    control_column: str | None = None,
    control_values: list[str] | str | None = None,
    objects: Mapping[str, str] | None = None,
    illum: IllumMode = "auto",
    progress: bool = False,
) -> ImageSet:
    """Read the images listed in a CellProfiler LoadData CSV.

    Parameters
    ----------
    csv : LoadData table: one row per field of view, ``FileName_Orig<Ch>`` and
        ``PathName_Orig<Ch>`` per channel (``Corr`` prefixes work too) and ``Metadata_*``
        columns. Relative ``PathName`` values are relative to the CSV's folder.
    channels : stain names to keep, in this order (after ``channel_map``); default all.
    channel_map : renames LoadData channel tokens, e.g. ``{"1": "Brightfield", "5": "DNA"}``.
    label_column : metadata column holding the class of each field; default one class
        ``"unlabelled"``.
    scaling : how raw intensities become [0, 1] (see :mod:`chanstat.data.scaling`):

        - ``"plate"`` (default): per plate (``Metadata_Plate``) and channel, the
          ``percentiles`` of all the plate's images pooled -- or of its control images when
          ``control_column`` is given. Intensity differences between images are kept.
        - ``"image"``: every image and channel by its own percentiles. **Warning**: this
          erases intensity phenotypes (a brighter channel in one class is scaled away); use it
          only when absolute intensity carries no information.
        - ``"none"``: raw intensities (float32).
    percentiles : (low, high) percentiles mapped to 0 and 1.
    control_column, control_values : rows whose ``control_column`` equals one of
        ``control_values`` (compared as text, e.g. ``"DMSO"``) are the controls for
        per-plate scaling; every plate needs at least one.
    illum : ``"auto"`` (default) divides every raw image by the illumination function its row
        names (``FileName_Illum<Ch>`` / ``PathName_Illum<Ch>``, CellProfiler's "Divide"),
        before scaling; ``"off"`` skips it. ``meta.attrs["illumination"]`` records what was applied
        (see :mod:`chanstat.data.illumination`).

    Returns
    -------
    ImageSet with images (N, C, H, W) float32; ``meta.attrs["scaling"]`` records the choice
    (method, percentiles, whether controls were used, per-plate limits) for provenance.

    Raises
    ------
    FileNotFoundError
        The CSV or an image file is missing.
    ValueError
        A damaged or ragged CSV (:class:`~chanstat.cellprofiler.readers.TableFileError`, naming
        the file and line), no image columns, unknown channels, missing metadata, bad scaling
        options, a plate without controls.
    """
    import tifffile
    from tqdm.auto import tqdm

    csv = Path(csv)
    if not csv.exists():
        raise FileNotFoundError(f"LoadData CSV not found: {csv}")
    check_percentiles(percentiles)
    if (control_column is None) != (control_values is None):
        raise ValueError("control_column and control_values go together (e.g. 'Metadata_Treatment' and 'DMSO')")
    if control_column is not None and scaling != "plate":
        raise ValueError(f"control_column applies to scaling='plate' only; got scaling={scaling!r}")
    table = read_csv_table(csv)
    if table.empty:
        raise ValueError(f"{csv} lists no images (only a header)")
    tokens = loaddata_channels(table.columns)
    if not tokens:
        raise ValueError(f"{csv} has no FileName_Orig<Channel> columns; columns are {list(table.columns)}")
    channel_map = dict(channel_map or {})
    names = [channel_map.get(t, t) for t in tokens]
    wanted = list(channels) if channels is not None else names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(f"unknown channel names {unknown}; {csv.name} has {names} (after channel_map)")
    token_of = {n: t for n, t in zip(names, tokens)}
    missing_meta = [c for c in REQUIRED_META if c not in table.columns]
    if missing_meta:
        raise ValueError(f"{csv} is missing metadata columns {missing_meta}")
    if label_column is not None and label_column not in table.columns:
        raise ValueError(f"label column {label_column!r} not in {csv}")
    control = None
    if control_column is not None:
        if control_column not in table.columns:
            raise ValueError(f"control column {control_column!r} not in {csv}")
        assert control_values is not None  # given together with control_column (checked above)
        values = [control_values] if isinstance(control_values, str) else [str(v) for v in control_values]
        control = table[control_column].astype(str).isin(values).to_numpy()
        if not control.any():
            raise ValueError(f"no row of {csv} has {control_column} in {values}")

    def column(kind: str, token: str) -> str:
        for prefix in ("Orig", "Corr", ""):
            for lead in ("", "Image_"):
                name = f"{lead}{kind}_{prefix}{token}"
                if name in table.columns:
                    return name
        raise ValueError(f"{csv} lacks the {kind} column for channel {token!r}")

    illumination = Illumination(table, csv.parent, {n: token_of[n] for n in wanted}, illum, csv)
    raw = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc="reading fields", disable=not progress):
        planes: list[np.ndarray] = []
        for name in wanted:
            token = token_of[name]
            folder = Path(str(row[column("PathName", token)]))
            folder = folder if folder.is_absolute() else (csv.parent / folder)
            path = folder / str(row[column("FileName", token)])
            if not path.exists():
                raise FileNotFoundError(f"image for channel {name} not found: {path}")
            plane = tifffile.imread(path)
            if plane.ndim != 2:
                raise ValueError(f"{path} is not a single 2-D plane (shape {plane.shape})")
            if planes and plane.shape != planes[0].shape:
                raise ValueError(f"{path} has shape {plane.shape}, other channels {planes[0].shape}")
            planes.append(plane)
        raw.append(illumination.apply(row, np.stack(planes)))
    images, record = scale_images(raw, table["Metadata_Plate"].to_numpy(), wanted, scaling, percentiles, control)
    if control_column is not None:
        record["control_column"], record["control_values"] = control_column, control_values
    meta = table[[c for c in table.columns if c.startswith("Metadata_")]].copy()
    if label_column is None:
        classes, labels = ["unlabelled"], np.zeros(len(table), dtype=int)
    else:
        codes, uniques = pd.factorize(table[label_column].astype(str), sort=True)
        classes, labels = list(uniques), codes
    meta.attrs["scaling"] = record
    meta.attrs["illumination"] = illumination.record()
    labels_by_object = {
        name: read_objects(table, csv, token, images.shape[2:]) for name, token in (objects or {}).items()
    }
    return ImageSet(
        images=torch.from_numpy(images),
        channels=wanted,
        labels=torch.as_tensor(labels),
        classes=classes,
        meta=meta,
        objects=labels_by_object or None,
    )


def read_objects(table: pd.DataFrame, csv: Path, token: str, shape: tuple[int, ...]) -> np.ndarray:
    """Label images (N, H, W) of one object type from LoadData columns ``ObjectsFileName_<token>``
    / ``ObjectsPathName_<token>`` (label images) or ``FileName_<token>`` / ``PathName_<token>``
    (e.g. CellProfiler's ``CellsOutlines``: outline images are filled into labels)."""
    import tifffile

    from chanstat.objects import labels_from_outlines

    for file_col, path_col in (
        (f"ObjectsFileName_{token}", f"ObjectsPathName_{token}"),
        (f"FileName_{token}", f"PathName_{token}"),
    ):
        if file_col in table.columns and path_col in table.columns:
            break
    else:
        raise ValueError(f"{csv} has no ObjectsFileName_{token} or FileName_{token} column for objects {token!r}")
    out = []
    for _, row in table.iterrows():
        folder = Path(str(row[path_col]))
        path = (folder if folder.is_absolute() else csv.parent / folder) / str(row[file_col])
        if not path.exists():
            raise FileNotFoundError(f"object image {token} not found: {path}")
        plane = np.squeeze(tifffile.imread(path))
        colour = plane.ndim == 3 and plane.shape[-1] in (3, 4)  # outlines drawn in colour (OverlayOutlines)
        if plane.shape[:2] != tuple(shape) or (plane.ndim == 3 and not colour):
            raise ValueError(f"{path} has shape {plane.shape}; the images are {tuple(shape)}")
        # a binary or colour image draws outlines; anything else already labels the objects
        outlines = colour or np.unique(plane).size <= 2
        out.append(labels_from_outlines(plane) if outlines else plane.astype(np.int32))
    return np.stack(out).astype(np.int32)


def tile(
    imageset: ImageSet,
    size: int,
    stride: int | None = None,
    min_foreground: float | None = None,
    foreground_channel: str | None = None,
    foreground_threshold: float = 0.2,
) -> ImageSet:
    """Cut every image into ``size`` x ``size`` crops that keep their metadata.

    Parameters
    ----------
    size : crop height and width in pixels.
    stride : step between crops (default ``size``: no overlap).
    min_foreground : keep only crops where at least this fraction of pixels of
        ``foreground_channel`` exceed ``foreground_threshold`` (e.g. 0.02 on DNA drops empty crops).
    foreground_channel : channel for ``min_foreground`` (default the first).

    Returns
    -------
    ImageSet of crops; meta gains ``Metadata_TileY``, ``Metadata_TileX`` (top-left pixel) and
    ``Metadata_SourceImage`` (index of the image it came from).
    """
    stride = stride or size
    n, c, h, w = imageset.shape
    if size > min(h, w):
        raise ValueError(f"tile size {size} exceeds image size {(h, w)}")
    fg = imageset.channel_index(foreground_channel)[0] if foreground_channel else 0
    picks: list[tuple[int, int, int]] = []
    for i in range(n):
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                if min_foreground is not None:
                    crop = imageset.images[i, fg, y : y + size, x : x + size]
                    if float((crop > foreground_threshold).float().mean()) < min_foreground:
                        continue
                picks.append((i, y, x))
    if not picks:
        raise ValueError("no tiles left after the foreground filter; lower min_foreground")

    def cut(t):
        if t is None:
            return None
        return np.stack([np.asarray(t[i, ..., y : y + size, x : x + size]) for i, y, x in picks])

    src = np.array([p[0] for p in picks])
    meta = imageset.meta.iloc[src].reset_index(drop=True)
    meta["Metadata_TileY"] = [p[1] for p in picks]
    meta["Metadata_TileX"] = [p[2] for p in picks]
    meta["Metadata_SourceImage"] = src
    return ImageSet(
        images=cut(imageset.images),
        channels=list(imageset.channels),
        labels=imageset.labels.numpy()[src],
        classes=list(imageset.classes),
        meta=meta,
        counterfactuals=cut(imageset.counterfactuals),
        counterfactual_target=None
        if imageset.counterfactual_target is None
        else imageset.counterfactual_target.numpy()[src],
        signal_masks=cut(imageset.signal_masks),
        objects=None if imageset.objects is None else {k: cut(v) for k, v in imageset.objects.items()},
    )


def from_arrays(
    images: np.ndarray,
    channels: Sequence[str],
    labels: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    meta: pd.DataFrame | None = None,
) -> ImageSet:
    """An ImageSet from an in-memory (N, C, H, W) array; metadata defaults to one well per image."""
    images = np.asarray(images)
    n = images.shape[0] if images.ndim == 4 else 0
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {images.shape}")
    label_arr = np.zeros(n, dtype=int) if labels is None else np.asarray(labels)
    classes = list(classes) if classes is not None else [str(k) for k in range(int(label_arr.max()) + 1 if n else 1)]
    if meta is None:
        meta = pd.DataFrame(
            {"Metadata_Plate": "plate", "Metadata_Well": [f"w{i}" for i in range(n)], "Metadata_Site": 1}
        )
    # as_images: the conversion (and checks) ImageSet starts with, so any array a user passes is refused alike
    return ImageSet(
        images=as_images(images, "images", allow_empty=True),
        channels=channels,
        labels=torch.as_tensor(label_arr),
        classes=classes,
        meta=meta,
    )


def read_numpy(path: str | Path, channels: Sequence[str], **kwargs) -> ImageSet:
    """Images from ``.npy`` (the array) or ``.npz`` (keys ``images`` and optionally ``labels``)."""
    path = Path(path)
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        if "images" not in data:
            raise ValueError(f"{path} has no 'images' array; it has {list(data.keys())}")
        if kwargs.get("labels") is None and "labels" in data:  # labels=None (a config's default) means "from the file"
            kwargs["labels"] = data["labels"]
        data = data["images"]
    return from_arrays(data, channels, **kwargs)


def read_zarr(path: str | Path, channels: Sequence[str] | None = None, array: str = "images", **kwargs) -> ImageSet:
    """Images from a Zarr group (array ``images``; channel names from its ``channels`` attribute)."""
    from chanstat.io import read_arrays, read_group_attrs

    arrays, attrs = read_arrays(path, [array])
    names = channels or attrs[array].get("channels") or read_group_attrs(path).get("channels")
    if names is None:
        raise ValueError(f"{path}: give channel names (no 'channels' attribute stored)")
    return from_arrays(arrays[array], names, **kwargs)


READERS: dict[str, Callable[..., ImageSet]] = {
    ".csv": read_loaddata,
    ".npy": read_numpy,
    ".npz": read_numpy,
    ".zarr": read_zarr,
}


def read(path: str | Path, **kwargs) -> ImageSet:
    """Read images by file type: LoadData ``.csv``, ``.npy``/``.npz``, ``.zarr`` (an OME-Zarr HCS plate
    or a group of arrays) or ``.ome.tif``/``.ome.tiff`` (see :mod:`chanstat.data.ome`)."""
    from chanstat.data.ome import is_ome_plate, read_ome_tiff, read_ome_zarr

    suffix = Path(path).suffix.lower()
    if Path(path).name.lower().endswith((".ome.tif", ".ome.tiff")):
        return read_ome_tiff(path, **kwargs)
    if suffix == ".zarr" and is_ome_plate(path):
        return read_ome_zarr(path, **kwargs)
    if suffix not in READERS:
        raise ValueError(f"cannot read {path}: known types are {sorted(READERS)}")
    return READERS[suffix](path, **kwargs)
