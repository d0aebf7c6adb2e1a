"""The report's sections, one module per stage; each section reads a :class:`~chanstat.rundir.RunDirectory`.

A section that lacks its files shows a "stage not run" note naming them; a section that fails
on an unexpected file shows an error note instead of stopping the report (the error is also
kept in :data:`ERRORS`, so tests can insist on none).
"""

from chanstat.report.sections.activity import activity
from chanstat.report.sections.answer import answer, explanation_gallery, explanations_page, plate_layout
from chanstat.report.sections.attribution import attribution_galleries
from chanstat.report.sections.base import ERRORS
from chanstat.report.sections.cellprofiler import channel_enrichment, compartment_channel, concordance, cp_differential
from chanstat.report.sections.counterfactual import counterfactual_quality
from chanstat.report.sections.dac import dac_curves, optimal_masks, single_channel_curves, smoothing_sweep
from chanstat.report.sections.data import data_and_model, model_training
from chanstat.report.sections.decompose import channel_shapley
from chanstat.report.sections.metrics import localisation
from chanstat.report.sections.overview import overview
from chanstat.report.sections.provenance import provenance
from chanstat.report.sections.stats import (
    channel_share_ci,
    channel_shares,
    channel_tests,
    map_similarity,
    strategy_comparison,
)

__all__ = [
    "ERRORS",
    "activity",
    "answer",
    "attribution_galleries",
    "channel_enrichment",
    "channel_shapley",
    "channel_share_ci",
    "channel_shares",
    "channel_tests",
    "compartment_channel",
    "concordance",
    "counterfactual_quality",
    "cp_differential",
    "dac_curves",
    "data_and_model",
    "explanation_gallery",
    "explanations_page",
    "localisation",
    "map_similarity",
    "model_training",
    "optimal_masks",
    "overview",
    "plate_layout",
    "provenance",
    "single_channel_curves",
    "smoothing_sweep",
    "strategy_comparison",
]
