"""Compare channel conclusions between two runs that differ only in their counterfactuals.

Usage::

    chanstat run analyses/real_field.toml --out runs/real_field                  # oracle
    chanstat run analyses/real_field_optimise.toml --out runs/real_field_optimise
    python analyses/compare_counterfactuals.py runs/real_field runs/real_field_optimise

Prints whether both runs name the same dominant channel (by attribution mass and by
single-channel DAC; and whether it is the planted one), the DAC difference per method,
strategy and channel, and both providers' counterfactual quality; writes
``counterfactual_comparison_dominant.parquet``, ``counterfactual_comparison_dac.parquet`` and
``counterfactual_comparison.json`` into ``--out`` (default: the second run directory).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from chanstat.counterfactual.compare import compare_runs
from chanstat.io import write_json, write_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", help="run directory with the reference (oracle) counterfactuals")
    parser.add_argument("other", help="run directory with the counterfactuals to judge")
    parser.add_argument("--out", default=None, help="folder for the comparison tables (default: OTHER)")
    args = parser.parse_args(argv)
    result = compare_runs(args.reference, args.other)
    out = Path(args.out) if args.out else Path(args.other)
    write_table(result.dominant, out / "counterfactual_comparison_dominant.parquet")
    write_table(result.dac, out / "counterfactual_comparison_dac.parquet")
    write_json(result.summary, out / "counterfactual_comparison.json")
    print(f"reference: {args.reference} ({result.summary['reference_provider']})")
    print(f"other:     {args.other} ({result.summary['other_provider']})")
    print(f"planted channel: {result.summary['planted_channel']}\n")
    print("dominant channel")
    print(result.dominant.to_string(index=False))
    print(f"\nagreement: {result.summary['dominant_agreement']}")
    print("\nmean DAC (other - reference)")
    print(result.dac.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nmean |DAC difference|: {result.summary['mean_abs_dac_difference']}")
    if len(result.quality):
        cols = [c for c in ("run", "provider", "channel", "mean_abs_diff", "change_share", "flip_rate", "success_rate")
                if c in result.quality]
        print("\ncounterfactual quality")
        print(result.quality[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
