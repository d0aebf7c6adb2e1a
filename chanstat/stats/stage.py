"""Pipeline stage ``stats``: which channel carries the difference, and how sure are we?

Config: :class:`StatsConfig` (``[stats]``). Whole set only (tests pool the units):

- ``channel_mass``: attribution mass and share per image, method and channel;
- ``channel_tests``: the dominance test (primary) and the secondary tests per method (and
  class transition), at the unit of replication (wells, or plates when there are enough);
- ``channel_share_ci``: each channel's mean share with a calibrated interval;
- ``shapley_tests``: the channel Shapley values of the decompose stage tested against zero and
  for dominance (when that stage ran);
- ``map_similarity``, ``strategy_comparison`` (when DAC ran);
- ``best_channel``: the confidence set for the best channel per method, quantity (shares,
  single-channel DAC, Shapley values) and transition: the answer per method the report shows.

Samples with NaN shares (an all-zero map) are dropped with a count and a warning, exactly as
:func:`chanstat.stats.test_channels` would refuse them. Never imports torch.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from chanstat.config import Section
from chanstat.stage import Stage
from chanstat.stats.against_zero import test_against_zero
from chanstat.stats.best import COLUMNS as BEST_COLUMNS
from chanstat.stats.best import best_channel, default_primary
from chanstat.stats.bootstrap import channel_share_ci
from chanstat.stats.channel_tests import (
    DEFAULT_TESTS,
    PRIMARY_TEST,
    TESTS,
    test_channels,
)
from chanstat.stats.design import DEFAULT_PADJUST, N_BOOT, drop_incomplete
from chanstat.stats.mass import COUNTERFACTUAL_CLASS, channel_mass
from chanstat.stats.similarity import map_similarity
from chanstat.stats.strategies import compare_strategies


class StatsConfig(Section):
    """``[stats]``: channel tests at the unit of replication."""

    positive_only: bool = Field(False, description="Mass of max(a, 0) instead of |a|.")
    unit: Literal["auto", "well", "plate", "image"] = Field(
        "auto",
        description='"auto": plates when there are enough of them, else wells (with a warning when several plates).',
    )
    tests: list[str] = Field(default_factory=lambda: list(DEFAULT_TESTS), description=f"Any of {sorted(TESTS)}.")
    primary: str = Field(
        PRIMARY_TEST, description="The primary test of channel_tests (the answer per method is best_channel's set)."
    )
    breakdown: str | None = Field("transition", description='Also per class transition ("" for none).')
    alpha: float = Field(0.05, gt=0, lt=1)
    ci: float = Field(0.95, gt=0, lt=1, description="Interval coverage.")
    padjust: str = Field(DEFAULT_PADJUST, description="p-value adjustment across channels / pairs.")
    n_boot: int = Field(N_BOOT, ge=0, description="Bootstrap draws where a bootstrap is used.")
    methods: list[str] | None = Field(
        None, description="Restrict to these methods (default: every channel-resolved one)."
    )
    pseudo_replicates: bool | None = Field(
        None,
        description="Units are spatial blocks of one field, not independent replicates (default: from the data stage).",
    )
    primary_method: str | None = Field(
        None,
        description="The one method whose best-channel answer is primary (default: the first discriminative "
        "method, d_*); every other method is exploratory.",
    )
    best_error: Literal["naming", "mcb"] = Field(
        "naming",
        description='Error the best-channel set controls: "naming" (naming a channel that is not the largest) '
        'or "mcb" (Hsu: the set misses a best channel).',
    )
    best_variance: Literal["channel_df", "channel", "pooled", "pair", "max"] = Field(
        "channel_df",
        description="Variance of the log-ratio comparisons: one per channel (fitted to all pairs; calibrated when "
        "channels differ in noise) with df no lower than the equal-variance df (channel_df) or Satterthwaite df "
        "(channel), pooled over channels, per pair, or the larger of pair and pooled.",
    )

    def model_post_init(self, _context) -> None:
        unknown = [t for t in self.tests if t not in TESTS]
        if unknown:
            raise ValueError(f"unknown tests {unknown}; tests are {sorted(TESTS)}")
        if self.primary not in TESTS:
            raise ValueError(f"unknown primary test {self.primary!r}; tests are {sorted(TESTS)}")


def _meta(dataset) -> pd.DataFrame:
    meta = dataset.meta.reset_index(drop=True).copy()
    classes = [str(c) for c in dataset.classes]
    cf = dataset.counterfactual_target
    if cf is not None and COUNTERFACTUAL_CLASS not in meta.columns:
        meta[COUNTERFACTUAL_CLASS] = [classes[int(i)] for i in cf.tolist()]
    meta.insert(0, "sample", np.arange(len(meta)))
    return meta


def _pseudo_replicates(ctx, section: dict) -> bool:
    if section.get("pseudo_replicates") is not None:
        return bool(section["pseudo_replicates"])
    return bool(ctx.dataset.meta.attrs.get("pseudo_replicates", False))


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    section = ctx.section("stats")
    dataset = ctx.dataset
    channels = [str(c) for c in dataset.channels]
    stored = ctx.get("attributions")
    if stored is None:
        raise RuntimeError("[stats] needs attribution maps: enable the [attribution] stage")
    maps = dict(stored.arrays)
    wanted = section.get("methods")
    if wanted:
        unknown = [m for m in wanted if m not in maps]
        if unknown:
            raise ValueError(f"[stats] methods {unknown} have no attribution maps; available: {sorted(maps)}")
    resolved = {m: a for m, a in maps.items() if (not wanted or m in wanted) and a.shape[1] == len(channels) > 1}
    if not resolved:
        raise RuntimeError(f"[stats] no channel-resolved attribution maps (N, C, H, W) among {sorted(maps)}")
    meta = _meta(dataset)
    pseudo = _pseudo_replicates(ctx, section)
    common = dict(
        unit=section["unit"], breakdown=section["breakdown"] or None, ci=section["ci"], pseudo_replicates=pseudo
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mass = channel_mass(resolved, channels, meta, transform="positive" if section["positive_only"] else "absolute")
        testable, n_dropped = drop_incomplete(mass, "share", "sample", ("method",), who="[stats]")
        tests = test_channels(
            testable,
            tests=section["tests"],
            primary=section["primary"],
            alpha=section["alpha"],
            padjust=section["padjust"],
            n_boot=section["n_boot"],
            seed=ctx.seed,
            **common,
        )
        shares = channel_share_ci(testable, alpha=section["alpha"], n_boot=section["n_boot"], seed=ctx.seed, **common)
        similarity = map_similarity(resolved, channels, samples=meta["sample"].to_numpy(), progress=ctx.progress)
        outputs = {
            "channel_mass": mass,
            "channel_tests": tests,
            "channel_share_ci": shares,
            "map_similarity": similarity,
        }
        scores = ctx.get("dac_scores")
        if scores is not None and len(scores):
            keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c not in scores.columns]
            outputs["strategy_comparison"] = compare_strategies(
                scores.merge(meta[["sample", *keys]], on="sample", how="left"),
                unit=section["unit"],
                padjust=section["padjust"],
                ci=section["ci"],
            )
        shapley = ctx.get("channel_shapley")
        if shapley is not None and len(shapley):
            outputs["shapley_tests"] = shapley_tests(shapley, meta, section, seed=ctx.seed, pseudo_replicates=pseudo)
    outputs["best_channel"] = best_channel_tables(
        outputs["channel_mass"], meta, section, pseudo, ctx.get("dac_scores"), ctx.get("channel_shapley")
    )
    primary = tests[tests["primary"]]
    info = {
        "primary_test": section["primary"],
        "unit": str(primary["unit"].iloc[0]) if len(primary) else None,
        "pseudo_replicates": pseudo,
        "dominant_channel": {_label(r): str(r.dominant_channel) for r in primary.itertuples(index=False)},
        "best_channel": _best_sets(outputs["best_channel"]),
        "samples_without_mass": int(n_dropped),
        "design_warnings": sorted({str(w) for w in tests.get("warning", pd.Series(dtype=object)).dropna() if str(w)}),
        "warnings": sorted({str(w.message)[:200] for w in caught if not issubclass(w.category, DeprecationWarning)})[
            :10
        ],
    }
    return outputs, info


def _best_sets(best: pd.DataFrame) -> dict[str, str]:
    """``{"method [transition]": set}`` of the attribution-share rows of ``best_channel``: the named
    channel, else the set of possibly-best channels ("Mito or ER"), "" when no channel is excluded."""
    if best.empty:
        return {}
    shares = best[best["quantity"].astype(str) == "share"].drop_duplicates(["method", "transition"])
    return {_label(r): str(r.set_label) for r in shares.itertuples(index=False)}


def _label(row) -> str:
    """``method [transition]`` of a test row (a row without a breakdown has no transition)."""
    transition = getattr(row, "transition", None)
    pooled = transition is None or pd.isna(transition) or transition == "all"
    return str(row.method) + ("" if pooled else f" [{transition}]")


def _with_meta(table: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c.startswith("Metadata_")]).merge(
        meta, on="sample", how="left"
    )


def best_channel_tables(
    mass: pd.DataFrame,
    meta: pd.DataFrame,
    section: dict,
    pseudo: bool,
    dac_scores: pd.DataFrame | None,
    shapley: pd.DataFrame | None,
) -> pd.DataFrame:
    """The ``best_channel`` table: shares per method, then Shapley values and single-channel DAC when present."""
    testable, _ = drop_incomplete(mass, "share", "sample", ("method",), who="[stats] best_channel")
    methods = [str(m) for m in pd.unique(testable["method"])]
    primary = section.get("primary_method") or default_primary(methods)
    if methods and primary not in methods:
        raise ValueError(f"[stats] primary_method {primary!r} has no channel-resolved maps; methods: {methods}")
    common = dict(
        unit=section["unit"],
        breakdown=section["breakdown"] or None,
        alpha=section["alpha"],
        padjust=section["padjust"],
        pseudo_replicates=pseudo,
        primary_method=primary,
        error=section.get("best_error", "naming"),
        variance=section.get("best_variance", "channel_df"),
    )
    frames = [best_channel(testable, value="share", **common)]
    if shapley is not None and len(shapley):
        frames.append(
            best_channel(
                _with_meta(shapley, meta).assign(method="shapley"), value="shapley", quantity="shapley", **common
            )
        )
    if dac_scores is not None and len(dac_scores) and "channel" in dac_scores:
        single = dac_scores[
            (dac_scores.get("strategy", "single_channel") == "single_channel")
            & dac_scores["channel"].notna()
            & (dac_scores["channel"].astype(str) != "all")
        ]
        if len(single):
            single = _with_meta(single.drop(columns=[c for c in ("strategy",) if c in single]), meta)
            try:
                frames.append(best_channel(single, value="dac", quantity="dac", **common))
            except (ValueError, KeyError) as exc:
                warnings.warn(f"[stats] best_channel on single-channel DAC skipped: {exc}", stacklevel=2)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(BEST_COLUMNS))


def shapley_tests(
    shapley: pd.DataFrame, meta: pd.DataFrame, section: dict, seed: int, pseudo_replicates: bool
) -> pd.DataFrame:
    """Channel Shapley values per channel against zero, and which channel dominates their total."""
    table = _with_meta(shapley, meta).assign(method="shapley")
    common = dict(
        unit=section["unit"],
        breakdown=section["breakdown"] or None,
        ci=section["ci"],
        pseudo_replicates=pseudo_replicates,
    )
    zero = test_against_zero(table, value="shapley", padjust=section["padjust"], **common).assign(
        source="shapley", test="against_zero"
    )
    dominance = test_channels(
        table,
        value="shapley",
        tests=["dominance"],
        primary="dominance",
        alpha=section["alpha"],
        padjust=section["padjust"],
        n_boot=section["n_boot"],
        seed=seed,
        **common,
    )
    dominance = dominance.assign(source="shapley", channel=dominance["channel_a"])
    return pd.concat([zero, dominance], ignore_index=True)


STAGE = Stage(
    name="stats",
    config=StatsConfig,
    reads=("dataset", "attributions", "dac_scores", "channel_shapley"),
    writes=(
        "channel_mass",
        "channel_tests",
        "channel_share_ci",
        "map_similarity",
        "strategy_comparison",
        "shapley_tests",
        "best_channel",
    ),
    whole_set=whole_set,
)
