"""The pieces of evidence the answer weighs, each read from run-directory tables (no torch).

Every piece is a :class:`Piece`: what one kind of evidence says about the best channel of one
transition -- a single channel, a set of possibly-best channels, ``"none"`` or nothing (absent) --
with its per-channel estimates and a sentence saying why. The counterfactuals' quality is a
:class:`CounterfactualQuality`. :func:`gather` builds all of them for every transition from a
dict of tables, so the rules (:mod:`chanstat.answer.rules`) can be tested on constructed tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: The ``transition`` value of rows pooled over every class transition.
POOLED = "all"
NONE = "none"


@dataclass
class Piece:
    """What one piece of evidence says about one transition.

    Attributes
    ----------
    name : "attribution", "dac", "shapley", "cellprofiler" or "methods" (the other attribution methods).
    channels : the possibly-best channels (one: a named channel; empty: names none).
    n_channels : channels the piece compared (a set of all of them names none).
    method : the method (or source) the piece comes from.
    estimates : per-channel table (channel, estimate, ci_low, ci_high, in_set).
    p_value : of the piece's test, when it has one.
    detail : a short text of the numbers behind it (plain text).
    others : for "methods": method -> the channel it names ("none" when none).
    """

    name: str
    channels: tuple[str, ...] = ()
    n_channels: int = 0
    method: str = ""
    estimates: pd.DataFrame = field(default_factory=pd.DataFrame)
    p_value: float = float("nan")
    detail: str = ""
    others: dict = field(default_factory=dict)
    scope: str = ""
    n_units: int = 0

    @property
    def named(self) -> str | None:
        """The one channel it names, else None."""
        return self.channels[0] if len(self.channels) == 1 else None

    @property
    def says(self) -> str:
        """ "RNA", "Mito or ER" or "none"."""
        if not self.channels or (self.n_channels and len(self.channels) >= self.n_channels):
            return NONE
        return " or ".join(self.channels)

    def allows(self, channel: str) -> bool:
        """Whether ``channel`` is among the possibly-best channels (a piece naming none allows nothing)."""
        return self.says != NONE and channel in self.channels


@dataclass
class CounterfactualQuality:
    """How good the counterfactuals are (one provider, one transition)."""

    provider: str = ""
    n_samples: int = 0
    flip_rate: float = float("nan")
    change_share: dict = field(default_factory=dict)  # channel -> mean share of |x - x'|
    proximity: float = float("nan")  # mean |x - x'| over channels and pixels
    n_distinct: int | None = None  # distinct counterfactual sources (nearest)
    max_reuse: int | None = None  # the most images one source serves
    realism: float = float("nan")

    @property
    def present(self) -> bool:
        return self.n_samples > 0 or bool(self.change_share)

    def line(self) -> str:
        """One line of plain text: flip rate, where the change lies, proximity, repetition, realism."""
        if not self.present:
            return "no counterfactual quality recorded"
        parts = [f"{self.provider or 'counterfactuals'}"]
        if np.isfinite(self.flip_rate):
            parts.append(f"flip rate {self.flip_rate:.2f}")
        if self.change_share:
            top = sorted(self.change_share.items(), key=lambda kv: -kv[1])
            parts.append("change " + ", ".join(f"{c} {v:.2f}" for c, v in top[:3]))
        if np.isfinite(self.proximity):
            parts.append(f"mean |x − x′| {self.proximity:.3g}")
        if self.n_distinct is not None:
            parts.append(
                f"{self.n_distinct} distinct for {self.n_samples} images"
                + (f", one used {self.max_reuse} times" if (self.max_reuse or 0) > 1 else "")
            )
        if np.isfinite(self.realism):
            parts.append(f"realism {self.realism:.2f}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# per-sample values -> a piece (DAC, Shapley without a test)
# ---------------------------------------------------------------------------------------------
def unit_means(values: pd.DataFrame, value: str, units: pd.Series | None) -> pd.DataFrame:
    """Wide (unit x channel) means of ``value`` (per sample when ``units`` is None)."""
    df = values[["sample", "channel", value]].copy()
    df["unit"] = df["sample"].map(units) if units is not None else df["sample"]
    df["unit"] = df["unit"].fillna(df["sample"].astype(str)).astype(str)
    return df.pivot_table(index="unit", columns="channel", values=value, aggfunc="mean", sort=False)


def ranked_piece(
    name: str,
    wide: pd.DataFrame,
    method: str = "",
    n_boot: int = 1000,
    ci: float = 0.95,
    min_effect: float = 0.0,
    seed: int = 0,
    share: bool = False,
) -> Piece:
    """The set of channels whose mean is not below the top channel's (paired bootstrap over units).

    A channel stays in the set when the ``ci`` interval of its paired difference with the top
    channel reaches 0. A set is empty when the top mean is at most ``min_effect``.
    """
    wide = wide.dropna(axis=1, how="all")
    if wide.empty:
        return Piece(name)
    arr = wide.to_numpy(dtype=float)
    channels = [str(c) for c in wide.columns]
    means = np.nanmean(arr, axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(n_boot, len(arr)))
    boot = np.nanmean(arr[idx], axis=1)  # (n_boot, C)
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    top = int(np.nanargmax(means))
    diff_low = np.nanquantile(boot[:, [top]] - boot, lo_q, axis=0) if len(arr) > 1 else np.full(len(channels), -np.inf)
    in_set = [k == top or not (diff_low[k] > 0) for k in range(len(channels))]
    total = float(np.nansum(np.clip(means, 0, None))) if share else float("nan")
    est = pd.DataFrame(
        {
            "channel": channels,
            "estimate": means,
            "ci_low": np.nanquantile(boot, lo_q, axis=0),
            "ci_high": np.nanquantile(boot, hi_q, axis=0),
            "in_set": in_set,
        }
    )
    order = np.argsort(-means)
    chosen = tuple(channels[k] for k in order if in_set[k]) if means[top] > min_effect else ()
    second = channels[order[1]] if len(order) > 1 else None
    detail = f"{channels[top]} {means[top]:.3g}" + (f" vs {second} {means[order[1]]:.3g}" if second else "")
    if share and total > 0:
        detail += f"; {means[top] / total:.2f} of the total"
    return Piece(name, chosen, len(channels), method, est, detail=detail, n_units=len(arr))


def _rows_for(table: pd.DataFrame, transition: str) -> pd.DataFrame:
    if "transition" not in table:
        return table if transition == POOLED else table.iloc[0:0]
    return table[table["transition"].astype(str) == transition]


def _p(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "p < 1e-16" if p < 1e-16 else f"p {p:.2g}"


# ---------------------------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------------------------
def best_channel_piece(
    best: pd.DataFrame, transition: str, quantity: str, role: str = "primary", method: str | None = None
) -> Piece | None:
    """The confidence set of ``best_channel`` (statistics stage) for one transition and quantity."""
    rows = _rows_for(best, transition)
    rows = rows[(rows["quantity"].astype(str) == quantity)]
    if role:
        rows = rows[rows["role"].astype(str) == role]
    if method is not None:
        rows = rows[rows["method"].astype(str) == method]
    if rows.empty:
        return None
    rows = rows[rows["method"].astype(str) == str(rows["method"].iloc[0])]
    in_set = rows["in_set"].fillna(False).astype(bool)
    est = pd.DataFrame(
        {
            "channel": rows["channel"].astype(str).to_numpy(),
            "estimate": rows["estimate"].to_numpy(float),
            "ci_low": np.nan,
            "ci_high": np.nan,
            "in_set": in_set.to_numpy(),
        }
    )
    order = np.argsort(-est["estimate"].to_numpy())
    chosen = tuple(est["channel"].iloc[k] for k in order if est["in_set"].iloc[k])
    top = est.iloc[order[0]]
    first = rows.iloc[int(order[0])]  # the top channel's row: its p-value is the one naming it
    p = _p(first.get("p_adj")) if np.isfinite(_p(first.get("p_adj"))) else _p(first.get("p_value"))
    detail = f"{top['channel']} {top['estimate']:.3g}" + (f", {_fmt_p(p)}" if np.isfinite(p) else "")
    return Piece(
        "attribution" if quantity == "share" else quantity,
        chosen,
        len(est),
        str(first["method"]),
        est,
        p_value=p,
        detail=detail,
        scope=str(first.get("scope") or ""),
        n_units=int(_p(first.get("n_units")) or 0) if np.isfinite(_p(first.get("n_units"))) else 0,
    )


def with_intervals(piece: Piece | None, computed: Piece | None) -> Piece | None:
    """``piece`` (a confidence set or a test) with the per-channel means and intervals of ``computed``
    (the bootstrap over units), its own set kept; ``computed`` itself when ``piece`` is None."""
    if piece is None or computed is None or computed.estimates.empty:
        return piece if piece is not None else computed
    est = computed.estimates.copy()
    named = set(piece.channels)
    est["in_set"] = est["channel"].isin(named) if piece.says != NONE else True
    piece.estimates = est
    return piece


def dominance_piece(
    tests: pd.DataFrame,
    transition: str,
    name: str,
    alpha: float,
    channels: list[str],
    primary: bool | None = True,
    method: str | None = None,
) -> Piece | None:
    """A dominance-test row (``channel_tests`` or ``shapley_tests``): the channel it names, else none."""
    rows = _rows_for(tests, transition)
    if "test" in rows:
        rows = rows[rows["test"].astype(str) == "dominance"]
    if primary is not None and "primary" in rows and rows["primary"].fillna(False).astype(bool).any():
        rows = rows[rows["primary"].fillna(False).astype(bool) == primary]
    if method is not None and "method" in rows:
        rows = rows[rows["method"].astype(str) == method]
    if rows.empty or "dominant_channel" not in rows:
        return None
    row = rows.iloc[0]
    p = _p(row.get("p_value"))
    dom = str(row.get("dominant_channel") or NONE)
    named = dom if dom != NONE and (dom in channels or not channels) and (not np.isfinite(p) or p < alpha) else None
    detail = f"{dom}" + (f", {_fmt_p(p)}" if np.isfinite(p) else "")
    return Piece(
        name,
        (named,) if named else (),
        len(channels),
        str(row.get("method") or ""),
        p_value=p,
        detail=detail,
        n_units=int(_p(row.get("n_units"))) if np.isfinite(_p(row.get("n_units"))) else 0,
    )


def other_methods_piece(
    best: pd.DataFrame | None,
    tests: pd.DataFrame | None,
    transition: str,
    primary_method: str,
    alpha: float,
    channels: list[str],
) -> Piece | None:
    """What the other attribution methods name (exploratory rows)."""
    others: dict[str, str] = {}
    if best is not None and not best.empty:
        rows = _rows_for(best, transition)
        rows = rows[(rows["quantity"].astype(str) == "share") & (rows["method"].astype(str) != primary_method)]
        for m, g in rows.groupby("method", sort=False):
            chosen = g[g["in_set"].fillna(False).astype(bool)]["channel"].astype(str).tolist()
            others[str(m)] = chosen[0] if len(chosen) == 1 else NONE
    if not others and tests is not None and not tests.empty and "method" in tests:
        for m in pd.unique(tests["method"].astype(str)):
            if m == primary_method:
                continue
            piece = dominance_piece(tests, transition, "methods", alpha, channels, primary=None, method=m)
            if piece is not None:
                others[m] = piece.named or NONE
    if not others:
        return None
    return Piece("methods", n_channels=len(channels), others=others)


def cellprofiler_piece(enrichment: pd.DataFrame, alpha: float, channels: list[str]) -> Piece | None:
    """The channel whose CellProfiler features are enriched (competitive test), else none."""
    if enrichment is None or enrichment.empty or "channel" not in enrichment:
        return None
    p_col = "p_adj" if "p_adj" in enrichment and enrichment["p_adj"].notna().any() else "p_value"
    if p_col not in enrichment or enrichment[p_col].isna().all():
        return None
    sig = enrichment[enrichment[p_col].astype(float) < alpha]
    sig = sig[sig["channel"].astype(str).isin(channels)]
    chosen = tuple(sig.sort_values(p_col)["channel"].astype(str))
    best = enrichment.sort_values(p_col).iloc[0]
    return Piece(
        "cellprofiler",
        chosen,
        len(channels),
        "channel_enrichment",
        p_value=float(best[p_col]),
        detail=f"{best['channel']}, {_fmt_p(float(best[p_col]))}",
    )


def cell_link_piece(link: pd.DataFrame | None, alpha: float, method: str = "") -> Piece | None:
    """The per-cell link (``feature_link``): per channel, how many CellProfiler features predict where
    the classifier looks in that channel (q < ``alpha``), for ``method`` when it has rows."""
    if link is None or link.empty or "q_value" not in link or "channel" not in link:
        return None
    if method and "method" in link and (link["method"].astype(str) == method).any():
        link = link[link["method"].astype(str) == method]
    sig = link[link["q_value"].astype(float) < alpha]
    counts = sig.groupby(sig["channel"].astype(str)).size().sort_values(ascending=False)
    est = pd.DataFrame(
        {
            "channel": counts.index.to_numpy(),
            "estimate": counts.to_numpy(float),
            "ci_low": np.nan,
            "ci_high": np.nan,
            "in_set": True,
        }
    )
    return Piece(
        "link",
        tuple(counts.index),
        0,
        method,
        est,
        others={str(k): int(v) for k, v in counts.items()},
        detail=f"{len(sig)} of {int(link['q_value'].notna().sum())} tested feature-channel links",
    )


def counterfactual_quality(
    quality: pd.DataFrame | None, summary: pd.DataFrame | None, samples: np.ndarray | None, info: dict | None = None
) -> CounterfactualQuality:
    """Quality of the counterfactuals of ``samples`` (all when None) from the counterfactual stage's tables.

    ``info`` is the counterfactual stage's provenance record (``n_distinct_neighbours``,
    ``max_neighbour_reuse``), used when the per-sample table has no ``neighbour`` column.
    """
    info = info or {}
    if quality is not None and not quality.empty:
        q = quality if samples is None else quality[quality["sample"].isin(samples)]
        if q.empty:
            return CounterfactualQuality()
        per_sample = q.drop_duplicates("sample")
        shares = q.groupby("channel", sort=False)["change_share"].mean().dropna()
        out = CounterfactualQuality(
            provider=str(per_sample["provider"].mode().iloc[0]) if "provider" in q else "",
            n_samples=int(per_sample["sample"].nunique()),
            flip_rate=float(per_sample["flipped"].astype(float).mean()) if "flipped" in q else float("nan"),
            change_share={str(k): float(v) for k, v in shares.items()},
            proximity=float(q["mean_abs_diff"].mean()) if "mean_abs_diff" in q else float("nan"),
        )
        if "neighbour" in q and per_sample["neighbour"].notna().any():
            counts = per_sample["neighbour"].dropna().value_counts()
            out.n_distinct, out.max_reuse = int(len(counts)), int(counts.max())
        for col in ("realism", "p_real_discriminator"):
            if col in q:
                out.realism = float(per_sample[col].mean())
                break
    elif summary is not None and not summary.empty:
        out = CounterfactualQuality(
            provider=str(summary["provider"].iloc[0]),
            n_samples=int(summary["n_samples"].max()),
            flip_rate=float(summary["flip_rate"].iloc[0]),
            change_share={str(c): float(v) for c, v in zip(summary["channel"], summary["change_share"]) if pd.notna(v)},
            proximity=float(summary["mean_abs_diff"].mean()),
        )
    else:
        return CounterfactualQuality()
    if out.n_distinct is None and info.get("n_distinct_neighbours") is not None and samples is None:
        out.n_distinct = int(info["n_distinct_neighbours"])
        out.max_reuse = int(info.get("max_neighbour_reuse") or 0) or None
    return out
