"""Profile tables: which columns are features, checks on them, aggregation of cells to wells."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from chanstat.cellprofiler.names import parse_features

#: Default well key (the unit of replication in a screen).
WELL_COLUMNS: tuple[str, ...] = ("Metadata_Plate", "Metadata_Well")

# Categories that are bookkeeping, not biology: never picked as features by default.
_NON_FEATURE_CATEGORIES = {
    "Metadata",
    "Identifier",
    "unknown",
    "Location",
    "Number",
    "Parent",
    "ExecutionTime",
    "ModuleError",
    "FileName",
    "PathName",
    "URL",
    "MD5Digest",
    "Scaling",
    "Height",
    "Width",
    "Group",
    "Series",
    "Frame",
    "Channel",
}
# Measurements that give an object's position or another object's id, not its phenotype.
_POSITIONAL = {
    "AreaShape": {"Center", "BoundingBoxMinimum", "BoundingBoxMaximum"},
    "Neighbors": {"FirstClosestObjectNumber", "SecondClosestObjectNumber"},
}


def check_unique_columns(df: pd.DataFrame, what: str = "table") -> None:
    """Raise ``ValueError`` naming the repeated column names of ``df``."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame; got {type(df).__name__}")
    dupes = df.columns[df.columns.duplicated()].unique().tolist()
    if dupes:
        raise ValueError(
            f"{what} has duplicate column names {dupes[:10]}{' ...' if len(dupes) > 10 else ''}; "
            "every feature must be one column"
        )


def feature_columns(
    columns: Iterable[str],
    include_image: bool = False,
    include_positional: bool = False,
) -> list[str]:
    """The CellProfiler measurement columns among ``columns``.

    A column is a feature when its name parses to a known measurement category (see
    :func:`~chanstat.cellprofiler.parse_features`) that describes biology: not metadata or
    identifiers, not ``Location``/``Parent``/``Number`` bookkeeping, not file names or
    execution times, not object positions (``AreaShape_Center_X``, bounding boxes) or
    neighbour ids. Image-level measurements (``Image_*``) are left out unless
    ``include_image``.
    """
    columns = [str(c) for c in columns]
    parsed = parse_features(columns)
    keep = ~parsed["category"].isin(_NON_FEATURE_CATEGORIES)
    if not include_image:
        keep &= parsed["compartment"] != "Image"
    if not include_positional:
        for category, measurements in _POSITIONAL.items():
            keep &= ~((parsed["category"] == category) & parsed["measurement"].isin(measurements))
    return parsed.loc[keep, "feature"].tolist()


def metadata_columns(columns: Iterable[str]) -> list[str]:
    """Columns named ``Metadata_*`` (pycytominer convention), in order."""
    return [str(c) for c in columns if str(c).startswith("Metadata_")]


def check_numeric(df: pd.DataFrame, features: Sequence[str]) -> None:
    """Raise ``ValueError`` naming feature columns that do not hold numbers."""
    bad = [f for f in features if not pd.api.types.is_numeric_dtype(df[f].dtype)]
    if bad:
        examples = {f: df[f].dropna().astype(str).head(2).tolist() for f in bad[:5]}
        raise ValueError(
            f"{len(bad)} feature column(s) are not numeric: {bad[:10]}{' ...' if len(bad) > 10 else ''} "
            f"(example values: {examples}); convert them or leave them out of `features`"
        )


def resolve_well_columns(df_columns: Iterable[str], well: Sequence[str] | None) -> list[str]:
    """The well key: ``well`` if given (must exist), else the default ones present."""
    cols = list(df_columns)
    if well is not None:
        wells = [well] if isinstance(well, str) else list(well)
        missing = [c for c in wells if c not in cols]
        if missing:
            raise ValueError(f"well columns {missing} are not in the table")
        return wells
    wells = [c for c in WELL_COLUMNS if c in cols]
    if "Metadata_Well" not in wells:
        return []
    return wells


def aggregate_wells(
    df: pd.DataFrame,
    features: Sequence[str] | None = None,
    well: Sequence[str] | None = None,
    func: str = "median",
    keep: Sequence[str] = (),
) -> pd.DataFrame:
    """Aggregate per-object rows to one row per well (the field's convention: the median).

    Parameters
    ----------
    df : per-object (or per-image) table with ``Metadata_*`` columns and features.
    features : feature columns to aggregate; default :func:`feature_columns`.
    well : the well key; default ``Metadata_Plate`` + ``Metadata_Well`` (those present).
    func : ``"median"`` (default) or ``"mean"``.
    keep : further (non-``Metadata_``) columns to carry over when constant within wells.

    Returns
    -------
    pandas.DataFrame
        One row per well: the well key, every other ``Metadata_*`` column that is constant
        within each well, ``Metadata_n_objects`` (rows aggregated), then the features.
    """
    check_unique_columns(df)
    if func not in ("median", "mean"):
        raise ValueError(f"func must be 'median' or 'mean'; got {func!r}")
    wells = resolve_well_columns(df.columns, well)
    if not wells:
        raise ValueError("cannot aggregate to wells: the table has no Metadata_Well column; pass well")
    features = feature_columns(df.columns) if features is None else list(features)
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise ValueError(f"features not in the table: {missing[:10]}")
    check_numeric(df, features)
    key = df[wells].astype("string").fillna("<NA>")
    codes = key.groupby(wells, sort=True, dropna=False).ngroup().to_numpy()
    grouped = df[features].groupby(codes, sort=True)
    values = (grouped.median() if func == "median" else grouped.mean()).sort_index()
    meta = [
        c
        for c in metadata_columns(df.columns) + [k for k in keep if not str(k).startswith("Metadata_")]
        if c not in wells and c not in features
    ]
    by_well = df[meta].groupby(codes, sort=True)
    constant = [c for c in meta if by_well[c].nunique(dropna=False).max() <= 1]
    first_rows = pd.Series(np.arange(len(df))).groupby(codes, sort=True).first().to_numpy()
    out = df.iloc[first_rows][wells + constant].set_axis(values.index)
    out["Metadata_n_objects"] = np.bincount(codes)
    out = pd.concat([out, values], axis=1)
    return out.reset_index(drop=True)
