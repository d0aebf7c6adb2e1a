"""Group differential features by channel: which stains carry the difference?

:func:`channel_enrichment` counts, per channel, significant features among all tested
features and asks with Fisher's exact test whether that channel holds more of them than the
other channels (features treated as independent). :func:`permutation_enrichment` keeps the
correlation between features intact: it permutes the condition labels of the replicate units
(within plates), recomputes every feature's test and asks how often a channel reaches its
observed number of significant features (or mean |effect|) by chance.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from chanstat.cellprofiler.feature_tests import _status, fdr, hedges_g, prepare, welch
from chanstat.cellprofiler.names import channel_order_key, parse_features

_CORRELATION_MODES = ("both", "pair", "exclude")
_TESTS = {"welch": ("q_value", "effect_size"), "mann_whitney": ("mw_q_value", "effect_size")}

#: Columns of :func:`channel_enrichment`'s table.
ENRICHMENT_COLUMNS = (
    "channel", "n_features", "n_significant", "fraction_significant", "n_up", "n_down",
    "odds_ratio", "p_value", "q_value", "mean_abs_effect", "median_abs_effect",
)


def feature_channels(
    diff: pd.DataFrame,
    correlation: str = "both",
    channels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Long table feature -> channel (one row per feature and channel it is counted for).

    Parameters
    ----------
    diff : table with ``feature`` and ``channels`` columns (:func:`differential`'s output).
    correlation : how two-channel (correlation) features count:
        ``"both"`` (default) — once for each of their two channels;
        ``"pair"`` — as their own pseudo-channel ``"DNA~Mito"`` (stain order, whatever the
        direction of the measurement), so single-stain enrichment is not inflated by pairs;
        ``"exclude"`` — not at all.
    channels : count only these channels (e.g. the model's stains, dropping Brightfield); with
        ``"both"`` a DNA-Brightfield correlation still counts for DNA, with ``"pair"`` it is
        left out.

    Returns
    -------
    pandas.DataFrame with columns ``row`` (position in ``diff``), ``feature``, ``channel``.
    """
    if correlation not in _CORRELATION_MODES:
        raise ValueError(f"correlation must be one of {_CORRELATION_MODES}; got {correlation!r}")
    if "channels" not in diff.columns or "feature" not in diff.columns:
        raise ValueError("diff needs 'feature' and 'channels' columns (the output of differential)")
    rows, feats, chans = [], [], []
    for i, (feature, chs) in enumerate(zip(diff["feature"], diff["channels"])):
        chs = [] if chs is None else list(dict.fromkeys(chs))  # BFHigh/BFLow pairs -> one channel
        if len(chs) >= 2 and correlation == "exclude":
            continue
        if len(chs) >= 2 and correlation == "pair":
            if channels is not None and not all(c in channels for c in chs):
                continue
            chs = ["~".join(sorted(chs, key=channel_order_key))]
        elif channels is not None:
            chs = [c for c in chs if c in channels]
        for c in chs:
            rows.append(i)
            feats.append(feature)
            chans.append(c)
    return pd.DataFrame({"row": np.asarray(rows, dtype=np.int64), "feature": feats, "channel": chans})


def _tested(diff: pd.DataFrame) -> pd.DataFrame:
    if "status" in diff.columns:
        diff = diff[diff["status"] == "tested"]
    return diff.reset_index(drop=True)


