"""Per-cell CellProfiler tables larger than memory -> well-level medians, streamed in chunks.

:func:`aggregate_wells_streaming` returns exactly the table that the in-memory path,
``aggregate_wells(read(path))``, returns (same rows, columns, dtypes and values; see
:func:`~chanstat.cellprofiler.aggregate_wells`), while holding only a bounded slice of the
cells in memory. :func:`differential_streaming` then runs
:func:`~chanstat.cellprofiler.differential` on those well medians, which gives the same result
as running it on the per-cell table (the well is the unit either way).

How memory stays bounded
------------------------
Parquet (a file, a folder of files, or a list of files)
    Parquet is columnar, so features are read a few columns at a time: the well key is read
    once (one group code per cell), then for each batch of ``k`` feature columns the row groups
    are streamed (``batch_rows`` rows at a time) into one preallocated ``(cells, k)`` buffer and
    the exact per-well median is taken with the same pandas ``groupby(...).median()`` the
    in-memory path uses. ``k`` is chosen so that buffer plus pandas' working copies fit
    ``memory_limit``. When even one column of every cell would not fit, wells are split into
    blocks of whole wells (a well is never split, so medians stay exact) and each block is a
    separate pass. Cost: every feature column is decoded once per block.
SQLite (CellProfiler ExportToDatabase)
    SQLite is a row store, so it is cut the other way: by wells. The image table gives each
    image's well; for a chunk of wells, the rows of those images are copied (in SQL, with the
    tables' own declared types) into a temporary SQLite file, read and joined with
    :func:`~chanstat.cellprofiler.read` and aggregated with ``aggregate_wells``. A chunk holds
    as many whole wells as fit ``memory_limit``.

Why not DuckDB's ``median()``: it is exact, but DuckDB 2.0 keeps every value of a holistic
aggregate in memory (measured: ``GROUP BY`` well with 100 ``median`` columns of 10^6 cells
raised ``OutOfMemoryException`` at ``memory_limit = '500MB'`` and needed 1.2 GB; 28 s against
12 s here) and its even-count medians can differ from pandas' in the last bit, so the result
would not equal the in-memory path's. Column batches over Parquet give both bounded memory
and bit-identical medians.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from chanstat.cellprofiler.profiles import (
    aggregate_wells,
    check_numeric,
    check_unique_columns,
    feature_columns,
    metadata_columns,
    resolve_well_columns,
)

#: Default memory budget for the streamed data (bytes, or a string such as ``"512MB"``).
DEFAULT_MEMORY_LIMIT = "512MB"
#: pandas' groupby median works on copies: bytes per value beyond the buffer's own itemsize
#: (measured: ~2.5x a float64 buffer at the peak).
_WORKING_BYTES_PER_VALUE = 16
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def parse_memory(limit: int | str) -> int:
    """Bytes of ``limit`` (an int, or ``"512MB"``, ``"2 GiB"``, ...)."""
    if isinstance(limit, (int, np.integer)) and not isinstance(limit, bool):
        value = int(limit)
    elif isinstance(limit, str):
        from dask.utils import parse_bytes

        try:
            value = int(parse_bytes(limit))
        except ValueError as exc:
            raise ValueError(f"memory_limit must be bytes or a size such as '512MB'; got {limit!r}") from exc
    else:
        raise TypeError(f"memory_limit must be an int or a string such as '512MB'; got {type(limit).__name__}")
    if value < 1:
        raise ValueError(f"memory_limit must be positive; got {limit!r}")
    return value


def aggregate_wells_streaming(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    features: Sequence[str] | None = None,
    well: Sequence[str] | None = None,
    func: str = "median",
    keep: Sequence[str] = (),
    *,
    compartments: Sequence[str] | None = None,
    image_columns: str = "metadata",
    memory_limit: int | str = DEFAULT_MEMORY_LIMIT,
    batch_rows: int = 65_536,
    progress: bool = False,
) -> pd.DataFrame:
    """Well-level aggregates of a per-cell table that need not fit in memory.

    Parameters
    ----------
    source : a per-object Parquet file (pycytominer style: ``Metadata_*`` columns plus
        ``Compartment_Category_...`` features), a folder of such files or a list of them
        (read in sorted / given order, as one table), or a CellProfiler SQLite file.
    features : feature columns to aggregate; default every CellProfiler measurement column
        (:func:`~chanstat.cellprofiler.feature_columns`).
    well : the well key; default ``Metadata_Plate`` + ``Metadata_Well``.
    func : ``"median"`` (default; bit-identical to the in-memory path) or ``"mean"`` (equal to
        the last bit or two when wells are split into blocks: pandas sums a block differently).
    keep : further non-``Metadata_`` columns to carry over when constant within wells.
    compartments : object compartments to keep (as in :func:`~chanstat.cellprofiler.read`).
    image_columns : SQLite only: ``"metadata"`` or ``"all"`` (as in ``read``).
    memory_limit : budget for the cells held at once (buffers and pandas' working copies;
        the interpreter, pyarrow and the result come on top).
    batch_rows : rows per Parquet record batch while streaming.
    progress : progress bar over passes (Parquet) or well chunks (SQLite).

    Returns
    -------
    pandas.DataFrame
        One row per well, sorted by the well key: the well key, every other ``Metadata_*``
        column constant within each well, ``Metadata_n_objects``, then the features -- the
        same table as ``aggregate_wells(read(source), features, well, func, keep)``.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing source, unknown format, duplicate or non-numeric feature columns, no well
        columns, an invalid memory limit.
    """
    if func not in ("median", "mean"):
        raise ValueError(f"func must be 'median' or 'mean'; got {func!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer; got {batch_rows!r}")
    budget = parse_memory(memory_limit)
    paths = _source_paths(source)
    if len(paths) == 1 and paths[0].name.lower().endswith(_SQLITE_SUFFIXES):
        return _sqlite_wells(paths[0], features, well, func, keep, compartments, image_columns, budget, progress)
    bad = [p for p in paths if not p.name.lower().endswith(_PARQUET_SUFFIXES)]
    if bad:
        raise ValueError(
            f"cannot stream {bad[0]}: expected Parquet ({', '.join(_PARQUET_SUFFIXES)}) or one SQLite file "
            f"({', '.join(_SQLITE_SUFFIXES)})"
        )
    return _parquet_wells(paths, features, well, func, keep, compartments, budget, int(batch_rows), progress)


def differential_streaming(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    by: str,
    case,
    control,
    features: Sequence[str] | None = None,
    well: Sequence[str] | None = None,
    *,
    compartments: Sequence[str] | None = None,
    memory_limit: int | str = DEFAULT_MEMORY_LIMIT,
    progress: bool = False,
    **differential_options,
) -> pd.DataFrame:
    """:func:`~chanstat.cellprofiler.differential` at the well level on a table that need not fit in memory.

    Aggregates ``source`` with :func:`aggregate_wells_streaming` (carrying ``by`` along), then
    tests the well medians. Equals ``differential(read(source), by, case, control,
    unit="well", ...)``. ``differential_options`` (``normalize``, ``padjust``, ``alpha``,
    ``ci``, ``plate``, ``channel_map``) are passed on.
    """
    from chanstat.cellprofiler.feature_tests import differential

    if differential_options.get("unit", "well") != "well":
        raise ValueError("differential_streaming tests wells (unit='well'); cell-level tests need the per-cell table")
    differential_options.pop("level", None)
    wells = aggregate_wells_streaming(
        source,
        features=features,
        well=well,
        keep=() if str(by).startswith("Metadata_") else [by],
        compartments=compartments,
        memory_limit=memory_limit,
        progress=progress,
    )
    if by not in wells.columns:
        raise ValueError(f"group column {by!r} is missing or varies within wells; cannot test wells")
    return differential(wells, by, case, control, unit="well", features=features, well=well, **differential_options)


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
def _source_paths(source) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"per-cell table not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_PARQUET_SUFFIXES))
            if not files:
                raise ValueError(f"{path} holds no Parquet files")
            return files
        return [path]
    paths = [Path(p) for p in source]
    if not paths:
        raise ValueError("no files given")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"per-cell tables not found: {missing[:5]}")
    return paths


def _renamed(names: Iterable[str]) -> list[str]:
    """``Image_Metadata_X`` -> ``Metadata_X`` unless ``Metadata_X`` exists (the rule of
    :func:`~chanstat.cellprofiler.read`)."""
    names = list(names)
    taken = set(names)
    out = []
    for name in names:
        target = name[len("Image_") :] if name.startswith("Image_Metadata_") else None
        if target is not None and target not in taken:
            taken.add(target)
            out.append(target)
        else:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# Parquet: feature columns in batches
# ---------------------------------------------------------------------------------------------
def _parquet_wells(paths, features, well, func, keep, compartments, budget, batch_rows, progress) -> pd.DataFrame:
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(p) for p in paths]
    names = files[0].schema_arrow.names
    for path, pf in zip(paths[1:], files[1:]):
        if pf.schema_arrow.names != names:
            extra = sorted(set(pf.schema_arrow.names) ^ set(names))[:5]
            raise ValueError(
                f"{path} has different columns from {paths[0]} (e.g. {extra}); cannot stream them as one table"
            )
    renamed = _renamed(names)
    check_unique_columns(pd.DataFrame(columns=renamed), str(paths[0]))
    to_file = dict(zip(renamed, names))
    if compartments is not None:
        prefixes = tuple(f"{c}_" for c in compartments)
        renamed = [c for c in renamed if c.startswith("Metadata_") or c.startswith(prefixes)]
    ordered = metadata_columns(renamed) + [c for c in renamed if not c.startswith("Metadata_")]
    wells = resolve_well_columns(ordered, well)
    if not wells:
        raise ValueError("cannot aggregate to wells: the table has no Metadata_Well column; pass well=")
    features = feature_columns(ordered) if features is None else list(features)
    missing = [f for f in features if f not in to_file or f not in ordered]
    if missing:
        raise ValueError(f"features not in the table: {missing[:10]}")
    empty = files[0].schema_arrow.empty_table().to_pandas()
    empty.columns = _renamed(empty.columns)
    check_numeric(empty, features)
    extra = [k for k in keep if not str(k).startswith("Metadata_")]
    missing_keep = [k for k in extra if k not in to_file]
    if missing_keep:
        raise ValueError(f"keep columns not in the table: {missing_keep}")
    meta = [c for c in metadata_columns(ordered) + extra if c not in wells and c not in features]

    def read_columns(columns: list[str]) -> pd.DataFrame:
        frames = [pf.read(columns=[to_file[c] for c in columns]).to_pandas() for pf in files]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        frame.columns = columns
        return frame

    key = read_columns(wells)
    codes = key.astype("string").fillna("<NA>").groupby(wells, sort=True, dropna=False).ngroup().to_numpy()
    n_groups = int(codes.max()) + 1 if codes.size else 0
    counts = np.bincount(codes, minlength=n_groups)
    _, first_rows = np.unique(codes, return_index=True)
    out = key.iloc[first_rows].reset_index(drop=True)
    del key
    for column in meta:  # one metadata column in memory at a time
        values = read_columns([column])[column]
        if values.groupby(codes, sort=True).nunique(dropna=False).max() <= 1:
            out[column] = values.iloc[first_rows].to_numpy()
            out[column] = out[column].astype(values.dtype)
        del values
    out["Metadata_n_objects"] = counts
    if not features:
        return out

    itemsize = {f: (4 if empty[f].dtype == np.float32 else 8) for f in features}
    blocks = _row_blocks(counts, budget // (max(itemsize.values()) + _WORKING_BYTES_PER_VALUE))
    block_of_group = np.empty(n_groups, dtype=np.int64)
    for b, groups in enumerate(blocks):
        block_of_group[groups] = b
    row_block = block_of_group[codes] if len(blocks) > 1 else None
    passes = []
    for b, groups in enumerate(blocks):
        rows = int(counts[groups].sum())
        per_column = rows * (8 + _WORKING_BYTES_PER_VALUE)
        k = max(1, budget // max(per_column, 1))
        passes += [(b, features[s : s + k]) for s in range(0, len(features), k)]
    results: dict[int, list[pd.DataFrame]] = {b: [] for b in range(len(blocks))}
    for b, columns in tqdm(passes, desc="aggregate wells", disable=not progress, leave=False):
        in_block = None if row_block is None else row_block == b
        block_codes = codes if in_block is None else codes[in_block]
        buffers = _fill(
            files, [to_file[c] for c in columns], [itemsize[c] for c in columns], len(block_codes), in_block, batch_rows
        )
        frame = pd.DataFrame(dict(zip(columns, buffers)), copy=False)
        grouped = frame.groupby(block_codes, sort=True)
        part = grouped.median() if func == "median" else grouped.mean()
        for c in columns:  # nullable extension dtypes (pandas metadata) give the same dtype as in memory
            if isinstance(empty[c].dtype, pd.api.extensions.ExtensionDtype) and func == "median":
                part[c] = part[c].astype("Float64")
        results[b].append(part)
        del frame, buffers, grouped
    values = pd.concat([pd.concat(results[b], axis=1) for b in range(len(blocks))], axis=0).sort_index()
    values = values.reset_index(drop=True)[features]
    return pd.concat([out, values], axis=1)


def _row_blocks(counts: np.ndarray, max_rows: int) -> list[np.ndarray]:
    """Consecutive groups packed into blocks of at most ``max_rows`` rows (a larger group alone)."""
    blocks: list[np.ndarray] = []
    current: list[int] = []
    size = 0
    for g, n in enumerate(counts.tolist()):
        if current and size + n > max_rows:
            blocks.append(np.asarray(current))
            current, size = [], 0
        current.append(g)
        size += n
    if current or not blocks:
        blocks.append(np.asarray(current, dtype=np.int64))
    return blocks


def _fill(files, columns, itemsizes, n_rows, in_block, batch_rows) -> list[np.ndarray]:
    """Stream ``columns`` of every file into one buffer per column (rows of one block)."""
    buffers = [np.empty(n_rows, dtype=np.float32 if size == 4 else np.float64) for size in itemsizes]
    row, pos = 0, 0
    for pf in files:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            m = batch.num_rows
            take = None if in_block is None else in_block[row : row + m]
            count = m if take is None else int(take.sum())
            if count:
                for j, column in enumerate(batch.columns):
                    values = column.to_numpy(zero_copy_only=False)
                    if values.dtype == object:  # nulls in an integer / decimal column
                        values = column.cast("float64").to_numpy(zero_copy_only=False)
                    buffers[j][pos : pos + count] = values if take is None else values[take]
            row += m
            pos += count
    if pos != n_rows:
        raise RuntimeError(f"streamed {pos} rows but expected {n_rows}; did the files change while reading?")
    return buffers


# ---------------------------------------------------------------------------------------------
# SQLite: chunks of whole wells
# ---------------------------------------------------------------------------------------------
def _sqlite_wells(path, features, well, func, keep, compartments, image_columns, budget, progress) -> pd.DataFrame:
    from chanstat.cellprofiler.readers import read

    uri = f"file:{Path(path).resolve()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as con:
        master = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid").fetchall()
        columns = {name: [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')] for name, _ in master}
        image_tables = [t for t, _ in master if re.search(r"(^|_)(Per_)?Image$", t, re.IGNORECASE)]
        if not image_tables:
            raise ValueError(f"{path} has no image table (Per_Image or Image); tables: {[t for t, _ in master]}")
        image_table = image_tables[0]
        keys = [k for k in ("TableNumber", "ImageNumber") if k in columns[image_table]]
        if "ImageNumber" not in keys:
            raise ValueError(f"{path}: the image table {image_table!r} has no ImageNumber column")
        renamed = dict(zip(_renamed(columns[image_table]), columns[image_table]))
        wells = resolve_well_columns(list(renamed), well)
        if not wells:
            raise ValueError(
                f"{path}: the image table has no Metadata_Well (or Image_Metadata_Well) column to group images "
                "into wells; pass well="
            )
        select = ", ".join(f'"{c}"' for c in keys + [renamed[w] for w in wells])
        images = pd.read_sql_query(f'SELECT {select} FROM "{image_table}"', con)
        images.columns = keys + wells
        linked = [t for t, _ in master if "ImageNumber" in columns[t]]
        objects = [t for t in linked if t != image_table and "ObjectNumber" in columns[t]]
        per_image = _objects_per_image(con, objects, keys)
    well_key = images[wells].astype("string").fillna("<NA>")
    images["_well"] = well_key.groupby(wells, sort=True, dropna=False).ngroup().to_numpy()
    images = images.merge(per_image, on=keys, how="left").fillna({"_objects": 0})
    n_columns = sum(len(columns[t]) for t in objects) or 1
    cells_per_well = images.groupby("_well")["_objects"].sum().to_numpy()
    # a chunk's cells are held ~3 times (SQLite rows read, joined table, aggregation)
    max_cells = max(1, budget // (n_columns * 8 * 3))
    chunks = _row_blocks(cells_per_well, max_cells)

    parts: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="chanstat-sqlite-") as tmp:
        for k, chunk in enumerate(tqdm(chunks, desc="aggregate wells", disable=not progress, leave=False)):
            chunk_images = images.loc[images["_well"].isin(chunk), keys]
            target = Path(tmp) / f"chunk-{k}.sqlite"
            _copy_images(path, target, master, linked, keys, chunk_images)
            cells = read(target, compartments=compartments, image_columns=image_columns)
            target.unlink()
            if len(cells):
                parts.append(aggregate_wells(cells, features=features, well=wells, func=func, keep=keep))
            del cells
    if not parts:
        raise ValueError(f"{path} holds no objects to aggregate")
    constant = [c for c in parts[0].columns if all(c in p.columns for p in parts)]
    table = pd.concat([p[constant] for p in parts], ignore_index=True)
    order = table[wells].astype("string").fillna("<NA>").sort_values(wells, kind="stable").index
    return table.loc[order].reset_index(drop=True)


def _objects_per_image(con, objects: list[str], keys: list[str]) -> pd.DataFrame:
    """Rows per image of the largest object table (for sizing chunks)."""
    if not objects:
        return pd.DataFrame(columns=keys + ["_objects"])
    sizes = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in objects}
    biggest = max(sizes, key=lambda t: sizes[t])
    cols = ", ".join(f'"{k}"' for k in keys)
    counts = pd.read_sql_query(f'SELECT {cols}, count(*) AS _objects FROM "{biggest}" GROUP BY {cols}', con)
    return counts


_CREATE_TABLE = re.compile(
    r"""^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:"[^"]+"|\[[^\]]+\]|`[^`]+`|[^\s(]+)""", re.IGNORECASE
)


