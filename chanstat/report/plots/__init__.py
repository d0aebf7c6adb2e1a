"""Figures for the report: plain functions, arrays / tidy tables in, matplotlib Figure out.

``style`` (rcParams, channel colours, facet grid), ``images`` (galleries, mask panels),
``charts`` (curves, distributions, bars, intervals), ``matrices`` (heatmaps, volcano, ranks).
"""
