"""What every report section shares: the error guard, the "stage not run" note, small table helpers.

Sections read tables through :class:`chanstat.rundir.RunDirectory` (validated against
:mod:`chanstat.schema`) and use the columns the schema declares; an optional column is used
when the table has it (:func:`declared` tells whether the schema knows a column at all, so a
section can pick up columns another stage adds later without guessing names).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from chanstat.report.display import format_value, missing_note, note
from chanstat.report.text import code, md
from chanstat.rundir import RunDirectory
from chanstat.schema import SCHEMA, entry, table_spec

#: (section name, error text) for every section that failed in this process.
ERRORS: list[tuple[str, str]] = []

SINGLE_CHANNEL = "single_channel"
#: the ``transition`` value of rows pooled over every class transition
POOLED = "all"


def section(func: Callable) -> Callable:
    """Show an error note instead of raising, so one odd file cannot sink the whole report."""

    @functools.wraps(func)
    def wrapper(run: RunDirectory, *args, **kwargs):
        try:
            return func(run, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported in the document and in ERRORS
            text = f"{type(exc).__name__}: {exc}"
            ERRORS.append((func.__name__, text))
            note(md("**This part could not be drawn** ({}): {}", func.__name__, code(text)), kind="error")
            return None

    return wrapper


def require(run: RunDirectory, *names: str, what: str | None = None) -> bool:
    """True when every schema entry ``names`` exists; otherwise show the "stage not run" note."""
    absent = [n for n in names if not run.has(n)]
    if absent:
        stages = sorted({entry(n).stage for n in absent})
        missing_note([entry(n).file for n in absent], stage=stages[0] if len(stages) == 1 else None, what=what)
        return False
    return True


def declared(table: str, column: str) -> bool:
    """Whether the schema entry ``table`` declares ``column`` (as a column or in its row order)."""
    spec = table_spec(table)
    return any(c.name == column for c in spec.columns) or column in spec.order


def has_column(df: pd.DataFrame, table: str, column: str) -> bool:
    """``column`` is declared for ``table`` and present in ``df`` (an optional column in use)."""
    return declared(table, column) and column in df


def files_by_stage() -> dict[str, list[str]]:
    """Stage -> file names it writes, in schema order (the run's own files left out)."""
    out: dict[str, list[str]] = {}
    for spec in SCHEMA.values():
        if spec.stage not in ("run", "report"):
            out.setdefault(spec.stage, []).append(spec.file)
    return out


def drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """Drop columns with no information (all missing or all empty strings)."""
    keep = []
    for c in df.columns:
        col = df[c]
        if col.isna().all():
            continue
        if (col.dtype == object or pd.api.types.is_string_dtype(col)) and (
            col.fillna("").astype(str).str.strip() == ""
        ).all():
            continue
        keep.append(c)
    return df[keep]


def ordered(values, order: Sequence[str]) -> list[str]:
    """The distinct ``values`` as text: those in ``order`` first (in that order), then the rest."""
    values = [str(v) for v in pd.unique(pd.Series(values).astype(str))]
    return [o for o in order if o in values] + [v for v in values if v not in order]


def rank(name: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def split_constant(df: pd.DataFrame, candidates: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """Drop the ``candidates`` columns that hold one value only; return them as {column: value}."""
    constant = {c: df[c].iloc[0] for c in candidates if c in df and len(df) and df[c].nunique(dropna=False) == 1}
    return df.drop(columns=list(constant)), constant


def describe_constant(constant: dict) -> str:
    """``{"unit": "well", "n_units": 6}`` -> ``"unit well, n_units 6"`` (plain text; missing values left out)."""
    return ", ".join(f"{k} {format_value(v)}" for k, v in constant.items() if pd.notna(v) and str(v).strip())


def pooled_first(df: pd.DataFrame) -> pd.DataFrame:
    """Rows pooled over transitions (``transition == "all"``) first, keeping the order within each part."""
    if "transition" not in df:
        return df
    key = (df["transition"].astype(str) != POOLED).to_numpy()
    return df.iloc[np.argsort(key, kind="stable")]


def pooled_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows pooled over transitions when the table has any, else all rows."""
    if "transition" in df and (df["transition"].astype(str) == POOLED).any():
        return df[df["transition"].astype(str) == POOLED]
    return df


def is_true(series: pd.Series) -> np.ndarray:
    return series.fillna(False).astype(bool).to_numpy()


def with_transition(run: RunDirectory, df: pd.DataFrame) -> pd.DataFrame:
    """Add ``transition`` from the data set (by ``sample``) when the table lacks it."""
    if "transition" in df or "sample" not in df:
        return df
    tr = run.transitions
    if tr.empty:
        return df
    return df.merge(tr[["sample", "transition"]], on="sample", how="left")


def facts_table(facts: dict) -> pd.DataFrame:
    """{item: value} -> a two-column table with the values written as the report writes cells."""
    return pd.DataFrame({"item": list(facts), "value": [format_value(v) for v in facts.values()]})
