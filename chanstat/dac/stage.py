"""Pipeline stage: DAC of every discriminative attribution method x every mask strategy.

Config (``[dac]``, every key optional)::

    strategies = ["aggregate", "joint", "per_channel", "single_channel"]
    methods = ["d_ig", "residual"]  # default: every discriminative map the attribution stage made
    steps = 200                     # threshold intervals (curves have steps + 1 points)
    schedule = "value"              # or "rank"
    closing = 10                    # element size in pixels, 0 = off
    closing_shape = "ellipse"       # or "square"
    sigma = 2.0                     # Gaussian blur, 0 = off
    batch_size = 256                # hybrids per forward pass (default: from device and image size)
    filter_pairs = false            # keep only correctly classified real/counterfactual pairs
    max_samples = 64                # score a class-balanced subset (default: every image)
    store_masks = true              # optimal masks -> dac_masks.zarr

    [dac.sweep]                     # smoothing sweep (runs when the table is present)
    closings = [0, 5, 10]
    sigmas = [0, 1, 2]
    strategies = ["aggregate"]
    methods = ["d_ig"]              # default: d_ig if scored, else the first scored method
    steps = 50                      # default: the main steps

Discriminative methods are those whose registry entry says ``needs_counterfactual`` (the
``d_*`` methods and ``residual``) plus the ``random`` baseline. Channel-agnostic maps
(N, 1, H, W) are scored with ``aggregate`` only. Without an attribution stage the residual
``|x - x'|`` is scored.

Writes ``dac_curves.parquet`` (sample, method, strategy, channel, step, threshold, mask_size,
score, prediction), ``dac_scores.parquet`` (sample, method, strategy, channel, dac),
``dac_masks.zarr`` (one array ``<method>.<strategy>`` of optimal masks per pair, with the
scored samples in its attributes), ``dac_dropped.parquet`` when pairs were filtered out and
``dac_sweep.parquet`` (method, closing, sigma, sample, strategy, channel, dac) for the sweep.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from chanstat.dac.engine import dac, smoothing_sweep
from chanstat.dac.masks import STRATEGIES, check_strategies
from chanstat.io import write_arrays, write_table

log = logging.getLogger(__name__)

BASELINE_METHODS = ("residual", "random")
DEFAULT_STRATEGIES = ("aggregate", "joint", "per_channel", "single_channel")


def is_discriminative(name: str) -> bool:
    """Whether maps of method ``name`` explain a real-vs-counterfactual difference (or are its baselines)."""
    try:
        from chanstat.attribution import METHODS
    except ImportError:  # attribution package absent: fall back on the naming convention
        METHODS = {}
    if name in METHODS:
        return bool(METHODS[name].needs_counterfactual) or name in BASELINE_METHODS
    return name.startswith("d_") or name in BASELINE_METHODS


def balanced_subset(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` images, as equal a share per class as possible."""
    n = len(labels)
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    if max_samples < 1:
        raise ValueError(f"[dac] max_samples must be >= 1; got {max_samples}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    chosen: list[int] = []
    while len(chosen) < max_samples:
        for c in classes:
            if pools[c] and len(chosen) < max_samples:
                chosen.append(int(pools[c].pop(0)))
    return np.sort(np.asarray(chosen))


def _maps(ctx, dataset) -> tuple[dict[str, np.ndarray], str]:
    maps = ctx.artifacts.get("attributions")
    if maps:
        return dict(maps), "attribution stage"
    log.warning("dac: no attribution maps in this run; scoring the residual |x - x'|")
    residual = (dataset.images - dataset.counterfactuals).abs().numpy()
    return {"residual": residual}, "residual computed by the dac stage (no attribution stage)"


def run(ctx) -> dict:
    section = ctx.section("dac")
    dataset, model = ctx.dataset, ctx.model
    if dataset is None or model is None:
        raise RuntimeError("the dac stage needs the data and model stages (ctx.dataset / ctx.model missing)")
    if dataset.counterfactuals is None:
        raise RuntimeError("the dac stage needs counterfactual images; the dataset has none (add a [counterfactual] stage)")
    strategies = [s.name for s in check_strategies(section.get("strategies", list(DEFAULT_STRATEGIES)))]
    all_maps, source = _maps(ctx, dataset)
    n_images = int(dataset.images.shape[0])
    for name, arr in all_maps.items():
        if arr.shape[0] != n_images:
            raise ValueError(f"attribution maps {name!r} cover {arr.shape[0]} images but the dataset has {n_images}")
    requested = section.get("methods")
    if requested is None:
        methods = [m for m in all_maps if is_discriminative(m)]
    else:
        missing = [m for m in requested if m not in all_maps]
        if missing:
            raise ValueError(f"[dac] methods {missing} have no attribution maps; available: {sorted(all_maps)}")
        methods = list(requested)
    if not methods:
        raise ValueError(f"no discriminative attribution maps to score; maps available: {sorted(all_maps)}")

    options = dict(
        steps=int(section.get("steps", 200)),
        schedule=section.get("schedule", "value"),
        closing=int(section.get("closing", 10)),
        closing_shape=section.get("closing_shape", "ellipse"),
        sigma=float(section.get("sigma", 2.0)),
        batch_size=section.get("batch_size"),
        filter_pairs=bool(section.get("filter_pairs", False)),
    )
    labels = dataset.labels.numpy()
    subset = balanced_subset(labels, section.get("max_samples"), ctx.seed)
    real = dataset.images[subset]
    counterfactuals = dataset.counterfactuals[subset]
    target = dataset.labels[subset]
    cf_target = dataset.counterfactual_labels[subset] if dataset.counterfactual_labels is not None else None
    channels = list(dataset.channels)
    store_masks = bool(section.get("store_masks", True))

    curves, scores, dropped, skipped, stats = [], [], None, {}, {}
    masks_written = False
    for method in methods:
        maps = np.asarray(all_maps[method])[subset]
        usable = [s for s in strategies if maps.shape[1] == len(channels) or not STRATEGIES[s].channel_resolved]
        if len(usable) < len(strategies):
            skipped[method] = sorted(set(strategies) - set(usable))
            log.info("dac: %s maps are channel-agnostic; scoring %s only", method, usable)
        if not usable:
            continue
        result = dac(
            model, real, counterfactuals, maps, target, strategy=usable, return_masks=store_masks,
            progress=ctx.progress, counterfactual_target=cf_target, channels=channels, **options,
        )
        # rows of the inputs -> rows of the dataset
        for table in (result.curves, result.scores):
            table["sample"] = subset[table["sample"].to_numpy()]
            table.insert(1, "method", method)
            table["method"] = table["method"].astype("string")
        curves.append(result.curves)
        scores.append(result.scores)
        if dropped is None:
            dropped = result.dropped.assign(sample=subset[result.dropped["sample"].to_numpy()])
        stats[method] = result.stats
        if store_masks:
            samples = subset[result.samples].tolist()
            arrays = {f"{method}.{s}": m for s, m in result.optimal_masks.items()}
            attrs = {
                f"{method}.{s}": {
                    "method": method, "strategy": s, "kind": "optimal", "samples": samples,
                    "channels": ["all"] if STRATEGIES[s].combine_channels else channels,
                }
                for s in result.optimal_masks
            }
            write_arrays(
                ctx.out / "dac_masks.zarr", arrays, attrs=attrs, mode="a" if masks_written else "w",
                group_attrs={"channels": channels, "settings": {k: v for k, v in options.items() if v is not None}},
            )
            masks_written = True

    curves_df = pd.concat(curves, ignore_index=True)
    scores_df = pd.concat(scores, ignore_index=True)
    write_table(curves_df, ctx.out / "dac_curves.parquet")
    write_table(scores_df, ctx.out / "dac_scores.parquet")
    ctx.artifacts["dac_curves"] = curves_df
    ctx.artifacts["dac_scores"] = scores_df
    n_dropped = 0 if dropped is None else len(dropped)
    if n_dropped:
        write_table(dropped, ctx.out / "dac_dropped.parquet")

    info: dict = {
        "methods": methods,
        "strategies": strategies,
        "maps_from": source,
        "n_pairs": int(len(subset)),
        "n_dropped": int(n_dropped),
        "hybrids": int(sum(s["hybrids"] for m in stats.values() for s in m.values())),
        "forward_passes": int(sum(s["forward_passes"] for m in stats.values() for s in m.values())),
        "mean_dac": _mean_dac(scores_df),
    }
    if skipped:
        info["skipped_strategies"] = skipped

    sweep = ctx.section("dac.sweep")
    if sweep and sweep.get("enabled", True):
        info["sweep"] = _run_sweep(ctx, sweep, methods, all_maps, subset, real, counterfactuals, target, cf_target, channels, options, model)
    return info


def _mean_dac(scores: pd.DataFrame) -> dict:
    """{method: {strategy or "single_channel:<channel>": mean DAC}} for the provenance record."""
    out: dict = {}
    means = scores.groupby(["method", "strategy", "channel"], sort=False)["dac"].mean()
    for (method, strategy, channel), value in means.items():
        key = strategy if channel == "all" else f"{strategy}:{channel}"
        out.setdefault(str(method), {})[str(key)] = round(float(value), 6)
    return out


def _run_sweep(ctx, sweep, methods, all_maps, subset, real, counterfactuals, target, cf_target, channels, options, model) -> dict:
    default = ["d_ig"] if "d_ig" in methods else methods[:1]
    sweep_methods = list(sweep.get("methods", default))
    missing = [m for m in sweep_methods if m not in all_maps]
    if missing:
        raise ValueError(f"[dac.sweep] methods {missing} have no attribution maps; available: {sorted(all_maps)}")
    strategies = [s.name for s in check_strategies(sweep.get("strategies", ["aggregate"]))]
    frames = []
    for method in sweep_methods:
        maps = np.asarray(all_maps[method])[subset]
        usable = [s for s in strategies if maps.shape[1] == len(channels) or not STRATEGIES[s].channel_resolved]
        if not usable:
            continue
        table = smoothing_sweep(
            model, real, counterfactuals, maps, target,
            closings=list(sweep.get("closings", (0, 5, 10))), sigmas=list(sweep.get("sigmas", (0, 1, 2))),
            strategy=usable, steps=int(sweep.get("steps", options["steps"])), schedule=options["schedule"],
            closing_shape=options["closing_shape"], batch_size=options["batch_size"],
            filter_pairs=options["filter_pairs"], progress=ctx.progress, counterfactual_target=cf_target,
            channels=channels,
        )
        table["sample"] = subset[table["sample"].to_numpy()]
        table.insert(0, "method", method)
        table["method"] = table["method"].astype("string")
        frames.append(table)
    if not frames:
        return {"settings": 0}
    sweep_df = pd.concat(frames, ignore_index=True)
    write_table(sweep_df, ctx.out / "dac_sweep.parquet")
    ctx.artifacts["dac_sweep"] = sweep_df
    summary = sweep_df.groupby(["method", "strategy", "channel", "closing", "sigma"], sort=False)["dac"].mean()
    return {
        "settings": int(sweep_df[["closing", "sigma"]].drop_duplicates().shape[0]),
        "mean_dac": {
            f"{m}/{s}/{c}/closing={cl}/sigma={sg:g}": round(float(v), 6) for (m, s, c, cl, sg), v in summary.items()
        },
    }
