"""chanstat: which stain drives a classifier's decision?

The verbs read like the analysis (README.md has a complete example)::

    import chanstat as cs
    data = cs.read("loaddata.csv", channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    maps = cs.attribute(model, data.images, data.labels, "d_ig",
                        counterfactuals=cf, counterfactual_target=cf_labels)
    result = cs.dac(model, data.images, data.labels, maps, counterfactuals=cf, channels=data.channels)
    shapley = cs.channel_shapley(model, data.images, data.labels, counterfactuals=cf, channels=data.channels)
    tests = cs.test_channels(cs.channel_mass({"d_ig": maps}, data.channels, data.meta))
    cs.RunDirectory("runs/mine", create=True).save(dataset=data, attributions={"d_ig": maps}, dac={"d_ig": result})
    cs.render("runs/mine")

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
    "dac": ("chanstat.dacscore.engine", "dac"),
    "channel_shapley": ("chanstat.decompose", "channel_shapley"),
    "compartment_mass": ("chanstat.decompose", "compartment_mass"),
    "generate_counterfactuals": ("chanstat.counterfactual", "generate_counterfactuals"),
    "channel_mass": ("chanstat.stats", "channel_mass"),
    "test_channels": ("chanstat.stats", "test_channels"),
    "channel_share_ci": ("chanstat.stats", "channel_share_ci"),
    "best_channel": ("chanstat.stats", "best_channel"),
    "test_against_zero": ("chanstat.stats", "test_against_zero"),
    "differential": ("chanstat.cellprofiler", "differential"),
    "render": ("chanstat.report", "render"),
    "explanations": ("chanstat.answer", "explanations"),
    "RunDirectory": ("chanstat.rundir", "RunDirectory"),
    "export_ome_zarr": ("chanstat.export", "export_ome_zarr"),
    "export_anndata": ("chanstat.export", "export_anndata"),
    "read_ome_zarr": ("chanstat.data.ome", "read_ome_zarr"),
    "read_ome_tiff": ("chanstat.data.ome", "read_ome_tiff"),
    "read_jump": ("chanstat.data.jump", "read_jump"),
    "activity": ("chanstat.cellprofiler", "activity"),
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
