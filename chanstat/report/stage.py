"""Pipeline stage ``report``: render the run directory's report (default HTML and PDF)."""

from __future__ import annotations

from typing import Literal, cast

from pydantic import Field

from chanstat.config import ConfigError, Section
from chanstat.report.renderer import render, resolve_engine
from chanstat.stage import Stage


class ReportConfig(Section):
    """``[report]``: the Quarto report rendered from this run directory's files."""

    formats: list[Literal["html", "pdf"]] = Field(
        default_factory=lambda: cast(list[Literal["html", "pdf"]], ["html", "pdf"]), description="Any of html, pdf."
    )
    engine: Literal["auto", "quarto", "builtin"] = Field(
        "auto", description='"auto" uses quarto when on PATH, else the built-in renderer.'
    )
    template: str | None = Field(None, description="Another Quarto document (relative to the config file).")

    @staticmethod
    def preflight(section: dict, config_dir) -> None:
        from pathlib import Path

        try:
            resolve_engine(section.get("engine", "auto"))
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"[report] engine: {exc}") from None
        if section.get("template"):
            path = Path(section["template"]).expanduser()
            path = path if path.is_absolute() else Path(config_dir) / path
            if not path.is_file():
                raise ConfigError(f"[report] template: file not found: {path}")


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    section = ctx.section("report")
    engine = resolve_engine(section["engine"])
    template = ctx.resolve_path(section["template"]) if section.get("template") else None
    paths = render(ctx.out, formats=section["formats"], engine=engine, template=template)
    return {}, {"engine": engine, "files": [p.name for p in paths]}


STAGE = Stage(
    name="report",
    config=ReportConfig,
    writes=("report_html", "report_pdf"),
    reads_all=True,
    whole_set=whole_set,
)
