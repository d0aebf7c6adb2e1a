"""Pipeline stage ``cellprofiler``: CellProfiler features, differential analysis, channel enrichment,
concordance with the attribution answer, and the per-cell link.

Config: :class:`CellProfilerConfig`. Without ``table`` the stage measures the run's own
(synthetic) images with cp-measure on the data set's objects and compares the second class
with the first at the well level. Whole set only.

Writes ``cp_features`` (well level), ``cp_differential``, ``channel_enrichment`` (a competitive,
correlation-preserving permutation test per channel, adjusted across channels; Fisher odds
ratios as descriptions), ``compartment_channel``; with the stats stage's ``channel_mass``,
``concordance`` and ``concordance_ranks``; with the decompose stage's ``object_mass`` and
per-cell features, ``feature_link`` (which per-cell features predict where the classifier looks,
tested over wells).
"""

from __future__ import annotations

import time
import warnings
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from chanstat.cellprofiler.enrichment import (
    channel_enrichment,
    channel_score_draws,
    compartment_channel_table,
    competitive_enrichment,
)
from chanstat.cellprofiler.feature_tests import differential
from chanstat.cellprofiler.measure import measure_synthetic
from chanstat.cellprofiler.profiles import aggregate_wells, feature_columns
from chanstat.cellprofiler.rank_agreement import channel_ranks, concordance
from chanstat.cellprofiler.readers import read
from chanstat.config import ConfigError, Section
from chanstat.stage import Stage
from chanstat.vocabulary import N_BOOT


class MeasureConfig(Section):
    """``[cellprofiler.measure]``: cp-measure settings for measuring the run's own images."""

    texture_scale: int = Field(3, ge=1)
    gray_levels: int = Field(16, ge=2)
    granularity_spectrum: int = Field(8, ge=1)


class LinkConfig(Section):
    """``[cellprofiler.link]``: per-cell attribution mass vs per-cell features, tested over wells."""

    value: Literal["mass", "density"] = Field("density", description="Mass per cell, or per pixel of the cell.")
    min_cells: int = Field(3, ge=2, description="Cells a well needs to give a correlation.")
    methods: list[str] | None = Field(None, description="Maps to link (default: every map with object masses).")


class CellProfilerConfig(Section):
    """``[cellprofiler]``: compare the attribution answer with CellProfiler features."""

    table: str | None = Field(None, description="A CellProfiler table (any format chanstat.cellprofiler.read takes).")
    by: str | None = Field(None, description="Column of the contrast (default Metadata_Class for the run's images).")
    case: str | None = None
    control: str | None = None
    unit: Literal["well", "cell"] = Field(
        "well", description="Unit of the feature tests (wells, or cells as replicates)."
    )
    normalize: Literal[False, "robust_z"] = Field(False, description='false or "robust_z" per plate.')
    padjust: Literal["bh", "by", "holm"] = Field("bh", description="Adjustment over features.")
    alpha: float = Field(0.05, gt=0, lt=1)
    correlation: Literal["both", "pair", "exclude"] = Field("both", description="How a two-channel feature counts.")
    channel_map: dict[str, str] | None = Field(None, description="Channel token -> channel name.")
    n_perm: int = Field(
        500,
        ge=0,
        description="Permutations of the competitive enrichment test (0 = off; "
        "at least 199 for Holm over 5 channels to reach 0.05).",
    )
    enrichment_score: str = Field("mean_abs_effect", description="Feature-side score of the concordance.")
    n_boot: int = Field(N_BOOT, ge=1, description="Bootstrap draws of the concordance interval.")
    measure: MeasureConfig = Field(default_factory=lambda: MeasureConfig.model_validate({}))
    link: LinkConfig = Field(default_factory=lambda: LinkConfig.model_validate({}))

    @model_validator(mode="after")
    def _contrast(self):
        if self.table and not (self.by and self.case is not None and self.control is not None):
            raise ValueError("a table needs by, case and control")
        return self

    @staticmethod
    def preflight(section: dict, config_dir) -> None:
        from pathlib import Path

        if section.get("table"):
            path = Path(section["table"]).expanduser()
            path = path if path.is_absolute() else Path(config_dir) / path
            if not path.exists():
                raise ConfigError(f"[cellprofiler] table: file not found: {path}")


