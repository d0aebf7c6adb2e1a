"""Read CellProfiler output: ExportToSpreadsheet folders, ExportToDatabase SQLite, profiles.

Every reader returns one wide table: ``Metadata_*`` columns first, then features named
``Compartment_Category_Feature_Channel``. Per-object tables of one image are joined the way
pycytominer does: the cytoplasm links its cell (``Cytoplasm_Parent_Cells``) and nucleus
(``Cytoplasm_Parent_Nuclei``); without a cytoplasm, cells link their nucleus
(``Cells_Parent_Nuclei``); otherwise objects are matched by ``ObjectNumber``. Image-level
``Image_Metadata_*`` columns are renamed ``Metadata_*`` so that plate and well have one name.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import re
import sqlite3
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from chanstat.cellprofiler.profiles import (
    aggregate_wells,
    check_numeric,
    check_unique_columns,
    feature_columns,
    resolve_well_columns,
)


class TableFileError(ValueError):
    """A table file that cannot be read as what it claims to be (empty, binary, truncated,
    ragged, not a database). The message is one line naming the file."""


#: What reading a damaged text, gzip, Parquet or SQLite file raises (-> :class:`TableFileError`).
_DAMAGED = (
    UnicodeDecodeError,
    EOFError,
    gzip.BadGzipFile,
    zlib.error,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    pa.ArrowInvalid,
    sqlite3.DatabaseError,
)

_KEYS = ("TableNumber", "ImageNumber")
_SKIP_CSV = {"image", "experiment"}
_PROFILE_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def read(
    path: str | Path,
    *,
    compartments: Sequence[str] | None = None,
    image_columns: str = "metadata",
    columns: Sequence[str] | None = None,
    aggregate: str | None = None,
    well: Sequence[str] | None = None,
    chunk_columns: int = 512,
) -> pd.DataFrame:
    """Read a CellProfiler table into one wide DataFrame.

    Parameters
    ----------
    path : one of
        - a folder written by ExportToSpreadsheet (``Image.csv`` plus one CSV per object,
          e.g. ``Cells.csv``, ``Cytoplasm.csv``, ``Nuclei.csv``; columns lack the compartment,
          which is taken from the file name), or a folder of such folders (one per well or
          plate; the sub-folder name goes into ``Metadata_Folder``);
        - an ExportToDatabase SQLite file (``.sqlite``/``.db``): ``Per_Image`` + ``Per_Object``,
          or an image table plus one table per compartment (cytominer-database layout);
        - a profile table (``.parquet``, ``.csv``, ``.csv.gz``, ``.tsv``) with ``Metadata_*``
          columns and prefixed features (pycytominer style), per object or per well.
    compartments : object compartments to keep (default: every one found).
    image_columns : ``"metadata"`` keeps only the image table's ``Metadata_*`` columns;
        ``"all"`` keeps every image column (prefixed ``Image_``).
    columns : for profile tables, the columns to read (Parquet reads only these).
    aggregate : ``None`` (rows as stored) or ``"well"``: median per well
        (:func:`~chanstat.cellprofiler.aggregate_wells`). For Parquet this runs over column
        chunks of ``chunk_columns`` features, so memory stays bounded by one chunk.
    well : the well key for ``aggregate`` (default ``Metadata_Plate``, ``Metadata_Well``).

    Returns
    -------
    pandas.DataFrame
        ``Metadata_*`` columns (including ``Metadata_ImageNumber``/``Metadata_ObjectNumber``
        for per-object sources) followed by feature columns.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing path, unknown format, duplicate column names, tables that cannot be joined.
    TableFileError
        (a ValueError) an empty, binary, truncated or ragged CSV/gzip, a damaged Parquet or
        SQLite file; the message is one line naming the file (and line).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CellProfiler table not found: {path}")
    if image_columns not in ("metadata", "all"):
        raise ValueError(f"image_columns must be 'metadata' or 'all'; got {image_columns!r}")
    if aggregate not in (None, "well"):
        raise ValueError(f"aggregate must be None or 'well'; got {aggregate!r}")
    try:
        return _read_any(path, compartments, image_columns, columns, aggregate, well, chunk_columns)
    except _DAMAGED as exc:  # e.g. a damaged Parquet file; CSV and SQLite readers name the file themselves
        raise _damaged(path, exc) from None


