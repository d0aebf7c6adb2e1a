"""``chanstat report RUN_DIR [--to html,pdf] [--engine auto|quarto|builtin]``."""

from __future__ import annotations

import argparse

from chanstat.report.renderer import ENGINES


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("run_dir", help="run directory written by `chanstat run` / `chanstat demo`")
    parser.add_argument("--to", default="html,pdf", help="comma-separated formats: html, pdf (default: html,pdf)")
    parser.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="quarto CLI, the built-in renderer, or auto (quarto when installed)",
    )
    parser.add_argument("--template", default=None, help="report template (default: reports/chanstat_report.py)")
    parser.add_argument("--output-dir", default=None, help="where to write the report (default: RUN_DIR)")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from chanstat.report.renderer import render

    paths = render(
        args.run_dir, formats=args.to, engine=args.engine, template=args.template, output_dir=args.output_dir
    )
    for p in paths:
        print(f"report: {p.resolve()}")
    return 0
