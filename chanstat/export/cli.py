"""``chanstat export RUN_DIR [--to ome-zarr,anndata] [--out DIR] [--samples 0,1] [--format h5ad|zarr]``."""

from __future__ import annotations

import argparse

TARGETS = ("ome-zarr", "anndata")


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "run_dir", help="run directory written by `chanstat run` / `chanstat demo` or RunDirectory.save"
    )
    parser.add_argument("--to", default="ome-zarr,anndata", help="comma-separated: ome-zarr, anndata (default both)")
    parser.add_argument("--out", default=None, help="folder to write into (default: RUN_DIR/export)")
    parser.add_argument("--samples", default=None, help="comma-separated sample indices for ome-zarr (default all)")
    parser.add_argument("--max-samples", type=int, default=None, help="export at most this many images as OME-Zarr")
    parser.add_argument("--format", default="h5ad", choices=("h5ad", "zarr"), help="AnnData file format")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from chanstat.export import export_anndata, export_ome_zarr
    from chanstat.rundir import RunDirectory

    targets = [t.strip() for t in str(args.to).split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"--to: unknown targets {unknown or '(none)'}; choose from {', '.join(TARGETS)}")
    samples = None
    if args.samples:
        try:
            samples = [int(s) for s in str(args.samples).split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--samples must be comma-separated integers; got {args.samples!r}") from None
    run = RunDirectory(args.run_dir)
    paths = []
    if "ome-zarr" in targets:
        paths += export_ome_zarr(run, args.out, samples=samples, max_samples=args.max_samples)
    if "anndata" in targets:
        paths += export_anndata(run, args.out, format=args.format)
    for p in paths:
        print(f"export: {p}")
    return 0
