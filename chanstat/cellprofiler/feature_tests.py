"""Which CellProfiler features differ between two conditions, feature by feature.

Per feature: Welch's t-test and the Mann-Whitney U test (case vs control), Benjamini-Hochberg
(or Benjamini-Yekutieli) q-values over features (:func:`chanstat.stats.padjust.adjust`), and
Hedges' g with a confidence interval whose standard error allows unequal variances.
The unit of replication is the well: per-cell tables are aggregated to well medians first
(``unit="well"``), unless ``unit="cell"`` is asked for explicitly (then a warning says that
cells of one well are not independent). All statistics are computed for all features at
once with array operations; features are grouped only by their pattern of missing values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from chanstat.cellprofiler.names import parse_features
from chanstat.cellprofiler.profiles import (
    aggregate_wells,
    check_numeric,
    check_unique_columns,
    feature_columns,
    resolve_well_columns,
)
from chanstat.stats.padjust import adjust, check_padjust

MAD_TO_SD = 1.4826  # MAD of a normal sample x 1.4826 estimates its standard deviation
FEATURE_PADJUST = ("bh", "fdr_bh", "by", "fdr_by")  # over hundreds of features: false discovery rate

#: Columns of the table :func:`differential` returns, in order.
COLUMNS = (
    "feature",
    "compartment",
    "category",
    "measurement",
    "channels",
    "status",
    "n_case",
    "n_control",
    "mean_case",
    "mean_control",
    "median_case",
    "median_control",
    "statistic",
    "dof",
    "p_value",
    "q_value",
    "effect_size",
    "ci_low",
    "ci_high",
    "mw_statistic",
    "mw_p_value",
    "mw_q_value",
    "significant",
    "multiplicity_scope",
    "level",
    "case",
    "control",
)


@dataclass
class Prepared:
    """Case/control matrices after selection, aggregation and normalisation (internal)."""

    values: np.ndarray  # (n_units, n_features) float64
    is_case: np.ndarray  # (n_units,) bool
    features: list[str]
    units: pd.DataFrame  # metadata of the units (wells or cells)
    level: str
    case: list[str]
    control: list[str]


def _as_list(value, what: str) -> list[str]:
    if value is None:
        raise ValueError(f"{what} must be given")
    values = [value] if isinstance(value, (str, int, float, np.generic)) else list(value)
    if not values:
        raise ValueError(f"{what} must not be empty")
    return [str(v) for v in values]


def prepare(
    df: pd.DataFrame,
    by: str,
    case,
    control,
    level: str = "well",
    features: Sequence[str] | None = None,
    normalize: bool | str | None = None,
    well: Sequence[str] | None = None,
    plate: str = "Metadata_Plate",
    warn: bool = True,
) -> Prepared:
    """Select, aggregate and normalise: the shared first half of the differential analyses."""
    check_unique_columns(df)
    if by not in df.columns:
        raise ValueError(
            f"group column {by!r} is not in the table; Metadata columns: "
            f"{[c for c in df.columns if str(c).startswith('Metadata_')][:20]}"
        )
    if level not in ("well", "cell"):
        raise ValueError(f"unit must be 'well' or 'cell'; got {level!r}")
    cases, controls = _as_list(case, "case"), _as_list(control, "control")
    overlap = sorted(set(cases) & set(controls))
    if overlap:
        raise ValueError(f"{overlap} are both case and control")
    labels = df[by].astype("string")
    present = set(labels.dropna().unique().tolist())
    for what, values in (("case", cases), ("control", controls)):
        absent = [v for v in values if v not in present]
        if absent:
            shown = sorted(present)[:15]
            raise ValueError(
                f"{what} group(s) {absent} not found in column {by!r}; it holds {len(present)} values, e.g. {shown}"
            )

    if features is None:
        features = feature_columns(df.columns)
        _warn_unparsed(df, features)
        if not features:
            raise ValueError(
                "the table has no CellProfiler feature columns (Compartment_Category_...); pass features= explicitly"
            )
    else:
        features = [features] if isinstance(features, str) else [str(f) for f in features]
        if not features:
            raise ValueError("features is empty")
        dupes = sorted({f for f in features if features.count(f) > 1})
        if dupes:
            raise ValueError(f"features lists {dupes[:10]} more than once")
        missing = [f for f in features if f not in df.columns]
        if len(missing) == len(features):
            raise ValueError(
                f"none of the {len(features)} requested features is a column of the table "
                f"(no overlapping features; e.g. {missing[:5]})"
            )
        if missing:
            raise ValueError(f"{len(missing)} requested features are not columns of the table: {missing[:10]}")
    if by in features:
        raise ValueError(f"the group column {by!r} cannot also be a feature")
    check_numeric(df, features)

    rows = labels.isin(cases + controls).fillna(False).to_numpy(bool)
    sub = df.loc[rows]
    wells = resolve_well_columns(df.columns, well)
    if level == "well":
        if not wells:
            raise ValueError(
                "unit='well' needs well columns (Metadata_Plate, Metadata_Well) or well=...; "
                "use unit='cell' to test objects as replicates"
            )
        n_groups = sub.groupby(wells + [by], dropna=False).ngroups
        n_wells = sub[wells].drop_duplicates().shape[0]
        if n_groups != n_wells:
            raise ValueError(f"some wells hold both case and control rows in {by!r}; cannot aggregate to wells")
        n_missing = int(sub[wells].isna().any(axis=1).sum())
        if n_missing:
            warnings.warn(
                f"dropped {n_missing} rows with a missing well key {wells} (they would form one pooled 'NaN well')",
                UserWarning,
                stacklevel=3,
            )
            sub = sub.loc[~sub[wells].isna().any(axis=1).to_numpy()]
        units = aggregate_wells(sub, features=features, well=wells, keep=[by])
    else:
        units = sub.reset_index(drop=True)
    unit_labels = units[by].astype("string").to_numpy() if by in units.columns else None
    if unit_labels is None:
        raise ValueError(f"group column {by!r} varies within wells; cannot aggregate to wells")
    is_case = np.isin(unit_labels, cases)
    n_case, n_control = int(is_case.sum()), int((~is_case).sum())
    if level == "well":
        if min(n_case, n_control) < 2:
            raise ValueError(
                f"unit='well' needs at least 2 wells per group; case has {n_case}, control {n_control}. "
                "With a single well per condition, well and treatment effects cannot be separated; "
                "unit='cell' runs anyway (with a warning)"
            )
    elif warn:
        _warn_cell_level(sub, by, cases, controls, wells, n_case, n_control)

    matrix = np.array(units[features].to_numpy(dtype=float, na_value=np.nan), dtype=float, copy=True)
    matrix[~np.isfinite(matrix)] = np.nan  # inf from CellProfiler divisions by zero
    prepared = Prepared(matrix, is_case, list(features), units.drop(columns=features), level, cases, controls)
    if normalize:
        method = "robust_z" if normalize is True else normalize
        if method != "robust_z":
            raise ValueError(f"normalize must be None, True or 'robust_z'; got {normalize!r}")
        robust_z(prepared.values, prepared.is_case, _plates(prepared.units, plate))
    return prepared


def _warn_unparsed(df: pd.DataFrame, features: list[str]) -> None:
    """Numeric columns that look like measurements but parse to no known category are named, not dropped silently."""
    from chanstat.cellprofiler.names import OBJECT_COMPARTMENTS, parse_features

    candidates = [
        str(c)
        for c in df.columns
        if str(c) not in set(features)
        and not str(c).startswith("Metadata_")
        and str(c).split("_", 1)[0] in OBJECT_COMPARTMENTS
        and pd.api.types.is_numeric_dtype(df[c].dtype)
    ]
    if not candidates:
        return
    parsed = parse_features(candidates)
    unknown = parsed.loc[parsed["category"] == "unknown", "feature"].tolist()
    if unknown:
        warnings.warn(
            f"{len(unknown)} numeric column(s) look like measurements but have no known CellProfiler "
            f"category and are left out: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}; "
            "pass features= to test them",
            UserWarning,
            stacklevel=4,
        )


def _warn_cell_level(sub, by, cases, controls, wells, n_case, n_control) -> None:
    msg = (
        f"unit='cell' treats {n_case} case and {n_control} control objects as independent replicates; "
        "objects of one well share its treatment, plating and imaging, so p-values are too small"
    )
    if wells:
        per_group = (
            sub.assign(_is_case=sub[by].astype("string").isin(cases))
            .groupby("_is_case")[wells]
            .apply(lambda g: g.drop_duplicates().shape[0])
        )
        single = [("case" if k else "control") for k, n in sorted(per_group.items(), reverse=True) if n == 1]
        if single:
            where = {
                name: sub.loc[sub[by].astype("string").isin(vals), wells]
                .drop_duplicates()
                .astype(str)
                .agg("/".join, axis=1)
                .tolist()
                for name, vals in (("case", cases), ("control", controls))
            }
            msg += (
                f"; only one well per condition for {' and '.join(single)} ({where}): differences mix the "
                "treatment with well-to-well variation"
            )
    else:
        msg += "; the table has no well columns, so the number of wells is unknown"
    warnings.warn(msg, UserWarning, stacklevel=4)  # point at the caller of differential()


def _plates(units: pd.DataFrame, plate: str) -> np.ndarray:
    return units[plate].astype("string").fillna("<NA>").to_numpy() if plate in units.columns else np.zeros(len(units))


def robust_z(x: np.ndarray, is_case: np.ndarray, plates: np.ndarray) -> None:
    """Per plate: (x - median of controls) / (1.4826 x MAD of controls), in place.

    ``x`` (n_units, n_features); ``is_case`` (n_units,) True for case units (the
    controls are the other units); ``plates`` (n_units,) plate labels.
    """
    for plate in pd.unique(plates):
        on_plate = plates == plate
        ctrl = x[on_plate & ~is_case]
        if ctrl.shape[0] == 0:
            raise ValueError(f"plate {plate!r} has no control units to normalise against")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            med = np.nanmedian(ctrl, axis=0)
            mad = np.nanmedian(np.abs(ctrl - med), axis=0) * MAD_TO_SD
        scale = np.where(mad > 0, mad, np.nan)  # a zero MAD leaves no scale: NaN, reported later
        x[on_plate] = (x[on_plate] - med) / scale


def _nan_groups(mask: np.ndarray, extra: np.ndarray | None = None) -> list[np.ndarray]:
    """Column indices grouped by identical missing-value pattern (and ``extra`` key)."""
    packed = np.packbits(mask, axis=0)
    key = packed.T if extra is None else np.column_stack([packed.T, extra.astype(np.uint8)])
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if inverse.size else []


def hedges_g(case: np.ndarray, control: np.ndarray, *, ci: float = 0.95):
    """Hedges' g (case - control) and a confidence interval valid under unequal variances.

    Point estimate: pooled standard deviation with the small-sample correction
    ``J = 1 - 3 / (4 (n1 + n2) - 9)`` (as pingouin's ``compute_effsize``). Interval: g +- t x
    SE with a delta-method SE that does not assume equal variances (the Welch analogue of
    the Hedges-Olkin SE, to which it reduces when the variances are equal):
    ``SE^2 = J^2 [(v1/n1 + v2/n2) / s_p^2 + g0^2 ((n1-1) v1^2 + (n2-1) v2^2) / (2 s_p^4 (n1+n2-2)^2)]``
    with ``g0 = (m1 - m2) / s_p`` and a t quantile on the Welch-Satterthwaite df, consistent
    with the Welch test next to it.

    Returns
    -------
    g, ci_low, ci_high : arrays of shape (n_columns,)
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci}")
    n1 = np.sum(np.isfinite(case), axis=0).astype(float)
    n2 = np.sum(np.isfinite(control), axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m1, m2 = np.nanmean(case, axis=0), np.nanmean(control, axis=0)
        v1, v2 = np.nanvar(case, axis=0, ddof=1), np.nanvar(control, axis=0, ddof=1)
        pooled_var = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
        j = 1 - 3 / (4 * (n1 + n2) - 9)
        g0 = (m1 - m2) / np.sqrt(pooled_var)
        g = g0 * j
        var_g0 = (v1 / n1 + v2 / n2) / pooled_var + g0**2 * ((n1 - 1) * v1**2 + (n2 - 1) * v2**2) / (
            2 * pooled_var**2 * (n1 + n2 - 2) ** 2
        )
        se = j * np.sqrt(var_g0)
        a, b = v1 / n1, v2 / n2
        dof = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
        crit = np.abs(stats.t.ppf((1 - ci) / 2, dof))
    return g, g - crit * se, g + crit * se


def welch(case: np.ndarray, control: np.ndarray):
    """Welch's t-test per column, NaN-aware (NaNs dropped column by column).

    Returns ``t, dof, p`` (two-sided), equal to ``scipy.stats.ttest_ind(..., equal_var=False)``
    on each column's non-missing values. Used for permutation loops, where speed matters.
    """
    n1 = np.sum(np.isfinite(case), axis=0).astype(float)
    n2 = np.sum(np.isfinite(control), axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v1 = np.nanvar(case, axis=0, ddof=1) / n1
        v2 = np.nanvar(control, axis=0, ddof=1) / n2
        t = (np.nanmean(case, axis=0) - np.nanmean(control, axis=0)) / np.sqrt(v1 + v2)
        dof = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
        p = 2 * stats.t.sf(np.abs(t), dof)
    return t, dof, p


def _tests(values: np.ndarray, is_case: np.ndarray, cols: np.ndarray):
    """Welch and Mann-Whitney for the tested columns, via scipy, grouped by NaN pattern."""
    x1, x2 = values[is_case][:, cols], values[~is_case][:, cols]
    k = len(cols)
    t, dof, p, u, pu = (np.full(k, np.nan) for _ in range(5))
    mask = np.isnan(np.vstack([x1, x2]))
    # scipy's Mann-Whitney 'auto' picks the exact test for small samples without ties; the
    # choice is made once per call, so columns with and without ties go in separate calls.
    both = np.vstack([x1, x2])
    srt = np.sort(both, axis=0)
    ties = np.any((np.diff(srt, axis=0) == 0), axis=0)
    n_case = x1.shape[0]
    for group in _nan_groups(mask, ties):
        keep = ~mask[:, group[0]]
        a, b = both[:n_case][keep[:n_case]][:, group], both[n_case:][keep[n_case:]][:, group]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant-in-both-groups columns
            res = stats.ttest_ind(a, b, axis=0, equal_var=False)
            mw = stats.mannwhitneyu(a, b, axis=0)
        t[group], p[group], dof[group] = res.statistic, res.pvalue, res.df
        u[group], pu[group] = mw.statistic, mw.pvalue
    return t, dof, p, u, pu


def _status(values: np.ndarray, is_case: np.ndarray) -> np.ndarray:
    n1 = np.sum(np.isfinite(values[is_case]), axis=0)
    n2 = np.sum(np.isfinite(values[~is_case]), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0)
    status = np.full(values.shape[1], "tested", dtype=object)
    status[(n1 < 2) | (n2 < 2)] = "too_few_values"
    status[spread == 0] = "constant"
    status[(n1 + n2) == 0] = "all_nan"
    return status


def differential(
    df: pd.DataFrame,
    by: str,
    case,
    control,
    unit: str = "well",
    features: Sequence[str] | None = None,
    normalize: bool | str | None = None,
    *,
    padjust: str = "bh",
    alpha: float = 0.05,
    ci: float = 0.95,
    well: Sequence[str] | None = None,
    plate: str = "Metadata_Plate",
    channel_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Test every feature for a difference between ``case`` and ``control``.

    Parameters
    ----------
    df : wide table (rows = objects or wells) with ``Metadata_*`` columns and features, e.g.
        from :func:`~chanstat.cellprofiler.read`.
    by : column holding the condition (e.g. ``"Metadata_broad_sample"``).
    case, control : value (or list of values) of ``by`` for each group; compared as strings.
    unit : ``"well"`` (default): objects are aggregated to well medians and wells are the
        replicates (needs >= 2 wells per group); ``"cell"``: every row is a replicate (warns).
    features : feature columns; default every CellProfiler measurement column
        (:func:`~chanstat.cellprofiler.feature_columns`).
    normalize : ``None`` (default) or ``"robust_z"``/``True``: per plate, subtract the control
        median and divide by 1.4826 x the control MAD, after aggregation.
    padjust : multiple-testing correction over features, ``"bh"`` (Benjamini-Hochberg,
        default) or ``"by"`` (Benjamini-Yekutieli, valid under any dependence); also
        ``"fdr_bh"``/``"fdr_by"``.
    alpha : q-value threshold of the ``significant`` column (Welch test).
    ci : level of the Hedges' g interval.
    well, plate : the well key (default ``Metadata_Plate`` + ``Metadata_Well``) and the plate
        used by ``normalize``. Rows with a missing well key are dropped with a warning.
    channel_map : passed to :func:`~chanstat.cellprofiler.parse_features`.

    Returns
    -------
    pandas.DataFrame
        One row per feature (input order), columns :data:`COLUMNS`:
        ``feature``, ``compartment``, ``category``, ``measurement``, ``channels`` (parsed name);
        ``status`` — ``"tested"``, or why the feature was dropped (``"constant"``,
        ``"all_nan"``, ``"too_few_values"``: fewer than 2 values in a group; statistics NaN);
        ``n_case``, ``n_control`` (non-missing units); group ``mean_*``, ``median_*``;
        ``statistic`` (Welch t, case - control), ``dof`` (Welch-Satterthwaite), ``p_value``,
        ``q_value``; ``effect_size`` (Hedges' g) with ``ci_low``, ``ci_high``;
        ``mw_statistic`` (Mann-Whitney U of the case group), ``mw_p_value``, ``mw_q_value``;
        ``significant`` (``q_value < alpha``); ``multiplicity_scope`` (the family of the
        q-values: the tested features of this contrast); ``level``, ``case``, ``control``.

    Raises
    ------
    ValueError
        Absent group, missing/non-numeric/duplicate feature columns, fewer than 2 wells per
        group at the well level, a case also listed as control.
    """
    check_feature_padjust(padjust)
    prepared = prepare(df, by, case, control, unit, features, normalize, well, plate)
    return _differential_table(prepared, padjust, alpha, ci, channel_map)


def check_feature_padjust(padjust: str) -> str:
    """``padjust`` if it is a false-discovery-rate method (over features), else a ValueError."""
    if padjust not in FEATURE_PADJUST:
        raise ValueError(f"padjust over features must be one of {FEATURE_PADJUST}; got {padjust!r}")
    return check_padjust(padjust)


def _differential_table(prepared: Prepared, padjust: str, alpha: float, ci: float, channel_map) -> pd.DataFrame:
    check_feature_padjust(padjust)
    if not 0 < alpha < 1 or not 0 < ci < 1:
        raise ValueError("alpha and ci must lie in (0, 1)")
    x, is_case = prepared.values, prepared.is_case
    status = _status(x, is_case)
    tested = np.flatnonzero(status == "tested")
    nf = x.shape[1]
    t, dof, p, u, pu = (np.full(nf, np.nan) for _ in range(5))
    if tested.size:
        t[tested], dof[tested], p[tested], u[tested], pu[tested] = _tests(x, is_case, tested)
    g, lo, hi = hedges_g(x[is_case], x[~is_case], ci=ci)
    g[status != "tested"] = lo[status != "tested"] = hi[status != "tested"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summaries = dict(
            mean_case=np.nanmean(x[is_case], axis=0),
            mean_control=np.nanmean(x[~is_case], axis=0),
            median_case=np.nanmedian(x[is_case], axis=0),
            median_control=np.nanmedian(x[~is_case], axis=0),
        )
    q = adjust(p, padjust)
    parsed = parse_features(prepared.features, channel_map=channel_map)
    out = pd.DataFrame(
        dict(
            feature=prepared.features,
            compartment=parsed["compartment"].to_numpy(),
            category=parsed["category"].to_numpy(),
            measurement=parsed["measurement"].to_numpy(),
            channels=parsed["channels"].tolist(),
            status=status.astype(str),
            n_case=np.sum(np.isfinite(x[is_case]), axis=0),
            n_control=np.sum(np.isfinite(x[~is_case]), axis=0),
            **summaries,
            statistic=t,
            dof=dof,
            p_value=p,
            q_value=q,
            effect_size=g,
            ci_low=lo,
            ci_high=hi,
            mw_statistic=u,
            mw_p_value=pu,
            mw_q_value=adjust(pu, padjust),
            significant=np.nan_to_num(q, nan=1.0) < alpha,
            multiplicity_scope=f"{padjust} over {int(np.isfinite(p).sum())} tested features of this contrast",
            level=prepared.level,
            case="|".join(prepared.case),
            control="|".join(prepared.control),
        )
    )
    return out[list(COLUMNS)]
