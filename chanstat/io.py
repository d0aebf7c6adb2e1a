"""Low-level file formats: atomic Parquet tables and JSON, Zarr groups of arrays.

Run directories are read and written through :class:`chanstat.rundir.RunDirectory`, which
adds the schema on top of these; readers of users' files and the CellProfiler CLI use them
directly. Never imports torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy table as Parquet atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; tables are for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_umask() -> int:
    # os.umask can only be read by setting it; do that once, not per write, so threads
    # writing tables (Dask workers) never see the temporary value
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically; numpy scalars and paths are converted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        return str(o)

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=default))
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_arrays(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
    group_attrs: Mapping[str, Any] | None = None,
    mode: Literal["a", "w"] = "a",
) -> Path:
    """Write named arrays into a Zarr group (one array per name).

    Parameters
    ----------
    path : path of the ``.zarr`` directory; created if missing.
    arrays : name -> array. Existing arrays of the same name are replaced.
    attrs : name -> JSON-serialisable attributes stored on that array
        (e.g. ``{"channels": [...], "method": "d_ig"}``).
    group_attrs : attributes stored on the group.
    mode : ``"a"`` to add to an existing group, ``"w"`` to start afresh.
    """
    import zarr

    path = Path(path)
    group = zarr.open_group(str(path), mode=mode)
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        # zarr 3 takes "auto" (it refuses None) for 0-d arrays and arrays with no rows
        chunks: tuple[int, ...] | Literal["auto"] = (
            (min(64, arr.shape[0]),) + arr.shape[1:] if arr.ndim >= 1 and arr.shape[0] else "auto"
        )
        if name in group:
            del group[name]
        z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, overwrite=True)
        z[...] = arr
        if attrs and name in attrs:
            z.attrs.update(_jsonable(attrs[name]))
    if group_attrs:
        group.attrs.update(_jsonable(group_attrs))
    return path


def read_arrays(
    path: str | os.PathLike, names: list[str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Read arrays (all, or ``names``) and their attributes from a Zarr group."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    keys = sorted(group.array_keys()) if names is None else list(names)
    missing = [k for k in keys if k not in group]
    if missing:
        raise KeyError(f"{path} has no arrays {missing}; it has {sorted(group.array_keys())}")
    nodes = {k: group[k] for k in keys}
    groups = [k for k, node in nodes.items() if not isinstance(node, zarr.Array)]
    if groups:
        raise KeyError(f"{path}: {groups} are groups, not arrays")
    arrays = {k: np.asarray(node[...]) for k, node in nodes.items() if isinstance(node, zarr.Array)}
    attrs = {k: dict(node.attrs) for k, node in nodes.items()}
    return arrays, attrs


def read_group_attrs(path: str | os.PathLike) -> dict:
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs)


def _jsonable(d: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(dict(d), default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
