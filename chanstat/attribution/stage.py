"""Pipeline stage: attribution maps of every configured method -> ``attributions.zarr``.

Config (``[attribution]``)::

    methods = ["ig", "d_ig", ...]   # default: every registered method
    batch_size = 32                 # images per chunk
    layer = "features.10"           # Grad-CAM layer (default: last Conv2d)
    [attribution.options.ig]        # per-method options, passed to attribute()
    n_steps = 50

Vanilla methods explain the real label, discriminative ones the counterfactual label. Methods
that need counterfactuals are skipped (with a logged note) when the dataset has none.
"""
from __future__ import annotations

import inspect
import logging
import time

from chanstat.attribution.core import attribute
from chanstat.attribution.registry import METHODS, get_method
from chanstat.io import write_arrays

log = logging.getLogger(__name__)

ARTIFACT_FILE = "attributions.zarr"


def run(ctx) -> dict:
    section = ctx.section("attribution")
    dataset, model = ctx.dataset, ctx.model
    if dataset is None:
        raise RuntimeError("the attribution stage needs the data stage's dataset (ctx.dataset is None)")
    names = list(section.get("methods", list(METHODS)))
    specs = [get_method(name) for name in names]  # unknown names fail before any work
    all_options = ctx.section("attribution.options")
    for name in all_options:
        get_method(name)  # a typo in an options table name is an error, not silently ignored
    has_counterfactuals = dataset.counterfactuals is not None and dataset.counterfactual_labels is not None
    channels = list(dataset.channels)
    n = int(dataset.images.shape[0])

    arrays, attrs, images_per_s, skipped = {}, {}, {}, {}
    for spec in specs:
        if spec.needs_counterfactual and not has_counterfactuals:
            skipped[spec.name] = "dataset has no counterfactuals"
            log.warning("attribution: skipping %s (needs counterfactuals; the dataset has none)", spec.name)
            continue
        options = dict(all_options.get(spec.name, {}))
        if "seed" in inspect.signature(spec.fn).parameters and "seed" not in options:
            options["seed"] = int(ctx.seed)
        t0 = time.perf_counter()
        maps = attribute(
            model,
            dataset.images,
            dataset.labels,
            spec.name,
            counterfactuals=dataset.counterfactuals if spec.needs_counterfactual else None,
            counterfactual_target=dataset.counterfactual_labels if spec.explains == "counterfactual" else None,
            layer=section.get("layer") if spec.uses_layer else None,
            batch_size=section.get("batch_size"),
            progress=ctx.progress,
            **options,
        )
        wall = time.perf_counter() - t0
        arrays[spec.name] = maps.numpy()
        images_per_s[spec.name] = round(n / wall, 2) if wall > 0 else None
        attrs[spec.name] = {
            "channels": channels if spec.resolves_channels else ["all"],
            "method": spec.name,
            "family": spec.family,
            "signed": spec.signed,
            "resolves_channels": spec.resolves_channels,
            "target": "counterfactual" if spec.needs_counterfactual else "real",
            "explains": spec.explains,
            "description": spec.description,
            "options": options,
        }

    if arrays:
        write_arrays(
            ctx.out / ARTIFACT_FILE,
            arrays,
            attrs=attrs,
            group_attrs={"channels": channels, "classes": list(dataset.classes), "methods": list(arrays)},
            mode="w",
        )
    ctx.artifacts["attributions"] = arrays
    info = {"methods": list(arrays), "images_per_s": images_per_s}
    if skipped:
        info["skipped"] = skipped
    return info