def _read_any(path: Path, compartments, image_columns, columns, aggregate, well, chunk_columns) -> pd.DataFrame:
    name = path.name.lower()
    if path.is_dir():
        df = read_spreadsheet_folder(path, compartments=compartments, image_columns=image_columns)
    elif name.endswith(_SQLITE_SUFFIXES):
        df = read_sqlite(path, compartments=compartments, image_columns=image_columns)
    elif name.endswith((".parquet", ".pq")) and aggregate == "well":
        return _read_parquet_wells(path, columns, well, chunk_columns)
    elif name.endswith(_PROFILE_SUFFIXES):
        df = read_profiles(path, columns=columns)
    else:
        raise ValueError(
            f"do not know how to read {path}: expected a folder of CellProfiler CSVs, a SQLite file "
            f"({', '.join(_SQLITE_SUFFIXES)}) or a profile table ({', '.join(_PROFILE_SUFFIXES)})"
        )
    if compartments is not None and not path.is_dir() and not name.endswith(_SQLITE_SUFFIXES):
        keep = tuple(f"{c}_" for c in compartments)
        df = df[[c for c in df.columns if c.startswith("Metadata_") or c.startswith(keep)]]
    if aggregate == "well":
        df = aggregate_wells(df, well=well)
    return df


# --------------------------------------------------------------------------- helpers


def _rename_image_metadata(df: pd.DataFrame) -> pd.DataFrame:
    """``Image_Metadata_X`` -> ``Metadata_X`` unless ``Metadata_X`` already exists."""
    renames: dict[str, str] = {}
    for c in df.columns:
        if c.startswith("Image_Metadata_"):
            target = c.removeprefix("Image_")
            if target not in df.columns and target not in renames.values():
                renames[c] = target
    return df.rename(columns=renames)


def _prefix(df: pd.DataFrame, compartment: str, keep: Sequence[str]) -> pd.DataFrame:
    pre = f"{compartment}_"
    return df.rename(columns={c: c if (c in keep or c.startswith(pre)) else pre + c for c in df.columns})


