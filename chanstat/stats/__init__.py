"""Channel statistics: does attribution mass differ across channels, and how sure are we?

Tidy DataFrames in, tidy DataFrames out (pingouin style). This subpackage never imports torch.

- :func:`channel_mass` -- attribution mass and share per sample and channel.
- :func:`clr`, :func:`ilr`, :func:`closure` -- compositional transforms of shares.
- :func:`test_channels` -- is the share equal across channels? (primary: Friedman on well means)
- :func:`channel_share_ci` -- bootstrap (over wells) intervals of each channel's mean share.
- :func:`map_similarity` -- Spearman correlation between channel maps within images.
- :func:`compare_strategies` -- paired Wilcoxon comparisons of DAC scores.
- :func:`simulate_channel_mass`, :func:`rejection_rate` -- calibration and power studies.
"""
from chanstat.stats.bootstrap import channel_share_ci
from chanstat.stats.channel_tests import DEFAULT_TESTS, PRIMARY_TEST, TESTS, test_channels
from chanstat.stats.compositional import closure, clr, ilr, ilr_basis, multiplicative_replacement
from chanstat.stats.mass import channel_mass
from chanstat.stats.similarity import channel_map_correlations, map_similarity
from chanstat.stats.simulate import rejection_rate, simulate_channel_mass
from chanstat.stats.strategies import compare_strategies

__all__ = [
    "DEFAULT_TESTS",
    "PRIMARY_TEST",
    "TESTS",
    "channel_map_correlations",
    "channel_mass",
    "channel_share_ci",
    "closure",
    "clr",
    "compare_strategies",
    "ilr",
    "ilr_basis",
    "map_similarity",
    "multiplicative_replacement",
    "rejection_rate",
    "simulate_channel_mass",
    "test_channels",
]
