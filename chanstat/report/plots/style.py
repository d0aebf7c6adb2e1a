"""The report's figure style: rcParams, channel colours, the facet grid.

Channel colours follow the usual Cell Painting pseudo-colours (DNA blue, ER green, RNA cyan,
AGP red, Mito magenta); unknown channels get distinct colours from a qualitative palette.
Mathtext is off (``text.parse_math``), so a ``$`` in a channel or class name is drawn as is.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Sequence

import matplotlib
import numpy as np
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
    # names from data are drawn literally: "$" never starts mathtext
    "text.parse_math": False,
}

KNOWN_CHANNEL_COLOURS = {
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
        colour = KNOWN_CHANNEL_COLOURS.get(channel_key(ch))
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


def facet_grid(n: int, ncols: int, width: float, height: float, sharey=True, sharex=True):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey, sharex=sharex)
    for k in range(n, nrows * ncols):
        axes.flat[k].set_visible(False)
    return fig, axes
