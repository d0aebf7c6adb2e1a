"""Pipeline stage: CellProfiler features, differential analysis, channel enrichment, concordance.

Config section ``[cellprofiler]``:

- ``table``, ``by``, ``case``, ``control`` — a real CellProfiler table (any format
  :func:`~chanstat.cellprofiler.read` takes; path relative to the config file) and the
  contrast. Without ``table`` the stage measures the run's own (synthetic) images with
  cp-measure (options in ``[cellprofiler.measure]``) and compares the treated class with the
  control class (``by = "Metadata_Class"``; ``case``/``control`` default to the second and
  first class).
- ``level`` (``"well"``), ``normalize`` (false | ``"robust_z"``), ``fdr`` (``"bh"``|``"by"``),
  ``alpha`` (0.05), ``correlation`` (``"both"``|``"pair"``|``"exclude"``), ``channel_map``
  (table), ``n_permutations`` (permutation enrichment; 0 skips), ``enrichment_score``,
  ``n_bootstrap`` (concordance interval).

Writes ``cp_features.parquet`` (well-level features), ``cp_differential.parquet``,
``channel_enrichment.parquet``, ``compartment_channel.parquet`` and, when the stats stage
left a ``channel_mass`` table, ``concordance.parquet`` and ``concordance_ranks.parquet``.
"""
from __future__ import annotations

import time
import warnings

import pandas as pd

from chanstat.cellprofiler.enrichment import channel_enrichment, compartment_channel_table, permutation_enrichment
from chanstat.cellprofiler.feature_tests import differential
from chanstat.cellprofiler.measure import measure_synthetic
from chanstat.cellprofiler.profiles import aggregate_wells, feature_columns
from chanstat.cellprofiler.rank_agreement import channel_ranks, concordance
from chanstat.cellprofiler.readers import read
from chanstat.io import read_table, write_table

_FDR = {"bh": "fdr_bh", "by": "fdr_by", "fdr_bh": "fdr_bh", "fdr_by": "fdr_by"}


def _features_from_table(ctx, cfg: dict) -> tuple[pd.DataFrame, dict]:
    missing = [k for k in ("by", "case", "control") if k not in cfg]
    if missing:
        raise ValueError(f"[cellprofiler] names a table but not {missing}")
    path = ctx.resolve_path(cfg["table"])
    level = cfg.get("level", "well")
    aggregate = "well" if level == "well" and str(path).lower().endswith((".parquet", ".pq")) else None
    table = read(path, aggregate=aggregate)
    return table, dict(source=str(path), by=cfg["by"], case=cfg["case"], control=cfg["control"])


def _features_from_images(ctx, cfg: dict) -> tuple[pd.DataFrame, dict]:
    dataset = ctx.dataset
    if dataset is None:
        raise ValueError("[cellprofiler] has no table and the run has no image set to measure")
    if not dataset.objects:
        raise ValueError("[cellprofiler] has no table and the image set has no objects to measure "
                         "(name a CellProfiler table with table = ...)")
    options = dict(ctx.section("cellprofiler.measure"))
    t0 = time.perf_counter()
    cells = measure_synthetic(dataset, progress=ctx.progress, **options)
    wells = aggregate_wells(cells, features=feature_columns(cells.columns), keep=["Metadata_Class"])
    classes = list(dataset.classes)
    info = dict(
        source="cp_measure", by=cfg.get("by", "Metadata_Class"),
        case=cfg.get("case", classes[1] if len(classes) > 1 else classes[0]),
        control=cfg.get("control", classes[0]),
        n_cells=len(cells), measure_wall_s=round(time.perf_counter() - t0, 3),
    )
    return wells, info


def _channel_mass(ctx) -> pd.DataFrame | None:
    mass = ctx.artifacts.get("channel_mass")
    if mass is None and (ctx.out / "channel_mass.parquet").exists():
        mass = read_table(ctx.out / "channel_mass.parquet")
    return mass


