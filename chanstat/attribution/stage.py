"""Pipeline stage ``attribution``: maps of every configured method -> ``attributions.zarr``.

Config (``[attribution]``)::

    methods = ["ig", "d_ig", ...]   # default: every registered method
    batch_size = 32                 # images per chunk
    layer = "features.10"           # Grad-CAM layer (default: last Conv2d)
    [attribution.options.ig]        # per-method options, passed to attribute()
    n_steps = 50
    [attribution.pixelcam]          # train one PixelCAM head on the whole set (see below)
    steps = 300

Vanilla methods explain the real label, discriminative ones the counterfactual label. Methods
that need counterfactuals are skipped (with a note in provenance) when the data set has none.
The work is per image, so ``[compute]`` can shard it -- except PixelCAM with
``[attribution.pixelcam]``: its head is trained once on every image (the PixelCAM of the paper),
and the maps of ``pixelcam`` / ``pixelcam_grad`` it gives join ``attributions.zarr`` like any
method's (without that table, those methods fit a head to each image on its own).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pydantic import Field, field_validator

from chanstat.attribution.adaptive import sharing_gradients
from chanstat.attribution.core import attribute
from chanstat.attribution.gradients import recording_integration, summarise_integration
from chanstat.attribution.pixelcam import train_pixelcam
from chanstat.attribution.registry import METHODS, get_method
from chanstat.config import Section, check_kwargs, kwargs_model
from chanstat.stage import Arrays, Stage

log = logging.getLogger(__name__)


PixelCAMConfig = kwargs_model(
    train_pixelcam,
    "PixelCAMConfig",
    exclude=("model", "images", "labels", "cam", "seed", "progress"),
    layer=(str | None, None),
    cam_layer=(str | None, None),
    enabled=(bool, True),
    doc="[attribution.pixelcam]: train one PixelCAM head on the run's model from Grad-CAM pseudo-labels of every "
    "image (options of chanstat.attribution.train_pixelcam); pixelcam / pixelcam_grad maps then use it.",
)
PIXELCAM_METHODS = ("pixelcam", "pixelcam_grad")


class AttributionConfig(Section):
    """``[attribution]``: per-channel attribution maps of the classifier's decision."""

    methods: list[str] = Field(
        default_factory=lambda: list(METHODS), description="Registered methods to run (default: all)."
    )
    batch_size: int | None = Field(None, ge=1, description="Images per chunk.")
    layer: str | None = Field(None, description="Grad-CAM layer (default: the model's last Conv2d).")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-method options, [attribution.options.<method>]."
    )
    pixelcam: PixelCAMConfig | None = None  # type: ignore[valid-type]

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


def _whole_set_pixelcam(section: dict) -> bool:
    head = section.get("pixelcam") or {}
    return bool(head) and bool(head.get("enabled", True)) and any(m in section["methods"] for m in PIXELCAM_METHODS)


def _attrs(spec, channels: list[str], options: dict) -> dict:
    return {
        "channels": channels if spec.resolves_channels else ["all"],
        "method": spec.name,
        "family": spec.family,
        "signed": spec.signed,
        "resolves_channels": spec.resolves_channels,
        "target": "counterfactual" if spec.needs_counterfactual else "real",
        "explains": spec.explains,
        "description": spec.description,
        "options": {k: v for k, v in options.items() if k != "head"},
    }


