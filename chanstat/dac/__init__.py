"""DAC (Discriminative Attribution from Counterfactuals) with channel-resolved masks.

``dac(model, images, target, maps, counterfactuals=..., strategy=...)`` builds the masks of
every threshold on the model's device (one grey-level closing per map, one blur per mask),
pastes the real image into its counterfactual through them, scores the hybrids of every
sample, strategy and channel in shared batches and returns tidy curves and scores. The default
``adaptive`` schedule evaluates a coarse grid and bisections where the score jumps instead of
every threshold. ``smoothing_sweep`` repeats it over a grid of closing sizes and blur widths.

Modules: `result` (``DacResult``, `summarise_dac`, curve areas; no torch), `thresholds`
(value / rank schedules, tie-free ranks), `adaptive` (which steps go through the model),
`morphology` (flat grey-level closing, separable Gaussian), `masks` (strategy registry, mask
layouts), `scoring` (batched hybrid scoring across strategies), `prepare` (input checks,
baselines), `tables` (tidy tables, optimal / minimal steps), `engine` (`dac`,
`smoothing_sweep`), `stage` (the pipeline stage).

Imports are lazy: ``chanstat.dac.result`` loads without torch.
"""
import importlib as _importlib
import sys as _sys
import types as _types

_EXPORTS = {
    "dac": "chanstat.dac.engine",
    "smoothing_sweep": "chanstat.dac.engine",
    "DacResult": "chanstat.dac.result",
    "summarise_dac": "chanstat.dac.result",
    "curve_area": "chanstat.dac.result",
    "CURVE_COLUMNS": "chanstat.dac.result",
    "SCORE_COLUMNS": "chanstat.dac.result",
    "STRATEGIES": "chanstat.dac.masks",
    "MaskStrategy": "chanstat.dac.masks",
    "register_strategy": "chanstat.dac.masks",
    "gaussian_blur": "chanstat.dac.morphology",
    "grey_closing": "chanstat.dac.morphology",
    "structuring_element": "chanstat.dac.morphology",
    "SCHEDULES": "chanstat.dac.thresholds",
    "rank_fractions": "chanstat.dac.thresholds",
    "value_thresholds": "chanstat.dac.thresholds",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chanstat.dac' has no attribute {name!r}")


class _CallableModule(_types.ModuleType):
    """Lets ``chanstat.dac(...)`` work as the verb while ``chanstat.dac`` stays a package."""

    def __call__(self, *args, **kwargs):
        from chanstat.dac.engine import dac

        return dac(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
