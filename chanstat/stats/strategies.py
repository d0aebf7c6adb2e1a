"""Paired comparison of DAC scores between mask strategies and between attribution methods."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from chanstat.stats.design import (
    DEFAULT_PADJUST,
    PLATE_COLUMN,
    WELL_COLUMNS,
    as_tuple,
    drop_missing_units,
    require_columns,
    resolve_unit,
    unit_columns,
)
from chanstat.stats.dominance import t_interval
from chanstat.stats.inference import wilcoxon_paired
from chanstat.stats.padjust import adjust, check_padjust

COLUMNS = (
    "comparison",
    "method",
    "strategy",
    "channel",
    "a",
    "b",
    "mean_a",
    "mean_b",
    "estimate",
    "ci_low",
    "ci_high",
    "statistic",
    "p_value",
    "p_adj",
    "p_adj_method",
    "multiplicity_scope",
    "effect_size",
    "effect_size_name",
    "unit",
    "n_units",
    "pseudo_replicates",
    "warning",
    "note",
)


def compare_strategies(
    table: pd.DataFrame,
    value: str = "dac",
    sample: str = "sample",
    method: str = "method",
    strategy: str = "strategy",
    channel: str = "channel",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    unit: str = "auto",
    *,
    padjust: str = DEFAULT_PADJUST,
    ci: float = 0.95,
    pseudo_replicates: bool = False,
) -> pd.DataFrame:
    """Paired Wilcoxon comparisons of DAC scores between strategies and between methods.

    Two families of comparisons:

    * ``comparison="strategy"``: for each method and channel value, every pair of strategies
      that both have scores for that channel (``aggregate``, ``joint`` and ``per_channel`` share
      ``channel="all"``; ``single_channel`` rows are compared only with strategies that score
      the same channel).
    * ``comparison="method"``: for each strategy and channel value, every pair of methods.

    Scores are paired by sample. With ``unit="auto"`` (default) each well's samples are
    averaged first (images in a well are not independent), so a pair is a well; the ``well``
    columns must then be in the table (merge ``meta.parquet`` in) or an error names them.

    Parameters
    ----------
    table : DataFrame with columns ``sample``, ``method``, ``strategy``, ``channel``,
        ``dac`` (one row each), plus the well columns unless ``unit="image"``.
    value, sample, method, strategy, channel : column names.
    well, plate, unit : unit of replication, as in :func:`chanstat.stats.test_channels`.
    padjust : adjustment of ``p_adj`` (see :func:`chanstat.stats.padjust.adjust`) within each
        comparison family (one method's strategy pairs, or one strategy's method pairs, per
        channel); the family is named in ``multiplicity_scope``.
    ci : level of the t-interval (over units) of the mean paired difference.
    pseudo_replicates : the units are pseudo-replicates (spatial blocks of one field); carried
        into the ``pseudo_replicates`` column.

    Returns
    -------
    DataFrame, one row per compared pair:

    ``comparison``
        ``"strategy"`` or ``"method"``.
    ``method``, ``strategy``, ``channel``
        what is held fixed (the compared dimension holds ``"*"``).
    ``a``, ``b``
        the compared strategies (or methods).
    ``mean_a``, ``mean_b``, ``estimate``
        mean DAC of a and b over paired units, and the mean of ``a - b``.
    ``ci_low``, ``ci_high``
        t-interval of ``estimate`` over units (n - 1 df).
    ``statistic``, ``p_value``, ``p_adj``, ``p_adj_method``, ``multiplicity_scope``
        Wilcoxon signed-rank W, its two-sided p-value, adjusted p-value and its family.
    ``effect_size``, ``effect_size_name``
        matched-pairs rank-biserial correlation (positive: a > b).
    ``unit``, ``n_units``, ``pseudo_replicates``, ``warning``
        unit of replication, number of pairs, pseudo-replicate flag, unit warning (``""`` if none).
    ``note``
        e.g. fewer than 2 pairs.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"compare_strategies: expected a DataFrame; got {type(table).__name__}")
    if table.empty:
        raise ValueError("compare_strategies: the table is empty")
    require_columns(table, [value, sample, method, strategy, channel], "compare_strategies")
    check_padjust(padjust)
    vals = pd.to_numeric(table[value], errors="coerce").to_numpy(float, na_value=np.nan)
    if not np.isfinite(vals).all():
        raise ValueError(f"compare_strategies: column {value!r} holds {int((~np.isfinite(vals)).sum())} NaN/inf values")
    well = as_tuple(well)
    unit, unit_warning = resolve_unit(table, unit, well, plate, "compare_strategies")
    ucols = list(unit_columns(unit, well, plate)) or [sample]
    table, _ = drop_missing_units(table, ucols, "compare_strategies")
    keys = [method, strategy, channel]
    dup = table.duplicated(keys + [sample])
    if dup.any():
        first = table.loc[dup, keys + [sample]].iloc[0].to_dict()
        raise ValueError(f"compare_strategies: more than one score for {first}")
    unit_means = table.groupby(keys + ucols, sort=False, observed=True, dropna=False)[value].mean().reset_index()
    unit_means["_unit"] = unit_means[ucols].astype(str).agg("/".join, axis=1)
    rows = []
    families = (("strategy", strategy, [method, channel]), ("method", method, [strategy, channel]))
    for label, compared, fixed in families:
        for fixed_values, part in unit_means.groupby(fixed, sort=False, observed=True):
            wide = part.pivot_table(index="_unit", columns=compared, values=value, observed=True, sort=False)
            levels = list(wide.columns)
            family_rows = []
            for a, b in combinations(levels, 2):
                pair = wide[[a, b]].dropna()
                n = len(pair)
                fixed_map = dict(zip(fixed, fixed_values))
                row = {
                    "comparison": label,
                    "method": fixed_map.get(method, "*"),
                    "strategy": fixed_map.get(strategy, "*"),
                    "channel": fixed_map[channel],
                    "a": a,
                    "b": b,
                    "unit": unit,
                    "n_units": n,
                    "pseudo_replicates": bool(pseudo_replicates),
                    "warning": unit_warning,
                    "effect_size_name": "rank_biserial",
                    "note": "",
                }
                if n < 2:
                    row.update(
                        mean_a=np.nan,
                        mean_b=np.nan,
                        estimate=np.nan,
                        ci_low=np.nan,
                        ci_high=np.nan,
                        statistic=np.nan,
                        p_value=np.nan,
                        effect_size=np.nan,
                        note=f"only {n} paired {unit}(s); no test",
                    )
                else:
                    xa, xb = pair[a].to_numpy(float), pair[b].to_numpy(float)
                    res = wilcoxon_paired(xa, xb)
                    diff = (xa - xb)[:, None]
                    _, low, high = t_interval(diff, ci=ci)
                    row.update(
                        mean_a=xa.mean(),
                        mean_b=xb.mean(),
                        estimate=float(diff.mean()),
                        ci_low=float(low[0]),
                        ci_high=float(high[0]),
                        statistic=res.statistic,
                        p_value=res.p,
                        effect_size=res.effect_size,
                    )
                family_rows.append(row)
            p_family = np.array([r["p_value"] for r in family_rows], dtype=float)
            p_adj = adjust(p_family, padjust)
            scope = (
                f"{padjust} over {int(np.isfinite(p_family).sum())} {label} pairs ({', '.join(map(str, fixed_values))})"
            )
            for r, q in zip(family_rows, p_adj):
                r["p_adj"] = q
                r["p_adj_method"] = padjust
                r["multiplicity_scope"] = scope
            rows.extend(family_rows)
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.DataFrame(rows)[list(COLUMNS)]
