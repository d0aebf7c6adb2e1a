"""Counterfactuals supplied by the user (e.g. made by their own generative model).

Two file layouts are accepted:

**LoadData-style CSV** -- one row per counterfactual, CellProfiler LoadData columns
``FileName_Orig<Channel>`` / ``PathName_Orig<Channel>`` for every channel of the data set
(``PathName`` relative to the CSV's folder unless absolute; a missing ``PathName`` column means
the CSV's folder), plus

- metadata key columns naming the real image each counterfactual belongs to, e.g.
  ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (and ``Metadata_TileY`` /
  ``Metadata_TileX`` for tiles): by default every ``Metadata_*`` column the CSV shares with
  the data set's metadata (configurable: ``keys``). Pairing by keys, not by row number, keeps
  working when the data set is a subset or in another order; counterfactual rows of images
  that are not in the data set are ignored. And
- ``Metadata_TargetClass`` -- class name (or index) of the counterfactual (configurable:
  ``target_column``; optional -- without it the target rule decides).

Each file holds one 2-D plane (H, W); TIFF (``tifffile``), ``.npy``, or anything
``skimage.io.imread`` reads.

**Arrays** -- a ``.npy`` file (N', C, H, W), or a Zarr group holding an array
``counterfactuals`` (and optionally ``index`` and ``counterfactual_target`` arrays, and a
``channels`` attribute), with optional ``index`` / ``counterfactual_target`` given separately
(``.npy`` / ``.csv`` path or a list). ``key_table`` (a CSV or Parquet table with one row per
counterfactual) pairs array rows with images by metadata keys, like the CSV layout; without it
``index`` gives the data-set row of each counterfactual, and without that row i pairs with
image i (both break when the data set is subset or reordered).

Intensities must be in the same units as the data set's images (counterfactuals made from the
rescaled images); ``scale="dataset"`` applies the real images' own per-plate limits (recorded
by :func:`~chanstat.data.read_loaddata` in ``meta.attrs["scaling"]``) to raw counterfactual
files -- the consistent choice for raw files; ``scale="dtype"`` divides integer files by their
dtype's maximum and ``scale=[low_pct, high_pct]`` rescales every plane by its own percentiles
-- only meaningful if the real images were rescaled the same way, because independent rescaling
of ``x`` and ``x'``
changes ``|x - x'|``.

Every pairing is validated: each real image needs exactly one counterfactual, of the same
(H, W) and channels, with a target class other than its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from chanstat.cellprofiler.readers import read_csv_table
from chanstat.counterfactual.base import CounterfactualProvider

CSV_SUFFIXES = (".csv", ".tsv", ".txt")


class CounterfactualFileError(ValueError):
    """Counterfactual files that do not pair with the data set (shape, channels, index, classes)."""


def _read_plane(path: Path) -> np.ndarray:
    if not path.exists():
        raise CounterfactualFileError(f"counterfactual image file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(path)
    else:
        from skimage import io as skio

        arr = skio.imread(path)
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise CounterfactualFileError(f"{path} must hold one 2-D plane (H, W); it has shape {arr.shape}")
    return arr


def _scale(arr: np.ndarray, scale) -> np.ndarray:
    if scale in (None, "none", "dataset"):  # "dataset": applied after pairing (scale_like_dataset)
        return arr.astype(np.float32)
    if scale == "dtype":
        if np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        return arr.astype(np.float32)
    if isinstance(scale, (list, tuple)) and len(scale) == 2:
        lo, hi = np.percentile(arr, [float(scale[0]), float(scale[1])])
        span = hi - lo if hi > lo else 1.0
        return np.clip((arr.astype(np.float32) - lo) / span, 0.0, 1.0).astype(np.float32)
    raise CounterfactualFileError(f"scale must be 'none', 'dataset', 'dtype' or [low_pct, high_pct]; got {scale!r}")


def scale_like_dataset(dataset, counterfactuals: torch.Tensor) -> torch.Tensor:
    """Raw counterfactuals (N, C, H, W), paired with ``dataset``'s images, scaled with the limits
    the real images were scaled with (``dataset.meta.attrs["scaling"]``, per plate and channel)."""
    record = dataset.meta.attrs.get("scaling")
    if not isinstance(record, dict) or record.get("method") not in ("plate", "none"):
        method = record.get("method") if isinstance(record, dict) else None
        raise CounterfactualFileError(
            f"scale='dataset' needs images read with per-plate scaling (read_loaddata); this data set's scaling is "
            f"{method!r} -- use scale='dtype' or [low_pct, high_pct] instead"
        )
    if record["method"] == "none":
        return counterfactuals
    from chanstat.data.scaling import apply_limits

    out = counterfactuals.numpy().copy()
    for i, plate in enumerate(dataset.meta["Metadata_Plate"].astype(str)):
        limits = record["limits"][plate]
        lo = np.array([limits[ch][0] for ch in dataset.channels])
        hi = np.array([limits[ch][1] for ch in dataset.channels])
        out[i] = apply_limits(out[i], lo, hi)
    return torch.from_numpy(out)


def _strip_orig(token: str) -> str:
    return token[len("Orig") :] if token.startswith("Orig") else token


def read_counterfactual_csv(
    csv: str | os.PathLike,
    channels: Sequence[str],
    target_column: str | None = "Metadata_TargetClass",
    channel_map: dict[str, str] | None = None,
    scale="none",
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None]:
    """Read counterfactual planes listed in a LoadData-style CSV.

    Parameters
    ----------
    csv : path of the CSV.
    channels : the data set's channel names, in its order; the CSV must provide each one
        (``FileName_Orig<Channel>``, or ``FileName_<Channel>``).
    target_column : column with the target class (name or index); optional.
    channel_map : file-token -> channel name (e.g. ``{"OrigMitochondria": "Mito"}``).
    scale : see the module docstring.

    Returns
    -------
    counterfactuals : ndarray (N', C, H, W) float32 in ``channels`` order
    metadata : DataFrame (N' rows) of the CSV's ``Metadata_*`` columns (the pairing keys)
    targets : ndarray (N',) of class names/indices, or None when the column is absent.
    """
    csv = Path(csv)
    if not csv.exists():
        raise FileNotFoundError(f"counterfactual CSV not found: {csv}")
    table = read_csv_table(csv)
    channel_map = dict(channel_map or {})
    file_columns: dict[str, str] = {}
    for col in table.columns:
        if col.startswith("FileName_"):
            token = col[len("FileName_") :]
            name = channel_map.get(token, channel_map.get(_strip_orig(token), _strip_orig(token)))
            file_columns[name] = token
    missing = [ch for ch in channels if ch not in file_columns]
    if missing:
        raise CounterfactualFileError(
            f"{csv} lacks FileName_Orig<Channel> columns for channels {missing}; it provides {sorted(file_columns)} "
            "(use channel_map to rename file tokens)"
        )
    planes = []
    for row in table.to_dict("records"):
        stack = []
        for ch in channels:
            token = file_columns[ch]
            folder = row.get(f"PathName_{token}")
            folder = Path(folder) if isinstance(folder, str) and folder else Path(".")
            if not folder.is_absolute():
                folder = csv.parent / folder
            stack.append(_scale(_read_plane(folder / str(row[f"FileName_{token}"])), scale))
        shapes = {p.shape for p in stack}
        if len(shapes) != 1:
            raise CounterfactualFileError(f"channel planes of one counterfactual differ in shape: {sorted(shapes)}")
        planes.append(np.stack(stack))
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise CounterfactualFileError(f"counterfactuals in {csv} differ in shape: {sorted(shapes)}")
    arrays = np.stack(planes).astype(np.float32) if planes else np.zeros((0, len(channels), 0, 0), np.float32)
    targets = table[target_column].to_numpy() if target_column and target_column in table.columns else None
    metadata = table[[c for c in table.columns if c.startswith("Metadata_") and c != target_column]]
    return arrays, metadata.reset_index(drop=True), targets


def _key_text(values: pd.Series) -> list[str]:
    """Key values as text that compares equal across dtypes (3, 3.0 and "3" -> "3")."""
    out = []
    for v in values.tolist():
        if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
            v = int(v)
        out.append("<missing>" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return out


def match_by_keys(
    meta: pd.DataFrame,
    metadata: pd.DataFrame,
    keys: Sequence[str] | None = None,
    source: str = "the counterfactual files",
) -> np.ndarray:
    """Row of ``metadata`` holding each image's counterfactual, matched on metadata keys.

    Parameters
    ----------
    meta : the data set's metadata (N rows).
    metadata : one row per counterfactual (N' rows).
    keys : columns to match on; default every ``Metadata_*`` column both tables have
        (except ``Metadata_Class``).
    source : how to name the files in messages.

    Returns
    -------
    ndarray (N,) int64: row of ``metadata`` for image i.

    Raises
    ------
    CounterfactualFileError
        No shared key columns, keys that do not identify the images uniquely, an image whose
        keys no counterfactual has, or several counterfactuals for one image.
    """
    if keys is None:
        keys = [
            c for c in metadata.columns if c.startswith("Metadata_") and c in meta.columns and c != "Metadata_Class"
        ]
        if not keys:
            raise CounterfactualFileError(
                f"{source} share no Metadata_* column with the data set (it has {list(meta.columns)}); "
                "add key columns such as Metadata_Plate, Metadata_Well, Metadata_Site, or give keys="
            )
    keys = [keys] if isinstance(keys, str) else list(keys)
    for table, name in ((meta, "the data set's metadata"), (metadata, source)):
        if missing := [k for k in keys if k not in table.columns]:
            raise CounterfactualFileError(f"key columns {missing} are not in {name} (it has {list(table.columns)})")
    image_keys = pd.Series(list(zip(*[_key_text(meta[k]) for k in keys])) if len(meta) else [], dtype=object)
    file_keys = pd.Series(list(zip(*[_key_text(metadata[k]) for k in keys])) if len(metadata) else [], dtype=object)
    if len(repeated := image_keys[image_keys.duplicated()]):
        raise CounterfactualFileError(
            f"keys {keys} do not identify the images uniquely ({len(repeated)} repeats, e.g. {repeated.iloc[0]}); "
            "add a key column (e.g. Metadata_Site, Metadata_TileY, Metadata_TileX)"
        )
    counts = file_keys.value_counts()
    row_of = {key: row for row, key in enumerate(file_keys.tolist())}
    rows = np.full(len(meta), -1, dtype=np.int64)
    for i, key in enumerate(image_keys.tolist()):
        if key in row_of:
            if counts[key] > 1:
                raise CounterfactualFileError(
                    f"{source} have {counts[key]} counterfactuals for the image with {dict(zip(keys, key))}"
                )
            rows[i] = row_of[key]
    if (unmatched := np.flatnonzero(rows < 0)).size:
        first = dict(zip(keys, image_keys.iloc[int(unmatched[0])]))
        raise CounterfactualFileError(
            f"{unmatched.size} of {len(meta)} images have no counterfactual in {source} (first: {first}); "
            "every image needs one -- restrict the data set to the paired images first"
        )
    return rows


def _load_vector(value, name: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"{name} file not found: {path}")
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in CSV_SUFFIXES:
            frame = read_csv_table(path)
            return frame.iloc[:, 0].to_numpy()
        raise CounterfactualFileError(f"{name} must be a .npy or .csv file; got {path}")
    return np.asarray(value)


def read_counterfactual_arrays(path, index=None, counterfactual_target=None):
    """Read counterfactual arrays from ``.npy`` or a Zarr group (see the module docstring).

    Returns ``(counterfactuals (N', C, H, W) float32, index (N',) or None, targets or None,
    channels list or None)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"counterfactual arrays not found: {path}")
    channels = None
    if path.suffix.lower() == ".npy":
        arrays = np.load(path, allow_pickle=False)
    elif not path.is_dir():
        raise CounterfactualFileError(
            f"cannot read counterfactuals from {path}: use a LoadData CSV, a .npy file or a Zarr group (folder)"
        )
    else:
        import zarr

        from chanstat.io import read_arrays, read_group_attrs

        group = zarr.open_group(str(path), mode="r")
        if "counterfactuals" not in group:
            raise CounterfactualFileError(
                f"Zarr group {path} has no array 'counterfactuals'; it has {sorted(group.array_keys())}"
            )
        names = [k for k in ("counterfactuals", "index", "counterfactual_target") if k in group]
        found, attrs = read_arrays(path, names)
        arrays = found["counterfactuals"]
        if index is None and "index" in found:
            index = found["index"]
        if counterfactual_target is None and "counterfactual_target" in found:
            counterfactual_target = found["counterfactual_target"]
        channels = attrs["counterfactuals"].get("channels") or read_group_attrs(path).get("channels")
    return (
        np.asarray(arrays),
        _load_vector(index, "index"),
        _load_vector(counterfactual_target, "counterfactual_target"),
        channels,
    )


def pair_counterfactuals(
    dataset,
    arrays: np.ndarray,
    index: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    channels: Sequence[str] | None = None,
    metadata: pd.DataFrame | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate user counterfactuals against ``dataset`` and order them like its images.

    Parameters
    ----------
    dataset : ImageSet with N images (C, H, W).
    arrays : (N', C', H', W') counterfactuals.
    metadata : (N' rows) metadata of each counterfactual: pairs them with images by ``keys``
        (:func:`match_by_keys`; rows of images not in the data set are ignored). Preferred:
        it survives subsets and reordering of the data set.
    keys : key columns for ``metadata`` (default: the ``Metadata_*`` columns both share).
    index : (N',) data-set row of each counterfactual, when no ``metadata`` is given; default
        ``arange(N')``.
    targets : (N',) target class names or indices; optional.
    channels : channel names of ``arrays`` (reordered to the data set's order); default: same as
        the data set.

    Returns
    -------
    counterfactuals : torch.Tensor (N, C, H, W), row i pairs with image i
    counterfactual_target : torch.Tensor (N,) int64, or None when ``targets`` is None

    Raises
    ------
    CounterfactualFileError
        Wrong number of dimensions, channel count/names, image size, index out of range,
        duplicated or missing samples, unknown target classes, or a target equal to the real
        image's own class.
    """
    n, c, h, w = dataset.images.shape
    arrays = np.asarray(arrays)
    if arrays.ndim != 4:
        raise CounterfactualFileError(f"counterfactuals must have shape (N, C, H, W); got {arrays.shape}")
    if channels is not None:
        channels = [str(ch) for ch in channels]
        if len(channels) != arrays.shape[1]:
            raise CounterfactualFileError(
                f"counterfactuals have {arrays.shape[1]} channels but {len(channels)} channel names {channels}"
            )
        if sorted(channels) != sorted(dataset.channels):
            raise CounterfactualFileError(
                f"counterfactual channels {channels} do not match the data set's channels {list(dataset.channels)}"
            )
        arrays = arrays[:, [channels.index(ch) for ch in dataset.channels]]
    if arrays.shape[1] != c:
        raise CounterfactualFileError(
            f"counterfactuals have {arrays.shape[1]} channels; the data set has {c} ({list(dataset.channels)})"
        )
    if arrays.shape[2:] != (h, w):
        raise CounterfactualFileError(
            f"counterfactual images are {arrays.shape[2]}x{arrays.shape[3]} (HxW); the real images are {h}x{w}"
        )
    if not np.isfinite(arrays).all():
        raise CounterfactualFileError(f"counterfactuals contain {int((~np.isfinite(arrays)).sum())} NaN/inf values")
    if metadata is not None:
        if index is not None:
            raise CounterfactualFileError("give an index or metadata keys to pair counterfactuals, not both")
        if len(metadata) != arrays.shape[0]:
            raise CounterfactualFileError(f"{len(metadata)} metadata rows for {arrays.shape[0]} counterfactuals")
        order = match_by_keys(dataset.meta, metadata, keys)
    else:
        order = _order_by_index(index, arrays.shape[0], n)
    counterfactuals = torch.as_tensor(np.ascontiguousarray(arrays[order]), dtype=torch.float32)
    if targets is None:
        return counterfactuals, None
    targets = np.asarray(targets)
    if targets.shape != (arrays.shape[0],):
        raise CounterfactualFileError(
            f"target classes have shape {targets.shape} for {arrays.shape[0]} counterfactuals"
        )
    targets = targets[order]
    classes = list(dataset.classes)
    labels = []
    for value in targets.tolist():
        if isinstance(value, str) and value in classes:
            labels.append(classes.index(value))
        elif (
            isinstance(value, (int, np.integer, float)) and float(value).is_integer() and 0 <= int(value) < len(classes)
        ):
            labels.append(int(value))
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit() and 0 <= int(value) < len(classes):
            labels.append(int(value))
        else:
            raise CounterfactualFileError(f"unknown target class {value!r}; classes are {classes}")
    counterfactual_target = torch.as_tensor(labels, dtype=torch.int64)
    own = counterfactual_target == dataset.labels
    if bool(own.any()):
        raise CounterfactualFileError(
            f"{int(own.sum())} counterfactuals target their real image's own class "
            f"(samples {torch.nonzero(own).flatten()[:10].tolist()})"
        )
    return counterfactuals, counterfactual_target


def _order_by_index(index, n_files: int, n: int) -> np.ndarray:
    """Row of the files for each image from a data-set row number per file row."""
    index = np.arange(n_files) if index is None else np.asarray(index)
    if index.shape != (n_files,):
        raise CounterfactualFileError(f"index has shape {index.shape} for {n_files} counterfactuals")
    if not np.issubdtype(index.dtype, np.integer):
        as_float = index.astype(float)
        if not np.all(np.equal(np.mod(as_float, 1), 0)):
            raise CounterfactualFileError("the index must hold integer sample numbers")
        index = as_float.astype(np.int64)
    out_of_range = index[(index < 0) | (index >= n)]
    if out_of_range.size:
        raise CounterfactualFileError(
            f"index values {sorted(set(out_of_range.tolist()))[:10]} are outside [0, {n - 1}]"
        )
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise CounterfactualFileError(f"samples {values[counts > 1][:10].tolist()} have more than one counterfactual")
    if values.size != n:
        missing = np.setdiff1d(np.arange(n), values)
        raise CounterfactualFileError(
            f"{missing.size} of {n} images have no counterfactual (first: {missing[:10].tolist()}); "
            "every image needs one -- restrict the data set to the paired images first"
        )
    return np.argsort(index)


class FileCounterfactuals(CounterfactualProvider):
    """Counterfactuals read from files and paired with the real images.

    Parameters
    ----------
    path : LoadData-style CSV, ``.npy`` array or Zarr group (see the module docstring).
    keys : metadata columns pairing counterfactuals with images (CSV, or arrays with a
        ``key_table``); default every ``Metadata_*`` column shared with the data set.
    key_table : for arrays: a CSV or Parquet table with one row of metadata keys per
        counterfactual (row i describes array row i).
    index : for arrays without ``key_table``: data-set row of each counterfactual (path or
        list); default: the Zarr group's ``index`` array, else row order.
    counterfactual_target : for arrays: target classes (path or list); default: the Zarr group's
        ``counterfactual_target`` array, else the target rule.
    channels : for ``.npy`` arrays: their channel names, if not the data set's order.
    target_column, channel_map : for CSVs.
    scale : ``"none"`` (default: files in the images' units), ``"dataset"`` (raw files, scaled
        with the real images' per-plate limits), ``"dtype"`` or ``[low_pct, high_pct]``.
    """

    name = "from_files"
    needs_model = False
    description = "counterfactuals supplied by the user (LoadData CSV, NumPy or Zarr), validated against the images"

    def __init__(
        self,
        model=None,
        *,
        path=None,
        keys: Sequence[str] | None = None,
        key_table=None,
        index=None,
        counterfactual_target=None,
        channels=None,
        target_column: str = "Metadata_TargetClass",
        channel_map: dict | None = None,
        scale="none",
        **common,
    ):
        super().__init__(model, **common)
        if path is None:
            raise ValueError("provider 'from_files' needs path = a LoadData CSV, a .npy file or a Zarr group")
        self.path = Path(path)
        self.keys = keys
        self.key_table = key_table
        self.index = index
        self.counterfactual_target = counterfactual_target
        self.channels = channels
        self.target_column = target_column
        self.channel_map = channel_map
        self.scale = scale

    def _generate(self, dataset, target):
        metadata = None
        if self.path.suffix.lower() in CSV_SUFFIXES:
            arrays, metadata, targets = read_counterfactual_csv(
                self.path, dataset.channels, self.target_column, self.channel_map, self.scale
            )
            index, channels = None, None
        else:
            arrays, index, targets, channels = read_counterfactual_arrays(
                self.path, self.index, self.counterfactual_target
            )
            if self.key_table is not None:
                metadata = _read_key_table(self.key_table)
                index = None if self.index is None else index
            if self.channels is not None:
                channels = self.channels
            if self.scale not in (None, "none", "dataset"):
                arrays = np.stack([np.stack([_scale(p, self.scale) for p in img]) for img in arrays])
        counterfactuals, counterfactual_target = pair_counterfactuals(
            dataset, arrays, index, targets, channels, metadata=metadata, keys=self.keys
        )
        if self.scale == "dataset":
            counterfactuals = scale_like_dataset(dataset, counterfactuals)
        if counterfactual_target is None:
            counterfactual_target = self.targets(dataset, target)
        return counterfactuals, counterfactual_target, None, {"path": str(self.path)}


def _read_key_table(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"key table not found: {path}")
    return pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else read_csv_table(path)
