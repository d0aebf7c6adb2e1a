"""From a tidy channel table to per-group matrices at the unit of replication.

Images in one well share a well's culture, staining and focus: they are not independent.
Every test in :mod:`chanstat.stats` therefore works on *units* (wells by default): the values
of a unit's images are averaged per channel before testing, so each unit counts once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from chanstat.vocabulary import N_BOOT as N_BOOT  # re-exported: the stats verbs import it from here
from chanstat.vocabulary import PADJUST

UNITS = ("auto", "image", "well", "plate")
#: the one default number of bootstrap draws and p-value adjustment of every stats verb
#: (keyword-only everywhere), from :mod:`chanstat.vocabulary`
DEFAULT_PADJUST = PADJUST

#: The design parameters every stats verb shares, with one set of defaults. Verbs take the
#: tidy table first (``table``), then these, then their own options as keywords.
DESIGN_PARAMETERS = """
    value : str, default ``"share"`` (``"shapley"`` for signed contributions)
        the column analysed.
    channel : str, default ``"channel"``
        the channel-name column.
    sample : str, default ``"sample"``
        the sample (image) id column.
    well : sequence of str, default ``("Metadata_Plate", "Metadata_Well")``
        columns that together identify a well (well names repeat across plates).
    plate : str or None, default ``"Metadata_Plate"``
        the plate column.
    by : sequence of str, default ``("method",)``
        columns that split the table into separate analyses.
    unit : ``"auto"`` (default), ``"well"``, ``"plate"`` or ``"image"``
        unit of replication; images are averaged per unit first.
    breakdown : str or None, default ``"transition"``
        column whose levels get their own rows besides the pooled ``"all"`` rows
        (transitions are written ``"control → treated"``).
