"""PDF from an executed report notebook, through Typst (the ``typst`` package from PyPI).

The notebook's Markdown cells and rich outputs become Typst markup: Markdown through
:mod:`chanstat.report.markdown`, figures as images, tables (the report's
``application/vnd.chanstat.table+json`` outputs) as real ``#table``\\ s, notes as shaded blocks.
"""

from __future__ import annotations

import base64
from pathlib import Path

from chanstat.report.display import NOTE_MIME, TABLE_MIME, png_size
from chanstat.report.markdown import markdown_to_typst, typst_string, typst_text

FIGURE_DPI = 110  # the dpi the report's figures are drawn at (display.FIGURE_DPI)
TEXT_WIDTH_IN = 7.0  # A4 with 1.6 cm margins is 17.8 cm wide
MAX_FIGURE_HEIGHT_IN = 9.4

PREAMBLE = """\
#set document(title: {title})
#set page(paper: "a4", margin: (x: 1.6cm, y: 1.6cm), numbering: "1 / 1")
#set text(size: 9.5pt, lang: "en")
#set par(justify: false)
#show heading.where(level: 1): set text(size: 15pt)
#show heading.where(level: 1): set block(above: 1.8em, below: 0.9em)
#show heading.where(level: 2): set text(size: 12pt)
#show heading.where(level: 3): set text(size: 10.5pt)
#show link: set text(fill: rgb("#1f5fb4"))
#show raw.where(block: false): set text(size: 8.5pt)
#set table(stroke: 0.4pt + luma(190), inset: (x: 4pt, y: 2.5pt))

#align(center)[
  #text(size: 20pt, weight: "bold")[{title_markup}]
  {subtitle_markup}
]
#v(0.6em)
#outline(depth: 2, indent: 1.2em)
"""


def notebook_to_typst(nb, image_dir: Path, title: str, subtitle: str | None = None) -> str:
    """Typst source for an executed notebook; figures are written into ``image_dir``."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        PREAMBLE.format(
            title=typst_string(title),
            title_markup=typst_text(title),
            subtitle_markup=f"#linebreak() #text(size: 11pt, fill: luma(80))[{typst_text(subtitle)}]"
            if subtitle
            else "",
        )
    ]
    n_images = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(markdown_to_typst(cell.source, heading_offset=-1))
            continue
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                if out.get("name") == "stdout" and out.get("text", "").strip():
                    parts.append(f"#raw({typst_string(out['text'])}, block: true)\n")
                continue
            if kind not in ("display_data", "execute_result"):
                continue
            data = out.get("data", {})
            if TABLE_MIME in data:
                parts.append(table_to_typst(data[TABLE_MIME]))
            elif NOTE_MIME in data:
                parts.append(note_to_typst(data[NOTE_MIME]))
            elif "image/png" in data:
                n_images += 1
                png = base64.b64decode(data["image/png"])
                name = f"figure-{n_images:03d}.png"
                (image_dir / name).write_bytes(png)
                parts.append(image_to_typst(f"{image_dir.name}/{name}", *png_size(png)))
            elif "text/markdown" in data:
                parts.append(markdown_to_typst(data["text/markdown"], heading_offset=-1))
            elif "text/plain" in data:
                parts.append(f"#raw({typst_string(data['text/plain'])}, block: true)\n")
        parts.append("")
    return "\n".join(parts)


def image_to_typst(path: str, width_px: int, height_px: int) -> str:
    natural_w = width_px / FIGURE_DPI
    width = min(natural_w, TEXT_WIDTH_IN)
    height = width * height_px / max(width_px, 1)
    if height > MAX_FIGURE_HEIGHT_IN:
        size = f"height: {MAX_FIGURE_HEIGHT_IN:.2f}in"
    else:
        size = f"width: {width:.2f}in"
    return f"#align(center)[#image({typst_string(path)}, {size})]\n"


def note_to_typst(payload: dict) -> str:
    colours = {"missing": ("#fff4e0", "#e0a030"), "error": ("#fde8e8", "#c0392b"), "info": ("#e8f1fb", "#3a78c2")}
    fill, edge = colours.get(payload.get("kind", "info"), colours["info"])
    body = markdown_to_typst(payload.get("text", "")).strip()
    return (
        f"#block(fill: rgb({typst_string(fill)}), stroke: (left: 2pt + rgb({typst_string(edge)})), inset: 6pt, "
        f"radius: 2pt, width: 100%)[{body}]\n"
    )


def table_to_typst(payload: dict) -> str:
    columns = payload["columns"]
    n = max(len(columns), 1)
    size = "8pt" if n <= 4 else "7pt" if n <= 8 else "6pt"
    numeric = payload.get("numeric") or [False] * n
    align = ", ".join("right" if num else "left" for num in numeric) or "left"
    cells = ["table.header(" + ", ".join(f"[#strong[{typst_text(c)}]]" for c in columns) + ")"]
    bold = payload.get("bold_rows") or [False] * len(payload["rows"])
    for row, emph in zip(payload["rows"], bold):
        for v in row:
            cells.append(f"[#strong[{typst_text(v)}]]" if emph else f"[{typst_text(v)}]")
    out = []
    if payload.get("caption"):
        # sticky: the caption stays on the page of its table
        out.append(f'#block(sticky: true)[#text(weight: "bold", size: 8.5pt)[{typst_text(payload["caption"])}]]\n')
    out.append(
        f"#block(width: 100%)[#set text(size: {size})\n#table(columns: {n}, align: ({align},), "
        f"fill: (_, y) => if y == 0 {{ luma(235) }},\n" + ",\n".join(cells) + ")]\n"
    )
    if payload.get("footer"):
        out.append(f"#text(size: 7.5pt, fill: luma(90))[{typst_text(payload['footer'])}]\n")
    return "\n".join(out)


def compile_typst(source: str, workdir: Path, output: Path) -> Path:
    """Compile ``source`` (with images relative to ``workdir``) to the PDF ``output``."""
    import typst

    workdir = Path(workdir)
    main = workdir / "report.typ"
    main.write_text(source, encoding="utf-8")
    # embedded fonts only: the same PDF on every machine
    pdf = typst.compile(str(main), root=str(workdir), ignore_system_fonts=True)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_bytes(pdf)
    tmp.replace(output)
    return output
