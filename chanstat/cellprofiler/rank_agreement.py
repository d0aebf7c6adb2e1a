"""Do the attribution's channel ranking and the CellProfiler feature ranking agree?

The attribution side is the channel share of attribution mass (``channel_mass`` from the
stats stage), averaged per well and then over wells; the feature side is a per-channel score
from :func:`~chanstat.cellprofiler.channel_enrichment` (default: mean |Hedges' g|). Agreement
is Kendall's tau-b and Spearman's rho between the two channel scores. With few channels the
null distribution is exact: every ordering of the feature scores (5 channels: 120 orderings)
is equally likely when the rankings are unrelated. The interval comes from resampling wells
(the replicate unit) of the attribution side, with the feature scores held fixed.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from chanstat.cellprofiler.names import channel_order_key

STATISTICS = ("kendall_tau", "spearman_rho")
ENRICHMENT_SCORES = ("mean_abs_effect", "median_abs_effect", "fraction_significant", "n_significant",
                     "neg_log10_p", "odds_ratio")
_EXACT_LIMIT = 8  # 8! = 40320 orderings; beyond that, random orderings


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between ``x`` (..., k) and ``y`` (..., k) along the last axis.

    Equal to :func:`scipy.stats.kendalltau` (variant "b"), vectorised over leading axes;
    NaN when either side is constant.
    """
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    i, j = np.triu_indices(x.shape[-1], k=1)
    sx = np.sign(x[..., i] - x[..., j])
    sy = np.sign(y[..., i] - y[..., j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum(-1) / np.sqrt((sx**2).sum(-1) * (sy**2).sum(-1))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson correlation of average ranks) along the last axis."""
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    rx = stats.rankdata(x, axis=-1) - (x.shape[-1] + 1) / 2
    ry = stats.rankdata(y, axis=-1) - (y.shape[-1] + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))


_STAT_FUNCS = {"kendall_tau": kendall_tau_b, "spearman_rho": spearman_rho}


def _feature_scores(enrichment: pd.DataFrame, score: str) -> pd.Series:
    if score not in ENRICHMENT_SCORES:
        raise ValueError(f"enrichment_score must be one of {ENRICHMENT_SCORES}; got {score!r}")
    if "channel" not in enrichment.columns:
        raise ValueError("enrichment needs a 'channel' column (the output of channel_enrichment)")
    if enrichment["channel"].duplicated().any():
        raise ValueError("enrichment has repeated channels; pass one row per channel")
    if score == "neg_log10_p":
        values = -np.log10(enrichment["p_value"].astype(float).clip(lower=1e-300))
    else:
        if score not in enrichment.columns:
            raise ValueError(f"enrichment has no column {score!r}")
        values = enrichment[score].astype(float)
    return pd.Series(values.to_numpy(), index=enrichment["channel"].astype(str).to_numpy())


def _well_matrix(channel_mass: pd.DataFrame, method: str, channels: list[str], value: str, wells: list[str]) -> np.ndarray:
    part = channel_mass[channel_mass["method"] == method]
    per_well = part.groupby(wells + ["channel"], observed=True, dropna=False)[value].mean().unstack("channel")
    return per_well.reindex(columns=channels).to_numpy(dtype=float)


def _check_mass(channel_mass: pd.DataFrame, value: str, well_columns: Sequence[str]) -> list[str]:
    if not isinstance(channel_mass, pd.DataFrame):
        raise TypeError(f"channel_mass must be a DataFrame; got {type(channel_mass).__name__}")
    wells = [well_columns] if isinstance(well_columns, str) else list(well_columns)
    needed = ["method", "channel", value] + wells
    missing = [c for c in needed if c not in channel_mass.columns]
    if missing:
        raise ValueError(f"channel_mass lacks columns {missing} (the stats stage's channel_mass table has "
                         "sample, method, channel, mass, share and Metadata_Plate/Metadata_Well)")
    return wells


def _common_channels(channel_mass, feature_scores: pd.Series, channels) -> list[str]:
    attr = set(channel_mass["channel"].astype(str).unique())
    common = [c for c in feature_scores.index if c in attr and np.isfinite(feature_scores[c])]
    if channels is not None:
        common = [c for c in channels if c in common]
    common = sorted(common, key=channel_order_key)
    if len(common) < 3:
        raise ValueError(
            f"need at least 3 channels present in both tables to compare rankings; attribution has "
            f"{sorted(attr)}, enrichment {list(feature_scores.index)}"
        )
    return common


def channel_ranks(
    channel_mass: pd.DataFrame,
    enrichment: pd.DataFrame,
    value: str = "share",
    enrichment_score: str = "mean_abs_effect",
    channels: Sequence[str] | None = None,
    well_columns: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
) -> pd.DataFrame:
    """Per method and channel: attribution score and rank next to feature score and rank.

    Returns
    -------
    pandas.DataFrame with ``method``, ``channel``, ``attribution_score`` (mean over wells of the
    per-well mean ``value``), ``attribution_rank`` (1 = largest; ties share the average rank),
    ``feature_score``, ``feature_rank``, ``n_wells``.
    """
    wells = _check_mass(channel_mass, value, well_columns)
    feature = _feature_scores(enrichment, enrichment_score)
    common = _common_channels(channel_mass, feature, channels)
    f = feature[common].to_numpy(dtype=float)
    rows = []
    for method in pd.unique(channel_mass["method"]):
        m = _well_matrix(channel_mass, method, common, value, wells)
        a = np.nanmean(m, axis=0)
        a_rank, f_rank = stats.rankdata(-a), stats.rankdata(-f)
        for k, ch in enumerate(common):
            rows.append(dict(method=str(method), channel=ch, attribution_score=a[k], attribution_rank=a_rank[k],
                             feature_score=f[k], feature_rank=f_rank[k], n_wells=m.shape[0]))
    return pd.DataFrame(rows)


def concordance(
    channel_mass: pd.DataFrame,
    enrichment: pd.DataFrame,
    value: str = "share",
    enrichment_score: str = "mean_abs_effect",
    statistics: Sequence[str] = STATISTICS,
    alternative: str = "greater",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    n_permutations: int = 10000,
    channels: Sequence[str] | None = None,
    well_columns: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Rank agreement between attribution channel shares and feature enrichment, per method.

    Parameters
    ----------
    channel_mass : the stats stage's table (``sample, method, channel, mass, share`` plus
        ``Metadata_Plate``/``Metadata_Well``), one row per sample x channel.
    enrichment : :func:`~chanstat.cellprofiler.channel_enrichment`'s table.
    value : attribution column to rank (``"share"``, default, or ``"mass"``).
    enrichment_score : feature-side score: ``"mean_abs_effect"`` (default),
        ``"median_abs_effect"``, ``"fraction_significant"``, ``"n_significant"``,
        ``"neg_log10_p"`` (-log10 Fisher p) or ``"odds_ratio"``.
    statistics : any of ``"kendall_tau"`` (tau-b) and ``"spearman_rho"``.
    alternative : ``"greater"`` (default: the rankings agree), ``"two-sided"`` or ``"less"``.
    n_bootstrap : well resamples for the interval (0 skips it).
    confidence : interval level (percentile bootstrap).
    n_permutations : random orderings when more than 8 channels make full enumeration too
        long; with <= 8 channels the p-value is exact over all k! orderings.
    channels : restrict to these channels (default: every channel in both tables, >= 3).
    well_columns : the replicate unit in ``channel_mass``.
    seed : seed of bootstrap and random orderings.

    Returns
    -------
    pandas.DataFrame, one row per method x statistic:
        ``method``, ``statistic``, ``estimate``, ``p_value`` (share of orderings with a
        statistic at least as extreme, the observed one included), ``ci_low``, ``ci_high``,
        ``alternative``, ``exact`` (all orderings enumerated), ``n_orderings``,
        ``n_channels``, ``n_wells``, ``n_bootstrap``, ``value``, ``enrichment_score``, then
        per channel ``attribution_rank_<channel>`` and ``feature_rank_<channel>`` (1 = top).
        :func:`channel_ranks` gives the same ranks as a tidy table.
    """
    unknown = [s for s in statistics if s not in _STAT_FUNCS]
    if unknown or not statistics:
        raise ValueError(f"statistics must be a non-empty subset of {STATISTICS}; got {list(statistics)}")
    if alternative not in ("greater", "two-sided", "less"):
        raise ValueError(f"alternative must be 'greater', 'two-sided' or 'less'; got {alternative!r}")
    if n_bootstrap < 0 or not 0 < confidence < 1:
        raise ValueError("n_bootstrap must be >= 0 and confidence in (0, 1)")
    wells = _check_mass(channel_mass, value, well_columns)
    feature = _feature_scores(enrichment, enrichment_score)
    common = _common_channels(channel_mass, feature, channels)
    k = len(common)
    f = feature[common].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    exact = k <= _EXACT_LIMIT
    if exact:
        orderings = np.array(list(itertools.permutations(range(k))))
    else:
        orderings = np.array([rng.permutation(k) for _ in range(n_permutations)])
    f_perm = f[orderings]  # (n_orderings, k)

    rows = []
    methods = list(pd.unique(channel_mass["method"]))
    for method in tqdm(methods, desc="concordance", disable=not progress):
        m = _well_matrix(channel_mass, method, common, value, wells)
        m = m[np.isfinite(m).all(axis=1)]
        if m.shape[0] == 0:
            raise ValueError(f"method {method!r} has no well with a finite {value!r} for all of {common}")
        a = m.mean(axis=0)
        a_rank, f_rank = stats.rankdata(-a), stats.rankdata(-f)
        boots = m[rng.integers(0, m.shape[0], size=(n_bootstrap, m.shape[0]))].mean(axis=1) if n_bootstrap else None
        for name in statistics:
            func = _STAT_FUNCS[name]
            estimate = float(func(a, f))
            null = func(a[None, :], f_perm)
            eps = 1e-12
            if alternative == "greater":
                hits = null >= estimate - eps
            elif alternative == "less":
                hits = null <= estimate + eps
            else:
                hits = np.abs(null) >= abs(estimate) - eps
            p = hits.mean() if exact else (1 + hits.sum()) / (1 + len(null))
            if not np.isfinite(estimate):
                p = np.nan
            lo = hi = np.nan
            if boots is not None:
                draws = func(boots, f[None, :])
                draws = draws[np.isfinite(draws)]
                if draws.size:
                    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
            row = dict(method=str(method), statistic=name, estimate=estimate, p_value=float(p), ci_low=float(lo),
                       ci_high=float(hi), alternative=alternative, exact=exact, n_orderings=len(orderings),
                       n_channels=k, n_wells=m.shape[0], n_bootstrap=n_bootstrap, value=value,
                       enrichment_score=enrichment_score)
            row.update({f"attribution_rank_{ch}": float(a_rank[i]) for i, ch in enumerate(common)})
            row.update({f"feature_rank_{ch}": float(f_rank[i]) for i, ch in enumerate(common)})
            rows.append(row)
    return pd.DataFrame(rows)


def n_orderings(n_channels: int) -> int:
    """Number of channel orderings an exact test enumerates (k!)."""
    return math.factorial(n_channels)
