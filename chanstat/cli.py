"""The ``chanstat`` command.

Every error a user can cause is one line naming the problem and the file or key, with exit
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import pickle
import sqlite3
import sys
import zlib
from pathlib import Path


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--quick", action="store_true", help="small version (the config's [quick] table)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing chanstat run directory (never any other folder)"
    )
    p.add_argument("--only", default=None, help="comma-separated stages to run")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a run directory: unchanged stages are kept, sharded stages skip committed shards",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from chanstat import pipeline

    config = pipeline.demo_config_path() if args.command == "demo" else Path(args.config)
    out = pipeline.run(
        config,
        args.out,
        quick=args.quick,
        force=args.force,
        only=[s.strip() for s in args.only.split(",") if s.strip()] if args.only is not None else None,
        progress=not args.no_progress,
        resume=args.resume,
    )
    report = out / "report.html"
    print(f"run directory: {out.resolve()}")
    if report.exists():
        print(f"report: {report.resolve()}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from chanstat import pipeline
    from chanstat.config import schema_markdown

    if args.check:
        from chanstat.dryrun import check

        check(args.check, quick=args.quick, log=lambda line: print(f"  ok: {line}"))
        print(f"{args.check}: valid (dry run passed)")
        return 0
    text = schema_markdown(pipeline.stages())
    if args.readme:
        update_readme(Path(args.readme), text)
        print(f"{args.readme}: config schema updated")
        return 0
    print(text)
    return 0


README_MARKERS = ("<!-- config-schema:start -->", "<!-- config-schema:end -->")


def readme_block(text: str) -> str:
    """The generated config-schema block of a README (between its markers)."""
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"README has no {start} ... {end} block")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def update_readme(path: Path, schema: str) -> None:
    start, end = README_MARKERS
    text = path.read_text()
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{schema}\n{end}{after}")


def _cmd_schema(args: argparse.Namespace) -> int:
    from chanstat.schema import describe

    table = describe()
    if not args.markdown:
        print(table.to_string(index=False))
        return 0
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chanstat", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the full pipeline on the embedded synthetic data set")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("run", help="run the pipeline from a TOML config")
    p.add_argument("config", help="TOML config (see analyses/demo.toml)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("config", help="print the config schema (or --check a config file)")
    p.add_argument("--check", default=None, help="dry-run this config file (values, inputs, model, providers) and exit")
    p.add_argument("--quick", action="store_true", help="with --check: the config's [quick] version")
    p.add_argument("--readme", default=None, help="rewrite the config-schema block of this README")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("schema", help="print the run-directory schema (every file a run writes)")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=_cmd_schema)

    from chanstat.cellprofiler import cli as cellprofiler_cli
    from chanstat.report import cli as report_cli

    report_cli.configure(sub.add_parser("report", help="render the report of a run directory"))
    cellprofiler_cli.configure(
        sub.add_parser("cellprofiler", help="CellProfiler tables: differential features by channel")
    )
    from chanstat.export import cli as export_cli

    export_cli.configure(sub.add_parser("export", help="export a run: maps as OME-Zarr (napari), results as AnnData"))
    for command in sub.choices.values():  # global flags are accepted after the subcommand too
        if not any("--debug" in a.option_strings for a in command._actions):
            command.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
            )
    return parser


#: Errors a user's input can cause; shown as one line (exit code 2) unless --debug.
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    RuntimeError,
    TypeError,
    EOFError,
    UnicodeDecodeError,
    zlib.error,
    sqlite3.Error,
    OSError,
    pickle.UnpicklingError,
)


def one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if "weights_only" in text or isinstance(exc, pickle.UnpicklingError):  # never pass on torch's advice to unpickle
        text = (
            "a file is not a readable PyTorch checkpoint (torch.load refused it; it may be damaged or not chanstat's)"
        )
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            "chanstat: interrupted; what was finished is kept (see provenance.json); --resume continues",
            file=sys.stderr,
        )
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"chanstat: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
