"""What a report cell shows: figures, tables, notes, headings — each as a rich output bundle.

Every output carries the representations both renderers need: HTML and Markdown for the web
page (nbconvert shows an output's Markdown, Quarto may too; both are escaped), PNG for figures
(inlined as base64 by nbconvert and Quarto), and for tables a small JSON form
(:data:`TABLE_MIME`) from which the Typst/PDF writer builds a real ``#table``. Notes carry
Markdown, which the PDF writer turns into Typst.

Text arguments are plain text unless typed :class:`~chanstat.report.text.Markdown`: plain
text (anything from data) is escaped here, in every output format.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Iterable, Sequence

import pandas as pd

from chanstat.report.text import Markdown, as_markdown, code, format_p, format_value, is_p_column, md

TABLE_MIME = "application/vnd.chanstat.table+json"
#: Notes carry this mime type too, so tests and the PDF writer can tell them from prose.
NOTE_MIME = "application/vnd.chanstat.note+json"

FIGURE_DPI = 110


def _display(bundle: dict, metadata: dict | None = None) -> None:
    from IPython.display import display

    display(bundle, raw=True, metadata=metadata or {})


# ---- numbers ------------------------------------------------------------------------------
# ---- figures ------------------------------------------------------------------------------
def show_figure(fig, dpi: int = FIGURE_DPI, caption: str | Markdown | None = None, alt: str | None = None) -> None:
    """Show a matplotlib figure as an inline PNG.

    ``caption`` is shown in italics below it (plain text is escaped); ``alt`` is the figure's
    text description in HTML (default: the figure's own titles), always plain text.
    """
    buf = io.BytesIO()
    # figures laid out by hand (panel mosaics) say so; the others are trimmed to their contents
    tight = None if getattr(fig, "chanstat_fixed_layout", False) else "tight"
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches=tight, facecolor="white")
    data = buf.getvalue()
    if alt is None:  # the figure's own titles say what it shows
        titles = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) else []
        titles += [ax.get_title() for ax in fig.axes if ax.get_title()]
        alt = "; ".join(dict.fromkeys(titles)) or (str(caption) if caption else "") or "figure"
    width, height = png_size(data)
    bundle = {"image/png": base64.b64encode(data).decode("ascii"), "text/plain": str(caption or "<figure>")}
    # display at the figure's natural size (CSS px) so text stays the size it was drawn at
    # (alt is escaped by the HTML template: nbconvert's escape_html filter, Quarto's writer)
    _display(bundle, metadata={"image/png": {"width": width, "height": height, "alt": str(alt)}})
    if caption:
        show_markdown(md("*{}*", caption))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---- text ---------------------------------------------------------------------------------
def show_markdown(text: str | Markdown) -> None:
    """A paragraph (or any Markdown block). Plain ``str`` is shown literally (escaped)."""
    from chanstat.report.markdown import markdown_to_html

    text = as_markdown(text)
    _display({"text/html": _html_block(markdown_to_html(text)), "text/markdown": str(text), "text/plain": str(text)})


def show_heading(text: str | Markdown, level: int = 4) -> None:
    """A heading inside a section (``level`` 3-6; the template's own cells hold levels 1-2)."""
    if not 3 <= level <= 6:
        raise ValueError(f"heading level must be 3..6, got {level}")
    show_markdown(Markdown("#" * level + " ") + as_markdown(text))


def _html_block(fragment: str) -> str:
    """Rendered Markdown in the report's text wrapper (one element per output)."""
    return f'<div class="chanstat-text">{fragment}</div>'


def show_code(text: str, language: str = "", summary: str | None = None) -> None:
    """A block of code or configuration (plain text); in HTML folded under ``summary`` when given."""
    pre = f'<pre class="chanstat-code">{html.escape(text)}</pre>'
    page = f"<details><summary>{html.escape(summary)}</summary>{pre}</details>" if summary else pre
    longest = max((len(m) for m in re.findall(r"~+", text)), default=0)
    fence = "~" * max(4, longest + 1)  # a fence no line of the text can close
    language = "".join(ch for ch in language if ch.isalnum())
    md_text = (f"{as_markdown(summary)}\n\n" if summary else "") + f"{fence}{language}\n{text.rstrip()}\n{fence}"
    _display({"text/html": page, "text/markdown": md_text, "text/plain": text})


def note(text: str | Markdown, kind: str = "info") -> None:
    """A highlighted note (``kind``: ``"missing"``, ``"info"``, ``"error"``); plain ``str`` is escaped."""
    from chanstat.report.markdown import markdown_to_html

    if kind not in ("missing", "info", "error"):
        raise ValueError(f"note kind must be missing, info or error, got {kind!r}")
    text = as_markdown(text)
    _display(
        {
            "text/html": f'<div class="chanstat-note chanstat-{kind}">{markdown_to_html(text)}</div>',
            "text/markdown": "> " + str(text).replace("\n", "\n> "),
            "text/plain": str(text),
            NOTE_MIME: {"kind": kind, "text": str(text)},
        }
    )


#: When true (a run saved from Python, without provenance.json), absent files are not announced:
#: the report shows only what the run holds. Set by :func:`quiet_missing`.
QUIET_MISSING = False


def quiet_missing(quiet: bool = True) -> None:
    """Stop (or resume) the "stage not run" notes, for runs that hold only what a Python analysis saved."""
    global QUIET_MISSING
    QUIET_MISSING = bool(quiet)


def missing_note(files: Sequence[str], stage: str | None = None, what: str | None = None) -> None:
    """The note a section shows when the files it needs are absent (files and stage are plain text);
    nothing under :func:`quiet_missing`."""
    if QUIET_MISSING:
        return
    names = Markdown(", ").join(code(f) for f in files)
    stage_txt = md(" (written by the {} stage)", code(stage)) if stage and stage != "run" else Markdown("")
    tail = md(" — {}", what) if what else Markdown("")
    note(md("**Stage not run:** {} missing{}{}.", names, stage_txt, tail), kind="missing")


# ---- tables -------------------------------------------------------------------------------
def show_table(
    df: pd.DataFrame,
    caption: str | None = None,
    max_rows: int | None = 40,
    bold_rows: Iterable[bool] | None = None,
    digits: int = 3,
    index: bool = False,
    max_text: int = 80,
) -> None:
    """Show a DataFrame as a real table (HTML ``<table>`` and a Typst table in the PDF).

    Parameters
    ----------
    df : the table; cells are written with :func:`format_value`.
    caption : shown above the table.
    max_rows : rows shown; when the table is longer a line says how many were left out.
    bold_rows : one flag per row; flagged rows are emphasised (e.g. the primary test).
    index : include the index as leading column(s).
    max_text : longer cell texts are cut (the HTML keeps the whole text as a tooltip).
    """
    if index:
        df = df.reset_index()
    n_total = len(df)
    flags = list(bold_rows) if bold_rows is not None else [False] * n_total
    if len(flags) != n_total:
        raise ValueError(f"bold_rows has {len(flags)} flags for a table of {n_total} rows")
    if max_rows is not None and n_total > max_rows:
        df = df.iloc[:max_rows]
        flags = flags[:max_rows]
    columns = [str(c) for c in df.columns]
    formats = [format_p if is_p_column(c) else format_value for c in columns]
    full = [[f(v, digits) for f, v in zip(formats, row)] for row in df.itertuples(index=False, name=None)]
    rows = [[v if len(v) <= max_text else v[: max_text - 1] + "…" for v in row] for row in full]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    footer = f"Showing {len(rows)} of {n_total} rows." if len(rows) < n_total else None

    parts = []
    if caption:
        parts.append(f'<p class="chanstat-caption">{html.escape(caption)}</p>')
    parts.append('<div class="chanstat-table-wrap"><table class="chanstat-table">')
    parts.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>")
    for row, whole, flag in zip(rows, full, flags):
        cls = ' class="chanstat-emph"' if flag else ""
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>'
            if num
            else (
                f'<td title="{html.escape(w)}">{html.escape(v)}</td>'
                if v != w
                else f'<td class="nw">{html.escape(v)}</td>'
                if len(v) <= 32
                else f"<td>{html.escape(v)}</td>"
            )
            for v, w, num in zip(row, whole, numeric)
        )
        parts.append(f"<tr{cls}>{cells}</tr>")
    parts.append("</tbody></table></div>")
    if footer:
        parts.append(f'<p class="chanstat-table-footer">{footer}</p>')
    _display(
        {
            "text/html": "".join(parts),
            "text/plain": df.to_string(index=False),
            TABLE_MIME: {
                "caption": caption,
                "columns": columns,
                "rows": rows,
                "bold_rows": [bool(f) for f in flags],
                "numeric": numeric,
                "footer": footer,
            },
        }
    )
