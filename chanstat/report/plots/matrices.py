"""Matrices and labelled scatters: heatmaps, the volcano plot, rank agreement."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from chanstat.report.plots.style import KNOWN_CHANNEL_COLOURS, NEUTRAL, channel_colours, channel_key, facet_grid, styled

#: colour maps dark at the low end only (cell text turns white there)
SEQUENTIAL = ("viridis", "magma", "inferno", "cividis")


# ---- matrices -----------------------------------------------------------------------------
@styled
def heatmap(
    matrix: pd.DataFrame,
    title: str = "",
    cmap: str = "viridis",
    vmin=None,
    vmax=None,
    colorbar_label: str = "",
    annotate: bool = True,
    fmt: str = "{:.2f}",
    xlabel: str = "",
    ylabel: str = "",
    center: float | None = None,
) -> Figure:
    """A labelled heatmap of a matrix (rows x columns), values written in the cells."""
    values = matrix.to_numpy(dtype=float)
    n_r, n_c = values.shape
    fig = Figure(figsize=(max(3.8, 0.75 * n_c + 2.6), max(2.6, 0.42 * n_r + 1.5)), layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    if center is not None and finite.size:
        span = float(np.max(np.abs(finite - center))) or 1.0
        vmin, vmax = center - span, center + span
    cm = matplotlib.colormaps[cmap].with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_c))
    ax.set_xticklabels([str(c) for c in matrix.columns], rotation=35, ha="right")
    ax.set_yticks(range(n_r))
    ax.set_yticklabels([str(r) for r in matrix.index])
    ax.spines[:].set_visible(False)
    if annotate and n_r * n_c <= 400:
        lo, hi = im.get_clim()
        for i in range(n_r):
            for j in range(n_c):
                v = values[i, j]
                if np.isfinite(v):
                    rel = (v - lo) / (hi - lo) if hi > lo else 0.5
                    # diverging maps are dark at both ends, sequential ones at the low end
                    dark = rel < 0.55 if cmap in SEQUENTIAL else abs(rel - 0.5) > 0.33
                    ax.text(
                        j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if dark else "black"
                    )
                else:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=6.5, color="#777777")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(colorbar_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


@styled
def heatmap_facets(
    matrices: Mapping[str, pd.DataFrame],
    vmin: float,
    vmax: float,
    cmap: str = "RdBu_r",
    colorbar_label: str = "",
    fmt: str = "{:.2f}",
    ncols: int = 4,
    rows_are_channels: bool = True,
) -> Figure:
    """Several same-shaped heatmaps (panel title -> matrix) on one colour scale.

    Column labels (and row labels when ``rows_are_channels``) that name a stain get its colour.
    """
    n = len(matrices)
    first = next(iter(matrices.values()))
    side = max(2.3, 0.42 * max(first.shape) + 0.9)
    fig, axes = facet_grid(n, ncols, side, side, sharex=False, sharey=False)
    im = None
    for k, (title, mat) in enumerate(matrices.items()):
        ax = axes.flat[k]
        values = mat.to_numpy(dtype=float)
        cm = matplotlib.colormaps[cmap].with_extremes(bad="#e6e6e6")
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(mat.shape[1]))
        ax.set_xticklabels([str(c) for c in mat.columns], rotation=45, ha="right")
        ax.set_yticks(range(mat.shape[0]))
        ax.set_yticklabels([str(r) for r in mat.index])
        for lab in list(ax.get_xticklabels()) + (list(ax.get_yticklabels()) if rows_are_channels else []):
            colour = KNOWN_CHANNEL_COLOURS.get(channel_key(lab.get_text()))
            if colour:
                lab.set_color(colour)
        ax.spines[:].set_visible(False)
        ax.set_title(title)
        if values.size <= 100:
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    if np.isfinite(values[i, j]):
                        rel = (values[i, j] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                        # diverging maps are dark at both ends, sequential ones at the low end
                        dark = rel < 0.55 if cmap in SEQUENTIAL else abs(rel - 0.5) > 0.33
                        ax.text(
                            j,
                            i,
                            fmt.format(values[i, j]),
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            color="white" if dark else "black",
                        )
                    else:
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="#777777")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
        cb.set_label(colorbar_label)
    return fig


# ---- CellProfiler -------------------------------------------------------------------------
@styled
def volcano(
    df: pd.DataFrame,
    effect: str,
    p: str,
    q: str | None,
    channel: str | None,
    channels: Sequence[str],
    alpha: float = 0.05,
    label_top: int = 6,
    name: str | None = "feature",
) -> Figure:
    """Effect size against -log10 p, coloured by the feature's channel; q < ``alpha`` filled."""
    fig = Figure(figsize=(7.2, 4.4), layout="constrained")
    ax = fig.subplots()
    d = df.copy()
    d["_y"] = -np.log10(np.clip(d[p].to_numpy(dtype=float), 1e-300, 1.0))
    sig = (d[q].to_numpy(dtype=float) < alpha) if q and q in d else (d[p].to_numpy(dtype=float) < alpha)
    d["_sig"] = sig
    present = [str(c) for c in pd.unique(d[channel])] if channel and channel in d else []
    order = [c for c in channels if c in present] + sorted(c for c in present if c not in channels)
    colours = channel_colours(order)
    groups = [(c, d[d[channel] == c]) for c in order] if order else [(None, d)]
    for c, g in groups:
        colour = (
            colours[c]
            if c is not None and c in channels
            else {"several": "#555555", "none": "#b5b5b5"}.get(str(c), NEUTRAL)
        )
        ax.scatter(g.loc[~g["_sig"], effect], g.loc[~g["_sig"], "_y"], s=9, color=colour, alpha=0.25, lw=0)
        ax.scatter(
            g.loc[g["_sig"], effect],
            g.loc[g["_sig"], "_y"],
            s=18,
            color=colour,
            alpha=0.9,
            lw=0.3,
            edgecolor="black",
            label=str(c) if c is not None else None,
        )
    if q and q in d and sig.any():
        ax.axhline(float(d.loc[sig, "_y"].min()), color="#888888", lw=0.7, ls="--")
        ax.text(
            ax.get_xlim()[0], float(d.loc[sig, "_y"].min()), f" q < {alpha}", va="bottom", fontsize=7, color="#555555"
        )
    ax.axvline(0, color="#888888", lw=0.6, ls=":")
    if name and name in d and label_top:
        top = d[d["_sig"]].nlargest(label_top, "_y")
        _place_labels(
            fig,
            ax,
            top[effect].to_numpy(dtype=float),
            top["_y"].to_numpy(dtype=float),
            [_short(str(v)) for v in top[name]],
        )
    ax.set_xlabel(f"effect size ({effect})")
    ax.set_ylabel(f"−log10 {p}")
    if order:
        ax.legend(title="channel (filled: q < %g)" % alpha, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _place_labels(fig, ax, xs, ys, texts, fontsize: float = 6) -> None:
    """Label points without labels overlapping each other or leaving the axes (greedy placement).

    Each label tries a few offsets around its point (towards the centre of the plot first) and
    takes the first whose box overlaps no label placed before; a label that fits nowhere is
    dropped rather than drawn over another.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    x_mid = float(np.mean(ax.get_xlim()))
    axes_box = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    for x, y, text in zip(xs, ys, texts):
        inward = -1 if x > x_mid else 1
        for dx, dy in (
            (4 * inward, 3),
            (4 * inward, -9),
            (4 * inward, 10),
            (4 * inward, -16),
            (-4 * inward, 3),
            (-4 * inward, -9),
            (4 * inward, 17),
            (4 * inward, -23),
        ):
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                color="#333333",
                ha="left" if dx > 0 else "right",
            )
            box = ann.get_window_extent(renderer)
            inside = box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0 and box.y1 <= axes_box.y1
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            ann.remove()


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


@styled
def rank_agreement(
    ranks: pd.DataFrame,
    x: str,
    y: str,
    channels: Sequence[str],
    facet: str = "method",
    xlabel: str = "",
    ylabel: str = "",
    ncols: int = 4,
) -> Figure:
    """Channel ranks on two scales (e.g. CellProfiler vs attribution), a panel per ``facet``."""
    facets = list(pd.unique(ranks[facet])) if facet in ranks else [None]
    fig, axes = facet_grid(len(facets), ncols, 2.6, 2.6, sharex=True, sharey=True)
    colours = channel_colours(list(channels))
    top = float(np.nanmax(ranks[[x, y]].to_numpy(dtype=float))) if len(ranks) else 1.0
    for k, f in enumerate(facets):
        ax = axes.flat[k]
        sub = ranks if f is None else ranks[ranks[facet] == f]
        ax.plot([0.5, top + 0.5], [0.5, top + 0.5], color="#bbbbbb", lw=0.8, ls="--")
        for _, row in sub.iterrows():
            ch = str(row["channel"])
            ax.scatter(row[x], row[y], s=40, color=colours.get(ch, NEUTRAL), edgecolor="black", lw=0.4, zorder=3)
            ax.annotate(
                ch,
                (row[x], row[y]),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                color=colours.get(ch, "#333333"),
            )
        ticks = np.arange(1, int(math.ceil(top)) + 1)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlim(top + 0.7, 0.5)  # rank 1 (largest) at the right and at the top
        ax.set_ylim(top + 0.7, 0.5)
        ax.set_title("" if f is None else str(f))
        if k % axes.shape[1] == 0:
            ax.set_ylabel(ylabel or y)
        ax.set_xlabel(xlabel or x)
    return fig