def _significance(diff: pd.DataFrame, test: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if test not in _TESTS:
        raise ValueError(f"test must be one of {sorted(_TESTS)}; got {test!r}")
    q_col, effect_col = _TESTS[test]
    missing = [c for c in (q_col, effect_col) if c not in diff.columns]
    if missing:
        raise ValueError(f"diff lacks columns {missing}; pass the output of differential()")
    q = diff[q_col].to_numpy(dtype=float, na_value=np.nan)
    return np.nan_to_num(q, nan=1.0) < alpha, diff[effect_col].to_numpy(dtype=float, na_value=np.nan)


def channel_enrichment(
    diff: pd.DataFrame,
    alpha: float = 0.05,
    test: str = "welch",
    correlation: str = "both",
    channels: Sequence[str] | None = None,
    method: str = "fdr_bh",
    alternative: str = "greater",
) -> pd.DataFrame:
    """Per channel: are significant features over-represented? (Fisher's exact test)

    The universe is every tested feature that belongs to at least one counted channel
    (channel-free features such as ``AreaShape`` are left out). For channel *c* the 2x2 table
    is (significant, not significant) x (feature of *c*, feature of another channel); a
    correlation feature of *c* and *d* counts for both with ``correlation="both"``. Fisher's
    test treats features as independent, which CellProfiler features are not — use
    :func:`permutation_enrichment` for a test that keeps their correlation.

    Parameters
    ----------
    diff : output of :func:`~chanstat.cellprofiler.feature_tests` (only ``status == "tested"``
        rows are used).
    alpha : q-value threshold for "significant".
    test : ``"welch"`` (``q_value``) or ``"mann_whitney"`` (``mw_q_value``).
    correlation : ``"both"``, ``"pair"`` or ``"exclude"``; see :func:`feature_channels`.
    channels : count only these channels (default: every channel found).
    method : correction over channels (``"fdr_bh"`` or ``"fdr_by"``).
    alternative : Fisher alternative, ``"greater"`` (enrichment, default) or ``"two-sided"``.

    Returns
    -------
    pandas.DataFrame, one row per channel (stain order DNA, ER, RNA, AGP, Mito, then others):
        ``channel``; ``n_features`` (tested features of the channel); ``n_significant``;
        ``fraction_significant``; ``n_up``/``n_down`` (significant with positive/negative
        effect); ``odds_ratio`` (sample odds ratio of the 2x2 table, inf when the other
        channels have no significant feature); ``p_value`` (Fisher); ``q_value``;
        ``mean_abs_effect``/``median_abs_effect`` (|Hedges' g| over the channel's features).
    """
    if alternative not in ("greater", "two-sided", "less"):
        raise ValueError(f"alternative must be 'greater', 'two-sided' or 'less'; got {alternative!r}")
    tested = _tested(diff)
    sig, effect = _significance(tested, test, alpha)
    links = feature_channels(tested, correlation, channels)
    if links.empty:
        raise ValueError("no tested feature belongs to a channel; nothing to enrich")
    universe = np.unique(links["row"].to_numpy())
    n_universe, n_sig_universe = len(universe), int(sig[universe].sum())
    rows = []
    for channel in sorted(links["channel"].unique(), key=channel_order_key):
        idx = links.loc[links["channel"] == channel, "row"].to_numpy()
        a = int(sig[idx].sum())
        b = len(idx) - a
        c = n_sig_universe - a
        d = (n_universe - len(idx)) - c
        if n_universe > len(idx):
            odds, p = stats.fisher_exact([[a, b], [c, d]], alternative=alternative)
        else:  # a single channel: nothing to compare with
            odds, p = np.nan, np.nan
        abs_eff = np.abs(effect[idx])
        rows.append(
            dict(
                channel=channel, n_features=len(idx), n_significant=a, fraction_significant=a / len(idx),
                n_up=int((sig[idx] & (effect[idx] > 0)).sum()), n_down=int((sig[idx] & (effect[idx] < 0)).sum()),
                odds_ratio=float(odds), p_value=float(p),
                mean_abs_effect=float(np.nanmean(abs_eff)) if np.isfinite(abs_eff).any() else np.nan,
                median_abs_effect=float(np.nanmedian(abs_eff)) if np.isfinite(abs_eff).any() else np.nan,
            )
        )
    out = pd.DataFrame(rows)
    out["q_value"] = fdr(out["p_value"].to_numpy(), method)
    return out[list(ENRICHMENT_COLUMNS)]


def compartment_channel_table(
    diff: pd.DataFrame,
    alpha: float = 0.05,
    test: str = "welch",
    correlation: str = "both",
    channels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Significant features per compartment x channel (tidy).

    Returns
    -------
    pandas.DataFrame with ``compartment``, ``channel``, ``n_features``, ``n_significant``,
    ``fraction_significant``, ``n_up``, ``n_down``, ``mean_abs_effect``; channel-free features
    (``AreaShape``, ``Neighbors``) appear with ``channel`` ``"none"``.
    """
    tested = _tested(diff)
    sig, effect = _significance(tested, test, alpha)
    links = feature_channels(tested, correlation, channels)
    no_channel = np.setdiff1d(np.arange(len(tested)), links["row"].to_numpy())
    if channels is None or "none" in (channels or []):
        links = pd.concat(
            [links, pd.DataFrame({"row": no_channel, "feature": tested["feature"].to_numpy()[no_channel], "channel": "none"})],
            ignore_index=True,
        )
    links["compartment"] = tested["compartment"].to_numpy()[links["row"].to_numpy()]
    links["significant"] = sig[links["row"].to_numpy()]
    links["effect"] = effect[links["row"].to_numpy()]
    links["up"] = links["significant"] & (links["effect"] > 0)
    links["down"] = links["significant"] & (links["effect"] < 0)
    links["abs_effect"] = links["effect"].abs()
    table = (
        links.groupby(["compartment", "channel"], sort=False)
        .agg(n_features=("row", "size"), n_significant=("significant", "sum"), n_up=("up", "sum"),
             n_down=("down", "sum"), mean_abs_effect=("abs_effect", "mean"))
        .reset_index()
    )
    table["fraction_significant"] = table["n_significant"] / table["n_features"]
    order = {c: i for i, c in enumerate(sorted(table["compartment"].unique()))}
    table = table.assign(
        _c=table["compartment"].map(order), _k=[channel_order_key(c) if c != "none" else (99, "") for c in table["channel"]]
    ).sort_values(["_c", "_k"]).drop(columns=["_c", "_k"])
    cols = ["compartment", "channel", "n_features", "n_significant", "fraction_significant", "n_up", "n_down", "mean_abs_effect"]
    return table[cols].reset_index(drop=True).astype({"n_significant": "int64", "n_up": "int64", "n_down": "int64"})


def _permute_within(labels: np.ndarray, strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = labels.copy()
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        out[idx] = labels[idx][rng.permutation(len(idx))]
    return out


def permutation_enrichment(
    df: pd.DataFrame,
    by: str,
    case,
    control,
    level: str = "well",
    features: Sequence[str] | None = None,
    normalize: bool | str | None = None,
    method: str = "fdr_bh",
    *,
    alpha: float = 0.05,
    n_permutations: int = 1000,
    strata: str | None = "Metadata_Plate",
    correlation: str = "both",
    channels: Sequence[str] | None = None,
    well_columns: Sequence[str] | None = None,
    plate_column: str = "Metadata_Plate",
    channel_map: Mapping[str, str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Per channel: is its signal larger than chance, with feature correlation kept?

    The case/control labels of the replicate units (wells at ``level="well"``) are permuted
    ``n_permutations`` times — within ``strata`` (plates) when that column exists — and for
    each permutation every feature's Welch test, the q-values and Hedges' g are recomputed.
    Because whole units are relabelled, the correlation between features is preserved, which
    Fisher's test in :func:`channel_enrichment` ignores. The null hypothesis is "the labels
    are exchangeable" (no treatment effect in any feature of the channel).

    Parameters
    ----------
    df, by, case, control, level, features, normalize, method, well_columns, plate_column,
    channel_map : as :func:`~chanstat.cellprofiler.feature_tests` (normalisation is computed
        once, on the real labels).
    alpha : q-value threshold for counting significant features.
    n_permutations : number of random relabellings.
    strata : column whose levels bound the permutation (``None``: permute freely).
    correlation, channels : as :func:`channel_enrichment`.
    seed : seed of the permutation generator.
    progress : show a progress bar.

    Returns
    -------
    pandas.DataFrame, one row per channel: ``channel``, ``n_features``, ``n_significant``
    (observed), ``p_value_n_significant`` (permutation p-value, ``(1 + #{perm >= obs}) /
    (1 + n)``), ``mean_abs_effect`` (observed mean |g|), ``p_value_mean_abs_effect``,
    ``n_permutations``.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1; got {n_permutations}")
    prepared = prepare(df, by, case, control, level, features, normalize, well_columns, plate_column, warn=True)
    x = prepared.values
    parsed = parse_features(prepared.features, channel_map=channel_map)
    links = feature_channels(parsed[["feature", "channels"]], correlation, channels)
    # drop features that cannot be tested (constant, too few values) as differential does
    testable = _status(x, prepared.is_case) == "tested"
    links = links[testable[links["row"].to_numpy()]]
    if links.empty:
        raise ValueError("no testable feature belongs to a channel")
    chan_names = sorted(links["channel"].unique(), key=channel_order_key)
    incidence = np.zeros((x.shape[1], len(chan_names)))
    incidence[links["row"].to_numpy(), [chan_names.index(c) for c in links["channel"]]] = 1.0
    counts = incidence.sum(axis=0)
    cols = np.flatnonzero(testable)

    def channel_stats(is_case: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sig = np.zeros(x.shape[1])
        abs_g = np.zeros(x.shape[1])
        _, _, p = welch(x[is_case][:, cols], x[~is_case][:, cols])
        sig[cols] = fdr(p, method) < alpha
        g, _, _ = hedges_g(x[is_case][:, cols], x[~is_case][:, cols])
        abs_g[cols] = np.nan_to_num(np.abs(g))
        return sig @ incidence, (abs_g @ incidence) / counts

    observed_sig, observed_eff = channel_stats(prepared.is_case)
    units = prepared.units
    strata_values = (
        units[strata].astype("string").fillna("<NA>").to_numpy() if strata and strata in units.columns else np.zeros(len(units))
    )
    rng = np.random.default_rng(seed)
    exceed_sig = np.zeros(len(chan_names))
    exceed_eff = np.zeros(len(chan_names))
    for _ in tqdm(range(n_permutations), desc="permutations", disable=not progress):
        perm = _permute_within(prepared.is_case, strata_values, rng)
        s, e = channel_stats(perm)
        exceed_sig += s >= observed_sig
        exceed_eff += e >= observed_eff - 1e-12
    return pd.DataFrame(
        dict(
            channel=chan_names,
            n_features=counts.astype(np.int64),
            n_significant=observed_sig.astype(np.int64),
            p_value_n_significant=(1 + exceed_sig) / (1 + n_permutations),
            mean_abs_effect=observed_eff,
            p_value_mean_abs_effect=(1 + exceed_eff) / (1 + n_permutations),
            n_permutations=n_permutations,
        )
    )
