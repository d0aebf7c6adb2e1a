"""Pipeline stage: localisation and faithfulness of every attribution method, per channel.

Config (``[metrics]``, every key optional)::

    methods = ["ig", "d_ig"]          # default: every map in the run
    thresholds = 1000                 # PxAP / Dice / mIoU bins
    split = 0.5                       # validation share of wells (threshold choice for Dice/mIoU)
    absolute = true                   # localise |map| (signed maps mark evidence both ways)
    pointing_tolerance = 0            # pixels
    faithfulness_methods = ["d_ig", "gradcam", "random"]  # default: every localised method
    faithfulness_images = 16          # class-balanced images for deletion/insertion (0 = off)
    steps = 20                        # deletion/insertion steps
    deletion_baseline = "zero"        # "zero" | "mean" | "blur" | number
    insertion_baseline = "blur"
    road = false                      # also ROAD (MoRF and LeRF) on the same images
    road_fractions = [0.1, 0.3, 0.5, 0.7, 0.9]
    batch_size = 256                  # hybrids per forward pass

    [metrics.randomisation]           # present: cascading parameter randomisation sanity check
    methods = ["saliency", "gradcam"] # registered methods (options from [attribution.options.*])
    images = 4                        # class-balanced images
    # layers = ["classifier.1", ...]  # default: every conv/linear layer, top first

    [metrics.pixelcam]                # present (and not enabled = false): train a PixelCAM head
    steps = 300                       # on the run's model and images; options of train_pixelcam,
    # layer = "features.7"            # plus cam_layer (Grad-CAM layer of the pseudo-labels)

The PixelCAM head is trained on every image of the run (image labels only, no masks) from the
Grad-CAM of the attribution stage (or one computed here), and its maps join the table as method
``pixelcam`` (replacing the attribution stage's per-image ``pixelcam`` if any); the returned
dict reports its PxAP next to that of the Grad-CAM it learned from.

Maps come from ``ctx.artifacts["attributions"]`` (or ``attributions.zarr``); the masks are
``ctx.dataset.signal_masks`` (the planted difference: for a synthetic set only the phenotype's
channel has foreground, so the other channels' rows are NaN and the ``"all"`` row tells whether
a map puts its relevance on the right channel). Deletion and insertion track the real class's
probability on real images.

Writes
------
``localisation.parquet``
    One row per (method, channel): ``method``, ``channel`` (``"all"`` or a channel name),
    ``channel_resolved``, the columns of :func:`chanstat.metrics.localisation`, and the mean
    ``deletion_auc`` / ``insertion_auc`` (and ``road_morf_auc`` / ``road_lerf_auc``) over the
    faithfulness images where computed.
``faithfulness.parquet``
    One row per (sample, method, metric, channel): ``sample`` (data set row), ``method``,
    ``metric`` (``deletion``, ``insertion``, ``road_morf``, ``road_lerf``), ``channel``,
    ``channel_resolved``, ``auc``, ``score_original``, ``score_final``.
``faithfulness_curves.parquet``
    ``sample``, ``method``, ``metric``, ``channel``, ``channel_resolved``, ``fraction``, ``score``.
``randomisation.parquet`` (with ``[metrics.randomisation]``)
    ``sample``, ``method``, ``layer_index`` (1 = top layer randomised, cascading down),
    ``layer``, ``channel``, ``channel_resolved``, ``spearman`` (original vs randomised map).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chanstat.io import read_arrays, write_table
from chanstat.metrics.faithfulness import deletion, insertion, road
from chanstat.metrics.localisation import localisation
from chanstat.metrics.randomisation import randomisation_check

log = logging.getLogger(__name__)

DEFAULT_ROAD_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _maps(ctx) -> tuple[dict[str, np.ndarray], str]:
    maps = ctx.artifacts.get("attributions")
    if maps:
        return dict(maps), "attribution stage"
    path = Path(ctx.out) / "attributions.zarr"
    if path.exists():
        arrays, _ = read_arrays(path)
        if arrays:
            return arrays, str(path.name)
    dataset = ctx.dataset
    if dataset.counterfactuals is not None:
        log.warning("metrics: no attribution maps in this run; evaluating the residual |x - x'|")
        return {"residual": (dataset.images - dataset.counterfactuals).abs().numpy()}, "residual computed by the metrics stage"
    return {}, "none"


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``n`` images, classes taking turns (seeded)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n:
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _split(ctx, split) -> np.ndarray | float | None:
    """Validation images for the Dice/mIoU threshold: whole wells when the fraction is a number."""
    if split is None or not isinstance(split, (int, float)):
        return split
    meta = ctx.dataset.meta
    n = len(ctx.dataset)
    if n < 2:
        return None
    if {"Metadata_Plate", "Metadata_Well"} <= set(meta.columns):
        from chanstat.models import split_by_group

        wells = meta["Metadata_Plate"].astype(str) + "/" + meta["Metadata_Well"].astype(str)
        _, val_idx = split_by_group(wells, ctx.dataset.labels.numpy(), float(split), ctx.seed)
        val = np.zeros(n, bool)
        val[val_idx] = True
        if val.any() and not val.all():
            return val
    return float(split)


def _pixelcam(ctx, options: dict, all_maps: dict, masks, channels, loc_kwargs) -> tuple[dict, dict]:
    """Train a PixelCAM head on the whole set; maps of it (and of the CAM it learned from)."""
    from chanstat.attribution.pixelcam import _resolve_layer, gradcam_pseudo_source, pixelcam_maps, train_pixelcam

    dataset, model = ctx.dataset, ctx.model
    options = dict(options)
    options.setdefault("seed", int(ctx.seed))
    options.setdefault("progress", bool(ctx.progress))
    cam_layer = options.pop("cam_layer", None)
    t0 = time.perf_counter()
    if "gradcam" in all_maps and cam_layer is None:
        cam = np.asarray(all_maps["gradcam"])
        cam_from = "attribution stage gradcam"
    else:
        module, name = _resolve_layer(model, cam_layer)
        cam = gradcam_pseudo_source(model, dataset.images, dataset.labels, module).numpy()
        cam_from = f"Grad-CAM at {name} (computed by the metrics stage)"
    head = train_pixelcam(model, dataset.images, dataset.labels, cam=cam, **options)
    maps = pixelcam_maps(model, head, dataset.images).numpy()
    train_s = time.perf_counter() - t0
    new_maps = {"pixelcam": maps}
    if "gradcam" not in all_maps and cam_layer is None:
        new_maps["gradcam"] = cam
    compare = {}
    for label, arr in (("pixelcam", maps), ("cam", cam)):
        table = localisation(arr, masks, channels=channels, **loc_kwargs)
        compare[label] = {str(r.channel): (None if pd.isna(r.pxap) else round(float(r.pxap), 3)) for r in table.itertuples()}
    info = {
        "feature_layer": head.layer_name,
        "learned_from": cam_from,
        "pxap_pixelcam": compare["pixelcam"],
        "pxap_cam": compare["cam"],
        "wall_s": round(train_s, 3),
    }
    return new_maps, info


def run(ctx) -> dict:
    section = ctx.section("metrics")
    dataset, model = ctx.dataset, ctx.model
    if dataset is None:
        raise RuntimeError("the metrics stage needs the data stage's dataset (ctx.dataset is None)")
    if dataset.signal_masks is None:
        raise RuntimeError(
            "the metrics stage needs ground-truth masks (ImageSet.signal_masks); this dataset has none"
        )
    channels = list(dataset.channels)
    masks = dataset.signal_masks
    n = len(dataset)
    all_maps, source = _maps(ctx)
    for name, arr in all_maps.items():
        if np.asarray(arr).shape[0] != n:
            raise ValueError(f"attribution maps {name!r} cover {np.asarray(arr).shape[0]} images but the dataset has {n}")
    requested = section.get("methods")
    if requested is not None:
        missing = [m for m in requested if m not in all_maps]
        if missing:
            raise ValueError(f"[metrics] methods {missing} have no attribution maps; available: {sorted(all_maps)}")
        all_maps = {m: all_maps[m] for m in requested}

    loc_kwargs = dict(
        split=_split(ctx, section.get("split", 0.5)),
        thresholds=int(section.get("thresholds", 1000)),
        absolute=bool(section.get("absolute", True)),
        pointing_tolerance=int(section.get("pointing_tolerance", 0)),
        seed=int(ctx.seed),
        device=ctx.device,
        progress=False,
    )
    info: dict = {"maps_from": source}
    pixelcam_options = section.get("pixelcam")
    if isinstance(pixelcam_options, dict) and pixelcam_options.get("enabled", True):
        if model is None:
            raise RuntimeError("[metrics.pixelcam] needs the model stage's model")
        if "pixelcam" in all_maps:
            log.info("metrics: replacing the attribution stage's pixelcam maps with a head trained on the whole set")
        options = {k: v for k, v in pixelcam_options.items() if k != "enabled"}
        new_maps, info["pixelcam"] = _pixelcam(ctx, options, all_maps, masks, channels, loc_kwargs)
        all_maps.update(new_maps)
    if not all_maps:
        raise ValueError("no attribution maps to evaluate: run an [attribution] stage or add [metrics.pixelcam]")

    tables = []
    for method, arr in all_maps.items():
        table = localisation(arr, masks, channels=channels, **loc_kwargs)
        table.insert(0, "method", method)
        tables.append(table)
    loc = pd.concat(tables, ignore_index=True)

    # ---- faithfulness on a class-balanced subset of images --------------------------------
    n_faith = int(section.get("faithfulness_images", 16))
    faith_methods = section.get("faithfulness_methods")
    if faith_methods is None:
        faith_methods = list(all_maps)
    faith_methods = [m for m in faith_methods if m in all_maps]
    not_found = sorted(set(section.get("faithfulness_methods") or []) - set(all_maps))
    if not_found:
        info["faithfulness_skipped"] = {m: "no maps in this run" for m in not_found}
    faith_rows, curve_rows = [], []
    if n_faith > 0 and faith_methods and model is not None:
        subset = balanced_subset(dataset.labels.numpy(), n_faith, ctx.seed)
        images = dataset.images[subset]
        target = dataset.labels[subset]
        common = dict(
            channels=channels,
            score="probability",
            batch_size=int(section.get("batch_size", 256)),
            device=ctx.device,
            samples=subset,
            curves=True,
            progress=ctx.progress,
        )
        steps = int(section.get("steps", 20))
        verbs = [
            ("deletion", lambda m: deletion(model, images, m, target, steps=steps,
                                            baseline=section.get("deletion_baseline", "zero"), **common)),
            ("insertion", lambda m: insertion(model, images, m, target, steps=steps,
                                              baseline=section.get("insertion_baseline", "blur"), **common)),
        ]
        if section.get("road", False):
            fractions = section.get("road_fractions", DEFAULT_ROAD_FRACTIONS)
            verbs.append(("road", lambda m: road(model, images, m, target, fractions=fractions, seed=int(ctx.seed), **common)))
        t0 = time.perf_counter()
        for method in faith_methods:
            maps = np.asarray(all_maps[method])[subset]
            for verb, fn in verbs:
                summary, curves = fn(maps)
                if verb == "road":  # one metric per removal order
                    summary = summary.rename(columns={"order": "metric"})
                    curves = curves.rename(columns={"order": "metric"})
                    summary["metric"] = "road_" + summary["metric"].astype(str)
                    curves["metric"] = "road_" + curves["metric"].astype(str)
                else:
                    summary = summary.assign(metric=verb)
                    curves = curves.assign(metric=verb)
                faith_rows.append(summary.assign(method=method))
                curve_rows.append(curves.assign(method=method))
        info["faithfulness"] = {
            "methods": faith_methods,
            "n_images": int(len(subset)),
            "wall_s": round(time.perf_counter() - t0, 3),
        }
    faith = _order(pd.concat(faith_rows, ignore_index=True)) if faith_rows else pd.DataFrame(
        columns=["sample", "method", "metric", "channel", "channel_resolved", "auc", "score_original", "score_final"]
    )
    curves_df = (
        pd.concat(curve_rows, ignore_index=True)[
            ["sample", "method", "metric", "channel", "channel_resolved", "fraction", "score"]
        ]
        if curve_rows
        else pd.DataFrame(columns=["sample", "method", "metric", "channel", "channel_resolved", "fraction", "score"])
    )
    if len(faith):
        means = faith.pivot_table(index=["method", "channel"], columns="metric", values="auc", aggfunc="mean")
        means.columns = [f"{c}_auc" for c in means.columns]
        loc = loc.merge(means.reset_index(), on=["method", "channel"], how="left")
    for col in ("method", "channel"):
        loc[col] = loc[col].astype("string")
    randomisation = ctx.section("metrics.randomisation")
    if randomisation and randomisation.get("enabled", True) and model is not None:
        table, info["randomisation"] = _randomisation(ctx, randomisation, channels)
        write_table(table, ctx.out / "randomisation.parquet")
        ctx.artifacts["randomisation"] = table
    write_table(loc, ctx.out / "localisation.parquet")
    write_table(faith, ctx.out / "faithfulness.parquet")
    write_table(curves_df, ctx.out / "faithfulness_curves.parquet")
    ctx.artifacts["localisation"] = loc
    ctx.artifacts["faithfulness"] = faith

    overall = loc[loc["channel"] == "all"].set_index("method")
    info.update(
        methods=list(all_maps),
        pxap_all={m: (None if pd.isna(v) else round(float(v), 3)) for m, v in overall["pxap"].items()},
        relevance_mass_all={m: (None if pd.isna(v) else round(float(v), 4)) for m, v in overall["relevance_mass"].items()},
    )
    return info


def _randomisation(ctx, section: dict, channels: list[str]) -> tuple[pd.DataFrame, dict]:
    """Cascading parameter randomisation of registered methods on a few images."""
    from chanstat.attribution import get_method

    dataset = ctx.dataset
    methods = list(section.get("methods", ["saliency", "gradcam"]))
    subset = balanced_subset(dataset.labels.numpy(), int(section.get("images", 4)), ctx.seed)
    images, target = dataset.images[subset], dataset.labels[subset]
    tables, summary = [], {}
    t0 = time.perf_counter()
    for method in methods:
        spec = get_method(method)
        options = dict(ctx.section(f"attribution.options.{method}"))
        if spec.needs_counterfactual:
            if dataset.counterfactuals is None:
                summary[method] = "skipped: needs counterfactuals"
                continue
            options["counterfactuals"] = dataset.counterfactuals[subset]
        if spec.explains == "counterfactual":
            options["counterfactual_target"] = dataset.counterfactual_labels[subset]
        table = randomisation_check(ctx.model, images, target, method, layers=section.get("layers"), channels=channels,
                                    absolute=bool(section.get("absolute", True)), method_options=options,
                                    seed=int(ctx.seed), progress=ctx.progress)
        table["sample"] = subset[table["sample"].to_numpy()]
        table.insert(1, "method", method)
        tables.append(table)
        overall = table[table["channel"] == "all"].groupby("layer_index", sort=True)["spearman"].mean()
        summary[method] = {"mean_spearman_all_by_step": [None if pd.isna(v) else round(float(v), 4) for v in overall]}
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["sample", "method", "layer_index", "layer", "channel", "channel_resolved", "spearman"]
    )
    for col in ("method", "layer", "channel"):
        out[col] = out[col].astype("string")
    return out, {"methods": summary, "n_images": int(len(subset)), "wall_s": round(time.perf_counter() - t0, 3)}


def _order(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["sample", "method", "metric", "channel", "channel_resolved", "auc", "score_original", "score_final"]
    df = df[cols].copy()
    for col in ("method", "metric", "channel"):
        df[col] = df[col].astype("string")
    return df
