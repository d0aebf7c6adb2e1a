"""Pipeline stage ``dac``: DAC of every discriminative attribution method x every mask strategy.

Config (``[dac]``, every key optional; see :class:`DacConfig`)::

    strategies = ["aggregate", "joint", "per_channel", "single_channel"]
    methods = ["d_ig", "residual"]  # default: every discriminative map the attribution stage made
    schedule = "adaptive"           # or "value" (every step) or "rank"
    [dac.sweep]                     # smoothing sweep (runs when the table is present)
    closings = [0, 5, 10]

Discriminative methods are those whose registry entry says ``needs_counterfactual`` (the
``d_*`` methods and ``residual``) plus the ``random`` baseline. Channel-agnostic maps
(N, 1, H, W) are scored with ``aggregate`` only. Without an attribution stage the residual
``|x - x'|`` is scored. The pairs are a class-balanced subset (``max_samples``) chosen once
over the whole set; scoring them is per image, so ``[compute]`` can shard it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from chanstat.config import Section
from chanstat.dacscore.engine import dac, smoothing_sweep
from chanstat.dacscore.masks import STRATEGIES, check_strategies
from chanstat.dacscore.result import summarise_dac
from chanstat.stage import Arrays, Stage, balanced_subset

log = logging.getLogger(__name__)

BASELINE_METHODS = ("residual", "random")
ALL_STRATEGIES = ["aggregate", "joint", "per_channel", "single_channel"]


class SweepConfig(Section):
    """``[dac.sweep]``: DAC over a grid of closing sizes and blur widths (does smoothing hide biology?)."""

    closings: list[int] = Field(default_factory=lambda: [0, 5, 10], description="Closing element sizes (px).")
    sigmas: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0], description="Gaussian blur widths (px).")
    strategies: list[str] = Field(default_factory=lambda: ["aggregate"])
    methods: list[str] | None = Field(None, description="Default: d_ig if scored, else the first scored method.")
    steps: int | None = Field(None, ge=1, description="Default: the main steps.")


class DacConfig(Section):
    """``[dac]``: Discriminative Attribution from Counterfactuals, per mask strategy."""

    strategies: list[str] = Field(default_factory=lambda: list(ALL_STRATEGIES), description=f"Any of {ALL_STRATEGIES}.")
    methods: list[str] | None = Field(None, description="Default: every discriminative map of the run.")
    steps: int = Field(
        200, ge=1, description="Threshold intervals of the value/rank grid (curves have steps + 1 points)."
    )
    schedule: str = Field("adaptive", description='"adaptive" (few forward passes), "value" or "rank".')
    tolerance: float = Field(0.0025, gt=0, le=0.1, description="Adaptive schedule: largest DAC area error per curve.")
    closing: int = Field(10, ge=0, description="Closing element size in pixels (0 = off).")
    closing_shape: str = Field("ellipse", description='"ellipse" or "square".')
    sigma: float = Field(2.0, ge=0, description="Gaussian blur of each mask in pixels (0 = off).")
    batch_size: int | None = Field(None, ge=1, description="Hybrids per forward pass.")
    filter_pairs: bool = Field(False, description="Keep only correctly classified real/counterfactual pairs.")
    max_samples: int | None = Field(None, ge=1, description="Score a class-balanced subset of this many pairs.")
    store_masks: bool = Field(True, description="Write the optimal masks to dac_masks.zarr.")
    sweep: SweepConfig | None = None

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, value: list[str]) -> list[str]:
        return [s.name for s in check_strategies(value)]


def is_discriminative(name: str) -> bool:
    """Whether maps of method ``name`` explain a real-vs-counterfactual difference (or are its baselines)."""
    from chanstat.attribution import METHODS

    if name in METHODS:
        return bool(METHODS[name].needs_counterfactual) or name in BASELINE_METHODS
    return name.startswith("d_") or name in BASELINE_METHODS


def select(ctx) -> np.ndarray:
    return balanced_subset(ctx.dataset.labels.numpy(), ctx.section("dac")["max_samples"], ctx.seed)


def _maps(part) -> dict[str, np.ndarray]:
    maps = part.inputs.get("attributions")
    if maps is not None and maps.arrays:
        return dict(maps.arrays)
    dataset = part.dataset
    return {"residual": (dataset.images - dataset.counterfactuals).abs().numpy()}


def _methods(section: dict, available: list[str]) -> list[str]:
    requested = section.get("methods")
    if requested is None:
        methods = [m for m in available if is_discriminative(m)]
    else:
        missing = [m for m in requested if m not in available]
        if missing:
            raise ValueError(f"[dac] methods {missing} have no attribution maps; available: {sorted(available)}")
        methods = list(requested)
    if not methods:
        raise ValueError(f"[dac] no discriminative attribution maps to score; maps available: {sorted(available)}")
    return methods


def _options(section: dict) -> dict:
    return {
        k: section[k]
        for k in ("steps", "schedule", "tolerance", "closing", "closing_shape", "sigma", "batch_size", "filter_pairs")
    }


def _usable(strategies: list[str], maps: np.ndarray, n_channels: int) -> list[str]:
    return [s for s in strategies if maps.shape[1] == n_channels or not STRATEGIES[s].channel_resolved]


def per_image(ctx, part) -> dict:
    section = ctx.section("dac")
    dataset = part.dataset
    if dataset.counterfactuals is None:
        raise RuntimeError(
            "the dac stage needs counterfactual images; the data set has none (add a [counterfactual] stage)"
        )
    all_maps = _maps(part)
    methods = _methods(section, list(all_maps))
    channels = list(dataset.channels)
    options = _options(section)
    inputs = dict(
        counterfactuals=dataset.counterfactuals, counterfactual_target=dataset.counterfactual_target, channels=channels
    )
    curves: list[pd.DataFrame] = []
    scores: list[pd.DataFrame] = []
    masks, attrs, samples, dropped = {}, {}, None, None
    for method in methods:
        usable = _usable(section["strategies"], all_maps[method], len(channels))
        if not usable:
            continue
        result = dac(
            ctx.model,
            dataset.images,
            dataset.labels,
            all_maps[method],
            strategy=usable,
            return_masks=section["store_masks"],
            progress=ctx.progress,
            **inputs,
            **options,
        )
        for table, out in ((result.curves, curves), (result.scores, scores)):
            table = table.assign(sample=part.rows[table["sample"].to_numpy()])
            table.insert(1, "method", method)
            out.append(table)
        if dropped is None:
            dropped = result.dropped.assign(sample=part.rows[result.dropped["sample"].to_numpy()])
        if section["store_masks"]:
            samples = part.rows[result.samples]
            for strategy, m in result.optimal_masks.items():
                key = f"{method}.{strategy}"
                masks[key] = m
                attrs[key] = {
                    "method": method,
                    "strategy": strategy,
                    "kind": "optimal",
                    "channels": ["all"] if STRATEGIES[strategy].combine_channels else channels,
                }
    outputs: dict = {
        "dac_curves": pd.concat(curves, ignore_index=True),
        "dac_scores": pd.concat(scores, ignore_index=True),
    }
    if masks:
        outputs["dac_masks"] = Arrays(
            masks,
            attrs=attrs,
            samples=samples,
            group_attrs={"channels": channels, "settings": {k: v for k, v in options.items() if v is not None}},
        )
    if dropped is not None and len(dropped):
        outputs["dac_dropped"] = dropped
    sweep = section.get("sweep")
    if sweep and sweep.get("enabled", True):
        table = _sweep(ctx, sweep, methods, all_maps, part, inputs, options)
        if table is not None:
            outputs["dac_sweep"] = table
    return outputs


def _sweep(ctx, sweep, methods, all_maps, part, inputs, options) -> pd.DataFrame | None:
    default = ["d_ig"] if "d_ig" in methods else methods[:1]
    sweep_methods = sweep.get("methods") or default
    missing = [m for m in sweep_methods if m not in all_maps]
    if missing:
        raise ValueError(f"[dac.sweep] methods {missing} have no attribution maps; available: {sorted(all_maps)}")
    strategies = [s.name for s in check_strategies(sweep["strategies"])]
    frames = []
    for method in sweep_methods:
        usable = _usable(strategies, all_maps[method], len(inputs["channels"]))
        if not usable:
            continue
        table = smoothing_sweep(
            ctx.model,
            part.dataset.images,
            part.dataset.labels,
            all_maps[method],
            closings=sweep["closings"],
            sigmas=sweep["sigmas"],
            strategy=usable,
            steps=sweep.get("steps") or options["steps"],
            schedule=options["schedule"],
            tolerance=options["tolerance"],
            closing_shape=options["closing_shape"],
            batch_size=options["batch_size"],
            filter_pairs=options["filter_pairs"],
            progress=ctx.progress,
            **inputs,
        )
        table = table.assign(sample=part.rows[table["sample"].to_numpy()])
        table.insert(0, "method", method)
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else None


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    scores = outputs["dac_scores"]
    info: dict = {
        "methods": list(pd.unique(scores["method"])),
        "strategies": ctx.section("dac")["strategies"],
        "n_pairs": int(scores["sample"].nunique()),
        "n_dropped": int(len(outputs.get("dac_dropped", ()))),
        "mean_dac": {
            f"{r.method}/{r.strategy}" + ("" if r.channel == "all" else f"/{r.channel}"): round(float(r.dac), 6)
            for r in summarise_dac(scores).itertuples(index=False)
        },
    }
    if "attributions" not in ctx.results and not ctx.run.has("attributions"):
        info["maps_from"] = "residual |x - x'| (no attribution stage)"
    sweep = outputs.get("dac_sweep")
    if sweep is not None and len(sweep):
        means = sweep.groupby(["method", "strategy", "channel", "closing", "sigma"], sort=False)["dac"].mean()
        info["sweep_mean_dac"] = {
            f"{m}/{s}/{c}/closing={cl}/sigma={sg:g}": round(float(v), 6) for (m, s, c, cl, sg), v in means.items()
        }
    return outputs, info


STAGE = Stage(
    name="dac",
    config=DacConfig,
    reads=("dataset", "model", "attributions"),
    writes=("dac_curves", "dac_scores", "dac_masks", "dac_sweep", "dac_dropped"),
    per_image=per_image,
    whole_set=whole_set,
    select=select,
    part_inputs=("attributions",),
)
