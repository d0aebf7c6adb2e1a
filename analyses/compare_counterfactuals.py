"""Compare channel conclusions between runs that differ only in their counterfactuals.

Usage::

    chanstat run analyses/real_field.toml --out runs/real_field                      # oracle
    chanstat run analyses/real_field_generator.toml --out runs/real_field_generator
    chanstat run analyses/real_field_optimise.toml --out runs/real_field_optimise
    python analyses/compare_counterfactuals.py runs/real_field runs/real_field_generator runs/real_field_optimise
    python analyses/compare_counterfactuals.py oracle=runs/real_field generator=runs/real_field_generator

The first run is the reference (unless ``--reference LABEL``); runs may be given as
``label=path`` (default label: the folder name). Prints one table with a row per run and
attribution method (dominant channel by attribution mass and by single-channel DAC, mean
aggregate DAC, single-channel DAC of the planted channel and its difference to the
reference) and one with a row per run and channel (share of the counterfactual change, flip
rate, Shapley share when the run has ``channel_shapley.parquet``, single-channel DAC).
Writes ``counterfactual_comparison_methods.parquet``, ``counterfactual_comparison_channels.parquet``
and ``counterfactual_comparison.json`` into ``--out`` (default: the last run directory); with
exactly two runs also the pairwise tables of :func:`chanstat.counterfactual.compare_runs`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from chanstat.counterfactual.compare import compare_counterfactual_runs, compare_runs
from chanstat.io import write_json, write_table


def parse_runs(items: list[str]) -> dict[str, Path]:
    """``["label=path", "path", ...]`` -> {label: path}; labels must be unique."""
    runs: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition("=")
        label, path = (label, path) if sep else (Path(item).name, item)
        if label in runs:
            raise SystemExit(f"run label {label!r} given twice; name runs as label=path")
        runs[label] = Path(path)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (label=path or path); the first is the reference")
    parser.add_argument("--reference", default=None, help="label of the reference run (default: the first)")
    parser.add_argument("--out", default=None, help="folder for the comparison tables (default: the last run)")
    args = parser.parse_args(argv)
    runs = parse_runs(args.runs)
    if len(runs) < 2:
        parser.error("give at least two run directories")
    reference = args.reference or next(iter(runs))
    result = compare_counterfactual_runs(runs, reference=reference)
    out = Path(args.out) if args.out else list(runs.values())[-1]
    write_table(result.methods, out / "counterfactual_comparison_methods.parquet")
    write_table(result.channels, out / "counterfactual_comparison_channels.parquet")
    summary = dict(result.summary)
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print(f"reference: {reference}; planted channel: {summary['planted_channel']}\n")
    print("per run and method")
    print(result.methods.drop(columns=["planted_channel"]).to_string(index=False, float_format=fmt))
    print("\nper run and channel")
    print(result.channels.to_string(index=False, float_format=fmt))
    if len(runs) == 2:
        pair = compare_runs(*runs.values())
        write_table(pair.dominant, out / "counterfactual_comparison_dominant.parquet")
        write_table(pair.dac, out / "counterfactual_comparison_dac.parquet")
        summary["pairwise"] = pair.summary
        print(f"\npairwise dominant-channel agreement: {pair.summary['dominant_agreement']}; "
              f"mean |DAC difference|: {pair.summary['mean_abs_dac_difference']}")
    write_json(summary, out / "counterfactual_comparison.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