def _features_from_table(ctx, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    path = ctx.resolve_path(cfg["table"])
    aggregate = "well" if cfg["unit"] == "well" and str(path).lower().endswith((".parquet", ".pq")) else None
    table = read(path, aggregate=aggregate)
    return table, None, dict(source=str(path), by=cfg["by"], case=cfg["case"], control=cfg["control"])


def _features_from_images(ctx, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    dataset = ctx.dataset
    if not dataset.objects:
        raise ValueError(
            "[cellprofiler] has no table and the data set has no objects to measure; "
            "name a CellProfiler table with table = ..."
        )
    t0 = time.perf_counter()
    cells = measure_synthetic(
        dataset, progress=ctx.progress, **{k: v for k, v in cfg["measure"].items() if k != "enabled"}
    )
    by = cfg["by"] or "Metadata_Class"
    # a unit is a well's images of one class: a planted real field holds both classes in every
    # (pseudo-)well, a synthetic screen one class per well (then the key is the well itself)
    unit = ["Metadata_Plate", "Metadata_Well", by]
    wells = aggregate_wells(cells, features=feature_columns(cells.columns), well=unit)
    classes = list(dataset.classes)
    info = dict(
        source="cp_measure",
        by=by,
        well=unit,
        case=cfg["case"] if cfg["case"] is not None else classes[-1],
        control=cfg["control"] if cfg["control"] is not None else classes[0],
        n_cells=len(cells),
        measure_wall_s=round(time.perf_counter() - t0, 3),
    )
    return wells, cells, info


def _link(ctx, cfg: dict, cells: pd.DataFrame | None) -> pd.DataFrame | None:
    from chanstat.cellprofiler.percell import attribution_feature_link

    objects = ctx.get("object_mass")
    if objects is None or cells is None or not len(objects):
        return None
    link = cfg["link"]
    frames = []
    for method in link.get("methods") or list(pd.unique(objects["method"])):
        sub = objects[objects["method"] == method].drop(columns="method")
        table = attribution_feature_link(
            sub, cells, value=link["value"], min_cells=link["min_cells"], padjust=cfg["padjust"]
        )
        frames.append(table.assign(method=method))
    return pd.concat(frames, ignore_index=True) if frames else None


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    cfg = ctx.section("cellprofiler")
    features, cells, info = _features_from_table(ctx, cfg) if cfg.get("table") else _features_from_images(ctx, cfg)
    contrast = dict(by=info["by"], case=info["case"], control=info["control"])
    common = dict(
        unit=cfg["unit"],
        normalize=cfg["normalize"] or None,
        channel_map=cfg.get("channel_map"),
        well=info.pop("well", None),
    )
    diff = differential(features, **contrast, padjust=cfg["padjust"], alpha=cfg["alpha"], **common)
    enrichment = channel_enrichment(diff, alpha=cfg["alpha"], correlation=cfg["correlation"])
    if cfg["n_perm"] > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the cell-level warning was given above
            valid = competitive_enrichment(
                features,
                **contrast,
                n_perm=cfg["n_perm"],
                correlation=cfg["correlation"],
                seed=ctx.seed,
                progress=ctx.progress,
                **common,
            )
        enrichment = enrichment.merge(valid, on="channel", how="left", suffixes=("", "_competitive"))
    outputs = {
        "cp_features": features,
        "cp_differential": diff,
        "channel_enrichment": enrichment,
        "compartment_channel": compartment_channel_table(diff, alpha=cfg["alpha"], correlation=cfg["correlation"]),
    }
    tested = diff[diff["status"] == "tested"]
    result = dict(
        **{k: v for k, v in info.items() if k not in ("case", "control")},
        case=str(info["case"]),
        control=str(info["control"]),
        n_features=int(len(diff)),
        n_tested=int(len(tested)),
        n_significant=int(diff["significant"].sum()),
    )
    if "enriched" in enrichment:
        result["enriched_channels"] = enrichment.loc[
            enrichment["enriched"].fillna(False).astype(bool), "channel"
        ].tolist()
    mass = ctx.get("channel_mass")
    if mass is not None:
        options = dict(enrichment_score=cfg["enrichment_score"], channels=list(ctx.dataset.channels))
        draws = channel_score_draws(
            features, **contrast, n_boot=cfg["n_boot"], correlation=cfg["correlation"], seed=ctx.seed, **common
        )
        try:
            outputs["concordance"] = concordance(
                mass,
                enrichment,
                n_boot=cfg["n_boot"],
                feature_draws=draws,
                seed=ctx.seed,
                progress=ctx.progress,
                **options,
            )
            outputs["concordance_ranks"] = channel_ranks(mass, enrichment, **options)
        except ValueError as exc:  # e.g. fewer than 3 shared channels
            result["concordance"] = f"skipped: {exc}"
    link = _link(ctx, cfg, cells)
    if link is not None:
        outputs["feature_link"] = link
        result["feature_link_rows"] = int(len(link))
    return outputs, result


STAGE = Stage(
    name="cellprofiler",
    config=CellProfilerConfig,
    reads=("dataset", "channel_mass", "object_mass"),
    writes=(
        "cp_features",
        "cp_differential",
        "channel_enrichment",
        "compartment_channel",
        "concordance",
        "concordance_ranks",
        "feature_link",
    ),
    whole_set=whole_set,
)
