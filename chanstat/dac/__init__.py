"""DAC (Discriminative Attribution from Counterfactuals) with channel-resolved masks.

``dac(model, real, counterfactuals, attributions, real_target, strategy=...)`` builds the masks
of every threshold on the model's device (one grey-level closing per map, one blur per mask),
pastes the real image into its counterfactual through them, scores the hybrids in large
batches and returns tidy curves and scores. ``smoothing_sweep`` repeats it over a grid of
closing sizes and blur widths.

Modules: `thresholds` (value / rank schedules, tie-free ranks), `morphology` (flat grey-level
closing, separable Gaussian), `masks` (strategy registry, mask layouts), `scoring` (batched
hybrid scoring, curve areas, optimal / minimal steps), `engine` (`dac`, `smoothing_sweep`),
`stage` (the pipeline stage).
"""
from chanstat.dac.engine import CURVE_COLUMNS, SCORE_COLUMNS, DacResult, dac, smoothing_sweep
from chanstat.dac.masks import STRATEGIES, MaskStrategy, register_strategy
from chanstat.dac.morphology import gaussian_blur, grey_closing, structuring_element
from chanstat.dac.thresholds import SCHEDULES, rank_fractions, value_thresholds

__all__ = [
    "dac", "smoothing_sweep", "DacResult", "STRATEGIES", "MaskStrategy", "register_strategy", "SCHEDULES",
    "structuring_element", "grey_closing", "gaussian_blur", "value_thresholds", "rank_fractions",
    "CURVE_COLUMNS", "SCORE_COLUMNS",
]


class _CallableModule(__import__("types").ModuleType):
    """Lets ``chanstat.dac(...)`` work as the verb while ``chanstat.dac`` stays a package."""

    def __call__(self, *args, **kwargs):
        return dac(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