def _copy_images(
    source: Path, target: Path, master, linked: list[str], keys: list[str], chunk_images: pd.DataFrame
) -> None:
    """Copy the rows of ``chunk_images`` of every image-linked table into a new SQLite file,
    with each table's own ``CREATE TABLE`` statement (so declared types stay the same)."""
    con = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True)
    try:
        con.execute("ATTACH DATABASE ? AS chunk", (str(target),))
        con.execute(f"CREATE TEMP TABLE _chunk_images ({', '.join(keys)})")
        con.executemany(
            f"INSERT INTO _chunk_images VALUES ({', '.join('?' for _ in keys)})",
            [
                tuple(v.item() if isinstance(v, np.generic) else v for v in row)
                for row in chunk_images.itertuples(index=False)
            ],
        )
        on = " AND ".join(f't."{k}" = c."{k}"' for k in keys)
        for name, sql in master:
            if name not in linked or not sql:
                continue
            create, n_subs = _CREATE_TABLE.subn(f'CREATE TABLE chunk."{name}"', sql, count=1)
            if n_subs != 1:
                raise ValueError(f"{source}: cannot copy table {name!r}: unexpected schema {sql[:80]!r}")
            con.execute(create)
            con.execute(
                f'INSERT INTO chunk."{name}" SELECT t.* FROM main."{name}" AS t JOIN temp._chunk_images AS c ON {on}'
            )
        con.commit()
    finally:
        con.close()
