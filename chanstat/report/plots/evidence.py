"""Figures of the verdict: the evidence side by side, and a plate-layout heatmap of wells."""

from __future__ import annotations

import re
import string
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from chanstat.report.plots.style import NEUTRAL, channel_colours, facet_grid, styled

#: piece -> panel title and axis label
PANELS = {
    "attribution": ("attribution share", "mean share (joint interval)"),
    "dac": ("single-channel DAC", "DAC (95% interval)"),
    "shapley": ("Shapley value", "contribution (95% interval)"),
}


@styled
def evidence_panels(evidence: pd.DataFrame, channels: Sequence[str], titles: Mapping[str, str] | None = None) -> Figure:
    """One panel per piece (attribution share, single-channel DAC, Shapley): a row per channel with
    its estimate and interval; channels in the piece's set of possibly-best channels are drawn
    in their colour and filled, the others grey and hollow.

    ``evidence``: rows of ``verdict_evidence`` for one transition (piece, channel, estimate,
    ci_low, ci_high, in_set).
    """
    pieces = [p for p in PANELS if p in set(evidence["piece"].astype(str))]
    fig, axes = facet_grid(max(1, len(pieces)), 3, 3.0, 0.3 * len(channels) + 1.2, sharex=False, sharey=True)
    colours = channel_colours(channels)
    ys = np.arange(len(channels))[::-1]
    for ax, piece in zip(axes.flat, pieces):
        sub = evidence[evidence["piece"].astype(str) == piece].set_index("channel")
        for y, ch in zip(ys, channels):
            if ch not in sub.index:
                continue
            row = sub.loc[ch]
            chosen = bool(row["in_set"])
            colour = colours[ch] if chosen else NEUTRAL
            lo, hi = float(row["ci_low"]), float(row["ci_high"])
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=colour, lw=2.2 if chosen else 1.4)
            ax.plot(float(row["estimate"]), y, "o", ms=6, color=colour, mfc=colour if chosen else "white")
        ax.axvline(0.0, color="#888888", lw=0.7, ls=":")
        ax.set_yticks(ys)
        ax.set_yticklabels(list(channels))
        title, xlabel = PANELS[piece]
        ax.set_title((titles or {}).get(piece, title))
        ax.set_xlabel(xlabel)
    if not pieces:
        axes.flat[0].text(0.5, 0.5, "no evidence", ha="center", va="center")
        axes.flat[0].set_axis_off()
    return fig


_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,2})\s*$")


def well_position(well: str) -> tuple[int, int] | None:
    """``"C03"`` -> (2, 2) (zero-based row, column); None for names that are not plate wells."""
    m = _WELL.match(str(well))
    if not m:
        return None
    letters = m.group(1).upper()
    row = 0
    for ch in letters:
        row = row * 26 + string.ascii_uppercase.index(ch) + 1
    return row - 1, int(m.group(2)) - 1


def plate_positions(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with zero-based ``_row`` / ``_col`` from ``Metadata_Row`` / ``Metadata_Col`` (numbers or
    letters) or a parsed ``Metadata_Well``; rows without a position are dropped."""
    t = table.copy()
    if "Metadata_Row" in t and "Metadata_Col" in t:

        def row_index(v):
            if isinstance(v, str) and v.strip().isalpha():
                return well_position(f"{v.strip()}1")[0]
            return int(float(v)) - 1

        t["_row"] = [row_index(v) for v in t["Metadata_Row"]]
        t["_col"] = [int(float(v)) - 1 for v in t["Metadata_Col"]]
        return t
    if "Metadata_Well" not in t:
        return t.iloc[0:0].assign(_row=[], _col=[])
    pos = [well_position(w) for w in t["Metadata_Well"]]
    t["_row"] = [p[0] if p else -1 for p in pos]
    t["_col"] = [p[1] if p else -1 for p in pos]
    return t[(t["_row"] >= 0) & (t["_col"] >= 0)]


@styled
def plate_heatmap(
    wells: pd.DataFrame,
    value: str,
    label: str,
    plate: str = "Metadata_Plate",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """A 96- or 384-well plate layout per plate coloured by ``value`` (one row per well, with ``_row`` /
    ``_col`` from :func:`plate_positions`); empty wells are light grey."""
    plates = list(pd.unique(wells[plate].astype(str))) if plate in wells else ["plate"]
    big = bool(len(wells)) and (wells["_row"].max() >= 8 or wells["_col"].max() >= 12)
    n_rows, n_cols = (16, 24) if big else (8, 12)
    finite = wells[value].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    fig, axes = facet_grid(len(plates), 2, 0.32 * n_cols + 1.2, 0.32 * n_rows + 0.8, sharex=False, sharey=False)
    image = None
    for ax, name in zip(axes.flat, plates):
        sub = wells if plate not in wells else wells[wells[plate].astype(str) == name]
        grid = np.full((n_rows, n_cols), np.nan)
        for r, c, v in zip(sub["_row"], sub["_col"], sub[value]):
            if 0 <= r < n_rows and 0 <= c < n_cols:
                grid[int(r), int(c)] = v
        ax.set_facecolor("#eeeeee")
        image = ax.imshow(
            np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-9, aspect="equal"
        )
        ax.set_xticks(range(n_cols))
        ax.set_xticklabels([str(c + 1) for c in range(n_cols)], fontsize=6)
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels(list(string.ascii_uppercase[:n_rows]), fontsize=6)
        ax.set_title(f"plate {name}")
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat[: len(plates)]), shrink=0.8, label=label)
    return fig


def explanation_panels(
    real: np.ndarray,
    counterfactual: np.ndarray | None,
    mask: np.ndarray | None,
    channels: Sequence[str],
    title: str | None = None,
    real_label: str = "real",
    counterfactual_label: str = "counterfactual",
) -> Figure:
    """One image's explanation: rows real, counterfactual, mask and hybrid (``m * x + (1 - m) * x'``),
    a column per channel in that stain's colour (real and counterfactual share each channel's scale)."""
    from chanstat.report.plots.images import Panel, _rgb, panel_grid
    from chanstat.report.plots.style import channel_cmap

    colours = channel_colours(channels)
    C = len(channels)
    rows: list[list[Panel]] = [[], [], [], []]
    for c, ch in enumerate(channels):
        cmap = channel_cmap(colours[ch])
        pair = real[c] if counterfactual is None else np.stack([real[c], counterfactual[c]])
        top = float(np.quantile(pair, 0.995)) or 1.0
        m = None if mask is None else np.clip(mask[c if mask.shape[0] == C else 0], 0, 1)
        rows[0].append(Panel(_rgb(real[c], cmap, 0.0, top)))
        rows[1].append(
            Panel(None, "", "not stored") if counterfactual is None else Panel(_rgb(counterfactual[c], cmap, 0.0, top))
        )
        rows[2].append(
            Panel(None, "", "no mask\nstored" if c == 0 else "")
            if m is None
            else Panel(_rgb(m, "gray", 0.0, 1.0), f"{100 * float(m.mean()):.0f}%")
        )
        hybrid = None if (m is None or counterfactual is None) else m * real[c] + (1 - m) * counterfactual[c]
        rows[3].append(Panel(None) if hybrid is None else Panel(_rgb(hybrid, cmap, 0.0, top)))
    return panel_grid(
        rows,
        [real_label, counterfactual_label, "mask", "hybrid"],
        list(channels),
        [colours[c] for c in channels],
        title=title,
        panel_in=1.1,
    )
