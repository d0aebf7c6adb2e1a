"""Counterfactuals supplied by the user (e.g. made by their own generative model).

Two file layouts are accepted:

**LoadData-style CSV** -- one row per counterfactual, CellProfiler LoadData columns
``FileName_Orig<Channel>`` / ``PathName_Orig<Channel>`` for every channel of the data set
(``PathName`` relative to the CSV's folder unless absolute; a missing ``PathName`` column means
the CSV's folder), plus

- ``Metadata_Sample`` -- index of the real image (row of the data set) the counterfactual
  belongs to (configurable: ``index_column``), and
- ``Metadata_TargetClass`` -- class name (or index) of the counterfactual (configurable:
  ``target_column``; optional -- without it the target rule decides).

Each file holds one 2-D plane (H, W); TIFF (``tifffile``), ``.npy``, or anything
``skimage.io.imread`` reads.

**Arrays** -- a ``.npy`` file (N', C, H, W), or a Zarr group holding an array
``counterfactuals`` (and optionally ``index`` and ``target_labels`` arrays, and a
``channels`` attribute), with optional ``index`` / ``target_labels`` given separately
(``.npy`` / ``.csv`` path or a list). Without an index, row i pairs with image i.

Intensities must be in the same units as the data set's images (counterfactuals made from the
rescaled images); ``scale="dtype"`` divides integer files by their dtype's maximum and
``scale=[low_pct, high_pct]`` rescales every plane by its own percentiles -- only meaningful if
the real images were rescaled the same way, because independent rescaling of ``x`` and ``x'``
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
    if scale in (None, "none"):
        return arr.astype(np.float32)
    if scale == "dtype":
        if np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        return arr.astype(np.float32)
    if isinstance(scale, (list, tuple)) and len(scale) == 2:
        lo, hi = np.percentile(arr, [float(scale[0]), float(scale[1])])
        span = hi - lo if hi > lo else 1.0
        return np.clip((arr.astype(np.float32) - lo) / span, 0.0, 1.0).astype(np.float32)
    raise CounterfactualFileError(f"scale must be 'none', 'dtype' or [low_pct, high_pct]; got {scale!r}")


def _strip_orig(token: str) -> str:
    return token[len("Orig"):] if token.startswith("Orig") else token


def read_counterfactual_csv(
    csv: str | os.PathLike,
    channels: Sequence[str],
    index_column: str = "Metadata_Sample",
    target_column: str | None = "Metadata_TargetClass",
    channel_map: dict[str, str] | None = None,
    scale="none",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read counterfactual planes listed in a LoadData-style CSV.

    Parameters
    ----------
    csv : path of the CSV.
    channels : the data set's channel names, in its order; the CSV must provide each one
        (``FileName_Orig<Channel>``, or ``FileName_<Channel>``).
    index_column : column pairing each row with a real image (its row in the data set).
    target_column : column with the target class (name or index); optional.
    channel_map : file-token -> channel name (e.g. ``{"OrigMitochondria": "Mito"}``).
    scale : see the module docstring.

    Returns
    -------
    counterfactuals : ndarray (N', C, H, W) float32 in ``channels`` order
    index : ndarray (N',) int64
    targets : ndarray (N',) of class names/indices, or None when the column is absent.
    """
    csv = Path(csv)
    if not csv.exists():
        raise FileNotFoundError(f"counterfactual CSV not found: {csv}")
    table = pd.read_csv(csv, sep="\t" if csv.suffix.lower() == ".tsv" else ",")
    if index_column not in table.columns:
        raise CounterfactualFileError(
            f"{csv} has no index column {index_column!r} pairing rows with real images; columns: {list(table.columns)}"
        )
    channel_map = dict(channel_map or {})
    file_columns: dict[str, str] = {}
    for col in table.columns:
        if col.startswith("FileName_"):
            token = col[len("FileName_"):]
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
    index = pd.to_numeric(table[index_column], errors="coerce")
    if index.isna().any() or not np.all(np.equal(np.mod(index.to_numpy(float), 1), 0)):
        raise CounterfactualFileError(f"{index_column} must hold integer sample indices")
    targets = table[target_column].to_numpy() if target_column and target_column in table.columns else None
    return arrays, index.to_numpy(np.int64), targets


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
            frame = pd.read_csv(path)
            return frame.iloc[:, 0].to_numpy()
        raise CounterfactualFileError(f"{name} must be a .npy or .csv file; got {path}")
    return np.asarray(value)


def read_counterfactual_arrays(path, index=None, target_labels=None):
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
        from chanstat.io import read_arrays, read_group_attrs

        import zarr

        group = zarr.open_group(str(path), mode="r")
        if "counterfactuals" not in group:
            raise CounterfactualFileError(f"Zarr group {path} has no array 'counterfactuals'; it has {sorted(group.array_keys())}")
        names = [k for k in ("counterfactuals", "index", "target_labels") if k in group]
        found, attrs = read_arrays(path, names)
        arrays = found["counterfactuals"]
        if index is None and "index" in found:
            index = found["index"]
        if target_labels is None and "target_labels" in found:
            target_labels = found["target_labels"]
        channels = attrs["counterfactuals"].get("channels") or read_group_attrs(path).get("channels")
    return np.asarray(arrays), _load_vector(index, "index"), _load_vector(target_labels, "target_labels"), channels


