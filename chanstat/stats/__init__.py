"""Channel statistics: which channel carries the difference, and how sure are we?

Tidy DataFrames in, tidy DataFrames out (pingouin style). This subpackage never imports torch.

- :func:`channel_mass` -- attribution mass and share per sample and channel.
- :func:`clr`, :func:`ilr`, :func:`closure` -- compositional transforms of shares.
- :func:`best_channel` -- confidence set for the channel with the largest share (multiple
  comparisons with the best): the named channel, or the set ("Mito or ER"), with gap intervals.
- :func:`test_channels` -- which channel dominates? (primary: intersection-union dominance
  test on unit means; secondary: equal-shares omnibus tests; plate x channel heterogeneity).
- :func:`channel_share_ci` -- t-intervals (and simultaneous intervals) of each channel's mean share.
- :func:`test_against_zero` -- per-channel one-sample test of signed contributions, Holm over channels.
- :func:`adjust` -- the package's one p-value adjustment (Holm, BH, BY, ...).
- :func:`drop_incomplete` -- drop samples with NaN shares, with a count and a warning.
- :func:`map_similarity` -- Spearman correlation between channel maps within images.
- :func:`compare_strategies` -- paired Wilcoxon comparisons of DAC scores.
- :func:`simulate_channel_mass`, :func:`simulate_unit_means`, :func:`rejection_rate` --
  calibration and power studies.

One vocabulary: every verb takes the tidy table first (``table``), then the shared design
parameters (:data:`DESIGN_PARAMETERS`), then keyword-only options; ``padjust`` defaults to
:data:`DEFAULT_PADJUST` (Holm) and ``n_boot`` to :data:`N_BOOT` (2000) everywhere;
transitions are written ``"control → treated"``.
"""

from chanstat.stats.against_zero import test_against_zero
from chanstat.stats.best import best_channel, mcb, squeeze_prior
from chanstat.stats.bootstrap import channel_share_ci
from chanstat.stats.channel_tests import (
    DEFAULT_TESTS,
    PRIMARY_TEST,
    TESTS,
    test_channels,
)
from chanstat.stats.compositional import (
    closure,
    clr,
    ilr,
    ilr_basis,
    multiplicative_replacement,
)
from chanstat.stats.design import DEFAULT_PADJUST, DESIGN_PARAMETERS, MIN_PLATE_UNITS, N_BOOT, drop_incomplete
from chanstat.stats.dominance import (
    dominance,
    hotelling_ilr,
    pairwise_greater,
    plate_heterogeneity,
    t_interval,
)
from chanstat.stats.mass import channel_mass
from chanstat.stats.padjust import adjust
from chanstat.stats.similarity import channel_map_correlations, map_similarity
from chanstat.stats.simulate import rejection_rate, simulate_channel_mass, simulate_unit_means
from chanstat.stats.strategies import compare_strategies

__all__ = [
    "DEFAULT_PADJUST",
    "DEFAULT_TESTS",
    "DESIGN_PARAMETERS",
    "MIN_PLATE_UNITS",
    "N_BOOT",
    "PRIMARY_TEST",
    "TESTS",
    "adjust",
    "best_channel",
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
    "mcb",
    "multiplicative_replacement",
    "pairwise_greater",
    "plate_heterogeneity",
    "rejection_rate",
    "simulate_channel_mass",
    "simulate_unit_means",
    "squeeze_prior",
    "t_interval",
    "test_against_zero",
    "test_channels",
]
