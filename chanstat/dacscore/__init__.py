"""DAC (Discriminative Attribution from Counterfactuals) with channel-resolved masks.

The verb is :func:`chanstat.dac` (``chanstat.dacscore.dac``); this subpackage, named for what
it computes, is where it lives, so ``chanstat.dac`` is only ever the function.

``dac(model, images, target, maps, counterfactuals=..., strategy=...)`` builds the masks of
every threshold on the model's device (one grey-level closing per map, one blur per mask),
pastes the real image into its counterfactual through them, scores the hybrids of every
sample, strategy and channel in shared batches and returns tidy curves and scores. The default
``adaptive`` schedule evaluates a coarse grid and bisections where the score jumps instead of
every threshold. ``smoothing_sweep`` repeats it over a grid of closing sizes and blur widths.

Modules: `result` (``DacResult``, `summarise_dac`, curve areas; no torch), `thresholds`
(value / rank schedules, tie-free ranks), `adaptive` (which steps go through the model),
`morphology` (flat grey-level closing, separable Gaussian), `masks` (strategy registry, mask
layouts), `scoring` (batched hybrid scoring across strategies), `coalitions` (probabilities of
channel coalitions, remembered and shared with channel Shapley), `prepare` (input checks,
baselines), `tables` (tidy tables, optimal / minimal steps), `engine` (`dac`,
`smoothing_sweep`), `stage` (the pipeline stage).

Imports are lazy: ``chanstat.dacscore.result`` loads without torch.
"""

from chanstat._exports import lazy

_EXPORTS = {
    "dac": "engine",
    "smoothing_sweep": "engine",
    "DacResult": "result",
    "summarise_dac": "result",
    "curve_area": "result",
    "CURVE_COLUMNS": "result",
    "SCORE_COLUMNS": "result",
    "STRATEGIES": "masks",
    "MaskStrategy": "masks",
    "register_strategy": "masks",
    "gaussian_blur": "morphology",
    "grey_closing": "morphology",
    "structuring_element": "morphology",
    "SCHEDULES": "thresholds",
    "rank_fractions": "thresholds",
    "value_thresholds": "thresholds",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy(__name__, _EXPORTS)