def per_image(ctx, part) -> dict:
    section = ctx.section("attribution")
    dataset = part.dataset
    has_counterfactuals = dataset.counterfactuals is not None and dataset.counterfactual_target is not None
    channels = list(dataset.channels)
    arrays: dict = {}
    attrs: dict = {}
    whole_set_pixelcam = _whole_set_pixelcam(section)
    # saliency, ixg and the adaptive ig (d_ixg and d_ig) need the same gradient at the image: computed
    # once per chunk (CPU copies of it are kept until the last method of this part has run)
    with sharing_gradients():
        for spec in _specs(ctx):
            if spec.needs_counterfactual and not has_counterfactuals:
                continue
            if whole_set_pixelcam and spec.name in PIXELCAM_METHODS:
                continue  # their head is trained on every image in whole_set
            options = dict(section["options"].get(spec.name, {}))
            if "seed" in inspect.signature(spec.fn).parameters and "seed" not in options:
                options["seed"] = int(ctx.seed)
            with recording_integration() as records:
                maps = attribute(
                    ctx.model,
                    dataset.images,
                    dataset.labels,
                    spec.name,
                    counterfactuals=dataset.counterfactuals if spec.needs_counterfactual else None,
                    counterfactual_target=dataset.counterfactual_target if spec.explains == "counterfactual" else None,
                    layer=section.get("layer") if spec.uses_layer else None,
                    batch_size=section.get("batch_size"),
                    progress=ctx.progress,
                    **options,
                )
            arrays[spec.name] = maps.numpy()
            attrs[spec.name] = _attrs(spec, channels, options)
            if records:  # integration steps used and completeness error (ig / d_ig / DeepLift)
                attrs[spec.name]["integration"] = summarise_integration(records).get(spec.name)
    group_attrs = {"channels": channels, "classes": list(dataset.classes)}
    return {"attributions": Arrays(arrays, attrs=attrs, group_attrs=group_attrs)} if arrays else {}


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    dataset = ctx.dataset
    has_counterfactuals = dataset.counterfactuals is not None and dataset.counterfactual_target is not None
    skipped = {
        s.name: "the data set has no counterfactuals"
        for s in _specs(ctx)
        if s.needs_counterfactual and not has_counterfactuals
    }
    for name, why in skipped.items():
        log.warning("attribution: skipping %s (%s)", name, why)
    maps = outputs.get("attributions")
    section = ctx.section("attribution")
    info: dict = {}
    if _whole_set_pixelcam(section):
        maps, info["pixelcam"] = _pixelcam(ctx, section, maps)
        outputs = {**outputs, "attributions": maps}
    info["methods"] = list(maps.arrays) if maps else []
    integration = {m: a["integration"] for m, a in (maps.attrs.items() if maps else []) if a.get("integration")}
    if integration:  # steps used and completeness error per method (of this process's images when sharded)
        info["integration"] = integration
    if skipped:
        info["skipped"] = skipped
    return outputs, info


def _pixelcam(ctx, section: dict, maps: Arrays | None) -> tuple[Arrays, dict]:
    """Train one PixelCAM head on every image; add the maps of the pixelcam methods asked for."""
    import time

    from chanstat.attribution.pixelcam import gradcam_pseudo_source
    from chanstat.attribution.pixelcam.head import layer_and_name

    dataset, model = ctx.dataset, ctx.model
    options = {k: v for k, v in section["pixelcam"].items() if k != "enabled"}
    cam_layer = options.pop("cam_layer", None)
    options.setdefault("seed", ctx.seed)
    options.setdefault("progress", ctx.progress)
    started = time.perf_counter()
    if maps is not None and "gradcam" in maps.arrays and cam_layer is None:
        cam, cam_from = maps.arrays["gradcam"], "the gradcam maps of this stage"
    else:
        module, name = layer_and_name(model, cam_layer)
        cam, cam_from = (
            gradcam_pseudo_source(model, dataset.images, dataset.labels, module).numpy(),
            f"Grad-CAM at {name}",
        )
    head = train_pixelcam(model, dataset.images, dataset.labels, cam=cam, **options)
    arrays = dict(maps.arrays) if maps is not None else {}
    attrs = dict(maps.attrs) if maps is not None else {}
    channels = list(dataset.channels)
    for name in (m for m in section["methods"] if m in PIXELCAM_METHODS):
        spec = get_method(name)
        arrays[name] = attribute(
            model,
            dataset.images,
            dataset.labels,
            name,
            head=head,
            batch_size=section.get("batch_size"),
            progress=ctx.progress,
        ).numpy()
        attrs[name] = _attrs(spec, channels, {"head": "trained on every image"})
    group_attrs = (
        dict(maps.group_attrs) if maps is not None else {"channels": channels, "classes": list(dataset.classes)}
    )
    info = {
        "feature_layer": head.layer_name,
        "learned_from": cam_from,
        "steps": options.get("steps"),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return Arrays(arrays, attrs=attrs, group_attrs=group_attrs), info


STAGE = Stage(
    name="attribution",
    config=AttributionConfig,
    reads=("dataset", "model"),
    writes=("attributions",),
    per_image=per_image,
    whole_set=whole_set,
)
