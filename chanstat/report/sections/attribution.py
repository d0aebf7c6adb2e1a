"""Section "Attribution galleries": real, counterfactual and every method's map, per channel."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from chanstat.report.display import note, show_figure, show_heading, show_table
from chanstat.report.plots import images
from chanstat.report.sections.base import drop_empty, rank, require, section
from chanstat.rundir import RunDirectory


def _picks(run: RunDirectory, per_transition: int, available: np.ndarray) -> list[tuple[str, list[int]]]:
    """Up to ``per_transition`` images of each class transition among ``available`` rows: the best
    explained and the typical one (median DAC; :func:`chanstat.answer.gallery_picks`), never simply the first."""
    from chanstat.answer import gallery_picks

    picks = [(t, ss) for t, ss in gallery_picks(run, per_transition, available.tolist()) if ss]
    if picks:
        return picks
    tr = run.transitions
    tr = tr[tr["sample"].isin(available) & (tr["counterfactual_label"] != tr["label"])]
    return [
        (str(name), [int(s) for s in g["sample"].iloc[:per_transition]])
        for name, g in tr.groupby("transition", sort=True)
    ]


@section
def attribution_galleries(
    run: RunDirectory, per_transition: int = 2, methods: Sequence[str] | None = None, rows_per_figure: int = 6
) -> None:
    """Reads ``attributions`` (arrays and their ``family`` / ``signed`` attributes, the group's ``samples``)
    and ``dataset`` (images, counterfactuals, labels). Each method has one colour scale shared by
    all its panels (all images, all channels)."""
    if not require(run, "attributions", "dataset"):
        return
    names = run.method_order
    methods = [m for m in (methods or names) if m in names]
    if not methods:
        note("The attribution store holds no arrays.", kind="missing")
        return
    channels = run.channels
    stored = run.group_attrs("attributions").get("samples")
    rows = None if stored is None else np.asarray(stored, dtype=np.int64)  # data-set row of each array row
    available = rows if rows is not None else np.arange(run.array_shape("attributions", methods[0])[0])
    picks = _picks(run, per_transition, available)
    if not picks:
        note("No image has both a counterfactual of another class and maps from every method.", kind="info")
        return
    samples = sorted({s for _, ss in picks for s in ss})
    at = [int(np.flatnonzero(rows == s)[0]) for s in samples] if rows is not None else samples
    attrs = {m: run.array_attrs("attributions", m) for m in methods}
    maps, scales = {}, {}
    for m in methods:
        arr = run.array("attributions", m, samples=at).astype(np.float32)
        maps[m] = dict(zip(samples, arr))
        signed = attrs[m].get("signed")
        scales[m] = images.map_scale(arr, signed=None if signed is None else bool(signed))
    stored_arrays = run.array_names("dataset")
    real = dict(zip(samples, run.array("dataset", "images", samples=samples)))
    cfs = (
        dict(zip(samples, run.array("dataset", "counterfactuals", samples=samples)))
        if "counterfactuals" in stored_arrays
        else {}
    )
    tr = run.transitions.set_index("sample")
    families: dict[str, list[str]] = {}
    for m in sorted(methods, key=lambda m: rank(m, names)):
        families.setdefault(str(attrs[m].get("family") or ""), []).append(m)
    scale_rows = [
        {
            "method": m,
            "family": fam,
            "signed": scales[m]["signed"],
            "colour map": scales[m]["cmap"],
            "scale min": scales[m]["vmin"],
            "scale max": scales[m]["vmax"],
        }
        for fam, ms in families.items()
        for m in ms
    ]
    show_table(
        drop_empty(pd.DataFrame(scale_rows)), caption="Colour scale per method (shared by every panel of that method)"
    )
    # a figure per method family, at most `rows_per_figure` methods each, so panels stay legible
    chunks = [
        (family, members[k : k + rows_per_figure])
        for family, members in families.items()
        for k in range(0, len(members), rows_per_figure)
    ]
    for transition, ss in picks:
        show_heading(transition, level=4)
        for s in ss:
            label, cf_label = tr.loc[s, "label"], tr.loc[s, "counterfactual_label"]
            for family, chunk in chunks:
                part = f" — {family}" if family else ""
                show_figure(
                    images.attribution_gallery(
                        real[s],
                        cfs.get(s),
                        {m: maps[m][s] for m in chunk},
                        channels,
                        scales,
                        real_label=f"real\n({label})",
                        counterfactual_label=f"counterfactual\n({cf_label})",
                        title=f"image {s}: {transition}{part}",
                    )
                )
