"""Pipeline stage ``stats``: channel mass, channel tests, share intervals, map similarity, DAC comparisons.

Config section ``[stats]`` (all optional)::

    positive_only = false        # mass of max(a, 0) instead of |a|
    unit = "auto"                # unit of replication: auto (= well), well, plate, image
    tests = ["friedman_f", "friedman", "rm_anova", "wilcoxon", "mixedlm"]
    primary = "friedman_f"
    breakdown = "transition"     # "" for none
    n_boot = 2000
    ci = 0.95
    methods = []                 # restrict to these methods (default: every channel-resolved one)

Reads ``ctx.artifacts["attributions"]`` (or ``attributions.zarr`` in the run directory),
``ctx.dataset.meta`` / ``.channels`` / ``.classes`` / ``.counterfactual_labels`` and, when present,
``ctx.artifacts["dac_scores"]``. Never imports torch: tensors are read through ``.tolist()``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from chanstat.io import read_arrays, write_table
from chanstat.stats.bootstrap import channel_share_ci
from chanstat.stats.channel_tests import DEFAULT_TESTS, PRIMARY_TEST, test_channels
from chanstat.stats.mass import COUNTERFACTUAL_CLASS, channel_mass
from chanstat.stats.similarity import map_similarity
from chanstat.stats.strategies import compare_strategies


def _attributions(ctx) -> dict[str, np.ndarray]:
    maps = ctx.artifacts.get("attributions")
    if maps is None:
        store = ctx.out / "attributions.zarr"
        if not store.exists():
            raise RuntimeError(
                "stats stage: no attributions (ctx.artifacts['attributions'] is empty and attributions.zarr is "
                "missing); enable the [attribution] stage"
            )
        maps, _ = read_arrays(store)
    return {str(name): np.asarray(a) for name, a in maps.items()}


def _as_list(values) -> list:
    """A tensor, array or sequence as a plain list (tensors via ``.tolist()``: no torch import)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _meta(dataset) -> pd.DataFrame:
    meta = dataset.meta.reset_index(drop=True).copy()
    classes = [str(c) for c in dataset.classes]
    if "Metadata_Class" not in meta.columns and getattr(dataset, "labels", None) is not None:
        meta["Metadata_Class"] = [classes[int(i)] for i in _as_list(dataset.labels)]
    cf = getattr(dataset, "counterfactual_labels", None)
    if cf is not None and COUNTERFACTUAL_CLASS not in meta.columns:
        meta[COUNTERFACTUAL_CLASS] = [classes[int(i)] for i in _as_list(cf)]
    if "sample" not in meta.columns:
        meta.insert(0, "sample", np.arange(len(meta)))
    return meta


def run(ctx) -> dict:
    cfg = ctx.section("stats")
    dataset = ctx.dataset
    if dataset is None:
        raise RuntimeError("stats stage: no dataset in the run context (the data stage must run first)")
    channels = [str(c) for c in dataset.channels]
    maps = _attributions(ctx)
    wanted = cfg.get("methods") or None
    if wanted:
        unknown = [m for m in wanted if m not in maps]
        if unknown:
            raise KeyError(f"stats stage: methods {unknown} not among the attributions {sorted(maps)}")
    resolved = {
        name: a
        for name, a in maps.items()
        if (not wanted or name in wanted) and a.ndim == 4 and a.shape[1] == len(channels) and a.shape[1] > 1
    }
    skipped = sorted(set(maps) - set(resolved))
    if not resolved:
        raise RuntimeError(f"stats stage: no channel-resolved attributions (N, C, H, W) among {sorted(maps)}")

    meta = _meta(dataset)
    unit = cfg.get("unit", "auto")
    breakdown = cfg.get("breakdown", "transition") or None
    n_boot = int(cfg.get("n_boot", 2000))
    ci = float(cfg.get("ci", 0.95))
    seed = int(ctx.seed)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mass = channel_mass(resolved, channels, meta, positive_only=bool(cfg.get("positive_only", False)))
        empty = mass["share"].isna()
        n_dropped = int(mass.loc[empty, ["method", "sample"]].drop_duplicates().shape[0])
        testable = mass[~empty]
        tests = test_channels(
            testable,
            unit=unit,
            breakdown=breakdown,
            tests=tuple(cfg.get("tests", DEFAULT_TESTS)),
            primary=cfg.get("primary", PRIMARY_TEST),
            n_boot=n_boot,
            ci=ci,
            seed=seed,
        )
        shares = channel_share_ci(testable, unit=unit, breakdown=breakdown, n_boot=n_boot, ci=ci, seed=seed)
        similarity = map_similarity(resolved, channels, sample_ids=meta["sample"].to_numpy(), progress=ctx.progress)

    out = ctx.out
    write_table(mass, out / "channel_mass.parquet")
    write_table(tests, out / "channel_tests.parquet")
    write_table(shares, out / "channel_share_ci.parquet")
    write_table(similarity, out / "map_similarity.parquet")
    ctx.artifacts.update(channel_mass=mass, channel_tests=tests, channel_share_ci=shares, map_similarity=similarity)

    info: dict = {}
    dac_scores = ctx.artifacts.get("dac_scores")
    if dac_scores is not None and len(dac_scores):
        well_cols = [c for c in ("Metadata_Plate", "Metadata_Well") if c not in dac_scores.columns]
        scores = dac_scores.merge(meta[["sample", *well_cols]], on="sample", how="left") if well_cols else dac_scores
        comparison = compare_strategies(scores, unit=unit, n_boot=n_boot, ci=ci, seed=seed)
        write_table(comparison, out / "strategy_comparison.parquet")
        ctx.artifacts["strategy_comparison"] = comparison
        info["n_strategy_comparisons"] = int(len(comparison))

    primary = tests[tests["primary"]]
    info.update(
        {
            "primary_test": cfg.get("primary", PRIMARY_TEST),
            "unit": str(primary["unit"].iloc[0]) if len(primary) else None,
            "methods": {
                str(row.method): {
                    "p_value": None if pd.isna(row.p_value) else float(row.p_value),
                    "dominant_channel": str(row.dominant_channel),
                    "dominant_share": float(row.dominant_share),
                }
                for row in primary.itertuples(index=False)
            },
            "skipped_methods": skipped,
            "samples_without_mass": n_dropped,
            "warnings": sorted({str(w.message)[:200] for w in caught if not issubclass(w.category, DeprecationWarning)})[:10],
        }
    )
    return info