def run(ctx) -> dict:
    cfg = dict(ctx.section("cellprofiler"))
    cfg.pop("measure", None)
    if cfg.get("table"):
        features, info = _features_from_table(ctx, cfg)
    else:
        features, info = _features_from_images(ctx, cfg)
    write_table(features, ctx.out / "cp_features.parquet")

    level = cfg.get("level", "well")
    fdr = _FDR.get(str(cfg.get("fdr", "bh")).lower())
    if fdr is None:
        raise ValueError(f"[cellprofiler] fdr must be 'bh' or 'by'; got {cfg.get('fdr')!r}")
    alpha = float(cfg.get("alpha", 0.05))
    normalize = cfg.get("normalize") or None
    correlation = cfg.get("correlation", "both")
    channel_map = cfg.get("channel_map") or None
    contrast = dict(by=info["by"], case=info["case"], control=info["control"])
    diff = differential(features, **contrast, level=level, normalize=normalize, method=fdr, alpha=alpha,
                        channel_map=channel_map)
    write_table(diff, ctx.out / "cp_differential.parquet")

    model_channels = list(ctx.dataset.channels) if ctx.dataset is not None else None
    enrichment = channel_enrichment(diff, alpha=alpha, correlation=correlation)
    n_perm = int(cfg.get("n_permutations", 0))
    if n_perm > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the cell-level warning was given above
            perm = permutation_enrichment(features, **contrast, level=level, normalize=normalize, method=fdr,
                                          alpha=alpha, n_permutations=n_perm, correlation=correlation,
                                          channel_map=channel_map, seed=ctx.seed, progress=ctx.progress)
        enrichment = enrichment.merge(
            perm[["channel", "p_value_n_significant", "p_value_mean_abs_effect"]].rename(
                columns={"p_value_n_significant": "perm_p_value_n_significant",
                         "p_value_mean_abs_effect": "perm_p_value_mean_abs_effect"}),
            on="channel", how="left",
        )
        enrichment["n_permutations"] = n_perm
    write_table(enrichment, ctx.out / "channel_enrichment.parquet")
    by_compartment = compartment_channel_table(diff, alpha=alpha, correlation=correlation)
    write_table(by_compartment, ctx.out / "compartment_channel.parquet")
    ctx.artifacts.update(cp_features=features, cp_differential=diff, channel_enrichment=enrichment,
                         compartment_channel=by_compartment)

    tested = diff[diff["status"] == "tested"]
    top = enrichment.sort_values(["q_value", "mean_abs_effect"], ascending=[True, False]).iloc[0]
    result = dict(
        **{k: v for k, v in info.items() if k not in ("case", "control")},
        case=str(info["case"]), control=str(info["control"]),
        n_units=int(tested[["n_case", "n_control"]].max().sum()) if len(tested) else 0,
        n_features=int(len(diff)), n_tested=int(len(tested)), n_significant=int(diff["significant"].sum()),
        top_channel=str(top["channel"]), top_channel_q_value=float(top["q_value"]),
    )

    mass = _channel_mass(ctx)
    if mass is None:
        result["concordance"] = "skipped: no channel_mass from the stats stage"
        return result
    channels = model_channels if model_channels is not None else None
    options = dict(enrichment_score=cfg.get("enrichment_score", "mean_abs_effect"), channels=channels)
    try:
        conc = concordance(mass, enrichment, n_bootstrap=int(cfg.get("n_bootstrap", 1000)), seed=ctx.seed,
                           progress=ctx.progress, **options)
        ranks = channel_ranks(mass, enrichment, **options)
    except ValueError as exc:  # e.g. fewer than 3 shared channels
        result["concordance"] = f"skipped: {exc}"
        return result
    write_table(conc, ctx.out / "concordance.parquet")
    write_table(ranks, ctx.out / "concordance_ranks.parquet")
    ctx.artifacts.update(concordance=conc, concordance_ranks=ranks)
    kendall = conc[conc["statistic"] == "kendall_tau"]
    result["concordance_kendall_tau"] = {str(r.method): round(float(r.estimate), 4) for r in kendall.itertuples()}
    return result
