"""CellProfiler link: read tables, parse feature names, find differing features, group by channel.

- :func:`read` — ExportToSpreadsheet folders, ExportToDatabase SQLite, Parquet/CSV profiles.
- :func:`parse_features` — ``Compartment_Category_Feature_Channel`` names -> tidy parts.
- :func:`differential` — Welch t and Mann-Whitney per feature, BH/BY q-values, Hedges' g
  (unequal-variance interval), at the well level (cells aggregated by median) or the cell level.
- :func:`competitive_enrichment` — the test of which channel's features differ more than the
  others' (well-label permutation, feature correlation kept); :func:`channel_enrichment`,
  :func:`compartment_channel_table` — descriptions (counts, odds ratios; no p-values).
- :func:`concordance`, :func:`channel_ranks` — agreement with the attribution's channel ranking.
- :func:`measure_synthetic` — CellProfiler-style features of labelled images (cp-measure).
- :func:`activity` — phenotypic activity: mAP of each perturbation against the controls (copairs),
  p-values adjusted; which perturbations are worth explaining.

This package never imports torch. Its names load on first use, so that ``chanstat --help``
(which imports :mod:`chanstat.cellprofiler.cli`) stays fast.
"""

from __future__ import annotations

from chanstat._exports import lazy

_EXPORTS = {
    "attribution_feature_link": "percell",
    "LINK_COLUMNS": "percell",
    "read": "readers",
    "parse_features": "names",
    "resolve_channel": "names",
    "STAINS": "names",
    "feature_columns": "profiles",
    "aggregate_wells": "profiles",
    "differential": "feature_tests",
    "robust_z": "feature_tests",
    "hedges_g": "feature_tests",
    "welch": "feature_tests",
    "channel_enrichment": "enrichment",
    "competitive_enrichment": "enrichment",
    "competitive_test": "enrichment",
    "channel_score_draws": "enrichment",
    "compartment_channel_table": "enrichment",
    "feature_channels": "enrichment",
    "concordance": "rank_agreement",
    "channel_ranks": "rank_agreement",
    "kendall_tau_b": "rank_agreement",
    "spearman_rho": "rank_agreement",
    "measure_synthetic": "measure",
    "activity": "activity",
    "DEFAULT_MEASUREMENTS": "measure",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy(__name__, _EXPORTS)
