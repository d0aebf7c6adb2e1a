"""Pipeline stage ``attribution``: maps of every configured method -> ``attributions.zarr``.

Config (``[attribution]``)::

    methods = ["ig", "d_ig", ...]   # default: every registered method
    batch_size = 32                 # images per chunk
    layer = "features.10"           # Grad-CAM layer (default: last Conv2d)
    [attribution.options.ig]        # per-method options, passed to attribute()
    n_steps = 50

Vanilla methods explain the real label, discriminative ones the counterfactual label. Methods
that need counterfactuals are skipped (with a note in provenance) when the data set has none.
The work is per image, so ``[compute]`` can shard it.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

from pydantic import Field, field_validator

from chanstat.attribution.core import attribute
from chanstat.attribution.registry import METHODS, get_method
from chanstat.config import Section, check_kwargs
from chanstat.stage import Arrays, Stage

log = logging.getLogger(__name__)


class AttributionConfig(Section):
    """``[attribution]``: per-channel attribution maps of the classifier's decision."""

    methods: list[str] = Field(default_factory=lambda: list(METHODS), description="Registered methods to run (default: all).")
    batch_size: int | None = Field(None, ge=1, description="Images per chunk.")
    layer: str | None = Field(None, description="Grad-CAM layer (default: the model's last Conv2d).")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per-method options, [attribution.options.<method>].")

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            get_method(name)  # unknown names raise with the list of methods
        return value

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: dict) -> dict:
        for name, options in value.items():
            check_kwargs(options, get_method(name).fn, f"attribution.options.{name}", exclude=("model", "batch"))
        return value


def _specs(ctx):
    return [get_method(name) for name in ctx.section("attribution")["methods"]]


def per_image(ctx, part) -> dict:
    section = ctx.section("attribution")
    dataset = part.dataset
    has_counterfactuals = dataset.counterfactuals is not None and dataset.counterfactual_labels is not None
    channels = list(dataset.channels)
    arrays, attrs = {}, {}
    for spec in _specs(ctx):
        if spec.needs_counterfactual and not has_counterfactuals:
            continue
        options = dict(section["options"].get(spec.name, {}))
        if "seed" in inspect.signature(spec.fn).parameters and "seed" not in options:
            options["seed"] = int(ctx.seed)
        maps = attribute(
            ctx.model, dataset.images, dataset.labels, spec.name,
            counterfactuals=dataset.counterfactuals if spec.needs_counterfactual else None,
            counterfactual_target=dataset.counterfactual_labels if spec.explains == "counterfactual" else None,
            layer=section.get("layer") if spec.uses_layer else None,
            batch_size=section.get("batch_size"), progress=ctx.progress, **options,
        )
        arrays[spec.name] = maps.numpy()
        attrs[spec.name] = {
            "channels": channels if spec.resolves_channels else ["all"],
            "method": spec.name, "family": spec.family, "signed": spec.signed,
            "resolves_channels": spec.resolves_channels,
            "target": "counterfactual" if spec.needs_counterfactual else "real",
            "explains": spec.explains, "description": spec.description, "options": options,
        }
    group_attrs = {"channels": channels, "classes": list(dataset.classes)}
    return {"attributions": Arrays(arrays, attrs=attrs, group_attrs=group_attrs)} if arrays else {}


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    dataset = ctx.dataset
    has_counterfactuals = dataset.counterfactuals is not None and dataset.counterfactual_labels is not None
    skipped = {s.name: "the data set has no counterfactuals" for s in _specs(ctx) if s.needs_counterfactual and not has_counterfactuals}
    for name, why in skipped.items():
        log.warning("attribution: skipping %s (%s)", name, why)
    maps = outputs.get("attributions")
    info: dict = {"methods": list(maps.arrays) if maps else []}
    if skipped:
        info["skipped"] = skipped
    return outputs, info


STAGE = Stage(
    name="attribution",
    config=AttributionConfig,
    reads=("dataset", "model"),
    writes=("attributions",),
    per_image=per_image,
    whole_set=whole_set,
)
