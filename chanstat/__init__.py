"""chanstat: which stain drives a classifier's decision?

The verbs read like the analysis::

    import chanstat as cs
    data = cs.read("loaddata.csv", channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    maps = cs.attribute(model, data.images, target, "d_ig", counterfactuals=cf, counterfactual_target=cf_y)
    result = cs.dac(model, data.images, cf, maps, data.labels, strategy="single_channel")
    tests = cs.test_channels(cs.channel_mass(maps.numpy(), data.channels, data.meta))
    diff = cs.differential(profiles, by="Metadata_Class", case="treated", control="control")
    cs.render("runs/demo")

Imports are lazy, so ``chanstat.stats`` and ``chanstat.cellprofiler`` work without loading torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_VERBS = {
    "read": ("chanstat.data.readers", "read"),
    "synthetic": ("chanstat.data.synthetic", "synthetic"),
    "ImageSet": ("chanstat.data.imageset", "ImageSet"),
    "attribute": ("chanstat.attribution", "attribute"),
    "dac": ("chanstat.dac", None),  # the package itself is callable: chanstat.dac(...)
    "channel_mass": ("chanstat.stats", "channel_mass"),
    "test_channels": ("chanstat.stats", "test_channels"),
    "differential": ("chanstat.cellprofiler", "differential"),
    "render": ("chanstat.report", "render"),
    "run": ("chanstat.pipeline", "run"),
}

__all__ = sorted(_VERBS)


def __getattr__(name: str):
    if name in _VERBS:
        module, attr = _VERBS[name]
        value = importlib.import_module(module)
        value = value if attr is None else getattr(value, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chanstat' has no attribute {name!r}")
