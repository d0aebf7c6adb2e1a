"""The ``chanstat`` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--quick", action="store_true", help="small version (the config's [quick] table)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--only", default=None, help="comma-separated stages to run (data and model always run)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--resume", action="store_true", help="keep the run directory; sharded stages skip committed shards")


def _cmd_run(args: argparse.Namespace) -> int:
    from chanstat import pipeline

    config = pipeline.demo_config_path() if args.command == "demo" else Path(args.config)
    out = pipeline.run(
        config,
        args.out,
        quick=args.quick,
        force=args.force,
        only=args.only.split(",") if args.only else None,
        progress=not args.no_progress,
        resume=args.resume,
    )
    report = out / "report.html"
    print(f"run directory: {out.resolve()}")
    if report.exists():
        print(f"report: {report.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chanstat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the full pipeline on the embedded synthetic data set")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("run", help="run the pipeline from a TOML config")
    p.add_argument("config", help="TOML config (see analyses/demo.toml)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    for name, module, help_text in (
        ("report", "chanstat.report.cli", "render the report of a run directory"),
        ("cellprofiler", "chanstat.cellprofiler.cli", "CellProfiler tables: differential features by channel"),
    ):
        p = sub.add_parser(name, help=help_text)
        try:
            __import__(module)
            sys.modules[module].configure(p)
        except ImportError as exc:  # subpackage not installed in this build
            p.set_defaults(func=lambda args, exc=exc: sys.exit(f"chanstat {args.command}: unavailable ({exc})"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"chanstat: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
