"""Trusted and untrusted text in the report.

Everything a section shows is either *plain text* (any ``str``: class, channel, well, plate,
feature, method and file names, config values, error messages — anything that can come from
data) or *trusted markup* written by the template or a section (:class:`Markdown`). The display helpers (:mod:`chanstat.report.display`) escape plain text
themselves, so a section cannot forget to; markup is passed through. Data goes into markup
only through :meth:`Markdown.format` / :func:`md`, which escape every argument that is not
itself :class:`Markdown`.

Escaping is by backslash before every ASCII punctuation character (CommonMark, pandoc and
mistune all read ``\\<`` as a literal ``<``), so the text stays literal in the HTML page
(nbconvert or Quarto), in the Typst/PDF writer (which reads the same Markdown) and in Quarto's
own Markdown path. Matplotlib text is made literal by the figure style (``text.parse_math``
off), so ``$`` in a channel name cannot start mathtext.
"""

from __future__ import annotations

import html
import math
import re
import string
from typing import Any

import numpy as np
import pandas as pd

_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")


class Markdown(str):
    """Trusted Markdown (template or section text, never data).

    ``+`` with a plain ``str`` escapes the plain part; :meth:`format` escapes its arguments.
    """

    def format(self, *args: Any, **kwargs: Any) -> "Markdown":  # type: ignore[override]
        return Markdown(_FORMATTER.vformat(str(self), args, kwargs))

    def __add__(self, other: Any) -> "Markdown":
        return Markdown(str.__add__(self, as_markdown(other)))

    def __radd__(self, other: Any) -> "Markdown":
        return Markdown(as_markdown(other) + str(self))

    def join(self, parts) -> "Markdown":  # type: ignore[override]
        return Markdown(str.join(self, [as_markdown(p) for p in parts]))


def escape_markdown(text: Any) -> str:
    """``text`` as Markdown that reads back as exactly ``text`` (one line; newlines become spaces)."""
    value = text if isinstance(text, str) else format_value(text)
    value = re.sub(r"[\r\n\t\v\f]+", " ", value)
    return _PUNCTUATION.sub(r"\\\1", value)


def escape_html(text: Any) -> str:
    return html.escape(text if isinstance(text, str) else format_value(text), quote=True)


def as_markdown(value: Any) -> Markdown:
    """``value`` itself when it is :class:`Markdown`, else its text escaped."""
    return value if isinstance(value, Markdown) else Markdown(escape_markdown(value))


def md(template: str, *args: Any, **kwargs: Any) -> Markdown:
    """``Markdown(template).format(*args, **kwargs)``: trusted template, escaped values."""
    return Markdown(template).format(*args, **kwargs)


def code(value: Any) -> Markdown:
    """Inline code holding ``value`` literally (a backtick fence longer than any run inside it)."""
    text = value if isinstance(value, str) else format_value(value)
    text = re.sub(r"[\r\n]+", " ", text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return Markdown(f"{fence}{pad}{text}{pad}{fence}")


class _EscapingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markdown):
            return str(value)
        if format_spec:
            return escape_markdown(format(value, format_spec))
        return escape_markdown(value)


_FORMATTER = _EscapingFormatter()


def format_value(value: Any, digits: int = 3) -> str:
    """How the report writes one table cell.

    Floats get ``digits`` significant digits (``f"{x:.3g}"``, so p-values below 1e-4 appear as
    ``1.23e-05``); NaN and None become an en dash; booleans ``yes``/``no``; sequences are joined
    with ", ".
    """
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.{digits}g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(format_value(v, digits) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v, digits)}" for k, v in value.items())
    try:
        if pd.isna(value):
            return "–"
    except (TypeError, ValueError):
        pass
    return str(value)


#: Below this a p-value is printed as "< 1e-16" (double precision cannot tell such p-values apart, and "0" misleads).
P_FLOOR = 1e-16


def format_p(value: Any, digits: int = 3) -> str:
    """A p-value as the report writes it: ``"< 1e-16"`` below :data:`P_FLOOR` (zero included), else
    :func:`format_value`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return format_value(value, digits)
    if math.isfinite(v) and v < P_FLOOR:
        return "< 1e-16"
    return format_value(value, digits)


def p_text(value: Any) -> "Markdown":
    """``p = 0.0123`` or ``p < 1e-16`` (Markdown, escaped)."""
    text = format_p(value)
    return md("p {}", text) if text.startswith("<") else md("p = {}", text)


def is_p_column(name: str) -> bool:
    """Whether a table column holds p-values (``p_value``, ``p_adj``, ``q_value``, ``*_p``, ``p_*``)."""
    name = str(name)
    return (
        name in ("p", "p_value", "p_adj", "q_value", "min_p_value") or name.endswith("_p") or name.startswith("p_value")
    )


def finished_time(provenance: dict) -> str | None:
    """When the run finished: ``provenance["finished"]``, else (the report renders before the run records
    its end) the start plus the stages' total wall time so far, marked as such."""
    if provenance.get("finished"):
        return str(provenance["finished"])
    started, total = provenance.get("started"), provenance.get("total_wall_s")
    if not started or total is None:
        return None
    from datetime import datetime, timedelta

    try:
        end = datetime.fromisoformat(str(started)) + timedelta(seconds=float(total))
    except (TypeError, ValueError):
        return None
    return f"{end.isoformat(timespec='seconds')} (analysis stages; the report followed)"
