"""Markdown to HTML and to Typst markup (for the PDF), through mistune's syntax tree.

Only the Markdown the report uses is supported: headings, paragraphs, emphasis, strong,
inline code, links, lists, block quotes, fenced code, pipe tables, rules. Text always goes
into Typst as string literals (``#"..."``), so no character of the input can be read as
Typst markup.
"""

from __future__ import annotations

import json
from functools import lru_cache


@lru_cache(maxsize=2)
def _parser(kind: str):
    import mistune

    plugins = ["table", "strikethrough"]
    if kind == "ast":
        return mistune.create_markdown(renderer=None, plugins=plugins)
    return mistune.create_markdown(escape=True, plugins=plugins)


def markdown_to_html(text: str) -> str:
    html = _parser("html")(text).strip()
    # a single paragraph needs no <p> wrapper inside a note
    if html.startswith("<p>") and html.endswith("</p>") and html.count("<p>") == 1:
        html = html[3:-4]
    return html


def typst_string(text: str) -> str:
    """A Typst string literal holding ``text`` verbatim."""
    return json.dumps(text, ensure_ascii=False)


def typst_text(text: str) -> str:
    """Plain text as Typst markup (a string literal in code mode)."""
    return f"#{typst_string(text)}" if text else ""


def markdown_to_typst(text: str, heading_offset: int = 0) -> str:
    """Typst markup for Markdown ``text``.

    ``heading_offset`` is added to every heading level (e.g. 1 to nest a note's headings).
    """
    tokens = _parser("ast")(text)
    return _blocks(tokens, heading_offset).strip() + "\n"


def _blocks(tokens: list[dict], offset: int) -> str:
    out: list[str] = []
    for tok in tokens:
        t = tok["type"]
        if t == "heading":
            level = max(1, tok["attrs"]["level"] + offset)
            out.append(f"#heading(level: {level})[{_inline(tok.get('children', []))}]\n")
        elif t == "paragraph":
            out.append(_inline(tok.get("children", [])) + "\n")
        elif t == "block_text":
            out.append(_inline(tok.get("children", [])))
        elif t == "list":
            ordered = tok.get("attrs", {}).get("ordered", False)
            items = [f"[{_blocks(item.get('children', []), offset).strip()}]" for item in tok.get("children", [])]
            func = "enum" if ordered else "list"
            out.append(f"#{func}({', '.join(items)})\n")
        elif t == "block_quote":
            body = _blocks(tok.get("children", []), offset).strip()
            out.append(
                f'#block(fill: rgb("#fff4e0"), stroke: (left: 2pt + rgb("#e0a030")), inset: 6pt, width: 100%)[{body}]\n'
            )
        elif t == "block_code":
            lang = (tok.get("attrs") or {}).get("info") or ""
            lang_arg = f", lang: {typst_string(lang.split()[0])}" if lang else ""
            out.append(
                f"#block(fill: luma(245), inset: 6pt, width: 100%)[#text(size: 7pt)[#raw({typst_string(tok['raw'])}, "
                f"block: true{lang_arg})]]\n"
            )
        elif t == "thematic_break":
            out.append("#line(length: 100%, stroke: 0.5pt + luma(180))\n")
        elif t == "table":
            out.append(_table(tok))
        elif t == "block_html":
            out.append(typst_text(tok.get("raw", "").strip()) + "\n")
        elif t == "blank_line":
            continue
        else:  # unknown block: keep its text
            out.append(_inline(tok.get("children", [])) + "\n")
        out.append("\n")
    return "".join(out)


def _inline(children: list[dict]) -> str:
    parts: list[str] = []
    for tok in children:
        t = tok["type"]
        if t == "text":
            parts.append(typst_text(tok["raw"]))
        elif t == "emphasis":
            parts.append(f"#emph[{_inline(tok['children'])}]")
        elif t == "strong":
            parts.append(f"#strong[{_inline(tok['children'])}]")
        elif t == "strikethrough":
            parts.append(f"#strike[{_inline(tok['children'])}]")
        elif t == "codespan":
            parts.append(f"#raw({typst_string(tok['raw'])})")
        elif t == "link":
            url = tok.get("attrs", {}).get("url", "")
            parts.append(f"#link({typst_string(url)})[{_inline(tok['children'])}]")
        elif t == "image":
            parts.append(typst_text(tok.get("attrs", {}).get("url", "")))
        elif t == "softbreak":
            parts.append(" ")
        elif t == "linebreak":
            parts.append("#linebreak()")
        elif t == "inline_html":
            parts.append(typst_text(tok.get("raw", "")))
        else:
            if "children" in tok:
                parts.append(_inline(tok["children"]))
            elif "raw" in tok:
                parts.append(typst_text(tok["raw"]))
    return "".join(parts)


def _table(tok: dict) -> str:
    head: list[str] = []
    rows: list[list[str]] = []
    for part in tok.get("children", []):
        if part["type"] == "table_head":
            head = [_inline(c.get("children", [])) for c in part.get("children", [])]
        elif part["type"] == "table_body":
            for row in part.get("children", []):
                rows.append([_inline(c.get("children", [])) for c in row.get("children", [])])
    n = max([len(head)] + [len(r) for r in rows] + [1])
    cells = []
    if head:
        cells.append("table.header(" + ", ".join(f"[#strong[{h}]]" for h in head) + ")")
    for r in rows:
        cells.extend(f"[{c}]" for c in r + [""] * (n - len(r)))
    return f"#table(columns: {n}, " + ", ".join(cells) + ")\n"
