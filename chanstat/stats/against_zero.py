"""Per-channel test against zero of a signed per-image quantity (single-channel DAC, Shapley values).

Question: "does channel k contribute, on average over units, more (or less) than nothing?"
Images are averaged per unit (well, or plate; see :func:`chanstat.stats.test_channels`), a
one-sample t-test per channel runs on the unit means, and Holm's adjustment runs over the
channels of each group. The t-interval of each channel's mean is given too (a channel named
in advance; the simultaneous interval covers all channels together).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from chanstat.stats.design import ALL, PLATE_COLUMN, WELL_COLUMNS, as_tuple, build_groups, drop_incomplete, resolve_unit
from chanstat.stats.dominance import t_interval
from chanstat.stats.padjust import adjust, check_padjust

ALTERNATIVES = ("two-sided", "greater", "less")

COLUMNS = (
    "channel", "mean", "sd", "ci_low", "ci_high", "simultaneous_ci_low", "simultaneous_ci_high", "statistic", "df",
    "p_value", "p_adj", "p_adj_method", "multiplicity_scope", "alternative", "unit", "n_units", "n_samples",
    "pseudo_replicates", "warning", "note",
)


def test_against_zero(
    table: pd.DataFrame,
    value: str = "shapley",
    channel: str = "channel",
    sample: str = "sample",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    by: Sequence[str] = ("method",),
    unit: str = "auto",
    breakdown: str | None = "transition",
    alternative: str = "two-sided",
    padjust: str = "holm",
    ci: float = 0.95,
    pseudo_replicates: bool = False,
) -> pd.DataFrame:
    """One-sample t-test of each channel's unit-mean ``value`` against 0, Holm over channels.

    Parameters
    ----------
    table : tidy table, one row per sample and channel (e.g. channel Shapley values, or
        single-channel DAC scores with a ``channel`` column).
    value : the signed quantity (default ``"shapley"``).
    channel, sample, well, plate, by, unit, breakdown : as :func:`chanstat.stats.test_channels`
        (samples with a NaN value are dropped with a warning and a count).
    alternative : ``"two-sided"`` (default), ``"greater"`` (contributes positively) or ``"less"``.
    padjust : adjustment over the channels of each group (default Holm).
    ci : level of the t-intervals.
    pseudo_replicates : the units are pseudo-replicates (spatial blocks of one field).

    Returns
    -------
    DataFrame, one row per group and channel: the ``by`` and ``breakdown`` columns, then
    ``channel``; ``mean``, ``sd`` (over units); ``ci_low``, ``ci_high`` (t-interval);
    ``simultaneous_ci_low``/``high`` (Bonferroni over the group's channels); ``statistic``
    (t), ``df`` (n_units - 1), ``p_value``; ``p_adj`` (``padjust`` over the group's channels),
    ``p_adj_method``, ``multiplicity_scope``; ``alternative``; ``unit``, ``n_units``,
    ``n_samples``, ``pseudo_replicates``, ``warning``, ``note``.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}; got {alternative!r}")
    check_padjust(padjust)
    by = as_tuple(by)
    if isinstance(table, pd.DataFrame) and value in table.columns and sample in table.columns:
        table, _ = drop_incomplete(table, value, sample, [c for c in by if c in table.columns], who="test_against_zero")
    unit_warning = resolve_unit(table, unit, as_tuple(well), plate, "test_against_zero")[1] if isinstance(table, pd.DataFrame) else ""
    if unit_warning:
        warnings.warn(f"test_against_zero: {unit_warning}", stacklevel=2)
    groups = build_groups(table, value, channel, sample, as_tuple(well), plate, by, unit, breakdown,
                          who="test_against_zero", min_channels=1)
    rows = []
    for group in groups:
        x = group.values
        n, c = x.shape
        mean, low, high = t_interval(x, ci)
        _, s_low, s_high = t_interval(x, ci, simultaneous=True)
        sd = x.std(axis=0, ddof=1) if n > 1 else np.full(c, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(sd > 0, mean / (sd / np.sqrt(n)), np.nan)
        if alternative == "two-sided":
            p = 2 * sps.t.sf(np.abs(t), n - 1)
        elif alternative == "greater":
            p = sps.t.sf(t, n - 1)
        else:
            p = sps.t.cdf(t, n - 1)
        p = np.where(np.isfinite(t), p, np.nan)
        p_adj = adjust(p, padjust)
        note = "" if n >= 2 else f"only {n} {group.unit}: no test"
        for j, name in enumerate(group.channels):
            rows.append({
                **group.keys, "channel": name, "mean": mean[j], "sd": sd[j], "ci_low": low[j], "ci_high": high[j],
                "simultaneous_ci_low": s_low[j], "simultaneous_ci_high": s_high[j], "statistic": t[j],
                "df": float(n - 1), "p_value": p[j], "p_adj": p_adj[j], "p_adj_method": padjust,
                "multiplicity_scope": f"{padjust} over {int(np.isfinite(p).sum())} channels of the group",
                "alternative": alternative, "unit": group.unit, "n_units": n, "n_samples": group.sample_values.shape[0],
                "pseudo_replicates": bool(pseudo_replicates), "warning": unit_warning,
                "note": ("PSEUDO-REPLICATES: p-values describe this field only; " if pseudo_replicates else "") + note,
            })
    out = pd.DataFrame(rows)
    if breakdown and breakdown not in out.columns:
        out.insert(len(by), breakdown, ALL)
    lead = [c for c in out.columns if c not in COLUMNS]
    return out[lead + list(COLUMNS)]


test_against_zero.__test__ = False  # not a pytest test, despite the name
