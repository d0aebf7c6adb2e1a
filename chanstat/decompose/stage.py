"""Pipeline stage ``decompose``: the decision by channel (Shapley) and attribution mass by compartment.

Config (``[decompose]``, see :class:`DecomposeConfig`)::

    baseline = "counterfactual"    # or "zero", "mean", "blur" (then the values answer another question)
    interactions = true
    methods = ["d_ig", "residual"] # maps whose mass is split by compartment (default: every channel-resolved map)
    labels = "auto"                # objects of the data set, else a built-in segmentation

Per image (shardable): exact channel Shapley values of ``p(real class | hybrid)`` with the
baseline in the absent channels, and every map's mass per compartment (nuclei, cytoplasm,
background) and per cell. The statistics stage tests the values; the CellProfiler stage links
the per-cell masses to CellProfiler's per-cell features.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from chanstat.config import Section
from chanstat.stage import Stage


class SegmentConfig(Section):
    """``[decompose.segment]``: the built-in segmentation used when the data set has no objects."""

    nuclei_channel: str = "DNA"
    cell_channel: str | None = Field(default=None, description="Default: AGP, RNA, ER or Mito, the first present.")
    threshold: Literal["otsu", "li"] = "otsu"
    smoothing: float = Field(default=1.0, ge=0)
    min_nucleus_area: int = Field(default=10, ge=1)
    min_distance: int = Field(default=5, ge=1)


class DecomposeConfig(Section):
    """``[decompose]``: channel Shapley values and attribution mass per compartment and cell."""

    baseline: Literal["counterfactual", "zero", "mean", "blur"] = Field(
        "counterfactual", description="What stands in for the channels left out of a coalition."
    )
    blur_sigma: float = Field(4.0, gt=0, description='Gaussian sigma (px) of baseline = "blur".')
    groups: dict[str, list[str]] = Field(default_factory=dict, description="Channel groups that play as one player.")
    interactions: bool = Field(True, description="Also pairwise Shapley interaction indices.")
    n_permutations: int | None = Field(
        None, ge=1, description="Sampled estimator with this many permutations (default: exact up to 10 players)."
    )
    batch_size: int | None = Field(None, ge=1, description="Hybrids per forward pass.")
    shapley: bool = Field(True, description="Compute channel Shapley values.")
    methods: list[str] | None = Field(
        None, description="Maps split by compartment (default: every channel-resolved map)."
    )
    labels: Literal["auto", "objects", "segment"] = Field(
        "auto", description="Objects of the data set, or the built-in segmentation."
    )
    segment: SegmentConfig = Field(default_factory=SegmentConfig)

    @staticmethod
    def check_config(config: dict) -> list[str]:
        """The segmentation's stains are channels of the data (when the config names them)."""
        from chanstat.config import data_names

        channels, _ = data_names(config)
        segment = (config.get("decompose") or {}).get("segment") or {}
        if channels is None or not segment.get("enabled", True):
            return []
        out = []
        for key in ("nuclei_channel", "cell_channel"):
            value = segment.get(key)
            if value is not None and value not in channels:
                out.append(f"[decompose.segment] {key}: {value!r} is not a channel of the data ({', '.join(channels)})")
        return out


def _shapley(ctx, part, section) -> dict:
    from chanstat.decompose.shapley import channel_shapley

    dataset = part.dataset
    baseline = section["baseline"]
    options = dict(
        channels=list(dataset.channels),
        groups=section["groups"] or None,
        interactions=section["interactions"],
        batch_size=section["batch_size"],
        device=ctx.device,
        progress=ctx.progress,
        n_permutations=section["n_permutations"],
        seed=ctx.seed,
        blur_sigma=section["blur_sigma"],
    )
    if baseline == "counterfactual":
        if dataset.counterfactuals is None:
            raise RuntimeError(
                '[decompose] baseline = "counterfactual" needs counterfactuals (add a [counterfactual] stage)'
            )
        result = channel_shapley(
            ctx.model, dataset.images, dataset.labels, counterfactuals=dataset.counterfactuals, **options
        )
    elif baseline == "mean":
        # the whole set's mean image, so a shard's values equal the unsharded ones
        mean = ctx.dataset.images.mean(dim=0, keepdim=True).expand_as(dataset.images)
        result = channel_shapley(ctx.model, dataset.images, dataset.labels, counterfactuals=mean, **options)
    else:
        result = channel_shapley(ctx.model, dataset.images, dataset.labels, baseline=baseline, **options)
    values = result.values.merge(result.total, on=["sample", "baseline"], how="left")
    outputs = {"channel_shapley": values, "channel_shapley_total": result.total}
    if section["interactions"]:
        outputs["channel_shapley_interactions"] = result.interactions
    for name, table in outputs.items():
        table = table.assign(sample=part.rows[table["sample"].to_numpy()], baseline=baseline)
        outputs[name] = table
    return outputs