def _open_text(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", newline="", encoding="utf-8")


def csv_separator(path: str | Path) -> str:
    """Tab for ``.tsv`` (and ``.tsv.gz``) files, comma otherwise."""
    return "\t" if ".tsv" in Path(path).name.lower() else ","


def _damaged(path: Path, exc: BaseException) -> TableFileError:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else "unreadable"
    return TableFileError(f"cannot read {path}: {type(exc).__name__}: {reason}")


def csv_header(path: str | Path, sep: str | None = None) -> list[str]:
    """Column names of a CSV/TSV (plain or gzip); :class:`TableFileError` naming the file when it
    is empty, binary (NUL bytes or not UTF-8) or a damaged gzip."""
    path = Path(path)
    sep = sep or csv_separator(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            if b"\x00" in fh.read(1 << 16):
                raise TableFileError(f"cannot read {path}: it holds binary data (NUL bytes), not text")
        with _open_text(path) as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
    except _DAMAGED as exc:
        raise _damaged(path, exc) from None
    if not header or header == [""]:
        raise TableFileError(f"cannot read {path}: the file is empty (no header line)")
    return header


def _ragged_line(path: Path, sep: str, width: int) -> tuple[int, int] | None:
    """(line number, field count) of the first row whose field count differs from the header's."""
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=sep)
        next(reader, None)
        for row in reader:
            if row and len(row) != width:  # blank lines are skipped by every parser
                return reader.line_num, len(row)
    return None


def read_csv_table(
    path: str | Path, sep: str | None = None, usecols: Sequence[str] | None = None, **pandas_options
) -> pd.DataFrame:
    """Read a CSV/TSV (plain or gzip) strictly: every row must have the header's number of fields.

    pandas alone fills short rows with NaN and turns one extra field per row into an index,
    shifting every column by one, silently. Here a ragged row, or an empty, binary or truncated
    file, raises :class:`TableFileError` (a ValueError) naming the file (and the line). pyarrow's
    parser reads the file (several times faster on wide CellProfiler tables); content whose
    types it cannot infer goes through pandas' parser instead.

    Parameters
    ----------
    path : the file; ``sep`` defaults to tab for ``.tsv`` names, comma otherwise.
    usecols : columns to read (all by default).
    **pandas_options : passed to :func:`pandas.read_csv` (then pandas' parser reads the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table not found: {path}")
    sep = sep or csv_separator(path)
    header = csv_header(path, sep)
    if not pandas_options:
        try:  # pyarrow refuses ragged rows itself, so a clean file is read once
            return pd.read_csv(path, sep=sep, usecols=usecols, engine="pyarrow")
        except (pd.errors.ParserError, pa.ArrowInvalid):  # ragged, or types it cannot infer: look closer
            pass
        except _DAMAGED as exc:
            raise _damaged(path, exc) from None
    try:
        ragged = _ragged_line(path, sep, len(header))
        if ragged is not None:
            line, fields = ragged
            raise TableFileError(
                f"{path}, line {line}: {fields} fields but the header has {len(header)}; "
                "a ragged row would shift the columns (check quoting and separators)"
            )
        return pd.read_csv(path, sep=sep, usecols=usecols, index_col=False, **pandas_options)
    except _DAMAGED as exc:
        raise _damaged(path, exc) from None


def _check_header(names: Sequence[str], source: Path | str) -> None:
    seen, dupes = set(), []
    for n in names:
        if n in seen and n not in dupes:
            dupes.append(n)
        seen.add(n)
    if dupes:
        raise ValueError(f"{source} has duplicate column names {dupes[:10]}; every feature must be one column")


def _join_objects(tables: dict[str, pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Join per-compartment tables (prefixed features, unprefixed keys + ObjectNumber)."""
    names = list(tables)
    hub = "Cytoplasm" if "Cytoplasm" in tables else ("Cells" if "Cells" in tables else names[0])
    out = tables[hub].rename(columns={"ObjectNumber": f"_obj_{hub}"})
    for other in names:
        if other == hub:
            continue
        right = tables[other].rename(columns={"ObjectNumber": f"_obj_{other}"})
        hub_parent = f"{hub}_Parent_{other}"
        other_parent = f"{other}_Parent_{hub}"
        if hub_parent in out.columns:
            left_on, right_on = keys + [hub_parent], keys + [f"_obj_{other}"]
        elif other_parent in right.columns:
            left_on, right_on = keys + [f"_obj_{hub}"], keys + [other_parent]
        else:
            left_on, right_on = keys + [f"_obj_{hub}"], keys + [f"_obj_{other}"]
        out = out.merge(right, left_on=left_on, right_on=right_on, how="inner", suffixes=("", f"_{other}dup"))
    out = out.rename(columns={f"_obj_{hub}": "Metadata_ObjectNumber"})
    out = out.drop(columns=[c for c in out.columns if c.startswith("_obj_")])
    return out


def _finish(objects: pd.DataFrame, image: pd.DataFrame, keys: list[str], image_columns: str) -> pd.DataFrame:
    image = _rename_image_metadata(image)
    if image_columns == "metadata":
        image = image[keys + [c for c in image.columns if c.startswith("Metadata_") and c not in keys]]
    else:
        image = image.rename(
            columns={
                c: c if (c in keys or c.startswith(("Metadata_", "Image_"))) else f"Image_{c}" for c in image.columns
            }
        )
    dup_keys = image.duplicated(keys)
    if dup_keys.any():
        raise ValueError(
            f"the image table repeats {int(dup_keys.sum())} image keys {keys}; cannot join objects to images"
        )
    out = objects.merge(image, on=keys, how="left", validate="many_to_one")
    out = out.rename(columns={k: f"Metadata_{k}" for k in keys})
    meta = [c for c in out.columns if c.startswith("Metadata_")]
    rest = [c for c in out.columns if not c.startswith("Metadata_")]
    out = out[meta + rest]
    check_unique_columns(out, "joined table")
    return out


# --------------------------------------------------------------------------- ExportToSpreadsheet


def read_spreadsheet_folder(
    path: str | Path,
    compartments: Sequence[str] | None = None,
    image_columns: str = "metadata",
) -> pd.DataFrame:
    """Read an ExportToSpreadsheet folder (or a folder of them) and join the objects.

    See :func:`read`. Object files are the CSVs (other than ``Image.csv``/``Experiment.csv``)
    with ``ImageNumber`` and ``ObjectNumber`` columns; the compartment is the file stem.
    """
    path = Path(path)
    if (path / "Image.csv").exists():
        return _read_one_folder(path, compartments, image_columns)
    subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / "Image.csv").exists())
    if not subs:
        raise ValueError(f"{path} has no Image.csv (nor sub-folders with one): not an ExportToSpreadsheet folder")
    parts = []
    for sub in subs:
        part = _read_one_folder(sub, compartments, image_columns)
        folder = pd.DataFrame({"Metadata_Folder": [sub.name] * len(part)}, index=part.index)
        parts.append(pd.concat([folder, part], axis=1))
    columns = parts[0].columns
    for sub, part in zip(subs, parts):
        if list(part.columns) != list(columns):
            extra = sorted(set(part.columns) ^ set(columns))[:5]
            raise ValueError(f"{sub} has different columns from {subs[0]} (e.g. {extra}); cannot stack them")
    return pd.concat(parts, ignore_index=True)


