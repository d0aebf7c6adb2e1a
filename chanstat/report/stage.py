"""Pipeline stage ``report``: render the run directory's report (default HTML and PDF).

Config section ``[report]``::

    [report]
    formats = ["html", "pdf"]   # any of "html", "pdf"
    engine = "auto"             # "auto" (quarto when on PATH), "quarto" or "builtin"
    template = "reports/chanstat_report.py"   # optional; relative to the config file
"""
from __future__ import annotations

from chanstat.report.renderer import parse_formats, render, resolve_engine


def run(ctx) -> dict:
    section = ctx.section("report")
    formats = parse_formats(section.get("formats", ["html", "pdf"]))
    engine = resolve_engine(section.get("engine", "auto"))
    template = ctx.resolve_path(section["template"]) if section.get("template") else None
    paths = render(ctx.out, formats=formats, engine=engine, template=template)
    return {"engine": engine, "files": [p.name for p in paths]}