def _labels(ctx, dataset, section) -> dict[str, np.ndarray]:
    if section["labels"] in ("auto", "objects") and dataset.objects:
        return {k: v for k, v in dataset.objects.items() if k in ("nuclei", "cells")}
    if section["labels"] == "objects":
        raise RuntimeError('[decompose] labels = "objects" but the data set has no objects; use "segment" or "auto"')
    options = {k: v for k, v in section["segment"].items() if k != "enabled"}
    if not section["segment"].get("enabled", True):
        return {}  # no objects and no segmentation: no compartment masses
    from chanstat.decompose.segmentation import segment_cells

    return segment_cells(dataset.images.numpy(), list(dataset.channels), **options)


def _compartments(ctx, part, section) -> dict:
    from chanstat.decompose.compartments import compartment_mass

    maps = part.inputs.get("attributions")
    if maps is None:
        return {}
    dataset = part.dataset
    channels = list(dataset.channels)
    wanted = section["methods"] or [m for m, a in maps.arrays.items() if a.shape[1] == len(channels)]
    missing = [m for m in wanted if m not in maps.arrays]
    if missing:
        raise ValueError(f"[decompose] methods {missing} have no attribution maps; available: {sorted(maps.arrays)}")
    labels = _labels(ctx, dataset, section)
    if not labels:
        return {}
    meta = dataset.meta[[c for c in ("Metadata_Plate", "Metadata_Well") if c in dataset.meta]]
    compartments, objects = [], []
    for method in wanted:
        if maps.arrays[method].shape[1] != len(channels):
            continue
        result = compartment_mass(maps.arrays[method], labels, channels=channels, meta=meta)
        compartments.append(result.compartments.assign(method=method))
        objects.append(result.objects.assign(method=method))
    if not compartments:
        return {}
    out = {
        "compartment_mass": pd.concat(compartments, ignore_index=True),
        "object_mass": pd.concat(objects, ignore_index=True),
    }
    for name, table in out.items():
        out[name] = table.assign(sample=part.rows[table["sample"].to_numpy()])
    return out


def per_image(ctx, part) -> dict:
    section = ctx.section("decompose")
    outputs = _shapley(ctx, part, section) if section["shapley"] else {}
    outputs.update(_compartments(ctx, part, section))
    return outputs


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    info: dict = {}
    values = outputs.get("channel_shapley")
    if values is not None and len(values):
        means = values.groupby("channel", sort=False)["shapley"].mean()
        total = outputs["channel_shapley_total"]["total"].mean()
        info["shapley"] = {
            "baseline": ctx.section("decompose")["baseline"],
            "mean_total": round(float(total), 6),
            "mean_value": {str(k): round(float(v), 6) for k, v in means.items()},
        }
    if "compartment_mass" in outputs:
        info["compartments"] = sorted(pd.unique(outputs["compartment_mass"]["compartment"]).tolist())
        info["n_objects"] = int(outputs["object_mass"][["sample", "object"]].drop_duplicates().shape[0])
    return outputs, info


STAGE = Stage(
    name="decompose",
    config=DecomposeConfig,
    reads=("dataset", "model", "attributions"),
    writes=(
        "channel_shapley",
        "channel_shapley_total",
        "channel_shapley_interactions",
        "compartment_mass",
        "object_mass",
    ),
    per_image=per_image,
    whole_set=whole_set,
    part_inputs=("attributions",),
)
