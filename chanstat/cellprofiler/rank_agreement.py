"""Do the attribution's channel ranking and the CellProfiler feature ranking agree?

The attribution side is the channel share of attribution mass (``channel_mass`` from the
stats stage), averaged per well and then over wells; the feature side is a per-channel score
from :func:`~chanstat.cellprofiler.channel_enrichment` (default: mean |Hedges' g|). Agreement
is Kendall's tau-b and Spearman's rho between the two channel scores. With few channels the
null distribution is exact: every ordering of the feature scores (5 channels: 120 orderings)
is equally likely when the rankings are unrelated. Five ranks carry little information: the
smallest possible p is 1/120 = .0083 (perfect agreement) and p < .05 needs tau >= 0.8, so the
table states the smallest attainable p and the agreement needed (``min_p_value``, ``note``).
When both tables carry a ``compartment`` column (compartment x channel rows, e.g. from the
channel-decomposition issue), the ranks are over compartment x channel cells, a finer grain.
The interval resamples wells of the attribution side and, when ``feature_draws`` is given
(:func:`~chanstat.cellprofiler.enrichment.channel_score_draws`: case and control wells
resampled), the feature side too; column ``resampled`` says which.
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
from chanstat.vocabulary import ALPHA, CI, N_BOOT

STATISTICS = ("kendall_tau", "spearman_rho")
ENRICHMENT_SCORES = (
    "mean_abs_effect",
    "median_abs_effect",
    "fraction_significant",
    "n_significant",
    "odds_ratio",
    "statistic",
)
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


def _keys(table: pd.DataFrame, fine: bool) -> pd.Series:
    """Row key: the channel, or ``compartment/channel`` at the finer grain."""
    channel = table["channel"].astype(str)
    return (table["compartment"].astype(str) + "/" + channel) if fine else channel


def _fine(channel_mass: pd.DataFrame, enrichment: pd.DataFrame) -> bool:
    return "compartment" in channel_mass.columns and "compartment" in enrichment.columns


def _feature_scores(enrichment: pd.DataFrame, score: str, fine: bool = False) -> pd.Series:
    if score not in ENRICHMENT_SCORES:
        raise ValueError(f"enrichment_score must be one of {ENRICHMENT_SCORES}; got {score!r}")
    if "channel" not in enrichment.columns:
        raise ValueError("enrichment needs a 'channel' column (the output of channel_enrichment)")
    keys = _keys(enrichment, fine)
    if keys.duplicated().any():
        raise ValueError("enrichment has repeated channels; pass one row per channel (or compartment x channel)")
    if score not in enrichment.columns:
        raise ValueError(f"enrichment has no column {score!r}")
    values = enrichment[score].astype(float)
    return pd.Series(values.to_numpy(), index=keys.to_numpy())


def _well_matrix(
    channel_mass: pd.DataFrame, method: str, channels: list[str], value: str, wells: list[str], fine: bool = False
) -> np.ndarray:
    part = channel_mass[channel_mass["method"] == method]
    part = part.assign(_key=_keys(part, fine).to_numpy())
    part = part[part[wells].notna().all(axis=1)]
    per_well = part.groupby(wells + ["_key"], observed=True)[value].mean().unstack("_key")
    return per_well.reindex(columns=channels).to_numpy(dtype=float)


def _check_mass(channel_mass: pd.DataFrame, value: str, well: Sequence[str]) -> list[str]:
    if not isinstance(channel_mass, pd.DataFrame):
        raise TypeError(f"channel_mass must be a DataFrame; got {type(channel_mass).__name__}")
    wells = [well] if isinstance(well, str) else list(well)
    needed = ["method", "channel", value] + wells
    missing = [c for c in needed if c not in channel_mass.columns]
    if missing:
        raise ValueError(
            f"channel_mass lacks columns {missing} (the stats stage's channel_mass table has "
            "sample, method, channel, mass, share and Metadata_Plate/Metadata_Well)"
        )
    return wells


def _common_channels(channel_mass, feature_scores: pd.Series, channels, fine: bool = False) -> list[str]:
    attr = set(_keys(channel_mass, fine).unique())
    common = [c for c in feature_scores.index if c in attr and np.isfinite(feature_scores[c])]
    if channels is not None:
        common = [c for c in common if c.split("/")[-1] in channels]
    common = sorted(common, key=lambda k: (k.split("/")[0] if "/" in k else "", channel_order_key(k.split("/")[-1])))
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
    well: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
) -> pd.DataFrame:
    """Per method and channel: attribution score and rank next to feature score and rank.

    Returns
    -------
    pandas.DataFrame with ``method``, ``channel`` (``compartment/channel`` at the finer grain), ``attribution_score`` (mean over wells of the
    per-well mean ``value``), ``attribution_rank`` (1 = largest; ties share the average rank),
    ``feature_score``, ``feature_rank``, ``n_wells``.
    """
    wells = _check_mass(channel_mass, value, well)
    fine = _fine(channel_mass, enrichment)
    feature = _feature_scores(enrichment, enrichment_score, fine)
    common = _common_channels(channel_mass, feature, channels, fine)
    f = feature[common].to_numpy(dtype=float)
    rows = []
    for method in pd.unique(channel_mass["method"]):
        m = _well_matrix(channel_mass, method, common, value, wells, fine)
        a = np.nanmean(m, axis=0)
        a_rank, f_rank = stats.rankdata(-a), stats.rankdata(-f)
        for k, ch in enumerate(common):
            rows.append(
                dict(
                    method=str(method),
                    channel=ch,
                    attribution_score=a[k],
                    attribution_rank=a_rank[k],
                    feature_score=f[k],
                    feature_rank=f_rank[k],
                    n_wells=m.shape[0],
                )
            )
    return pd.DataFrame(rows)


def concordance(
    channel_mass: pd.DataFrame,
    enrichment: pd.DataFrame,
    value: str = "share",
    enrichment_score: str = "mean_abs_effect",
    statistics: Sequence[str] = STATISTICS,
    alternative: str = "greater",
    *,
    n_boot: int = N_BOOT,
    ci: float = CI,
    n_perm: int = 10000,
    channels: Sequence[str] | None = None,
    well: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    feature_draws: pd.DataFrame | None = None,
    alpha: float = ALPHA,
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
        ``"odds_ratio"``, or ``"statistic"`` (of :func:`competitive_enrichment`).
    statistics : any of ``"kendall_tau"`` (tau-b) and ``"spearman_rho"``.
    alternative : ``"greater"`` (default: the rankings agree), ``"two-sided"`` or ``"less"``.
    n_boot : resamples for the interval (0 skips it).
    ci : interval level (percentile bootstrap).
    n_perm : random orderings when more than 8 channels make full enumeration too long;
        with <= 8 channels the p-value is exact over all k! orderings.
    channels : restrict to these channels (default: every channel in both tables, >= 3).
    well : the replicate unit in ``channel_mass``.
    feature_draws : bootstrap draws of the feature side (``draw``, ``channel``[, ``compartment``]
        and the ``enrichment_score`` column), e.g. from
        :func:`~chanstat.cellprofiler.enrichment.channel_score_draws`; without it only the
        attribution side is resampled (column ``resampled``).
    alpha : level used in the attainability statement.
    seed : seed of bootstrap and random orderings.

    Returns
    -------
    pandas.DataFrame, one row per method x statistic:
        ``method``, ``statistic``, ``estimate``, ``p_value`` (share of orderings with a
        statistic at least as extreme, the observed one included), ``ci_low``, ``ci_high``,
        ``alternative``, ``exact`` (all orderings enumerated), ``n_orderings``,
        ``n_channels``, ``n_wells``, ``n_boot``, ``resampled`` (``"both"`` or
        ``"attribution only"``), ``min_p_value`` (smallest attainable p), ``critical_estimate``
        (smallest estimate with p < alpha; NaN when none), ``grain`` (``"channel"`` or
        ``"compartment x channel"``), ``note`` (plain statement of what k ranks can show),
        ``value``, ``enrichment_score``, then
        per channel ``attribution_rank_<channel>`` and ``feature_rank_<channel>`` (1 = top).
        :func:`channel_ranks` gives the same ranks as a tidy table.
    """
    unknown = [s for s in statistics if s not in _STAT_FUNCS]
    if unknown or not statistics:
        raise ValueError(f"statistics must be a non-empty subset of {STATISTICS}; got {list(statistics)}")
    if alternative not in ("greater", "two-sided", "less"):
        raise ValueError(f"alternative must be 'greater', 'two-sided' or 'less'; got {alternative!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0; got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci}")
    wells = _check_mass(channel_mass, value, well)
    fine = _fine(channel_mass, enrichment)
    feature = _feature_scores(enrichment, enrichment_score, fine)
    common = _common_channels(channel_mass, feature, channels, fine)
    k = len(common)
    f = feature[common].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    exact = k <= _EXACT_LIMIT
    if exact:
        orderings = np.array(list(itertools.permutations(range(k))))
    else:
        orderings = np.array([rng.permutation(k) for _ in range(n_perm)])
    f_perm = f[orderings]  # (n_orderings, k)
    f_draws = None
    if feature_draws is not None and n_boot:
        missing = [c for c in ("draw", "channel", enrichment_score) if c not in feature_draws.columns]
        if missing:
            raise ValueError(f"feature_draws lacks columns {missing}")
        wide = feature_draws.assign(_key=_keys(feature_draws, fine).to_numpy()).pivot_table(
            index="draw", columns="_key", values=enrichment_score, observed=True
        )
        absent = [c for c in common if c not in wide.columns]
        if absent:
            raise ValueError(f"feature_draws has no draws for {absent}")
        f_draws = wide[common].to_numpy(float)

    rows = []
    methods = list(pd.unique(channel_mass["method"]))
    for method in tqdm(methods, desc="concordance", disable=not progress):
        m = _well_matrix(channel_mass, method, common, value, wells, fine)
        m = m[np.isfinite(m).all(axis=1)]
        if m.shape[0] == 0:
            raise ValueError(f"method {method!r} has no well with a finite {value!r} for all of {common}")
        a = m.mean(axis=0)
        a_rank, f_rank = stats.rankdata(-a), stats.rankdata(-f)
        boots = m[rng.integers(0, m.shape[0], size=(n_boot, m.shape[0]))].mean(axis=1) if n_boot else None
        f_boot = f_draws[rng.integers(0, f_draws.shape[0], size=n_boot)] if f_draws is not None else f[None, :]
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
                draws = func(boots, f_boot)
                draws = draws[np.isfinite(draws)]
                if draws.size:
                    lo, hi = np.quantile(draws, [(1 - ci) / 2, (1 + ci) / 2])
            min_p, critical = _attainable(func, f, f_perm, alternative, exact, alpha)
            if min_p >= alpha:
                note = (
                    f"with {k} ranks the smallest attainable p is {min_p:.3g} >= {alpha}: no agreement can be "
                    f"significant; the estimate is descriptive"
                )
            else:
                note = (
                    f"with {k} ranks the smallest attainable p is {min_p:.3g}; p < {alpha} needs "
                    f"{name} >= {critical:.3g}"
                    if alternative != "less"
                    else f"with {k} ranks the smallest attainable p is {min_p:.3g}"
                )
            row = dict(
                method=str(method),
                statistic=name,
                estimate=estimate,
                p_value=float(p),
                ci_low=float(lo),
                ci_high=float(hi),
                alternative=alternative,
                exact=exact,
                n_orderings=len(orderings),
                n_channels=k,
                n_wells=m.shape[0],
                n_boot=n_boot,
                resampled="both" if f_draws is not None else "attribution only",
                min_p_value=min_p,
                critical_estimate=critical,
                grain="compartment x channel" if fine else "channel",
                note=note,
                value=value,
                enrichment_score=enrichment_score,
            )
            row.update({f"attribution_rank_{ch}": float(a_rank[i]) for i, ch in enumerate(common)})
            row.update({f"feature_rank_{ch}": float(f_rank[i]) for i, ch in enumerate(common)})
            rows.append(row)
    return pd.DataFrame(rows)


def _attainable(func, f: np.ndarray, f_perm: np.ndarray, alternative: str, exact: bool, alpha: float):
    """Smallest attainable p over all possible attribution orderings, and the smallest
    estimate whose p is below ``alpha`` (NaN when none)."""
    k = len(f)
    candidates = np.arange(k, 0, -1, dtype=float)[np.argsort(np.argsort(-f))]  # the best-agreeing ranking
    others = np.unique(func(f_perm, f[None, :]).round(12))
    best_p, critical = 1.0, np.nan
    for est in sorted(others, reverse=alternative != "less"):
        null = func(candidates[None, :], f_perm)
        hits = (
            (null >= est - 1e-12)
            if alternative == "greater"
            else (null <= est + 1e-12 if alternative == "less" else np.abs(null) >= abs(est) - 1e-12)
        )
        p = hits.mean() if exact else (1 + hits.sum()) / (1 + len(null))
        best_p = min(best_p, p)
        if p < alpha:
            critical = est
    return float(best_p), float(critical)


def n_orderings(n_channels: int) -> int:
    """Number of channel orderings an exact test enumerates (k!)."""
    return math.factorial(n_channels)
