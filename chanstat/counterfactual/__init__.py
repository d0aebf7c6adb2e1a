"""Where counterfactual images come from: oracle, user files, nearest neighbour, optimisation.

One interface for every source (see :class:`CounterfactualProvider`)::

    from chanstat.counterfactual import generate_counterfactuals
    result = generate_counterfactuals(dataset, "optimise", model=model, l1=0.05, device="cuda")
    result.counterfactuals   # (N, C, H, W)
    result.counterfactual_target     # (N,)
    result.quality           # tidy: sample, channel, mean_abs_diff, ..., flipped, success
    result.summary           # per channel: mean_abs_diff, flip_rate, success_rate

Providers (registry :data:`PROVIDERS`):

- ``oracle`` -- the counterfactuals stored with the data (synthetic / planted phenotypes).
- ``from_files`` -- supplied by the user (LoadData CSV, NumPy, Zarr), validated.
- ``nearest`` -- nearest image of the target class in the classifier's embedding (weak baseline).
- ``optimise`` -- gradient descent on the image (target CE + L1 + TV, per-channel steps, early stop).
- ``generator`` -- a StarGAN-v2-style conversion network trained on the data set (or given),
  best of several candidates per image (:mod:`chanstat.counterfactual.generator`).

:func:`compare_counterfactual_runs` puts several such runs (oracle, generator, optimise, nearest)
into one table. :func:`compare_runs` compares the channel conclusions of two run directories that differ only
in their counterfactuals (e.g. oracle vs optimise; ``analyses/compare_counterfactuals.py``).
"""

from __future__ import annotations

from chanstat.counterfactual.base import (
    QUALITY_COLUMNS,
    SUMMARY_COLUMNS,
    CounterfactualProvider,
    CounterfactualResult,
    counterfactual_quality,
    predict_proba,
    summarise_quality,
)
from chanstat.counterfactual.compare import (
    CounterfactualComparison,
    RunComparison,
    compare_counterfactual_runs,
    compare_runs,
)
from chanstat.counterfactual.files import (
    CounterfactualFileError,
    FileCounterfactuals,
    pair_counterfactuals,
    read_counterfactual_arrays,
    read_counterfactual_csv,
)
from chanstat.counterfactual.generator import (
    GeneratorCounterfactuals,
    load_generator,
    save_generator,
    train_generator,
)
from chanstat.counterfactual.nearest import NearestCounterfactuals, embed_images
from chanstat.counterfactual.optimise import (
    OptimisedCounterfactuals,
    channel_step_sizes,
    optimise_counterfactuals,
    total_variation,
)
from chanstat.counterfactual.oracle import OracleCounterfactuals
from chanstat.counterfactual.targets import TARGET_RULES, choose_targets

PROVIDERS: dict[str, type[CounterfactualProvider]] = {
    cls.name: cls
    for cls in (
        OracleCounterfactuals,
        FileCounterfactuals,
        NearestCounterfactuals,
        OptimisedCounterfactuals,
        GeneratorCounterfactuals,
    )
}
"""Provider name -> class; every class takes ``(model=None, **options)`` and has ``generate(dataset, target)``."""


def get_provider(name: str, model=None, **options) -> CounterfactualProvider:
    """Instantiate provider ``name`` with ``options``; unknown names or options raise ``ValueError``."""
    if name not in PROVIDERS:
        raise ValueError(f"unknown counterfactual provider {name!r}; available: {sorted(PROVIDERS)}")
    cls = PROVIDERS[name]
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"provider {name!r} does not take options {unknown}; it takes {allowed}")
    return cls(model, **options)


def generate_counterfactuals(
    dataset, provider: str = "oracle", model=None, target_rule: str = "auto", **options
) -> CounterfactualResult:
    """Counterfactuals for every image of ``dataset`` from provider ``provider``.

    Parameters
    ----------
    dataset : ImageSet (N, C, H, W).
    provider : a key of :data:`PROVIDERS`.
    model : trained classifier (eval mode); needed by ``nearest`` and ``optimise``, used by all
        for the quality table.
    target_rule : how each image's counterfactual class is chosen (see :func:`choose_targets`).
    **options : provider options (and ``device``, ``batch_size``, ``confidence``, ``progress``).
    """
    return get_provider(provider, model, **options).generate(dataset, target_rule=target_rule)


def with_counterfactuals(dataset, result: CounterfactualResult):
    """A copy of ``dataset`` whose counterfactuals / counterfactual_target come from ``result``."""
    from chanstat.data.imageset import ImageSet

    return ImageSet(
        images=dataset.images,
        channels=list(dataset.channels),
        labels=dataset.labels,
        classes=list(dataset.classes),
        meta=dataset.meta,
        counterfactuals=result.counterfactuals,
        counterfactual_target=result.counterfactual_target,
        signal_masks=dataset.signal_masks,
        objects=None if dataset.objects is None else dict(dataset.objects),
    )


__all__ = [
    "PROVIDERS",
    "QUALITY_COLUMNS",
    "SUMMARY_COLUMNS",
    "TARGET_RULES",
    "CounterfactualFileError",
    "CounterfactualProvider",
    "CounterfactualResult",
    "RunComparison",
    "compare_runs",
    "CounterfactualComparison",
    "compare_counterfactual_runs",
    "FileCounterfactuals",
    "GeneratorCounterfactuals",
    "NearestCounterfactuals",
    "OptimisedCounterfactuals",
    "OracleCounterfactuals",
    "channel_step_sizes",
    "choose_targets",
    "counterfactual_quality",
    "embed_images",
    "generate_counterfactuals",
    "get_provider",
    "load_generator",
    "optimise_counterfactuals",
    "pair_counterfactuals",
    "predict_proba",
    "read_counterfactual_arrays",
    "read_counterfactual_csv",
    "save_generator",
    "summarise_quality",
    "total_variation",
    "train_generator",
    "with_counterfactuals",
]