def pair_counterfactuals(
    dataset,
    arrays: np.ndarray,
    index: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    channels: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate user counterfactuals against ``dataset`` and order them like its images.

    Parameters
    ----------
    dataset : ImageSet with N images (C, H, W).
    arrays : (N', C', H', W') counterfactuals.
    index : (N',) data-set row of each counterfactual; default ``arange(N')``.
    targets : (N',) target class names or indices; optional.
    channels : channel names of ``arrays`` (reordered to the data set's order); default: same as
        the data set.

    Returns
    -------
    counterfactuals : torch.Tensor (N, C, H, W), row i pairs with image i
    target_labels : torch.Tensor (N,) int64, or None when ``targets`` is None

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
    index = np.arange(arrays.shape[0]) if index is None else np.asarray(index)
    if index.shape != (arrays.shape[0],):
        raise CounterfactualFileError(f"index has shape {index.shape} for {arrays.shape[0]} counterfactuals")
    if not np.issubdtype(index.dtype, np.integer):
        as_float = index.astype(float)
        if not np.all(np.equal(np.mod(as_float, 1), 0)):
            raise CounterfactualFileError("the index must hold integer sample numbers")
        index = as_float.astype(np.int64)
    out_of_range = index[(index < 0) | (index >= n)]
    if out_of_range.size:
        raise CounterfactualFileError(f"index values {sorted(set(out_of_range.tolist()))[:10]} are outside [0, {n - 1}]")
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise CounterfactualFileError(f"samples {values[counts > 1][:10].tolist()} have more than one counterfactual")
    if values.size != n:
        missing = np.setdiff1d(np.arange(n), values)
        raise CounterfactualFileError(
            f"{missing.size} of {n} images have no counterfactual (first: {missing[:10].tolist()}); "
            "every image needs one -- restrict the data set to the paired images first"
        )
    order = np.argsort(index)
    counterfactuals = torch.as_tensor(np.ascontiguousarray(arrays[order]), dtype=torch.float32)
    if targets is None:
        return counterfactuals, None
    targets = np.asarray(targets)[order]
    if targets.shape != (n,):
        raise CounterfactualFileError(f"target classes have shape {targets.shape} for {n} counterfactuals")
    classes = list(dataset.classes)
    labels = []
    for value in targets.tolist():
        if isinstance(value, str) and value in classes:
            labels.append(classes.index(value))
        elif isinstance(value, (int, np.integer, float)) and float(value).is_integer() and 0 <= int(value) < len(classes):
            labels.append(int(value))
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit() and 0 <= int(value) < len(classes):
            labels.append(int(value))
        else:
            raise CounterfactualFileError(f"unknown target class {value!r}; classes are {classes}")
    target_labels = torch.as_tensor(labels, dtype=torch.int64)
    own = target_labels == dataset.labels
    if bool(own.any()):
        raise CounterfactualFileError(
            f"{int(own.sum())} counterfactuals target their real image's own class "
            f"(samples {torch.nonzero(own).flatten()[:10].tolist()})"
        )
    return counterfactuals, target_labels


class FileCounterfactuals(CounterfactualProvider):
    """Counterfactuals read from files and paired with the real images.

    Parameters
    ----------
    path : LoadData-style CSV, ``.npy`` array or Zarr group (see the module docstring).
    index : for arrays: data-set row of each counterfactual (path or list); default: the Zarr
        group's ``index`` array, else row order.
    target_labels : for arrays: target classes (path or list); default: the Zarr group's
        ``target_labels`` array, else the target rule.
    channels : for ``.npy`` arrays: their channel names, if not the data set's order.
    index_column, target_column, channel_map : for CSVs.
    scale : ``"none"`` (default), ``"dtype"`` or ``[low_pct, high_pct]``.
    """

    name = "from_files"
    needs_model = False
    description = "counterfactuals supplied by the user (LoadData CSV, NumPy or Zarr), validated against the images"

    def __init__(self, model=None, *, path=None, index=None, target_labels=None, channels=None,
                 index_column: str = "Metadata_Sample", target_column: str = "Metadata_TargetClass",
                 channel_map: dict | None = None, scale="none", **common):
        super().__init__(model, **common)
        if path is None:
            raise ValueError("provider 'from_files' needs path = a LoadData CSV, a .npy file or a Zarr group")
        self.path = Path(path)
        self.index = index
        self.target_labels = target_labels
        self.channels = channels
        self.index_column = index_column
        self.target_column = target_column
        self.channel_map = channel_map
        self.scale = scale

    def _generate(self, dataset, target):
        if self.path.suffix.lower() in CSV_SUFFIXES:
            arrays, index, targets = read_counterfactual_csv(
                self.path, dataset.channels, self.index_column, self.target_column, self.channel_map, self.scale
            )
            channels = None
        else:
            arrays, index, targets, channels = read_counterfactual_arrays(self.path, self.index, self.target_labels)
            if self.channels is not None:
                channels = self.channels
            if self.scale not in (None, "none"):
                arrays = np.stack([np.stack([_scale(p, self.scale) for p in img]) for img in arrays])
        counterfactuals, target_labels = pair_counterfactuals(dataset, arrays, index, targets, channels)
        if target_labels is None:
            target_labels = self.targets(dataset, target)
        return counterfactuals, target_labels, None, {"path": str(self.path)}