def _read_one_folder(path: Path, compartments, image_columns) -> pd.DataFrame:
    image_file = path / "Image.csv"
    _check_header(csv_header(image_file), image_file)
    image = read_csv_table(image_file)
    tables: dict[str, pd.DataFrame] = {}
    for f in sorted(path.glob("*.csv")):
        comp = f.stem
        if comp.lower() in _SKIP_CSV:
            continue
        header = csv_header(f)
        if "ImageNumber" not in header or "ObjectNumber" not in header:
            continue
        if compartments is not None and comp not in compartments:
            continue
        _check_header(header, f)
        tables[comp] = _prefix(read_csv_table(f), comp, ["ImageNumber", "ObjectNumber"])
    if not tables:
        raise ValueError(f"{path} has no per-object CSV files (with ImageNumber and ObjectNumber columns)")
    if compartments is not None:
        missing = [c for c in compartments if c not in tables]
        if missing:
            raise ValueError(f"{path} has no object file for compartments {missing}; found {sorted(tables)}")
    keys = ["ImageNumber"]
    return _finish(_join_objects(tables, keys), image, keys, image_columns)


# --------------------------------------------------------------------------- ExportToDatabase


def read_sqlite(
    path: str | Path,
    compartments: Sequence[str] | None = None,
    image_columns: str = "metadata",
) -> pd.DataFrame:
    """Read an ExportToDatabase SQLite file (see :func:`read`).

    A file that is not an SQLite database (or is damaged) raises :class:`TableFileError`
    naming it; table names may hold any character (quotes included).
    """
    path = Path(path)
    uri = f"file:{path.resolve()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as con:
            objects, image, keys = _read_sqlite_tables(con, path, compartments)
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
        raise TableFileError(f"cannot read {path} as an SQLite database: {str(exc).strip().splitlines()[0]}") from None
    return _finish(objects, image, keys, image_columns)


def _quote(identifier: str) -> str:
    """An SQL identifier in double quotes, inner quotes doubled (so any table name is safe)."""
    return '"' + str(identifier).replace('"', '""') + '"'


def _read_sqlite_tables(con, path: Path, compartments) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    info = {t: list(con.execute(f"PRAGMA table_info({_quote(t)})")) for t in tables}
    cols = {t: [r[1] for r in rows] for t, rows in info.items()}
    numeric_declared = {
        r[1]
        for rows in info.values()
        for r in rows
        if re.search(r"INT|REAL|FLOA|DOUB|NUM|DEC", str(r[2]), re.IGNORECASE)
    }
    for t, c in cols.items():
        _check_header(c, f"{path.name}:{t}")
    image_tables = [t for t in tables if re.search(r"(^|_)(Per_)?Image$", t, re.IGNORECASE)]
    if not image_tables:
        raise ValueError(f"{path} has no image table (Per_Image or Image); tables: {tables}")
    image_table = image_tables[0]
    object_tables = [t for t in tables if t != image_table and "ImageNumber" in cols[t] and "ObjectNumber" in cols[t]]
    if not object_tables:
        raise ValueError(f"{path} has no per-object tables (with ImageNumber and ObjectNumber); tables: {tables}")
    keys = [k for k in _KEYS if k in cols[image_table]]

    def load(table: str) -> pd.DataFrame:
        return _numeric_text(pd.read_sql_query(f"SELECT * FROM {_quote(table)}", con), numeric_declared)

    image = load(image_table)
    per_object = [t for t in object_tables if re.search(r"(^|_)Per_Object$", t, re.IGNORECASE)]
    if per_object:
        objects = load(per_object[0])
        objects = objects.rename(columns={"ObjectNumber": "Metadata_ObjectNumber"})
        if compartments is not None:
            keep = tuple(f"{c}_" for c in compartments)
            objects = objects[[c for c in objects.columns if c in keys or c.startswith(("Metadata_",) + keep)]]
    else:
        frames = {}
        for t in object_tables:
            comp = re.sub(r"^(.*_)?Per_", "", t)
            if compartments is not None and comp not in compartments:
                continue
            frames[comp] = _prefix(load(t), comp, keys + ["ObjectNumber"])
        if not frames:
            raise ValueError(
                f"{path}: none of the compartments {list(compartments or [])} is a table; tables: {tables}"
            )
        objects = _join_objects(frames, keys)
    return objects, image, keys


