"""Reports rendered from a run directory.

The report template (``reports/chanstat_report.py``, a Jupyter percent script that Quarto also
renders) reads only the files in a run directory, through :class:`chanstat.rundir.RunDirectory`:
no torch, no model, seconds to render.

>>> from chanstat.report import render
>>> render("runs/demo", formats=("html", "pdf"))          # doctest: +SKIP
[PosixPath('runs/demo/report.html'), PosixPath('runs/demo/report.pdf')]
"""

from chanstat.report.display import format_value
from chanstat.report.renderer import ENGINES, FORMATS, default_template, parse_formats, render, resolve_engine
from chanstat.report.text import Markdown
from chanstat.rundir import RunDirectory

__all__ = [
    "ENGINES",
    "FORMATS",
    "Markdown",
    "RunDirectory",
    "default_template",
    "format_value",
    "parse_formats",
    "render",
    "resolve_engine",
]
