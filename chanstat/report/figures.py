"""Figures for the report: plain functions, arrays / tidy tables in, matplotlib Figure out.

Figures are built with :class:`matplotlib.figure.Figure` directly (not through pyplot), so they
are never shown twice by a notebook's inline backend and never leak between tests. Channel
colours follow the usual Cell Painting pseudo-colours (DNA blue, ER green, RNA cyan, AGP red,
Mito magenta); unknown channels get distinct colours from a qualitative palette.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap, to_rgb
from matplotlib.figure import Figure

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "savefig.facecolor": "white",
}

_KNOWN_CHANNEL_COLOURS = {
    "dna": "#2f5fe0",
    "er": "#2ca02c",
    "rna": "#00a5b8",
    "agp": "#e0402e",
    "mito": "#c030b0",
    "brightfield": "#7f7f7f",
}
_FALLBACK = ["#8c564b", "#bcbd22", "#ff7f0e", "#17becf", "#9467bd", "#7f7f7f", "#1f77b4", "#d62728"]
NEUTRAL = "#9a9a9a"


def styled(func):
    """Run a figure builder inside the report's matplotlib style."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


# ---- colours ------------------------------------------------------------------------------
def channel_key(name: str) -> str:
    """Canonical stain of a channel name: ``OrigDNA`` -> ``dna``, ``mito_tubeness`` -> ``mito``."""
    key = re.sub(r"^(orig|corr|illum)", "", str(name).strip().lower())
    for stain in ("dna", "agp", "rna", "mito", "er", "brightfield"):
        if key == stain or key.startswith(stain + "_") or key.startswith(stain):
            if stain == "er" and key not in ("er",) and not key.startswith("er_"):
                continue  # "erk..." is not ER
            return stain
    if key in ("hoechst", "dapi", "nuclei"):
        return "dna"
    if key.startswith("mitotracker"):
        return "mito"
    if key.startswith(("bf", "bright")):
        return "brightfield"
    return key


def channel_colours(channels: Sequence[str]) -> dict[str, str]:
    """One line/bar colour per channel name."""
    out: dict[str, str] = {}
    used = set()
    spare = iter(_FALLBACK * 4)
    for ch in channels:
        colour = _KNOWN_CHANNEL_COLOURS.get(channel_key(ch))
        if colour is None or colour in used:
            colour = next(c for c in spare if c not in used)
        out[ch] = colour
        used.add(colour)
    return out


def channel_cmap(colour: str) -> LinearSegmentedColormap:
    """Black to a bright version of ``colour`` (for showing one channel of an image)."""
    rgb = np.asarray(to_rgb(colour))
    bright = rgb / max(rgb.max(), 1e-6)  # full brightness at the top of the scale
    return LinearSegmentedColormap.from_list(f"chan_{colour}", [(0, 0, 0), tuple(bright)])


# ---- galleries ----------------------------------------------------------------------------
def map_scale(maps: np.ndarray, signed: bool | None = None, quantile: float = 0.995) -> dict:
    """Colour scale shared by every panel of one method: ``{"vmin", "vmax", "cmap", "signed"}``.

    Signed maps (any negative value, unless ``signed`` says otherwise) get a diverging map
    symmetric around 0; unsigned maps a sequential one from 0. The top of the scale is a high
    quantile of |map| over every panel shown, so one hot pixel does not wash out the rest.
    """
    values = np.asarray(maps, dtype=np.float64)
    values = values[np.isfinite(values)]
    if signed is None:
        signed = bool(values.size and values.min() < 0)
    top = float(np.quantile(np.abs(values), quantile)) if values.size else 1.0
    if not np.isfinite(top) or top <= 0:
        top = float(np.abs(values).max()) if values.size and np.abs(values).max() > 0 else 1.0
    if signed:
        return {"vmin": -top, "vmax": top, "cmap": "RdBu_r", "signed": True}
    return {"vmin": 0.0, "vmax": top, "cmap": "inferno", "signed": False}


def _rgb(data: np.ndarray, cmap, vmin: float, vmax: float) -> np.ndarray:
    """A 2-D array through a colour map: (H, W) -> (H, W, 3) floats in [0, 1]."""
    cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    span = vmax - vmin if vmax > vmin else 1.0
    return cmap(np.clip((np.asarray(data, dtype=np.float64) - vmin) / span, 0.0, 1.0))[..., :3]


