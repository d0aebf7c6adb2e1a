"""Pipeline stage ``metrics``: localisation and faithfulness of every attribution method, per channel.

Config: :class:`MetricsConfig` (``[metrics]``, ``[metrics.randomisation]``).

- **Per image** (shardable): deletion / insertion (/ ROAD) curves of the maps on a
  class-balanced subset of ``faithfulness_images`` images.
- **Whole set**: localisation (PxAP pools pixels over every image; Dice/mIoU thresholds are
  chosen on whole validation wells), the cascading randomisation check, and the mean
  deletion/insertion areas joined to the localisation table. PixelCAM maps come from the
  attribution stage (``[attribution.pixelcam]``) like every method's.

The masks are ``dataset.signal_masks`` (the planted difference: on a synthetic set only the
phenotype's channel has foreground, so the other channels' rows are NaN and the ``"all"`` row
tells whether a map puts its relevance on the right channel). Deletion and insertion track
the real class's probability on real images.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from chanstat.config import Section
from chanstat.metrics.faithfulness import deletion, insertion, road
from chanstat.metrics.localisation import localisation
from chanstat.metrics.randomisation import randomisation_check
from chanstat.stage import Stage, balanced_subset

log = logging.getLogger(__name__)


class RandomisationConfig(Section):
    """``[metrics.randomisation]``: cascading model-parameter randomisation (a sanity check)."""

    methods: list[str] = Field(default_factory=lambda: ["saliency", "gradcam"], description="Registered methods.")
    images: int = Field(4, ge=1, description="Class-balanced images.")
    layers: list[str] | None = Field(None, description="Default: every conv/linear layer, top first.")
    transform: Literal["absolute", "positive", "signed"] = Field(
        "absolute", description="Compare |map| (absolute), its positive part or the signed maps."
    )


class MetricsConfig(Section):
    """``[metrics]``: localisation and faithfulness per channel."""

    methods: list[str] | None = Field(None, description="Default: every map of the run.")
    thresholds: int = Field(1000, ge=2, description="PxAP / Dice / mIoU bins.")
    split: float = Field(0.5, gt=0, lt=1, description="Share of wells that choose the Dice/mIoU threshold.")
    transform: Literal["absolute", "positive", "signed"] = Field(
        "absolute", description="Localise |map| (absolute), its positive part or the signed map."
    )
    pointing_tolerance: int = Field(0, ge=0, description="Pixels.")
    faithfulness_methods: list[str] | None = Field(None, description="Default: every localised method.")
    faithfulness_images: int = Field(16, ge=0, description="Class-balanced images for deletion/insertion (0 = off).")
    steps: int = Field(20, ge=1, description="Deletion/insertion steps.")
    deletion_baseline: Any = Field("zero", description='"zero", "mean", "blur" or a number.')
    insertion_baseline: Any = Field("blur", description='"zero", "mean", "blur" or a number.')
    road: bool = Field(False, description="Also ROAD (MoRF and LeRF).")
    road_fractions: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    batch_size: int = Field(256, ge=1, description="Hybrids per forward pass.")
    randomisation: RandomisationConfig | None = None


def _faith_methods(section: dict, available: list[str]) -> list[str]:
    wanted = section.get("faithfulness_methods")
    return [m for m in (available if wanted is None else wanted) if m in available]


def select(ctx) -> np.ndarray:
    n = ctx.section("metrics")["faithfulness_images"]
    return balanced_subset(ctx.dataset.labels.numpy(), n, ctx.seed) if n else np.zeros(0, dtype=np.int64)


def _faithfulness(ctx, images, target, rows, maps: dict[str, np.ndarray], channels) -> dict:
    """Deletion / insertion (/ ROAD) of every map on these images -> faithfulness tables."""
    section = ctx.section("metrics")
    common = dict(
        channels=channels,
        score="probability",
        batch_size=section["batch_size"],
        device=ctx.device,
        samples=rows,
        progress=ctx.progress,
    )
    verbs = [
        (
            "deletion",
            lambda m: deletion(
                ctx.model, images, target, m, steps=section["steps"], baseline=section["deletion_baseline"], **common
            ),
        ),
        (
            "insertion",
            lambda m: insertion(
                ctx.model, images, target, m, steps=section["steps"], baseline=section["insertion_baseline"], **common
            ),
        ),
    ]
    if section["road"]:
        verbs.append(
            (
                "road",
                lambda m: road(
                    ctx.model, images, target, m, fractions=section["road_fractions"], seed=ctx.seed, **common
                ),
            )
        )
    summaries, curves = [], []
    for method, arr in maps.items():
        for verb, fn in verbs:
            result = fn(arr)
            summary, curve = result.summary, result.curves
            if verb == "road":  # one metric per removal order
                summary = summary.rename(columns={"order": "metric"}).assign(metric=lambda d: "road_" + d["metric"])
                curve = curve.rename(columns={"order": "metric"}).assign(metric=lambda d: "road_" + d["metric"])
            else:
                summary, curve = summary.assign(metric=verb), curve.assign(metric=verb)
            summaries.append(summary.assign(method=method))
            curves.append(curve.assign(method=method))
    if not summaries:
        return {}
    cols = ["sample", "method", "metric", "channel", "channel_resolved"]
    return {
        "faithfulness": pd.concat(summaries, ignore_index=True)[cols + ["auc", "score_original", "score_final"]],
        "faithfulness_curves": pd.concat(curves, ignore_index=True)[cols + ["fraction", "score"]],
    }


def per_image(ctx, part) -> dict:
    maps = part.inputs.get("attributions")
    if maps is None or ctx.model is None:
        return {}
    methods = _faith_methods(ctx.section("metrics"), list(maps.arrays))
    return _faithfulness(
        ctx,
        part.dataset.images,
        part.dataset.labels,
        part.rows,
        {m: maps.arrays[m] for m in methods},
        list(part.dataset.channels),
    )


def _split(ctx, split: float):
    """Validation images for the Dice/mIoU threshold: whole wells."""
    dataset = ctx.dataset
    if len(dataset) < 2:
        return None
    from chanstat.models import split_by_group

    meta = dataset.meta
    wells = meta["Metadata_Plate"].astype(str) + "/" + meta["Metadata_Well"].astype(str)
    _, val_idx = split_by_group(wells, dataset.labels.numpy(), float(split), ctx.seed)
    val = np.zeros(len(dataset), bool)
    val[val_idx] = True
    return val if val.any() and not val.all() else float(split)


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    section = ctx.section("metrics")
    dataset = ctx.dataset
    if dataset.signal_masks is None:
        raise RuntimeError("the metrics stage needs ground-truth masks (ImageSet.signal_masks); this data set has none")
    channels = list(dataset.channels)
    stored = ctx.get("attributions")
    all_maps = dict(stored.arrays) if stored is not None else {}
    if section.get("methods") is not None:
        missing = [m for m in section["methods"] if m not in all_maps]
        if missing:
            raise ValueError(f"[metrics] methods {missing} have no attribution maps; available: {sorted(all_maps)}")
        all_maps = {m: all_maps[m] for m in section["methods"]}
    loc_kwargs = dict(
        split=_split(ctx, section["split"]),
        thresholds=section["thresholds"],
        transform=section["transform"],
        pointing_tolerance=section["pointing_tolerance"],
        seed=ctx.seed,
        device=ctx.device,
        progress=False,
    )
    info: dict = {}
    if not all_maps:
        raise ValueError("no attribution maps to evaluate: run the [attribution] stage first")
    loc = pd.concat(
        [
            localisation(arr, dataset.signal_masks, channels=channels, **loc_kwargs).assign(method=m)
            for m, arr in all_maps.items()
        ],
        ignore_index=True,
    )
    loc = loc[["method"] + [c for c in loc.columns if c != "method"]]
    not_found = sorted(set(section.get("faithfulness_methods") or []) - set(all_maps))
    if not_found:
        info["faithfulness_skipped"] = {m: "no maps in this run" for m in not_found}
    faith = outputs.get("faithfulness")
    if faith is not None and len(faith):
        means = faith.pivot_table(index=["method", "channel"], columns="metric", values="auc", aggfunc="mean")
        means.columns = [f"{c}_auc" for c in means.columns]
        loc = loc.merge(means.reset_index(), on=["method", "channel"], how="left")
        info["faithfulness"] = {"methods": list(pd.unique(faith["method"])), "n_images": int(faith["sample"].nunique())}
    outputs = {**outputs, "localisation": loc}
    randomisation = section.get("randomisation")
    if randomisation and randomisation.get("enabled", True):
        outputs["randomisation"], info["randomisation"] = _randomisation(ctx, randomisation, channels)
    overall = loc[loc["channel"] == "all"].set_index("method")
    info.update(
        methods=list(all_maps),
        pxap_all={m: (None if pd.isna(v) else round(float(v), 3)) for m, v in overall["pxap"].items()},
        relevance_mass_all={
            m: (None if pd.isna(v) else round(float(v), 4)) for m, v in overall["relevance_mass"].items()
        },
    )
    return outputs, info


def _randomisation(ctx, section: dict, channels: list[str]) -> tuple[pd.DataFrame, dict]:
    """Cascading parameter randomisation of registered methods on a few images."""
    from chanstat.attribution import get_method

    dataset = ctx.dataset
    subset = balanced_subset(dataset.labels.numpy(), section["images"], ctx.seed)
    images, target = dataset.images[subset], dataset.labels[subset]
    tables: list[pd.DataFrame] = []
    summary: dict[str, Any] = {}
    for method in section["methods"]:
        spec = get_method(method)
        options = dict((ctx.section("attribution").get("options") or {}).get(method, {}))
        if spec.needs_counterfactual:
            if dataset.counterfactuals is None:
                summary[method] = "skipped: needs counterfactuals"
                continue
            options["counterfactuals"] = dataset.counterfactuals[subset]
        if spec.explains == "counterfactual":
            options["counterfactual_target"] = dataset.counterfactual_target[subset]
        table = randomisation_check(
            ctx.model,
            images,
            target,
            method,
            layers=section.get("layers"),
            channels=channels,
            transform=section["transform"],
            method_options=options,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        table["sample"] = subset[table["sample"].to_numpy()]
        table.insert(1, "method", method)
        tables.append(table)
        overall = table[table["channel"] == "all"].groupby("layer_index", sort=True)["spearman"].mean()
        summary[method] = {"mean_spearman_all_by_step": [None if pd.isna(v) else round(float(v), 4) for v in overall]}
    out = pd.concat(tables, ignore_index=True)[
        ["sample", "method", "layer_index", "layer", "channel", "channel_resolved", "spearman"]
    ]
    return out, {"methods": summary, "n_images": int(len(subset))}


STAGE = Stage(
    name="metrics",
    config=MetricsConfig,
    sections=("metrics", "attribution"),
    reads=("dataset", "model", "attributions"),
    writes=("localisation", "faithfulness", "faithfulness_curves", "randomisation"),
    per_image=per_image,
    whole_set=whole_set,
    select=select,
    part_inputs=("attributions",),
)
