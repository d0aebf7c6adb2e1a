"""Image panels: attribution galleries and mask panels, drawn as one mosaic per figure.

Figures are built with :class:`matplotlib.figure.Figure` directly (not through pyplot), so they
are never shown twice by a notebook's inline backend and never leak between tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from chanstat.report.plots.style import channel_cmap, channel_colours, styled

#: Figure attribute read by ``chanstat.report.display``: the margins are final, no tight-bbox pass.
_FIXED_LAYOUT = "chanstat_fixed_layout"


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
                mosaic[y0 : y0 + h, x0 : x0 + w] = 0.94
            else:
                ph, pw = p.rgb.shape[:2]
                mosaic[y0 : y0 + ph, x0 : x0 + pw] = p.rgb
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
                ax.text(
                    x0 + pad,
                    y0 + pad,
                    p.label,
                    ha="left",
                    va="top",
                    fontsize=7,
                    color="white",
                    bbox=dict(facecolor="black", alpha=0.6, pad=1.2, edgecolor="none"),
                )
            if p.centre_text:
                ax.text(x0 + w / 2, y0 + h / 2, p.centre_text, ha="center", va="center", fontsize=7, color="#555555")
        ax.text(-gap, r * (h + gap) + h / 2, row_labels[r], ha="right", va="center", fontsize=8)
    for c, name in enumerate(col_titles):
        ax.text(
            c * (w + gap) + w / 2,
            -gap,
            name,
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
            color=(col_colours[c] if col_colours else "black"),
        )
    for r, spec in (colorbars or {}).items():
        y_top = r * (h + gap)
        cax = fig.add_axes(
            (
                (left + mos_w * scale + 0.1) / fig_w,
                (bottom + (mos_h - y_top - h) * scale) / fig_h,
                0.11 / fig_w,
                h * scale / fig_h,
            )
        )
        cb = fig.colorbar(ScalarMappable(Normalize(spec["vmin"], spec["vmax"]), spec["cmap"]), cax=cax)
        cb.ax.tick_params(labelsize=7)
        cb.locator = matplotlib.ticker.MaxNLocator(3)
        cb.update_ticks()
    if title:
        fig.suptitle(title, y=1 - 0.12 / fig_h, va="top", fontsize=10)
    setattr(fig, _FIXED_LAYOUT, True)  # margins are set above: no second drawing pass to trim them
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
        rows.append(
            [
                Panel(_rgb(img[c], channel_cmap(colours[ch]), lo[c], max(hi[c], lo[c] + 1e-6)), ch)
                for c, ch in enumerate(channels)
            ]
        )
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
            row = [
                Panel(_rgb(m[c], channel_cmap(colours[ch]), 0, 1), f"{ch}  {100 * float(np.mean(m[c])):.1f}%")
                for c, ch in enumerate(channels)
            ]
        rows.append(row)
        labels.append(label)
    return panel_grid(rows, labels, list(channels), [colours[c] for c in channels], title=title, panel_in=1.15)
