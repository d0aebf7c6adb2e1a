"""Shard planning: split N images into shards that follow the data layout.

A shard is a named, sorted set of image indices. Shards either follow the plate/well layout
(whole wells packed into shards of at most ``shard_size`` images, so a well is never split
across workers) or are fixed-size index ranges (``[0, s), [s, 2s), ...``), the natural unit
of a Zarr store chunked along the image axis.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

#: How shards can be cut: by fixed index ranges, or by whole wells / plates.
SHARD_BY = ("index", "well", "plate")

#: Metadata columns naming a well and a plate (CellProfiler conventions).
WELL_KEY = ("Metadata_Plate", "Metadata_Well")
PLATE_KEY = ("Metadata_Plate",)


@dataclass(frozen=True)
class Shard:
    """One unit of work.

    Attributes
    ----------
    shard_id : str
        Stable name, used for file names (``part-<shard_id>.parquet``) and the manifest;
        zero-padded so that sorting the names sorts the shards.
    indices : tuple of int
        Sorted image indices (rows of the data set) this shard covers.
    label : str
        What the shard holds, for humans (``"0:64"``, ``"P1/A01, P1/A02"``).
    """

    shard_id: str
    indices: tuple[int, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.shard_id or any(ch in self.shard_id for ch in "/\\ ."):
            raise ValueError(
                f"shard_id must be a non-empty name without '/', '\\\\', ' ' or '.'; got {self.shard_id!r}"
            )
        if len(self.indices) == 0:
            raise ValueError(f"shard {self.shard_id!r} holds no images")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def index_array(self) -> np.ndarray:
        """The indices as an int64 array, shape (n,)."""
        return np.asarray(self.indices, dtype=np.int64)

    @property
    def contiguous(self) -> bool:
        """True if the indices form one range ``start:stop`` (a Zarr region)."""
        idx = self.indices
        return idx[-1] - idx[0] + 1 == len(idx)

    def region(self) -> slice | np.ndarray:
        """``slice(start, stop)`` for a contiguous shard, else the index array."""
        return slice(self.indices[0], self.indices[-1] + 1) if self.contiguous else self.index_array

    def to_dict(self) -> dict[str, Any]:
        idx = self.indices
        record: dict[str, Any] = {"shard_id": self.shard_id, "n_images": len(idx), "label": self.label}
        if self.contiguous:
            record["start"], record["stop"] = int(idx[0]), int(idx[-1]) + 1
        else:
            record["indices"] = [int(i) for i in idx]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Shard":
        if "indices" in record:
            indices = tuple(int(i) for i in record["indices"])
        else:
            indices = tuple(range(int(record["start"]), int(record["stop"])))
        return cls(str(record["shard_id"]), indices, str(record.get("label", "")))


def _shard_name(k: int, n_shards: int) -> str:
    return f"{k:0{max(5, len(str(n_shards - 1)))}d}"


def plan_index_shards(n: int, shard_size: int) -> list[Shard]:
    """Fixed-size index ranges ``[0, s), [s, 2s), ...``; the last may be shorter.

    Parameters
    ----------
    n : number of images.
    shard_size : images per shard (>= 1).
    """
    n, shard_size = _check_sizes(n, shard_size)
    starts = list(range(0, n, shard_size))
    return [
        Shard(_shard_name(k, len(starts)), tuple(range(s, min(s + shard_size, n))), f"{s}:{min(s + shard_size, n)}")
        for k, s in enumerate(starts)
    ]


def plan_group_shards(meta: pd.DataFrame, by: Sequence[str], shard_size: int) -> list[Shard]:
    """Whole groups (wells or plates) packed, in order of first appearance, into shards.

    A shard takes consecutive groups until adding the next would exceed ``shard_size``
    images; a group larger than ``shard_size`` gets a shard of its own (groups are never
    split, so per-well results never depend on two workers).

    Parameters
    ----------
    meta : per-image metadata, row i = image i; must hold the ``by`` columns.
    by : grouping columns, e.g. ``("Metadata_Plate", "Metadata_Well")``.
    shard_size : most images per shard (>= 1), unless one group alone is larger.
    """
    if not isinstance(meta, pd.DataFrame):
        raise TypeError(f"meta must be a pandas DataFrame; got {type(meta).__name__}")
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in meta.columns]
    if missing:
        raise ValueError(f"cannot shard by {by}: metadata lacks columns {missing}; it has {list(meta.columns)[:10]}")
    n, shard_size = _check_sizes(len(meta), shard_size)
    key = meta[by].astype("string").fillna("<NA>")
    codes = key.groupby(by, sort=False, dropna=False).ngroup().to_numpy()
    labels = key.drop_duplicates().apply(lambda row: "/".join(row), axis=1).tolist()
    groups = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)] if n else []
    packed: list[tuple[list[np.ndarray], list[str]]] = []
    current: list[np.ndarray] = []
    names: list[str] = []
    size = 0
    for g, members in enumerate(groups):
        if current and size + len(members) > shard_size:
            packed.append((current, names))
            current, names, size = [], [], 0
        current.append(members)
        names.append(labels[g])
        size += len(members)
    if current:
        packed.append((current, names))
    shards = []
    for k, (shard_members, shard_names) in enumerate(packed):
        idx = np.sort(np.concatenate(shard_members))
        label = (
            ", ".join(shard_names)
            if len(shard_names) <= 3
            else f"{shard_names[0]} .. {shard_names[-1]} ({len(shard_names)} groups)"
        )
        shards.append(Shard(_shard_name(k, len(packed)), tuple(int(i) for i in idx), label))
    return shards


def plan_shards(n: int, shard_size: int = 64, by: str = "index", meta: pd.DataFrame | None = None) -> list[Shard]:
    """Plan shards for ``n`` images.

    Parameters
    ----------
    n : number of images.
    shard_size : images per shard (``by="index"``) or most images per shard (wells/plates).
    by : ``"index"`` (fixed ranges), ``"well"`` (whole wells) or ``"plate"`` (whole plates).
    meta : per-image metadata (needed for ``"well"`` / ``"plate"``), ``n`` rows.

    Returns
    -------
    list of Shard, covering every index exactly once.
    """
    if by not in SHARD_BY:
        raise ValueError(f"unknown shard_by {by!r}; choose one of {SHARD_BY}")
    if by == "index":
        return plan_index_shards(n, shard_size)
    if meta is None:
        raise ValueError(f"shard_by={by!r} needs the per-image metadata (meta=)")
    if len(meta) != n:
        raise ValueError(f"meta has {len(meta)} rows but there are {n} images")
    return plan_group_shards(meta, WELL_KEY if by == "well" else PLATE_KEY, shard_size)


def check_plan(shards: Sequence[Shard], n: int) -> None:
    """Raise ``ValueError`` unless the shards cover 0..n-1 exactly once with unique ids."""
    ids = [s.shard_id for s in shards]
    if len(set(ids)) != len(ids):
        raise ValueError("shard ids must be unique")
    covered = np.concatenate([s.index_array for s in shards]) if shards else np.array([], dtype=np.int64)
    counts = np.bincount(covered, minlength=n) if covered.size else np.zeros(n, dtype=np.int64)
    if covered.size and (covered.min() < 0 or covered.max() >= n):
        raise ValueError(f"shard indices must lie in [0, {n - 1}]")
    if (counts != 1).any():
        raise ValueError(
            f"shards must cover every image exactly once: {int((counts == 0).sum())} missed, "
            f"{int((counts > 1).sum())} repeated"
        )


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts (config, plan, model digest)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_sizes(n: int, shard_size: int) -> tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"need at least one image to shard; got n={n!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer; got {shard_size!r}")
    return int(n), int(shard_size)