@dataclass
class Panel:
    """One cell of a :func:`panel_grid`: an RGB image (or None for an empty grey cell) and its labels."""

    rgb: np.ndarray | None
    label: str = ""
    centre_text: str = ""


@styled
def panel_grid(
    rows: Sequence[Sequence[Panel]],
    row_labels: Sequence[str],
    col_titles: Sequence[str],
    col_colours: Sequence[str] | None = None,
    colorbars: Mapping[int, dict] | None = None,
    title: str | None = None,
    panel_in: float = 1.3,
) -> Figure:
    """Images laid out in one mosaic (one axes, so dozens of panels draw in a blink).

    ``colorbars`` maps a row index to ``{"cmap", "vmin", "vmax"}``; a colour bar is drawn
    right of that row. Every panel gets its ``label`` in its top-left corner.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    shapes = [p.rgb.shape[:2] for r in rows for p in r if p.rgb is not None]
    h, w = (max(s[0] for s in shapes), max(s[1] for s in shapes)) if shapes else (32, 32)
    gap = max(2, int(round(0.07 * max(h, w))))
    mos_h, mos_w = n_rows * h + (n_rows - 1) * gap, n_cols * w + (n_cols - 1) * gap
    mosaic = np.ones((mos_h, mos_w, 3))
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            y0, x0 = r * (h + gap), c * (w + gap)
            if p.rgb is None:
                mosaic[y0:y0 + h, x0:x0 + w] = 0.94
            else:
                ph, pw = p.rgb.shape[:2]
                mosaic[y0:y0 + ph, x0:x0 + pw] = p.rgb
    scale = panel_in / w  # inches per image pixel
    left, right, top, bottom = 1.25, (0.85 if colorbars else 0.15), (0.62 if title else 0.32), 0.08
    fig_w, fig_h = left + mos_w * scale + right, top + mos_h * scale + bottom
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left / fig_w, bottom / fig_h, mos_w * scale / fig_w, mos_h * scale / fig_h))
    ax.imshow(mosaic, interpolation="nearest", extent=(0, mos_w, mos_h, 0))
    ax.set_axis_off()
    pad = 0.03 * w
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            y0, x0 = r * (h + gap), c * (w + gap)
            if p.label:
                ax.text(x0 + pad, y0 + pad, p.label, ha="left", va="top", fontsize=7, color="white",
                        bbox=dict(facecolor="black", alpha=0.6, pad=1.2, edgecolor="none"))
            if p.centre_text:
                ax.text(x0 + w / 2, y0 + h / 2, p.centre_text, ha="center", va="center", fontsize=7, color="#555555")
        ax.text(-gap, r * (h + gap) + h / 2, row_labels[r], ha="right", va="center", fontsize=8)
    for c, name in enumerate(col_titles):
        ax.text(c * (w + gap) + w / 2, -gap, name, ha="center", va="bottom", fontsize=9, fontweight="bold",
                color=(col_colours[c] if col_colours else "black"))
    for r, spec in (colorbars or {}).items():
        y_top = r * (h + gap)
        cax = fig.add_axes(((left + mos_w * scale + 0.1) / fig_w, (bottom + (mos_h - y_top - h) * scale) / fig_h,
                            0.11 / fig_w, h * scale / fig_h))
        cb = fig.colorbar(ScalarMappable(Normalize(spec["vmin"], spec["vmax"]), spec["cmap"]), cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.locator = matplotlib.ticker.MaxNLocator(3)
        cb.update_ticks()
    if title:
        fig.suptitle(title, y=1 - 0.12 / fig_h, va="top", fontsize=10)
    fig.chanstat_fixed_layout = True  # margins are set above: no second drawing pass to trim them
    return fig


def attribution_gallery(
    real: np.ndarray,
    counterfactual: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    channels: Sequence[str],
    scales: Mapping[str, dict],
    real_label: str = "real",
    counterfactual_label: str = "counterfactual",
    title: str | None = None,
) -> Figure:
    """One image: real and counterfactual per channel, then each method's map per channel.

    Parameters
    ----------
    real, counterfactual : (C, H, W) images.
    maps : method -> (C, H, W) or (1, H, W) map (the latter is not channel-resolved and is
        shown once, labelled "all channels").
    scales : method -> :func:`map_scale` result (shared by all panels of that method).
    """
    n_ch = len(channels)
    if real.shape[0] != n_ch:
        raise ValueError(f"image has {real.shape[0]} channels but {n_ch} channel names were given")
    colours = channel_colours(channels)
    stack = [real] + ([counterfactual] if counterfactual is not None else [])
    # per-channel intensity scale shared by real and counterfactual, so they compare directly
    lo = [float(np.quantile(np.concatenate([s[c].ravel() for s in stack]), 0.005)) for c in range(n_ch)]
    hi = [float(np.quantile(np.concatenate([s[c].ravel() for s in stack]), 0.995)) for c in range(n_ch)]
    rows, labels, bars = [], [], {}
    for img, label in ((real, real_label), (counterfactual, counterfactual_label)):
        if img is None:
            continue
        rows.append([Panel(_rgb(img[c], channel_cmap(colours[ch]), lo[c], max(hi[c], lo[c] + 1e-6)), ch)
                     for c, ch in enumerate(channels)])
        labels.append(label)
    for method, a in maps.items():
        s = scales[method]
        if a.shape[0] == 1:
            row = [Panel(_rgb(a[0], s["cmap"], s["vmin"], s["vmax"]), "all channels")]
            row += [Panel(None, "", "not channel-\nresolved" if k == 0 else "") for k in range(n_ch - 1)]
        elif a.shape[0] == n_ch:
            row = [Panel(_rgb(a[c], s["cmap"], s["vmin"], s["vmax"]), ch) for c, ch in enumerate(channels)]
        else:
            raise ValueError(f"map of {method!r} has {a.shape[0]} channels; expected 1 or {n_ch}")
        bars[len(rows)] = s
        rows.append(row)
        labels.append(method)
    return panel_grid(rows, labels, list(channels), [colours[c] for c in channels], bars, title=title)


def mask_panels(masks: Mapping[str, np.ndarray], channels: Sequence[str], title: str | None = None) -> Figure:
    """Masks of one image: name -> (C, H, W) per-channel masks or (1, H, W) shared masks, values in [0, 1].

    Per-channel masks get a row each (a panel per channel); when every mask is shared by all
    channels they are shown side by side, one panel each. Panels state the mask's size (mean
    value, i.e. the fraction of the image that is on).
    """
    colours = channel_colours(channels)
    if all(m.shape[0] == 1 for m in masks.values()):
        row = [Panel(_rgb(m[0], "gray", 0, 1), f"size {100 * float(np.mean(m[0])):.1f}%") for m in masks.values()]
        return panel_grid([row], ["all channels\n(one mask)"], list(masks), title=title, panel_in=1.15)
    rows, labels = [], []
    for label, m in masks.items():
        if m.shape[0] == 1:
            row = [Panel(_rgb(m[0], "gray", 0, 1), f"all  {100 * float(np.mean(m[0])):.1f}%")]
            row += [Panel(None, "", "same mask for\nevery channel" if k == 0 else "") for k in range(len(channels) - 1)]
        else:
            row = [Panel(_rgb(m[c], channel_cmap(colours[ch]), 0, 1), f"{ch}  {100 * float(np.mean(m[c])):.1f}%")
                   for c, ch in enumerate(channels)]
        rows.append(row)
        labels.append(label)
    return panel_grid(rows, labels, list(channels), [colours[c] for c in channels], title=title, panel_in=1.15)


# ---- curves -------------------------------------------------------------------------------
def mean_curve(curves: pd.DataFrame, x: str = "mask_size", y: str = "score", by: str = "sample",
               grid: np.ndarray | None = None) -> pd.DataFrame:
    """Mean (and standard error) of per-sample curves on a common x grid.

    Each sample's curve is sorted by ``x`` and linearly interpolated onto ``grid`` (default 101
    points over [0, 1]); the result has columns ``x``, ``mean``, ``sem``, ``n``.
    """
    grid = np.linspace(0.0, 1.0, 101) if grid is None else np.asarray(grid, dtype=float)
    if curves.empty:
        return pd.DataFrame({"x": grid, "mean": np.nan, "sem": np.nan, "n": 0})
    groups = curves.groupby(by, sort=False) if by in curves else [(0, curves)]
    ys = []
    for _, g in groups:
        g = g.sort_values(x)
        xs = g[x].to_numpy(dtype=float)
        vs = g[y].to_numpy(dtype=float)
        ok = np.isfinite(xs) & np.isfinite(vs)
        if ok.sum() >= 1:
            ys.append(np.interp(grid, xs[ok], vs[ok]))
    if not ys:
        return pd.DataFrame({"x": grid, "mean": np.nan, "sem": np.nan, "n": 0})
    arr = np.vstack(ys)
    sem = arr.std(axis=0, ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else np.zeros(grid.size)
    return pd.DataFrame({"x": grid, "mean": arr.mean(axis=0), "sem": sem, "n": len(ys)})


def _facet_grid(n: int, ncols: int, width: float, height: float, sharey=True, sharex=True):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey, sharex=sharex)
    for k in range(n, nrows * ncols):
        axes.flat[k].set_visible(False)
    return fig, axes


@styled
def curve_facets(
    panels: Mapping[str, Mapping[str, pd.DataFrame]],
    colours: Mapping[str, str] | None = None,
    xlabel: str = "mask size (fraction of elements on)",
    ylabel: str = "score",
    ncols: int = 3,
    legend_title: str | None = None,
) -> Figure:
    """Small multiples of mean curves: panel title -> {line label -> :func:`mean_curve` frame}.

    A line label keeps its colour in every panel; one legend below the panels names them.
    """
    fig, axes = _facet_grid(len(panels), ncols, 3.6, 2.7)
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = {label: (colours or {}).get(label, cycle[k % len(cycle)]) for k, label in enumerate(labels)}
    for k, (title, lines) in enumerate(panels.items()):
        ax = axes.flat[k]
        for label, curve in lines.items():
            colour = palette[label]
            ax.plot(curve["x"], curve["mean"], color=colour, lw=1.6, label=label)
            if curve["sem"].notna().any():
                ax.fill_between(curve["x"], curve["mean"] - curve["sem"], curve["mean"] + curve["sem"],
                                color=colour, alpha=0.12, lw=0)
        ax.axhline(0, color="#888888", lw=0.6, ls=":")
        ax.set_title(title)
        ax.set_xlim(0, 1) if xlabel.startswith("mask size") else None
        ax.set_xlabel(xlabel)
        if k % axes.shape[1] == 0:
            ax.set_ylabel(ylabel)
    handles = [matplotlib.lines.Line2D([], [], color=palette[label], lw=2, label=label) for label in labels]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(labels), 7), frameon=False,
               title=legend_title)
    return fig


@styled
def training_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch (train and validation, whichever columns exist)."""
    fig = Figure(figsize=(7.5, 2.8), layout="constrained")
    axes = fig.subplots(1, 2)
    x = history["epoch"] if "epoch" in history else np.arange(1, len(history) + 1)
    for ax, what in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            col = f"{split}_{what}"
            if col in history:
                ax.plot(x, history[col], style, marker="o", ms=3, label="train" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.legend(frameon=False)
    if "val_accuracy" in history or "train_accuracy" in history:
        axes[1].set_ylim(0, 1.02)
    return fig


# ---- distributions ------------------------------------------------------------------------
@styled
def share_boxes(
    df: pd.DataFrame,
    channels: Sequence[str],
    value: str = "share",
    facet: str = "method",
    hue: str | None = "transition",
    ncols: int = 3,
    ylabel: str = "share of attribution mass",
) -> Figure:
    """Box plots with the individual points over them: x = channel, colour = ``hue``, panel = ``facet``."""
    facets = list(pd.unique(df[facet])) if facet in df else [None]
    hues = list(pd.unique(df[hue])) if hue and hue in df else [None]
    facet_w = max(2.8, 0.3 * len(channels) * len(hues) + 0.8)
    ncols = max(1, min(ncols, int(12.0 // facet_w)))
    fig, axes = _facet_grid(len(facets), ncols, facet_w, 2.5 if len(facets) > ncols else 2.9, sharex=False)
    rng = np.random.default_rng(0)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    width = 0.8 / len(hues)
    for k, f in enumerate(facets):
        ax = axes.flat[k]
        sub = df if f is None else df[df[facet] == f]
        for j, h in enumerate(hues):
            part = sub if h is None else sub[sub[hue] == h]
            data, pos = [], []
            for c, ch in enumerate(channels):
                vals = part.loc[part["channel"] == ch, value].to_numpy(dtype=float)
                vals = vals[np.isfinite(vals)]
                x = c - 0.4 + width * (j + 0.5)
                if vals.size:
                    data.append(vals)
                    pos.append(x)
                    ax.scatter(x + rng.uniform(-width * 0.3, width * 0.3, vals.size), vals, s=9,
                               color=palette[j % len(palette)], alpha=0.55, lw=0, zorder=3)
            if data:
                bp = ax.boxplot(data, positions=pos, widths=width * 0.8, patch_artist=True, showfliers=False,
                                medianprops=dict(color="black", lw=1.2), manage_ticks=False)
                for patch in bp["boxes"]:
                    patch.set_facecolor(palette[j % len(palette)])
                    patch.set_alpha(0.3)
        ax.set_xticks(range(len(channels)))
        ax.set_xticklabels(channels)
        for lab, col in zip(ax.get_xticklabels(), channel_colours(channels).values()):
            lab.set_color(col)
            lab.set_fontweight("bold")
        ax.set_title(str(f) if f is not None else "")
        if k % axes.shape[1] == 0:
            ax.set_ylabel(ylabel)
        if value == "share":
            ax.axhline(1 / max(len(channels), 1), color="#888888", lw=0.7, ls=":")
    if hues != [None]:
        handles = [matplotlib.patches.Patch(color=palette[j % len(palette)], alpha=0.6, label=str(h))
                   for j, h in enumerate(hues)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(hues), 4), frameon=False, title=hue)
    return fig


@styled
def interval_plot(df: pd.DataFrame, estimate: str, low: str, high: str, label: str, group: str | None,
                  colours: Mapping[str, str] | None = None, xlabel: str = "estimate", ref: float | None = None) -> Figure:
    """Point estimates with intervals (a forest plot): one row per ``label``, panel per ``group``."""
    groups = list(pd.unique(df[group])) if group and group in df else [None]
    n_rows = max(len(df[df[group] == g]) if g is not None else len(df) for g in groups)
    fig, axes = _facet_grid(len(groups), 3, 3.3, 0.28 * n_rows + 1.0, sharey=False)
    for k, g in enumerate(groups):
        ax = axes.flat[k]
        sub = (df if g is None else df[df[group] == g]).reset_index(drop=True)
        ys = np.arange(len(sub))[::-1]
        for y, (_, row) in zip(ys, sub.iterrows()):
            colour = (colours or {}).get(str(row[label]), "#333333")
            ax.plot([row[low], row[high]], [y, y], color=colour, lw=2)
            ax.plot(row[estimate], y, "o", color=colour, ms=5)
        ax.set_yticks(ys)
        ax.set_yticklabels([str(v) for v in sub[label]])
        if ref is not None:
            ax.axvline(ref, color="#888888", lw=0.7, ls=":")
        ax.set_title("" if g is None else str(g))
        ax.set_xlabel(xlabel)
    return fig


# ---- matrices -----------------------------------------------------------------------------
@styled
def heatmap(matrix: pd.DataFrame, title: str = "", cmap: str = "viridis", vmin=None, vmax=None,
            colorbar_label: str = "", annotate: bool = True, fmt: str = "{:.2f}", xlabel: str = "",
            ylabel: str = "", center: float | None = None) -> Figure:
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
                    dark = rel < 0.55 if cmap in ("viridis", "magma", "inferno", "cividis") else abs(rel - 0.5) < 0.3
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                            color="white" if (dark and cmap in ("viridis", "magma", "inferno", "cividis")) else "black")
                else:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=6.5, color="#777777")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(colorbar_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


# ---- CellProfiler -------------------------------------------------------------------------
@styled
def volcano(df: pd.DataFrame, effect: str, p: str, q: str | None, channel: str | None,
            channels: Sequence[str], alpha: float = 0.05, label_top: int = 6, name: str | None = "feature") -> Figure:
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
        colour = colours[c] if c in channels else {"several": "#555555", "none": "#b5b5b5"}.get(str(c), NEUTRAL)
        ax.scatter(g.loc[~g["_sig"], effect], g.loc[~g["_sig"], "_y"], s=9, color=colour, alpha=0.25, lw=0)
        ax.scatter(g.loc[g["_sig"], effect], g.loc[g["_sig"], "_y"], s=18, color=colour, alpha=0.9, lw=0.3,
                   edgecolor="black", label=str(c) if c is not None else None)
    if q and q in d and sig.any():
        ax.axhline(float(d.loc[sig, "_y"].min()), color="#888888", lw=0.7, ls="--")
        ax.text(ax.get_xlim()[0], float(d.loc[sig, "_y"].min()), f" q < {alpha}", va="bottom", fontsize=7,
                color="#555555")
    ax.axvline(0, color="#888888", lw=0.6, ls=":")
    if name and name in d and label_top:
        top = d[d["_sig"]].nlargest(label_top, "_y")
        _place_labels(fig, ax, top[effect].to_numpy(dtype=float), top["_y"].to_numpy(dtype=float),
                      [_short(str(v)) for v in top[name]])
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
    placed = []
    for x, y, text in zip(xs, ys, texts):
        inward = -1 if x > x_mid else 1
        for dx, dy in ((4 * inward, 3), (4 * inward, -9), (4 * inward, 10), (4 * inward, -16), (-4 * inward, 3),
                       (-4 * inward, -9), (4 * inward, 17), (4 * inward, -23)):
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              color="#333333", ha="left" if dx > 0 else "right")
            box = ann.get_window_extent(renderer)
            inside = box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0 and box.y1 <= axes_box.y1
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            ann.remove()


def _short(name: str, n: int = 34) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


@styled
def channel_bars(df: pd.DataFrame, channels_col: str, panels: Sequence[tuple[str, str, float | None, bool]],
                 annotate: str | None = None) -> Figure:
    """Bars per channel; ``panels`` = (column, axis label, reference line, log scale)."""
    names = [str(c) for c in df[channels_col]]
    colours = channel_colours(names)
    fig = Figure(figsize=(3.4 * len(panels) + 0.4, 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (col, label, ref, log) in zip(axes, panels):
        vals = df[col].to_numpy(dtype=float)
        infinite = np.isposinf(vals)
        finite = vals[np.isfinite(vals) & (vals > 0 if log else True)]
        top = max([float(finite.max())] if finite.size else [] + ([ref] if ref else []) or [1.0])
        top = max(top, ref or 0.0)
        cap = top * (4.0 if log else 1.25)
        shown = np.where(infinite, cap, np.where(np.isfinite(vals), vals, np.nan if log else 0.0))
        bars = ax.bar(range(len(names)), np.nan_to_num(shown, nan=0.0) if not log else shown,
                      color=[colours[n] for n in names])
        for b, inf in zip(bars, infinite):
            if inf:
                b.set_hatch("///")
                b.set_edgecolor("white")
                ax.annotate("∞", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=9, xytext=(0, 10 if (annotate and ax is axes[0]) else 1), textcoords="offset points")
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ref is not None:
            ax.axhline(ref, color="#666666", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
        ax.set_ylabel(label)
        if annotate and annotate in df and ax is axes[0]:
            for b, txt in zip(bars, df[annotate]):
                if np.isfinite(b.get_height()):
                    ax.annotate(str(txt), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                                fontsize=7, xytext=(0, 2), textcoords="offset points")
            ax.margins(y=0.15)
    return fig


@styled
def grouped_bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, ylabel: str | None = None,
                 colours: Mapping[str, str] | None = None, ref: float | None = None, title: str = "",
                 err_low: str | None = None, err_high: str | None = None) -> Figure:
    """Bars of ``y`` by ``x`` (and ``hue``), optional interval whiskers."""
    xs = [str(v) for v in pd.unique(df[x])]
    hues = [str(v) for v in pd.unique(df[hue])] if hue and hue in df else [None]
    fig = Figure(figsize=(max(4.0, 0.5 * len(xs) * len(hues) + 2.0), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(hues)
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, h in enumerate(hues):
        sub = df if h is None else df[df[hue].astype(str) == h]
        vals, lows, highs = [], [], []
        for v in xs:
            row = sub[sub[x].astype(str) == v]
            vals.append(float(row[y].iloc[0]) if len(row) else np.nan)
            if err_low and err_high and len(row):
                lows.append(float(row[err_low].iloc[0]))
                highs.append(float(row[err_high].iloc[0]))
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        colour = (colours or {}).get(h, cycle[j % len(cycle)]) if h is not None else None
        bar_colours = colour if colour else [(colours or {}).get(v, cycle[0]) for v in xs]
        ax.bar(pos, vals, width=width * 0.92, color=bar_colours, label=h)
        if lows and len(lows) == len(vals):
            v = np.asarray(vals)
            ax.errorbar(pos, v, yerr=[v - np.asarray(lows), np.asarray(highs) - v], fmt="none", ecolor="black", lw=0.8,
                        capsize=2)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, rotation=25 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
    if ref is not None:
        ax.axhline(ref, color="#666666", lw=0.8, ls="--")
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    if hues != [None]:
        ax.legend(frameon=False, title=hue, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


@styled
def line_plot(df: pd.DataFrame, x: str, y: str, hue: str | None, ylabel: str | None = None,
              xlabel: str | None = None, title: str = "", logx: bool = False) -> Figure:
    """Lines of ``y`` against ``x``, one per ``hue`` value."""
    fig = Figure(figsize=(5.2, 3.0), layout="constrained")
    ax = fig.subplots()
    groups = df.groupby(hue, sort=False) if hue and hue in df else [("", df)]
    for name, g in groups:
        g = g.sort_values(x)
        ax.plot(g[x], g[y], marker="o", ms=3.5, lw=1.4, label=str(name[0] if isinstance(name, tuple) else name))
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    if hue and hue in df:
        ax.legend(frameon=False, title=hue, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


@styled
def heatmap_facets(matrices: Mapping[str, pd.DataFrame], vmin: float, vmax: float, cmap: str = "RdBu_r",
                   colorbar_label: str = "", fmt: str = "{:.2f}", ncols: int = 4) -> Figure:
    """Several same-shaped heatmaps (panel title -> matrix) on one colour scale."""
    n = len(matrices)
    first = next(iter(matrices.values()))
    side = max(2.3, 0.42 * max(first.shape) + 0.9)
    fig, axes = _facet_grid(n, ncols, side, side, sharex=False, sharey=False)
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
        for lab in list(ax.get_xticklabels()) + list(ax.get_yticklabels()):
            colour = _KNOWN_CHANNEL_COLOURS.get(channel_key(lab.get_text()))
            if colour:
                lab.set_color(colour)
        ax.spines[:].set_visible(False)
        ax.set_title(title)
        if values.size <= 100:
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    if np.isfinite(values[i, j]):
                        rel = (values[i, j] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                        ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=6.5,
                                color="white" if abs(rel - 0.5) > 0.33 else "black")
                    else:
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="#777777")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
        cb.set_label(colorbar_label)
    return fig


@styled
def estimate_intervals(df: pd.DataFrame, label: str, estimate: str, low: str | None, high: str | None,
                       facet: str | None = None, xlabel: str = "", ref: float | None = 0.0,
                       annotate: str | None = None) -> Figure:
    """Horizontal estimates with intervals, one row per ``label``, a panel per ``facet`` value."""
    facets = list(pd.unique(df[facet])) if facet and facet in df else [None]
    n_rows = max(len(df if f is None else df[df[facet] == f]) for f in facets)
    fig, axes = _facet_grid(len(facets), 2, 4.4, 0.32 * n_rows + 1.1, sharex=True, sharey=False)
    for k, f in enumerate(facets):
        ax = axes.flat[k]
        sub = (df if f is None else df[df[facet] == f]).reset_index(drop=True)
        ys = np.arange(len(sub))[::-1]
        est = sub[estimate].to_numpy(dtype=float)
        if low and high and low in sub and high in sub:
            lo, hi = sub[low].to_numpy(dtype=float), sub[high].to_numpy(dtype=float)
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.hlines(ys[ok], lo[ok], hi[ok], color="#4c72b0", lw=2)
        ax.plot(est, ys, "o", color="#1f3b73", ms=5)
        if annotate and annotate in sub:
            for y, x, txt in zip(ys, est, sub[annotate]):
                ax.annotate(str(txt), (x, y), xytext=(0, 5), textcoords="offset points", fontsize=7, ha="center",
                            va="bottom", color="#333333")
        ax.set_yticks(ys)
        ax.set_yticklabels([str(v) for v in sub[label]])
        ax.set_ylim(-0.7, len(sub) - 0.3)
        if ref is not None:
            ax.axvline(ref, color="#888888", lw=0.7, ls=":")
        ax.set_title("" if f is None else str(f))
        ax.set_xlabel(xlabel or estimate)
    return fig


@styled
def rank_agreement(ranks: pd.DataFrame, x: str, y: str, channels: Sequence[str], facet: str = "method",
                   xlabel: str = "", ylabel: str = "", ncols: int = 4) -> Figure:
    """Channel ranks on two scales (e.g. CellProfiler vs attribution), a panel per ``facet``."""
    facets = list(pd.unique(ranks[facet])) if facet in ranks else [None]
    fig, axes = _facet_grid(len(facets), ncols, 2.6, 2.6, sharex=True, sharey=True)
    colours = channel_colours(list(channels))
    top = float(np.nanmax(ranks[[x, y]].to_numpy(dtype=float))) if len(ranks) else 1.0
    for k, f in enumerate(facets):
        ax = axes.flat[k]
        sub = ranks if f is None else ranks[ranks[facet] == f]
        ax.plot([0.5, top + 0.5], [0.5, top + 0.5], color="#bbbbbb", lw=0.8, ls="--")
        for _, row in sub.iterrows():
            ch = str(row["channel"])
            ax.scatter(row[x], row[y], s=40, color=colours.get(ch, NEUTRAL), edgecolor="black", lw=0.4, zorder=3)
            ax.annotate(ch, (row[x], row[y]), xytext=(4, 3), textcoords="offset points", fontsize=7,
                        color=colours.get(ch, "#333333"))
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


@styled
def line_facets(df: pd.DataFrame, x: str, y: str, hue: str | None, facet: str, ylabel: str | None = None,
                ncols: int = 4) -> Figure:
    """Lines of ``y`` against ``x`` (one per ``hue`` value), a panel per ``facet`` value, shared y axis."""
    facets = list(pd.unique(df[facet]))
    fig, axes = _facet_grid(len(facets), ncols, 2.9, 2.4, sharex=True, sharey=True)
    hues = list(pd.unique(df[hue])) if hue else [None]
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, f in enumerate(facets):
        ax = axes.flat[k]
        sub = df[df[facet] == f]
        for j, h in enumerate(hues):
            part = (sub if h is None else sub[sub[hue] == h]).sort_values(x)
            ax.plot(part[x], part[y], marker="o", ms=3.5, lw=1.4, color=cycle[j % len(cycle)])
        ax.set_title(str(f))
        ax.set_xlabel(x)
        if k % axes.shape[1] == 0:
            ax.set_ylabel(ylabel or y)
    if hue:
        handles = [matplotlib.lines.Line2D([], [], color=cycle[j % len(cycle)], marker="o", ms=3.5,
                                           label=f"{hue} = {h:g}" if isinstance(h, (int, float, np.number)) else f"{hue} = {h}")
                   for j, h in enumerate(hues)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(hues), 6), frameon=False)
    return fig


@styled
def metric_panels(df: pd.DataFrame, metrics: Sequence[str], label: str, hue: str | None,
                  colours: Mapping[str, str] | None = None, order: Sequence[str] | None = None,
                  ncols: int = 3) -> Figure:
    """Horizontal bars: a panel per metric, a row per ``label`` value, a bar per ``hue`` value."""
    labels = list(order) if order else [str(v) for v in pd.unique(df[label])]
    hues = [str(v) for v in pd.unique(df[hue])] if hue else [None]
    if colours and hue:
        hues = [h for h in colours if h in hues] + [h for h in hues if h not in colours]
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    def values(h, metric):
        part = df if h is None else df[df[hue].astype(str) == h]
        return part.set_index(part[label].astype(str))[metric].reindex(labels).to_numpy(dtype=float)

    # per panel, only the hue values that have a number for that metric get a bar slot
    present = {m: [h for h in hues if np.isfinite(values(h, m)).any()] for m in metrics}
    slots = max(len(v) for v in present.values()) if present else 1
    fig, axes = _facet_grid(len(metrics), ncols, 3.0, (0.16 + 0.08 * slots) * len(labels) + 0.9,
                            sharex=False, sharey=True)
    for k, metric in enumerate(metrics):
        ax = axes.flat[k]
        shown = present[metric] or [None]
        height = 0.8 / len(shown)
        for j, h in enumerate(shown):
            vals = values(h, metric)
            ys = np.arange(len(labels))[::-1] + 0.4 - height * (j + 0.5)
            colour = (colours or {}).get(h, cycle[hues.index(h) % len(cycle)]) if h is not None else cycle[0]
            ax.barh(ys, np.nan_to_num(vals), height=height * 0.9, color=colour, label=h)
        ax.set_yticks(np.arange(len(labels))[::-1])
        ax.set_yticklabels(labels)
        ax.set_title(metric)
    if hue:
        used = [h for h in hues if any(h in v for v in present.values())]
        handles = [matplotlib.patches.Patch(color=(colours or {}).get(h, cycle[hues.index(h) % len(cycle)]), label=h)
                   for h in used]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(used), 6), frameon=False, title=hue)
    return fig
