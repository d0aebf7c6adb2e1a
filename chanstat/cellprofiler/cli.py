"""``chanstat cellprofiler`` sub-commands (kept light: heavy imports happen inside the commands)."""

from __future__ import annotations

import argparse


def _channel_map(text: str | None) -> dict | None:
    if not text:
        return None
    pairs = [p for p in text.split(",") if p.strip()]
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--channel-map entries look like Hoechst=DNA; got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _cmd_diff(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chanstat.cellprofiler.enrichment import channel_enrichment, compartment_channel_table
    from chanstat.cellprofiler.feature_tests import differential
    from chanstat.cellprofiler.readers import read
    from chanstat.io import write_table

    path = Path(args.path)
    aggregate = "well" if args.level == "well" and path.suffix.lower() in (".parquet", ".pq") else None
    wells = args.well_columns.split(",") if args.well_columns else None
    table = read(path, aggregate=aggregate, well=wells)
    diff = differential(
        table,
        by=args.by,
        case=args.case,
        control=args.control,
        unit=args.level,
        normalize="robust_z" if args.normalize else None,
        padjust=args.fdr,
        alpha=args.alpha,
        well=wells,
        channel_map=_channel_map(args.channel_map),
    )
    enrichment = channel_enrichment(diff, alpha=args.alpha, correlation=args.correlation)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(diff, out / "cp_differential.parquet")
    write_table(enrichment, out / "channel_enrichment.parquet")
    write_table(
        compartment_channel_table(diff, alpha=args.alpha, correlation=args.correlation),
        out / "compartment_channel.parquet",
    )
    tested = int((diff["status"] == "tested").sum())
    print(
        f"{tested} of {len(diff)} features tested, {int(diff['significant'].sum())} significant "
        f"(q < {args.alpha}, {args.fdr.upper()}) at the {args.level} level"
    )
    cols = ["channel", "n_features", "n_significant", "odds_ratio", "mean_abs_effect"]
    print(enrichment[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("(descriptive counts and odds ratios; the test of channel enrichment is competitive_enrichment)")
    print(f"wrote {out / 'cp_differential.parquet'}, {out / 'channel_enrichment.parquet'}")
    return 0


def _cmd_parse(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chanstat.cellprofiler.names import parse_features
    from chanstat.io import write_table

    path = Path(args.path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
    else:
        from chanstat.cellprofiler.readers import read

        names = list(read(path).columns)
    parsed = parse_features(names, channel_map=_channel_map(args.channel_map))
    if args.out:
        write_table(parsed, args.out)
        print(f"wrote {args.out}")
    summary = parsed.explode("channels").groupby(["compartment", "category"], dropna=False).size()
    print(summary.to_string())
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``diff`` and ``parse`` sub-commands to ``chanstat cellprofiler``."""
    sub = parser.add_subparsers(dest="cellprofiler_command", required=True)

    p = sub.add_parser(
        "diff",
        help="differential features (case vs control) and channel enrichment",
        description="Read a CellProfiler table, test every feature case vs control, group by channel.",
    )
    p.add_argument("path", help="ExportToSpreadsheet folder, SQLite file, or Parquet/CSV profiles")
    p.add_argument("--by", required=True, help="column holding the condition, e.g. Metadata_broad_sample")
    p.add_argument("--case", required=True, nargs="+", help="value(s) of --by for the case group")
    p.add_argument("--control", required=True, nargs="+", help="value(s) of --by for the control group")
    p.add_argument("--out", required=True, help="folder for cp_differential.parquet and channel_enrichment.parquet")
    p.add_argument(
        "--level",
        choices=("well", "cell"),
        default="well",
        help="replicate unit: wells (cells aggregated by median; default) or cells",
    )
    p.add_argument("--normalize", action="store_true", help="robust z-score per plate against the controls")
    p.add_argument("--fdr", choices=("bh", "by"), default="bh", help="Benjamini-Hochberg (default) or -Yekutieli")
    p.add_argument("--alpha", type=float, default=0.05, help="q-value threshold (default 0.05)")
    p.add_argument(
        "--correlation",
        choices=("both", "pair", "exclude"),
        default="both",
        help="how two-channel correlation features count in the enrichment",
    )
    p.add_argument("--channel-map", default=None, help="stain renames, e.g. Hoechst=DNA,Phalloidin=AGP")
    p.add_argument(
        "--well-columns", default=None, help="comma-separated well key (default Metadata_Plate,Metadata_Well)"
    )
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("parse", help="parse the feature names of a table into compartment/category/channel")
    p.add_argument("path", help="CellProfiler table (any format `diff` reads)")
    p.add_argument("--out", default=None, help="write the parsed names as Parquet")
    p.add_argument("--channel-map", default=None, help="stain renames, e.g. Hoechst=DNA")
    p.set_defaults(func=_cmd_parse)