def _numeric_text(df: pd.DataFrame, numeric_declared: set[str]) -> pd.DataFrame:
    """SQLite keeps whatever was inserted: a FLOAT column may hold the text 'nan'. Columns
    declared numeric whose every value parses as a number become numbers; others stay as they
    are (and are reported as non-numeric if used as features)."""
    fixes = {}
    for c in df.columns:
        if c in numeric_declared and not pd.api.types.is_numeric_dtype(df[c].dtype):
            values = df[c].to_numpy(dtype=object)
            try:  # float() reads 'nan', 'inf', '1e-3'; anything else keeps the column as it is
                fixes[c] = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
            except (ValueError, TypeError):
                continue
    return df.assign(**fixes) if fixes else df


# --------------------------------------------------------------------------- profiles


def read_profiles(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a pycytominer-style profile table (Parquet, CSV, TSV); see :func:`read`."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        _check_header(names, path)
        if columns is not None:
            missing = [c for c in columns if c not in names]
            if missing:
                raise ValueError(f"{path} has no columns {missing[:10]}")
        df = pq.read_table(path, columns=list(columns) if columns is not None else None).to_pandas()
    else:
        header = csv_header(path)
        _check_header(header, path)
        df = read_csv_table(path, usecols=list(columns) if columns is not None else None)
    return _order_metadata_first(_rename_image_metadata(df))


def _order_metadata_first(df: pd.DataFrame) -> pd.DataFrame:
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    return df[meta + [c for c in df.columns if c not in meta]]


def _read_parquet_wells(path: Path, columns, well, chunk_columns: int) -> pd.DataFrame:
    """Median per well of a (large) per-object Parquet file, reading features in column chunks."""
    import pyarrow.parquet as pq

    if chunk_columns < 1:
        raise ValueError(f"chunk_columns must be >= 1; got {chunk_columns}")
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    _check_header(names, path)
    renamed = _rename_image_metadata(pd.DataFrame(columns=names)).columns.tolist()
    to_file = dict(zip(renamed, names))
    meta_cols = [c for c in renamed if c.startswith("Metadata_")]
    wells = resolve_well_columns(renamed, well)
    if not wells:
        raise ValueError(f"{path} has no Metadata_Well column to aggregate on; pass well")
    wanted = feature_columns(renamed) if columns is None else [c for c in columns if c not in meta_cols]
    missing = [c for c in wanted if c not in to_file]
    if missing:
        raise ValueError(f"{path} has no columns {missing[:10]}")
    meta = pf.read(columns=[to_file[c] for c in meta_cols]).to_pandas()
    meta.columns = meta_cols
    out = aggregate_wells(meta, features=[], well=wells)
    key = meta[wells].astype("string").fillna("<NA>")
    codes = key.groupby(wells, sort=True, dropna=False).ngroup().to_numpy()
    chunks = []
    for start in range(0, len(wanted), chunk_columns):
        part_cols = wanted[start : start + chunk_columns]
        part = pf.read(columns=[to_file[c] for c in part_cols]).to_pandas()
        part.columns = part_cols
        check_numeric(part, part_cols)
        chunks.append(part.groupby(codes, sort=True).median().sort_index().reset_index(drop=True))
        del part
    if chunks:
        out = pd.concat([out] + chunks, axis=1)
    return out
