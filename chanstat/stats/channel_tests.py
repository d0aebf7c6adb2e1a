"""Which channel carries the difference, and how sure are we? Dominance first, omnibus second.

**Primary answer: the dominance test** (``"dominance"``; see :mod:`chanstat.stats.dominance`).
Channel k is dominant when its mean unit-level share (or contribution) exceeds every other
channel's: an intersection-union test of the pairwise paired tests "k > j" on unit means;
``dominant_channel`` is ``"none"`` unless one channel passes at ``alpha``. Why not the
equal-shares omnibus: shares are never equal (channels differ in brightness and structure),
so "are the shares equal?" is rejected for every method, even a random baseline; it is not
the question a biologist asks. The omnibus tests stay as **secondary** rows:

* ``friedman_f``: Friedman on unit means, Iman-Davenport F (calibrated at one plate: audit
  .037-.055 at 4-24 wells).
* ``hotelling``: Hotelling's T^2 on ILR coordinates of unit means (calibrated under normal
  log-ratios: audit .043 at 8 wells, .045 at 24; needs more units than channels - 1).
* ``friedman``, ``rm_anova``, ``wilcoxon``, ``paired_t``: optional, as before.
* ``mixedlm``: estimates only (no p-value; its Wald test is anti-conservative).

**Heterogeneity** (``plate_x_channel``): with wells as units and 2+ plates, a permutation
test of whether the plates differ in composition, shown next to the primary row. With few
plates, plate x channel effects are not averaged out (audit: Friedman on wells rejects a
null .19 with 2 plates x 8 wells at plate sd 0.3), so well-level answers are about these
plates; ``unit="auto"`` switches to plates from :data:`~chanstat.stats.design.MIN_PLATE_UNITS`
plates on.

**Unit of replication.** Images are averaged per unit (well, or plate) first; every test then
treats units as independent, whatever the number of images per unit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from chanstat.stats.bootstrap import check_level, check_n_boot, share_intervals
from chanstat.stats.compositional import DEFAULT_ZERO_DELTA
from chanstat.stats.design import (
    ALL,
    DEFAULT_PADJUST,
    N_BOOT,
    PLATE_COLUMN,
    WELL_COLUMNS,
    Group,
    as_tuple,
    build_groups,
    describe_keys,
    drop_incomplete,
    resolve_unit,
)
from chanstat.stats.dominance import dominance
from chanstat.stats.mixed import mixedlm_rows
from chanstat.stats.padjust import adjust, check_padjust
from chanstat.stats.rows import (
    Options,
    _dominance_rows,
    _friedman_rows,
    _hotelling_rows,
    _pairwise_rows,
    _plate_rows,
    _rm_anova_rows,
    _row,
)

#: name -> function(group, options) -> rows.
TESTS: dict[str, Callable[[Group, Options], list[dict]]] = {
    "dominance": _dominance_rows,
    "friedman_f": lambda g, o: _friedman_rows(g, o, "f"),
    "friedman": lambda g, o: _friedman_rows(g, o, "chisq"),
    "hotelling": _hotelling_rows,
    "rm_anova": _rm_anova_rows,
    "wilcoxon": lambda g, o: _pairwise_rows(g, o, "wilcoxon"),
    "paired_t": lambda g, o: _pairwise_rows(g, o, "t"),
    "mixedlm": lambda g, o: mixedlm_rows(g, o.delta),
    "plate_x_channel": _plate_rows,
}
DEFAULT_TESTS = ("dominance", "plate_x_channel", "friedman_f", "hotelling")
PRIMARY_TEST = "dominance"
PAIRWISE_TESTS = ("wilcoxon", "paired_t")
#: role of each test's rows; the primary test's pooled row is "primary"
ROLES = {
    "dominance": "primary",
    "dominance_pair": "component",
    "plate_x_channel": "heterogeneity",
    "mixedlm": "descriptive",
}

PSEUDO_NOTE = "PSEUDO-REPLICATES (units are not independent replicates); "
#: note of every row computed on pseudo-replicates: effect sizes only
ONE_FIELD_NOTE = (
    "PSEUDO-REPLICATES, n = 1 field: the units are blocks of one field of view, not a sample of wells, "
    "so no p-value is shown (effect sizes only); "
)

COLUMNS = (
    "test",
    "role",
    "contrast",
    "channel_a",
    "channel_b",
    "statistic",
    "df1",
    "df2",
    "p_value",
    "p_adj",
    "p_adj_method",
    "q_value",
    "multiplicity_scope",
    "effect_size",
    "effect_size_name",
    "estimate",
    "unit",
    "n_units",
    "n_samples",
    "n_plates",
    "pseudo_replicates",
    "primary",
    "quantity",
    "dominant_channel",
    "dominant_value",
    "dominant_share",
    "dominant_ci_low",
    "dominant_ci_high",
    "warning",
    "note",
)


def _dominant(group: Group, options: Options, ci: float, n_boot: int, rng: np.random.Generator) -> dict:
    """Dominant channel (IUT) with a simultaneous (Bonferroni over channels) interval."""
    none = {"dominant_channel": "none", "dominant_value": np.nan, "dominant_ci_low": np.nan, "dominant_ci_high": np.nan}
    if group.n_units < (3 if options.pairwise == "t" else 2):
        return none
    res = dominance(group.values, alpha=options.alpha, pairwise=options.pairwise, seed=options.seed)
    if res["dominant"] < 0:
        return none
    k = res["dominant"]
    bounds = (0.0, 1.0) if options.compositional and float(np.max(group.values)) <= 1.0 else None
    mean, _, _, low, high, _ = share_intervals(group.values, ci, "boot_t", n_boot, rng, bounds=bounds)
    return {
        "dominant_channel": group.channels[k],
        "dominant_value": float(mean[k]),
        "dominant_ci_low": float(low[k]),
        "dominant_ci_high": float(high[k]),
    }


def test_channels(
    table: pd.DataFrame,
    value: str = "share",
    channel: str = "channel",
    sample: str = "sample",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    by: Sequence[str] = ("method",),
    unit: str = "auto",
    breakdown: str | None = "transition",
    *,
    tests: Sequence[str] = DEFAULT_TESTS,
    primary: str = PRIMARY_TEST,
    padjust: str = DEFAULT_PADJUST,
    alpha: float = 0.05,
    ci: float = 0.95,
    pairwise: str = "t",
    n_perm: int = 999,
    n_boot: int = N_BOOT,
    pseudo_replicates: bool = False,
    seed: int = 0,
    delta: float = DEFAULT_ZERO_DELTA,
) -> pd.DataFrame:
    """Which channel dominates, at the right unit of replication? (plus secondary omnibus tests)

    Every sample (image) must have one row per channel; samples with a NaN/inf ``value`` in
    any channel are dropped first, with a warning and a count (:func:`drop_incomplete`). The
    analysis runs separately for each group of the ``by`` columns (default: each attribution
    method) and, within it, pooled (``breakdown`` = ``"all"``) and per level of the
    ``breakdown`` column (default: each transition ``"A → B"``).

    **Unit of replication.** ``unit="auto"`` (default): plates when the table holds at least
    :data:`~chanstat.stats.design.MIN_PLATE_UNITS` (6) plates, otherwise wells (the
    ``well`` columns; plate and well, since well names repeat across plates), with a warning
    (column ``warning`` and :func:`warnings.warn`) when there is more than one plate. Images
    are averaged per unit and channel. ``"well"``, ``"plate"``, ``"image"`` force a unit.
    Rows with a missing unit key are dropped with a warning, never pooled.

    Tests (``tests``, registry :data:`TESTS`; the ``primary`` one always runs):

    ``dominance`` (primary)
        intersection-union test "channel k > every other channel" (paired t, or sign-flip
        with ``pairwise="sign_flip"``, on unit means; needs 3 units for t); one row, plus
        ``dominance_pair`` rows (role ``"component"``) with the candidate's pairwise tests.
    ``plate_x_channel`` (role ``"heterogeneity"``)
        permutation test of equal composition across plates (wells as units, 2+ plates).
    ``friedman_f``, ``friedman``, ``hotelling``, ``rm_anova``, ``wilcoxon``, ``paired_t``
        secondary tests of equal shares (see the module docstring).
    ``mixedlm``
        mixed model estimates, no p-value (role ``"descriptive"``).

    Parameters
    ----------
    table : DataFrame
        Tidy channel table, e.g. from :func:`chanstat.stats.channel_mass`.
    value : column tested (default ``"share"``; compositional tests need it non-negative,
        signed contributions such as Shapley values go through the dominance test).
    channel, sample : channel and sample-id columns.
    well : columns that together identify a well.
    plate : plate column.
    by : columns defining separate analyses (must exist in ``table``).
    unit : ``"auto"``, ``"well"``, ``"plate"`` or ``"image"``.
    breakdown : column with sub-analyses (ignored when absent or all missing); None for none.
    tests : names from :data:`TESTS`.
    primary : the test whose pooled row gets ``primary=True`` (default ``"dominance"``).
    padjust : adjustment of ``p_adj`` (see :func:`chanstat.stats.padjust.adjust`).
    alpha : level of the dominance decision.
    ci : level of the dominant channel's simultaneous interval.
    n_boot : bootstrap-t resamples of that interval (from 6 units; t quantiles below or with 0).
    pairwise : ``"t"`` or ``"sign_flip"`` (dominance pairwise tests).
    n_perm : permutations of the plate x channel test.
    pseudo_replicates : the units are not independent replicates (e.g. spatial blocks of one
        field): every row says so (column ``pseudo_replicates``) and p-values then describe
        that field only.
    seed : seed of the permutation tests.
    delta : zero replacement before log-ratios.

    Returns
    -------
    DataFrame, one row per (group, test[, channel pair]):

    ``method`` (or the ``by`` columns), ``transition`` (the ``breakdown`` column; ``"all"``
    for pooled rows)
        the group.
    ``test``, ``role``
        test name; ``"primary"``, ``"component"``, ``"secondary"``, ``"heterogeneity"`` or
        ``"descriptive"`` (a breakdown level's dominance row has role ``"primary"`` but
        ``primary=False``).
    ``contrast``, ``channel_a``, ``channel_b``
        ``"channel"`` for the dominance and omnibus rows (dominance: ``channel_a`` the
        candidate, ``channel_b`` its hardest competitor); ``"A > B"`` / ``"A - B"`` for pairs.
    ``statistic``, ``df1``, ``df2``
        t (dominance: of the hardest pair), F, chi-square Q, Wilcoxon W, pseudo-F, Wald.
    ``p_value``
        dominance: IUT p of the candidate; pairs: ``2 x`` one-sided p; omnibus: as the test.
    ``p_adj``, ``p_adj_method``, ``q_value``, ``multiplicity_scope``
        ``padjust``-adjusted and BH-adjusted p; family: channel pairs within a group for
        pairwise secondary tests, the ``by`` groups (same test and breakdown level) otherwise;
        ``dominance_pair`` rows are not adjusted (intersection-union). The scope names the
        family.
    ``effect_size``, ``effect_size_name``
        min Cohen's d_z of the candidate's pairs, Kendall's W, partial eta squared,
        rank-biserial r, Cohen's d_z, Aitchison distance.
    ``estimate``
        dominance: candidate mean minus the next largest mean; pairs: mean difference.
    ``unit``, ``n_units``, ``n_samples``, ``n_plates``, ``pseudo_replicates``
        unit used, counts, and the pseudo-replicate flag.
    ``primary``
        True on the pooled row of the primary test of each ``by`` group.
    ``quantity``
        what ``value`` holds: ``"share"``, or the column name (``"shapley"``, ``"dac"``).
    ``dominant_channel``, ``dominant_value``, ``dominant_share``, ``dominant_ci_low``, ``dominant_ci_high``
        the channel the dominance test names at ``alpha`` (``"none"`` when no channel
        passes), its mean unit-level value (``dominant_value``; ``dominant_share`` holds the
        same number only when the quantity is a share, NaN otherwise: a mean Shapley value is
        not a share) and a simultaneous interval (bootstrap of the max studentised deviation
        over the C channels, never narrower than Bonferroni t; it covers the channel although
        the channel is chosen from the data); NaN when ``"none"``. With
        ``pseudo_replicates=True`` no p-value is given and no channel is named (n = 1 field).
    ``warning``
        e.g. wells used as units with several plates; ``""`` when none.
    ``note``
        what else to know.
    """
    tests = list(dict.fromkeys([primary, *tests]))
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; known: {sorted(TESTS)}")
    check_padjust(padjust)
    check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    check_level(alpha, "alpha", "test_channels")
    check_level(ci, "ci", "test_channels")
    by = as_tuple(by)
    if isinstance(table, pd.DataFrame) and value in table.columns and sample in table.columns:
        table, _ = drop_incomplete(table, value, sample, [c for c in by if c in table.columns], who="test_channels")
    _, unit_warning = (
        resolve_unit(table, unit, as_tuple(well), plate, "test_channels")
        if isinstance(table, pd.DataFrame)
        else ("", "")
    )
    if unit_warning:
        warnings.warn(f"test_channels: {unit_warning}", stacklevel=2)
    groups = build_groups(
        table, value, channel, sample, as_tuple(well), plate, by, unit, breakdown, who="test_channels"
    )
    compositional = bool((pd.to_numeric(table[value], errors="coerce") >= 0).all())
    options = Options(
        delta=delta, alpha=alpha, pairwise=pairwise, n_perm=n_perm, seed=seed, compositional=compositional
    )
    rows: list[dict] = []
    lonely = []
    for group in groups:
        if group.n_units < 2:
            lonely.append(describe_keys(group.keys))
        shared = {
            **group.keys,
            "unit": group.unit,
            "n_units": group.n_units,
            "n_samples": group.sample_values.shape[0],
            "n_plates": len(np.unique(group.sample_plate)) if group.sample_plate is not None else 0,
            "pseudo_replicates": bool(pseudo_replicates),
            "warning": unit_warning,
            **_dominant(group, options, ci, n_boot, rng),
        }
        pooled = breakdown is None or group.keys.get(breakdown, ALL) == ALL
        for name in tests:
            if not compositional and name in ("hotelling", "rm_anova", "paired_t", "mixedlm"):
                rows.append(
                    {
                        **shared,
                        **_row(name, note="not applicable: the value is signed (not a composition)"),
                        "role": "secondary",
                        "primary": False,
                    }
                )
                continue
            for row in TESTS[name](group, options):
                role = ROLES.get(row["test"], "secondary")
                if name == primary and row["test"] == name:
                    role = "primary"
                row = {
                    **shared,
                    **row,
                    "role": role,
                    "primary": bool(pooled and name == primary and row["test"] == name),
                }
                if name == "mixedlm":
                    row["unit"] = "image (well random)"
                if pseudo_replicates:
                    row["note"] = PSEUDO_NOTE + row["note"]
                rows.append(row)
    if lonely:
        warnings.warn(
            f"test_channels: {len(lonely)} group(s) have a single {groups[0].unit}, so no p-value: {lonely[:5]}",
            stacklevel=2,
        )
    table = pd.DataFrame(rows)
    if breakdown and breakdown not in table.columns:
        table[breakdown] = ALL
    if "method" not in table.columns:
        table["method"] = ALL
    _adjust(table, by, breakdown, padjust)
    quantity = "share" if value == "share" else str(value)
    table["quantity"] = quantity
    # a mean Shapley value or DAC score is not a share: dominant_share only for shares
    table["dominant_share"] = table["dominant_value"] if quantity == "share" else np.nan
    if pseudo_replicates:
        for col in ("p_value", "p_adj", "q_value"):
            table[col] = np.nan
        table["dominant_channel"] = "none"
        table["note"] = [
            ONE_FIELD_NOTE + n[len(PSEUDO_NOTE) :] if n.startswith(PSEUDO_NOTE) else ONE_FIELD_NOTE + n
            for n in table["note"].astype(str)
        ]
    lead = [*dict.fromkeys(["method", *by]), *([breakdown] if breakdown else [])]
    return table[lead + [c for c in COLUMNS if c not in lead]].reset_index(drop=True)


cast(Any, test_channels).__test__ = False  # not a pytest test, despite the name


def _adjust(table: pd.DataFrame, by: tuple[str, ...], breakdown: str | None, padjust: str) -> None:
    """Fill p_adj / q_value / multiplicity_scope: pairwise over pairs within a group, others over groups."""
    table["p_adj_method"] = padjust
    level = [breakdown] if breakdown else []
    pairwise = table["test"].isin(PAIRWISE_TESTS).to_numpy()
    component = (table["test"] == "dominance_pair").to_numpy()
    families = [
        (pairwise, ["test", *by, *level], "channel pairs within the group"),
        (~pairwise & ~component, ["test", *level], f"groups ({', '.join(by) or 'all'}) of this test"),
    ]
    p_values = table["p_value"].to_numpy(float)
    p_adj = p_values.copy()
    q_value = p_values.copy()
    scope = np.array(["none (intersection-union component)"] * len(table), dtype=object)
    for mask, keys, label in families:
        family_of: dict[tuple, list[np.integer]] = {}
        for i, key in zip(np.flatnonzero(mask), table.loc[mask, keys].itertuples(index=False, name=None)):
            family_of.setdefault(key, []).append(i)
        for idx in family_of.values():
            p_adj[idx] = adjust(p_values[idx], padjust)
            q_value[idx] = adjust(p_values[idx], "bh")
            n = int(np.isfinite(p_values[idx]).sum())
            scope[idx] = f"{padjust} over {n} {label}"
    table["p_adj"] = p_adj
    table["q_value"] = q_value
    table["multiplicity_scope"] = scope
