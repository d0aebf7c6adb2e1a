"""Channel statistics: which channel carries the difference, and how sure are we?

Tidy DataFrames in, tidy DataFrames out (pingouin style). This subpackage never imports torch.

- :func:`channel_mass` -- attribution mass and share per sample and channel.
- :func:`clr`, :func:`ilr`, :func:`closure` -- compositional transforms of shares.
- :func:`test_channels` -- which channel dominates? (primary: intersection-union dominance
  test on unit means; secondary: equal-shares omnibus tests; plate x channel heterogeneity).
- :func:`channel_share_ci` -- t-intervals (and simultaneous intervals) of each channel's mean share.
- :func:`test_against_zero` -- per-channel one-sample test of signed contributions, Holm over channels.
- :func:`adjust` -- the package's one p-value adjustment (Holm, BH, BY, ...).
- :func:`drop_incomplete` -- drop samples with NaN shares, with a count and a warning.
- :func:`map_similarity` -- Spearman correlation between channel maps within images.
- :func:`compare_strategies` -- paired Wilcoxon comparisons of DAC scores.
- :func:`simulate_channel_mass`, :func:`rejection_rate` -- calibration and power studies.
"""
from chanstat.stats.against_zero import test_against_zero
from chanstat.stats.bootstrap import channel_share_ci
from chanstat.stats.channel_tests import DEFAULT_TESTS, PRIMARY_TEST, TESTS, test_channels
from chanstat.stats.compositional import closure, clr, ilr, ilr_basis, multiplicative_replacement
from chanstat.stats.design import MIN_PLATE_UNITS, drop_incomplete
from chanstat.stats.dominance import dominance, hotelling_ilr, pairwise_greater, plate_heterogeneity, t_interval
from chanstat.stats.mass import channel_mass
from chanstat.stats.padjust import adjust
from chanstat.stats.similarity import channel_map_correlations, map_similarity
from chanstat.stats.simulate import rejection_rate, simulate_channel_mass
from chanstat.stats.strategies import compare_strategies

__all__ = [
    "DEFAULT_TESTS",
    "MIN_PLATE_UNITS",
    "PRIMARY_TEST",
    "TESTS",
    "adjust",
    "channel_map_correlations",
    "channel_mass",
    "channel_share_ci",
    "closure",
    "clr",
    "compare_strategies",
    "dominance",
    "drop_incomplete",
    "hotelling_ilr",
    "ilr",
    "ilr_basis",
    "map_similarity",
    "multiplicative_replacement",
    "pairwise_greater",
    "plate_heterogeneity",
    "rejection_rate",
    "simulate_channel_mass",
    "t_interval",
    "test_against_zero",
    "test_channels",
]
