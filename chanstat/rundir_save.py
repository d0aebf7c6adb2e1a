"""Saving Python results into a run directory as they are (:meth:`RunDirectory.save`).

Each verb's result lands under the schema names the pipeline uses, whatever its shape:

=====================  ==============================================  ==========================================
keyword                value                                           entries written
=====================  ==============================================  ==========================================
``dac``                a DacResult, or {method: DacResult}             ``dac_curves``, ``dac_scores``
``attributions``       {method: maps (N, C|1, H, W)}                   ``attributions``
``channel_shapley``    a ChannelShapleyResult (``.values``, ...)       ``channel_shapley``, ``_total``, ``_interactions``
``compartment_mass``   a CompartmentMass, or {method: CompartmentMass}  ``compartment_mass``, ``object_mass``
``counterfactuals``    a CounterfactualResult (``.quality``, ...)      ``counterfactual_quality``, ``_summary`` (+ its artifacts)
any schema table       a DataFrame                                     that table
=====================  ==============================================  ==========================================

Tables that lack a ``method`` column get the method's name (the dict key, else ``"maps"``), so
a table saved as it came from a verb reads back equal apart from that column. This module
never imports torch.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from chanstat.schema import SCHEMA, entry
from chanstat.stage import Arrays

#: keyword -> {attribute of the result: schema entry}; results are recognised by these attributes.
RESULT_TABLES: dict[str, dict[str, str]] = {
    "dac": {"curves": "dac_curves", "scores": "dac_scores"},
    "channel_shapley": {
        "values": "channel_shapley",
        "total": "channel_shapley_total",
        "interactions": "channel_shapley_interactions",
    },
    "compartment_mass": {"compartments": "compartment_mass", "objects": "object_mass"},
    "counterfactuals": {"quality": "counterfactual_quality", "summary": "counterfactual_summary"},
}
#: Aliases a user may reach for first.
ALIASES = {
    "shapley": "channel_shapley",
    "counterfactual": "counterfactuals",
    "counterfactual_quality": "counterfactuals",
}
#: Results whose tables carry a ``method`` column in the run directory.
NEEDS_METHOD = ("dac_curves", "dac_scores", "compartment_mass", "object_mass")


def result_tables(keyword: str, value: Any) -> dict[str, pd.DataFrame]:
    """The schema tables a result (or {method: result}) of verb ``keyword`` is saved as."""
    parts = RESULT_TABLES[keyword]
    one = next(iter(parts))
    if isinstance(value, Mapping) and not hasattr(value, one):
        results = dict(value)
    else:
        results = {getattr(value, "method", None) or "maps": value}
    tables: dict[str, list[pd.DataFrame]] = {}
    for method, result in results.items():
        for attr, name in parts.items():
            table = getattr(result, attr, None)
            if not isinstance(table, pd.DataFrame):
                continue
            if name in NEEDS_METHOD and "method" not in table:
                table = table.assign(method=method)
            tables.setdefault(name, []).append(table)
    if not tables:
        raise TypeError(
            f"save({keyword}=...) takes a result with {', '.join(parts)} (or a {{method: result}} dict); "
            f"got {type(value).__name__}"
        )
    return {name: pd.concat(ts, ignore_index=True) for name, ts in tables.items()}


def dac_tables(value: Any) -> dict[str, pd.DataFrame]:
    """``dac_curves`` and ``dac_scores`` tables from DAC results ({method: DacResult} or one)."""
    return result_tables("dac", value)


def save(run, **results: Any):
    """Write every keyword of :meth:`RunDirectory.save` (see the module docstring)."""
    for name, value in results.items():
        name = ALIASES.get(name, name) if not isinstance(value, pd.DataFrame) else name
        if name in RESULT_TABLES and not isinstance(value, pd.DataFrame):
            for table_name, table in result_tables(name, value).items():
                run.write_table(table_name, table)
            for artifact, item in (getattr(value, "artifacts", None) or {}).items():
                run.write(artifact, item)
        elif name == "attributions" and isinstance(value, Mapping):
            channels = run.channels or None
            arrays = {m: _numpy(v) for m, v in value.items()}
            attrs = {m: {"method": m, "channels": channels if a.shape[1] > 1 else ["all"]} for m, a in arrays.items()}
            run.write_arrays("attributions", Arrays(arrays, attrs=attrs, group_attrs={"channels": channels}))
        elif name == "config":
            run.write_config(value)
        elif name == "provenance":
            run.write_json("provenance", value)
        else:
            if name not in SCHEMA:
                entry(name)  # raises with a suggestion
            if isinstance(value, pd.DataFrame) and name in NEEDS_METHOD and "method" not in value:
                value = value.assign(method="maps")
            run.write(name, value)
    return run


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def read_rows(array, rows: Any) -> np.ndarray:
    """Rows ``rows`` (int, sorted or not) of a Zarr array: one region read when contiguous."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0,) + tuple(array.shape[1:]), dtype=array.dtype)
    if rows.min() < 0 or rows.max() >= array.shape[0]:
        raise IndexError(f"array has {array.shape[0]} rows; asked for rows {rows.min()}..{rows.max()}")
    if rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
        return np.asarray(array[int(rows[0]) : int(rows[-1]) + 1])
    order = np.argsort(rows, kind="stable")
    picked = np.asarray(array.get_orthogonal_selection((rows[order],) + (slice(None),) * (array.ndim - 1)))
    out = np.empty_like(picked)
    out[order] = picked
    return out
