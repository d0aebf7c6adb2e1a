"""Pipeline stage ``counterfactual``: give every image a counterfactual before attribution and DAC.

Config::

    [counterfactual]
    provider = "oracle"        # oracle | from_files | nearest | optimise
    target = "auto"            # target-class rule (see chanstat.counterfactual.choose_targets)
    batch_size = 64            # also: confidence, device (default: the run's device)
    # provider options, either here or in a sub-table named after the provider:
    [counterfactual.optimise]
    l1 = 0.05
    tv = 0.01
    max_steps = 200
    confidence = 0.9
    step_size = { default = 1.0 }

A sub-table ``[counterfactual.<provider>]`` is read only when that provider is chosen, so one
config can hold options for several providers and switch with ``provider = ...``. Paths
(``path``, ``index``, ``target_labels`` of ``from_files``) are relative to the config file.

Writes ``counterfactual_quality.parquet`` (see :data:`chanstat.counterfactual.QUALITY_COLUMNS`)
and ``counterfactual_summary.parquet`` (:data:`~chanstat.counterfactual.SUMMARY_COLUMNS`),
replaces ``counterfactuals`` / ``counterfactual_labels`` in ``dataset.zarr`` (keeping the data
set's own ones as ``oracle_counterfactuals`` / ``oracle_counterfactual_labels`` when another
provider replaces them), and sets ``ctx.dataset`` to a copy carrying the new counterfactuals.
"""
from __future__ import annotations

from chanstat.counterfactual import PROVIDERS, get_provider, with_counterfactuals
from chanstat.io import write_arrays, write_table

STAGE_KEYS = ("provider", "target", "enabled")
COMMON_KEYS = ("device", "batch_size", "confidence", "progress")
PATH_KEYS = ("path", "index", "target_labels")


def provider_options(section: dict, provider: str) -> dict:
    """Options for ``provider`` from a ``[counterfactual]`` table (top-level keys, then its sub-table)."""
    options = {
        key: value for key, value in section.items()
        if key not in STAGE_KEYS and not (isinstance(value, dict) and key in PROVIDERS)
    }
    nested = section.get(provider, {})
    if not isinstance(nested, dict):
        raise ValueError(f"[counterfactual.{provider}] must be a table")
    options.update(nested)
    return options


def run(ctx) -> dict:
    section = ctx.section("counterfactual")
    provider = section.get("provider", "oracle")
    target = section.get("target", "auto")
    if ctx.dataset is None:
        raise RuntimeError("the counterfactual stage needs a data set (the data stage runs first)")
    options = provider_options(section, provider)
    for key in PATH_KEYS:
        if isinstance(options.get(key), str):
            options[key] = ctx.resolve_path(options[key])
    options.setdefault("device", ctx.device)
    options.setdefault("progress", ctx.progress)
    model = ctx.model
    result = get_provider(provider, model, **options).generate(ctx.dataset, target=target)

    write_table(result.quality, ctx.out / "counterfactual_quality.parquet")
    write_table(result.summary, ctx.out / "counterfactual_summary.parquet")
    arrays = {
        "counterfactuals": result.counterfactuals.numpy(),
        "counterfactual_labels": result.target_labels.numpy(),
    }
    attrs = {"counterfactuals": {"channels": list(ctx.dataset.channels), "provider": result.provider}}
    had_oracle = ctx.dataset.counterfactuals is not None and ctx.dataset.counterfactual_labels is not None
    if provider != "oracle" and had_oracle:
        arrays["oracle_counterfactuals"] = ctx.dataset.counterfactuals.numpy()
        arrays["oracle_counterfactual_labels"] = ctx.dataset.counterfactual_labels.numpy()
        attrs["oracle_counterfactuals"] = {"channels": list(ctx.dataset.channels), "provider": "oracle"}
        ctx.artifacts["oracle_dataset"] = ctx.dataset
    write_arrays(ctx.out / "dataset.zarr", arrays, attrs=attrs, group_attrs={"counterfactual_provider": result.provider})

    ctx.dataset = with_counterfactuals(ctx.dataset, result)
    ctx.artifacts["counterfactual_quality"] = result.quality
    ctx.artifacts["counterfactual_summary"] = result.summary
    return result.summary_dict()
