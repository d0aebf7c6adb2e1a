"""Charts: curves, distributions, bars and intervals (tidy tables in, a matplotlib Figure out)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from chanstat.report.plots.style import channel_colours, facet_grid, styled


# ---- curves -------------------------------------------------------------------------------
def mean_curve(
    curves: pd.DataFrame, x: str = "mask_size", y: str = "score", by: str = "sample", grid: np.ndarray | None = None
) -> pd.DataFrame:
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
    fig, axes = facet_grid(len(panels), ncols, 3.6, 2.7)
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = {label: (colours or {}).get(label, cycle[k % len(cycle)]) for k, label in enumerate(labels)}
    for k, (title, lines) in enumerate(panels.items()):
        ax = axes.flat[k]
        for label, curve in lines.items():
            colour = palette[label]
            ax.plot(curve["x"], curve["mean"], color=colour, lw=1.6, label=label)
            if curve["sem"].notna().any():
                ax.fill_between(
                    curve["x"],
                    curve["mean"] - curve["sem"],
                    curve["mean"] + curve["sem"],
                    color=colour,
                    alpha=0.12,
                    lw=0,
                )
        ax.axhline(0, color="#888888", lw=0.6, ls=":")
        ax.set_title(title)
        ax.set_xlim(0, 1) if xlabel.startswith("mask size") else None
        ax.set_xlabel(xlabel)
        if k % axes.shape[1] == 0:
            ax.set_ylabel(ylabel)
    handles = [matplotlib.lines.Line2D([], [], color=palette[label], lw=2, label=label) for label in labels]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(labels), 7), frameon=False, title=legend_title
    )
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


@styled
def line_facets(
    df: pd.DataFrame, x: str, y: str, hue: str | None, facet: str, ylabel: str | None = None, ncols: int = 4
) -> Figure:
    """Lines of ``y`` against ``x`` (one per ``hue`` value), a panel per ``facet`` value, shared y axis."""
    facets = list(pd.unique(df[facet]))
    fig, axes = facet_grid(len(facets), ncols, 2.9, 2.4, sharex=True, sharey=True)
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
        handles = [
            matplotlib.lines.Line2D(
                [],
                [],
                color=cycle[j % len(cycle)],
                marker="o",
                ms=3.5,
                label=f"{hue} = {h:g}" if isinstance(h, (int, float, np.number)) else f"{hue} = {h}",
            )
            for j, h in enumerate(hues)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(hues), 6), frameon=False)
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
    fig, axes = facet_grid(len(facets), ncols, facet_w, 2.5 if len(facets) > ncols else 2.9, sharex=False)
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
                    ax.scatter(
                        x + rng.uniform(-width * 0.3, width * 0.3, vals.size),
                        vals,
                        s=9,
                        color=palette[j % len(palette)],
                        alpha=0.55,
                        lw=0,
                        zorder=3,
                    )
            if data:
                bp = ax.boxplot(
                    data,
                    positions=pos,
                    widths=width * 0.8,
                    patch_artist=True,
                    showfliers=False,
                    medianprops=dict(color="black", lw=1.2),
                    manage_ticks=False,
                )
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
        handles = [
            matplotlib.patches.Patch(color=palette[j % len(palette)], alpha=0.6, label=str(h))
            for j, h in enumerate(hues)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(hues), 4), frameon=False, title=hue)
    return fig


@styled
def interval_plot(
    df: pd.DataFrame,
    estimate: str,
    low: str,
    high: str,
    label: str,
    group: str | None,
    colours: Mapping[str, str] | None = None,
    xlabel: str = "estimate",
    ref: float | None = None,
) -> Figure:
    """Point estimates with intervals (a forest plot): one row per ``label``, panel per ``group``."""
    groups = list(pd.unique(df[group])) if group and group in df else [None]
    n_rows = max(len(df[df[group] == g]) if g is not None else len(df) for g in groups)
    fig, axes = facet_grid(len(groups), 3, 3.3, 0.28 * n_rows + 1.0, sharey=False)
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


@styled
def estimate_intervals(
    df: pd.DataFrame,
    label: str,
    estimate: str,
    low: str | None,
    high: str | None,
    facet: str | None = None,
    xlabel: str = "",
    ref: float | None = 0.0,
    annotate: str | None = None,
) -> Figure:
    """Horizontal estimates with intervals, one row per ``label``, a panel per ``facet`` value."""
    facets = list(pd.unique(df[facet])) if facet and facet in df else [None]
    n_rows = max(len(df if f is None else df[df[facet] == f]) for f in facets)
    fig, axes = facet_grid(len(facets), 2, 4.4, 0.32 * n_rows + 1.1, sharex=True, sharey=False)
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
                ax.annotate(
                    str(txt),
                    (x, y),
                    xytext=(0, 5),
                    textcoords="offset points",
                    fontsize=7,
                    ha="center",
                    va="bottom",
                    color="#333333",
                )
        ax.set_yticks(ys)
        ax.set_yticklabels([str(v) for v in sub[label]])
        ax.set_ylim(-0.7, len(sub) - 0.3)
        if ref is not None:
            ax.axvline(ref, color="#888888", lw=0.7, ls=":")
        ax.set_title("" if f is None else str(f))
        ax.set_xlabel(xlabel or estimate)
    return fig


# ---- bars ---------------------------------------------------------------------------------
@styled
def grouped_bars(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ylabel: str | None = None,
    colours: Mapping[str, str] | None = None,
    ref: float | None = None,
    title: str = "",
    err_low: str | None = None,
    err_high: str | None = None,
) -> Figure:
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
            val_arr = np.asarray(vals)
            ax.errorbar(
                pos,
                val_arr,
                yerr=[val_arr - np.asarray(lows), np.asarray(highs) - val_arr],
                fmt="none",
                ecolor="black",
                lw=0.8,
                capsize=2,
            )
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
def channel_bars(
    df: pd.DataFrame,
    channels_col: str,
    panels: Sequence[tuple[str, str, float | None, bool]],
    annotate: str | None = None,
) -> Figure:
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
        bars = ax.bar(
            range(len(names)), np.nan_to_num(shown, nan=0.0) if not log else shown, color=[colours[n] for n in names]
        )
        for b, inf in zip(bars, infinite):
            if inf:
                b.set_hatch("///")
                b.set_edgecolor("white")
                ax.annotate(
                    "∞",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=9,
                    xytext=(0, 10 if (annotate and ax is axes[0]) else 1),
                    textcoords="offset points",
                )
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
                    ax.annotate(
                        str(txt),
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
            ax.margins(y=0.15)
    return fig


@styled
def metric_panels(
    df: pd.DataFrame,
    metrics: Sequence[str],
    label: str,
    hue: str | None,
    colours: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    ncols: int = 3,
) -> Figure:
    """Horizontal bars: a panel per metric, a row per ``label`` value, a bar per ``hue`` value."""
    labels = list(order) if order else [str(v) for v in pd.unique(df[label])]
    hues: list[str | None] = [str(v) for v in pd.unique(df[hue])] if hue else [None]
    if colours and hue:
        known: list[str | None] = [h for h in colours if h in hues]
        hues = known + [h for h in hues if h not in colours]
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]

    def values(h, metric):
        part = df if h is None else df[df[hue].astype(str) == h]
        return part.set_index(part[label].astype(str))[metric].reindex(labels).to_numpy(dtype=float)

    # per panel, only the hue values that have a number for that metric get a bar slot
    present = {m: [h for h in hues if np.isfinite(values(h, m)).any()] for m in metrics}
    slots = max(len(v) for v in present.values()) if present else 1
    fig, axes = facet_grid(
        len(metrics), ncols, 3.0, (0.16 + 0.08 * slots) * len(labels) + 0.9, sharex=False, sharey=True
    )
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
        used = [h for h in hues if h is not None and any(h in v for v in present.values())]  # hue given: all str
        handles = [
            matplotlib.patches.Patch(color=(colours or {}).get(h, cycle[hues.index(h) % len(cycle)]), label=h)
            for h in used
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(used), 6), frameon=False, title=hue)
    return fig