"""
WELL_COLUMNS = ("Metadata_Plate", "Metadata_Well")
PLATE_COLUMN = "Metadata_Plate"
ALL = "all"


def as_tuple(x: str | Sequence[str] | None) -> tuple[str, ...]:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def require_columns(table: pd.DataFrame, columns: Sequence[str], who: str, why: str = "") -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise KeyError(
            f"{who}: column(s) {missing} not in the table{' (' + why + ')' if why else ''}; "
            f"columns present: {list(table.columns)}"
        )


#: ``unit="auto"`` uses plates as the unit from this many plates on. Why 6: the primary test
#: is a paired t on unit means (n - 1 df); with 6 plates it has 5 df, its t-intervals cover
#: >= 93 % in the calibration study, and the dominance test keeps useful power. Below 6
#: plates, plate means are too few, so the unit is the well and the answer is about these
#: plates only (a warning says so, and the plate x channel heterogeneity test is shown).
MIN_PLATE_UNITS = 6


def count_plates(table: pd.DataFrame, plate: str | None) -> int:
    """Number of distinct non-missing plates (0 without a plate column)."""
    if not plate or plate not in table.columns:
        return 0
    return int(table[plate].dropna().nunique())


def resolve_unit(table: pd.DataFrame, unit: str, well: tuple[str, ...], plate: str | None, who: str) -> tuple[str, str]:
    """The unit of replication to use and a warning text (``""`` when none); checks columns.

    ``"auto"``: plates when the table holds at least :data:`MIN_PLATE_UNITS` plates, otherwise
    wells (which needs the ``well`` columns: without them chanstat cannot tell images of one
    well apart from independent samples). A well unit with more than one plate gets a warning:
    plate x channel effects are then not averaged out, and the result describes these plates.
    Pass ``unit="image"`` explicitly only when the samples are independent.
    """
    if unit not in UNITS:
        raise ValueError(f"{who}: unit must be one of {UNITS}; got {unit!r}")
    n_plates = count_plates(table, plate)
    if unit == "auto" and n_plates >= MIN_PLATE_UNITS:
        unit = "plate"
    if unit in ("auto", "well"):
        missing = [c for c in well if c not in table.columns]
        if missing or not well:
            raise KeyError(
                f"{who}: metadata column(s) {missing or list(well)} not in the table; they identify the wells, "
                f"the default unit of replication. Add them (e.g. from meta.parquet), set `well=` to your "
                f"column names, or pass unit='image' only if every sample is independent (one image per well)"
            )
        warning = ""
        if n_plates > 1:
            warning = (
                f"unit=well with {n_plates} plates (fewer than {MIN_PLATE_UNITS}, the minimum for plate units): "
                f"plate x channel effects are not averaged out, so p-values and intervals describe these "
                f"{n_plates} plates only (see the plate_x_channel test)"
            )
        return "well", warning
    if unit == "plate":
        if not plate or plate not in table.columns:
            raise KeyError(f"{who}: metadata column {plate!r} (the plate) not in the table, needed for unit='plate'")
    return unit, ""


def drop_missing_units(table: pd.DataFrame, columns: Sequence[str], who: str) -> tuple[pd.DataFrame, int]:
    """Rows whose unit key (``columns``) is complete, and the number of rows dropped (with a warning).

    A missing ``Metadata_Well`` must not pool unrelated images into one "NaN well".
    """
    columns = [c for c in columns if c in table.columns]
    if not columns:
        return table, 0
    missing = table[columns].isna().any(axis=1).to_numpy()
    n = int(missing.sum())
    if n:
        warnings.warn(
            f"{who}: dropped {n} of {len(table)} rows whose unit column(s) {columns} are missing "
            f"(they would otherwise be pooled into one unit)",
            stacklevel=3,
        )
        table = table.loc[~missing]
    return table, n


def drop_incomplete(
    table: pd.DataFrame,
    value: str = "share",
    sample: str = "sample",
    by: Sequence[str] = ("method",),
    who: str = "drop_incomplete",
) -> tuple[pd.DataFrame, int]:
    """Drop every (``by`` group, sample) with a NaN/inf ``value`` in any channel, with a count.

    Use it before any channel test (``test_channels`` calls it itself): a share is NaN when a
    map's total mass is 0, and such a sample has no composition.

    Returns
    -------
    (table without those samples, number of samples dropped); a warning names the count.
    """
    require_columns(table, [value, sample], who)
    keys = [c for c in as_tuple(by) if c in table.columns] + [sample]
    values = pd.to_numeric(table[value], errors="coerce").to_numpy(float, na_value=np.nan)
    bad = ~np.isfinite(values)
    if not bad.any():
        return table, 0
    bad_keys = table.loc[bad, keys].drop_duplicates()
    flag = table[keys].merge(bad_keys.assign(_bad=True), on=keys, how="left")["_bad"].fillna(False).to_numpy(bool)
    n = int(bad_keys[sample].nunique())  # images, whatever the number of methods they failed in
    per = f" ({len(bad_keys)} image x {'/'.join(keys[:-1])} rows)" if len(keys) > 1 and len(bad_keys) != n else ""
    warnings.warn(
        f"{who}: dropped {n} image(s){per} whose {value!r} is NaN/inf in some channel (e.g. zero total "
        f"attribution mass), e.g. {bad_keys[sample].drop_duplicates().head(5).tolist()}",
        stacklevel=3,
    )
    return table.loc[~flag], n


def unit_columns(unit: str, well: tuple[str, ...], plate: str | None) -> tuple[str, ...]:
    return {"image": (), "well": well, "plate": (plate,) if plate else ()}[unit]


def channel_order(table: pd.DataFrame, channel: str) -> list[str]:
    col = table[channel]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.dropna().unique())
        return [c for c in col.cat.categories if c in present]
    return list(pd.unique(col.dropna()))


@dataclass
class Group:
    """One analysis group (e.g. one method, one transition) at the unit of replication.

    Attributes
    ----------
    keys : dict of the grouping columns' values (``by`` columns and the breakdown column).
    channels : channel names, length C.
    unit : ``"image"``, ``"well"`` or ``"plate"``.
    values : ndarray (n_units, C), mean value per unit and channel.
    sample_values : ndarray (n_samples, C), the value of every sample.
    sample_unit : ndarray (n_samples,), index of each sample's unit (row of ``values``).
    sample_well, sample_plate : ndarray (n_samples,) int codes, or None when unknown.
    """

    keys: dict
    channels: list[str]
    unit: str
    values: np.ndarray
    sample_values: np.ndarray
    sample_unit: np.ndarray
    sample_well: np.ndarray | None
    sample_plate: np.ndarray | None

    @property
    def n_units(self) -> int:
        return self.values.shape[0]

    @property
    def unit_plate(self) -> np.ndarray | None:
        """Plate code of each unit (n_units,), or None without plates (a unit's first sample)."""
        if self.sample_plate is None:
            return None
        first = np.zeros(self.n_units, dtype=int)
        first[self.sample_unit[::-1]] = np.arange(len(self.sample_unit))[::-1]
        return self.sample_plate[first]


def _codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Integer code of each row's combination of ``columns`` (first-appearance order)."""
    if not columns:
        return np.arange(len(frame))
    combined = np.zeros(len(frame), dtype=np.int64)
    for col in columns:
        codes, uniques = pd.factorize(frame[col], sort=False, use_na_sentinel=False)
        combined = combined * (len(uniques) + 1) + codes
    return pd.factorize(combined, sort=False)[0]


def _split(codes: np.ndarray) -> list[np.ndarray]:
    """Row positions of each code, codes in increasing order, rows in table order."""
    if codes.size == 0:
        return []
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def describe_keys(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items()) if keys else "the whole table"


@dataclass
class _Columns:
    """The table as NumPy codes, computed once for all groups."""

    value: np.ndarray
    sample: np.ndarray
    sample_ids: np.ndarray
    channel: np.ndarray
    unit: np.ndarray
    well: np.ndarray | None
    plate: np.ndarray | None


def build_groups(
    table: pd.DataFrame,
    value: str,
    channel: str,
    sample: str,
    well: tuple[str, ...],
    plate: str | None,
    by: tuple[str, ...],
    unit: str,
    breakdown: str | None,
    who: str,
    min_channels: int = 2,
) -> list[Group]:
    """Validate ``table`` and split it into :class:`Group` objects (pooled, then per breakdown level)."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{who}: expected a pandas DataFrame; got {type(table).__name__}")
    if table.empty:
        raise ValueError(f"{who}: the table is empty")
    require_columns(table, [value, channel, sample], who)
    require_columns(table, list(by), who, "grouping columns given in `by`")
    unit, _ = resolve_unit(table, unit, well, plate, who)
    table, _ = drop_missing_units(table, unit_columns(unit, well, plate), who)
    table = table.reset_index(drop=True)
    values = pd.to_numeric(table[value], errors="coerce").to_numpy(float, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        examples = table.loc[bad, sample].drop_duplicates().head(5).tolist()
        raise ValueError(
            f"{who}: column {value!r} holds {int(bad.sum())} NaN/inf (or non-numeric) values, e.g. for samples "
            f"{examples}; drop those samples (a share is NaN when a map's total mass is 0)"
        )
    if table[channel].isna().any():
        raise ValueError(f"{who}: column {channel!r} holds missing channel names")
    channels_all = channel_order(table, channel)
    if len(channels_all) < min_channels:
        raise ValueError(
            f"{who}: needs at least {min_channels} channels; the table has {len(channels_all)} ({channels_all})"
        )
    ucols = unit_columns(unit, well, plate)
    sample_codes, sample_ids = pd.factorize(table[sample], sort=False)
    has_well = bool(well) and all(c in table.columns for c in well)
    cols = _Columns(
        value=values,
        sample=sample_codes,
        sample_ids=np.asarray(sample_ids),
        channel=pd.Categorical(table[channel], categories=channels_all).codes.astype(np.int64),
        unit=_codes(table, ucols) if ucols else sample_codes,
        well=_codes(table, well) if has_well else None,
        plate=_codes(table, [plate]) if plate and plate in table.columns else None,
    )
    if breakdown and breakdown not in table.columns and breakdown != "transition":
        # "transition" is the default and may be absent (maps without counterfactual classes);
        # any other name is the user's and must exist, or the breakdown would silently not happen
        raise ValueError(
            f"{who}: breakdown column {breakdown!r} is not in the table (columns: {list(table.columns)[:12]} ...)"
        )
    use_breakdown = bool(breakdown) and breakdown in table.columns and table[breakdown].notna().any()

    groups: list[Group] = []
    group_rows = _split(_codes(table, by)) if by else [np.arange(len(table))]
    by_values = {col: table[col].to_numpy() for col in by}
    for rows in group_rows:
        keys = {col: by_values[col][rows[0]] for col in by}
        parts = [(ALL, rows)]
        if use_breakdown:
            level_values = table[breakdown].to_numpy()[rows]
            present = pd.notna(level_values)
            for level in sorted(set(level_values[present].tolist())):
                parts.append((level, rows[present & (level_values == level)]))
        for level, part in parts:
            part_keys: dict = {**keys, **({breakdown: level} if use_breakdown else {})}
            groups.append(_make_group(cols, part, channels_all, unit, part_keys, who, min_channels))
    return groups


def _make_group(
    cols: _Columns, rows: np.ndarray, channels_all: list[str], unit: str, keys: dict, who: str, min_channels: int = 2
) -> Group:
    where = f" in group {describe_keys(keys)}"
    if rows.size == 0:
        raise ValueError(f"{who}: group {describe_keys(keys)} is empty")
    present = np.unique(cols.channel[rows])
    channels = [channels_all[j] for j in present]
    if len(channels) < min_channels:
        raise ValueError(
            f"{who}: group {describe_keys(keys)} has only {len(channels)} channel(s) ({channels}); "
            f"need at least {min_channels}"
        )
    local_channel = np.searchsorted(present, cols.channel[rows])
    sample_global, local_sample, first_in_rows = _first_appearance(cols.sample[rows])
    n, c = len(sample_global), len(channels)
    counts = np.bincount(local_sample * c + local_channel, minlength=n * c).reshape(n, c)
    if (counts != 1).any():
        i, j = np.argwhere(counts != 1)[0]
        sid = cols.sample_ids[sample_global[i]]
        if counts[i, j] > 1:
            raise ValueError(
                f"{who}: sample {sid!r} has channel {channels[j]!r} {counts[i, j]} times{where}; "
                f"a table with several methods or conditions needs them in `by`"
            )
        raise ValueError(
            f"{who}: sample {sid!r} lacks channel {channels[j]!r}{where}; every sample needs every channel"
        )
    mat = np.empty((n, c))
    mat[local_sample, local_channel] = cols.value[rows]
    first_rows = rows[first_in_rows]
    unit_rows = cols.unit[rows]
    if (unit_rows != cols.unit[first_rows][local_sample]).any():
        bad = cols.sample_ids[cols.sample[rows[np.flatnonzero(unit_rows != cols.unit[first_rows][local_sample])[0]]]]
        raise ValueError(f"{who}: sample {bad!r} appears in more than one {unit}{where}")
    _, sample_unit, _ = _first_appearance(cols.unit[first_rows])
    n_units = int(sample_unit.max()) + 1
    sums = np.zeros((n_units, c))
    np.add.at(sums, sample_unit, mat)
    unit_values = sums / np.bincount(sample_unit, minlength=n_units)[:, None]
    return Group(
        keys=keys,
        channels=channels,
        unit=unit,
        values=unit_values,
        sample_values=mat,
        sample_unit=sample_unit,
        sample_well=cols.well[first_rows] if cols.well is not None else None,
        sample_plate=cols.plate[first_rows] if cols.plate is not None else None,
    )


def _first_appearance(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique codes in order of first appearance, each element's index into them, and the
    position of each unique code's first occurrence."""
    uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return uniq[order], rank[inverse], first[order]
