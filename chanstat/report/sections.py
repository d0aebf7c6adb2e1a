"""The report's sections: each reads what it needs from a :class:`RunDirectory` and shows it.

A section that lacks its files shows a "stage not run" note naming them; a section that fails
on an unexpected file shows an error note instead of stopping the report (the error is also
kept in :data:`ERRORS`, so tests can insist on none). Column sets are read defensively: a
section uses the columns that exist and never requires an optional one.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from chanstat.report import figures
from chanstat.report.display import format_value, missing_note, note, show_code, show_figure, show_markdown, show_table
from chanstat.report.rundir import FILE_STAGE, RunDirectory

#: (section name, error text) for every section that failed in this process.
ERRORS: list[tuple[str, str]] = []

AGGREGATE_CHANNEL_NAMES = {"", "all", "none", "nan", "aggregate", "*"}
SINGLE_CHANNEL = "single_channel"


def section(func: Callable) -> Callable:
    """Show an error note instead of raising, so one odd file cannot sink the whole report."""

    @functools.wraps(func)
    def wrapper(run: RunDirectory, *args, **kwargs):
        try:
            return func(run, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported in the document and in ERRORS
            text = f"{type(exc).__name__}: {exc}"
            ERRORS.append((func.__name__, text))
            note(f"**This part could not be drawn** ({func.__name__}): `{text}`", kind="error")
            return None

    return wrapper


def require(run: RunDirectory, *files: str, what: str | None = None) -> bool:
    """True when every file exists; otherwise show the "stage not run" note and return False."""
    absent = run.missing(*files)
    if absent:
        stages = sorted({FILE_STAGE.get(f, "") for f in absent} - {""})
        missing_note(absent, stage=stages[0] if len(stages) == 1 else None, what=what)
        return False
    return True


def _drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """Drop columns with no information (all missing or all empty strings)."""
    keep = []
    for c in df.columns:
        col = df[c]
        if col.isna().all():
            continue
        if (col.dtype == object or pd.api.types.is_string_dtype(col)) and (col.fillna("").astype(str).str.strip() == "").all():
            continue
        keep.append(c)
    return df[keep]


def pick(df: pd.DataFrame, *candidates: str) -> str | None:
    """The first of ``candidates`` that is a column of ``df``."""
    return next((c for c in candidates if c in df.columns), None)


def _ordered(values, order: Sequence[str]) -> list[str]:
    values = [str(v) for v in pd.unique(pd.Series(values).astype(str))]
    return [o for o in order if o in values] + [v for v in values if v not in order]


def _rank(name: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def _is_aggregate_channel(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip().lower() in AGGREGATE_CHANNEL_NAMES


def _with_transition(run: RunDirectory, df: pd.DataFrame) -> pd.DataFrame:
    """Add ``transition`` from the data set (by ``sample``) when the table lacks it."""
    if "transition" in df or "sample" not in df:
        return df
    tr = run.transitions
    if tr.empty:
        return df
    return df.merge(tr[["sample", "transition"]], on="sample", how="left")


# ============================================================================ overview
@section
def overview(run: RunDirectory) -> None:
    """Run facts and, per stage, its status and which of its files are present."""
    prov = run.provenance
    facts = {
        "run directory": str(run.path),
        "run name": prov.get("chanstat_run"),
        "started": prov.get("started"),
        "finished": prov.get("finished"),
        "quick version": prov.get("quick"),
        "seed": prov.get("seed"),
        "device": (prov.get("device") or {}).get("device") if isinstance(prov.get("device"), dict) else prov.get("device"),
        "channels": ", ".join(run.channels) or None,
        "classes": ", ".join(run.classes) or None,
        "images": len(run.transitions) or None,
    }
    if not run.has("provenance.json"):
        missing_note(["provenance.json"], what="run facts and timings are unknown")
    show_table(pd.DataFrame({"item": list(facts), "value": [format_value(v) for v in facts.values()]}),
               caption="Run")
    stages = prov.get("stages", {}) if isinstance(prov.get("stages"), dict) else {}
    by_stage: dict[str, list[str]] = {}
    for f, s in FILE_STAGE.items():
        if s != "run":
            by_stage.setdefault(s, []).append(f)
    rows = []
    for stage, files in by_stage.items():
        info = stages.get(stage, {})
        present = [f for f in files if run.has(f)]
        absent = [f for f in files if not run.has(f)]
        rows.append({
            "stage": stage,
            "status": info.get("status", "done" if present else "not run"),
            "wall time (s)": info.get("wall_s", np.nan),
            "files present": ", ".join(present) or "–",
            "files missing": ", ".join(absent) or "–",
        })
    show_table(pd.DataFrame(rows), caption="Stages and the files the report reads", max_rows=None)


# ============================================================================ data & model
@section
def data_and_model(run: RunDirectory) -> None:
    """The data set's summary table and the images (and wells) per class and plate."""
    if require(run, "data_summary.parquet"):
        show_table(run.table("data_summary.parquet"), caption="Data set summary")
    if run.has("meta.parquet"):
        meta = run.table("meta.parquet")
        klass = pick(meta, "Metadata_Class", "class", "label")
        plate = pick(meta, "Metadata_Plate", "plate")
        well = pick(meta, "Metadata_Well", "well")
        if klass:
            counts = meta.groupby([c for c in (klass, plate) if c], sort=True).agg(
                images=(klass, "size"), **({"wells": (well, "nunique")} if well else {})
            ).reset_index()
            show_table(counts, caption="Images (and wells) per class and plate", max_rows=60)
    elif run.has("data_summary.parquet"):  # (without either, the note above already names the data stage)
        missing_note(["meta.parquet"], stage="data")


@section
def model_training(run: RunDirectory) -> None:
    """Loss and accuracy per epoch, and the classifier's final numbers."""
    model_info = (run.provenance.get("stages") or {}).get("model", {})
    if not require(run, "training_history.parquet"):
        return
    hist = run.table("training_history.parquet")
    show_figure(figures.training_curves(hist))
    last = hist.iloc[-1]
    facts = {k: last[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy") if k in hist}
    if "val_accuracy" in hist:
        facts["best val_accuracy"] = float(hist["val_accuracy"].max())
    for k, v in model_info.items():
        if k not in ("status", "wall_s") and isinstance(v, (int, float, str, bool)) and k not in facts:
            facts[k] = v
    show_table(pd.DataFrame({"quantity": list(facts), "value": [format_value(v) for v in facts.values()]}),
               caption="Classifier (last epoch; the stage's own record)")


@section
def counterfactual_quality(run: RunDirectory) -> None:
    """Where each counterfactual changed the image (per channel) and whether it flips the class."""
    if run.has("counterfactual_summary.parquet"):
        summary = run.table("counterfactual_summary.parquet")
    elif require(run, "counterfactual_quality.parquet"):
        summary = _summarise(run.table("counterfactual_quality.parquet"), prefer=("provider", "channel"))
    else:
        return
    show_table(_drop_empty(summary), caption="Counterfactuals per channel (means over images)", max_rows=40)
    if "channel" in summary and "change_share" in summary:
        d = summary.copy()
        d["channel"] = d["channel"].astype(str)
        hue = "provider" if "provider" in d and d["provider"].nunique() > 1 else None
        chans = _ordered(d["channel"], run.channels)
        show_figure(figures.grouped_bars(d, "channel", "change_share", hue=hue, ylabel="share of |x − x′|",
                                         colours=figures.channel_colours(chans), ref=1 / max(len(chans), 1),
                                         title="Where the counterfactuals change the image"))


def _summarise(df: pd.DataFrame, prefer: Sequence[str] = ("method", "strategy", "channel")) -> pd.DataFrame:
    """Per-image tables are averaged over images by their categorical columns; others pass."""
    if "sample" not in df or df["sample"].nunique() <= 1:
        return df
    keys = [c for c in prefer if c in df]
    keys += [c for c in df.columns if c not in keys and c != "sample"
             and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c])) and df[c].nunique() <= 50]
    numeric = [c for c in df.columns if c not in keys and c != "sample" and pd.api.types.is_numeric_dtype(df[c])
               and not pd.api.types.is_bool_dtype(df[c])]
    if not numeric:
        return df
    if not keys:
        out = df[numeric].mean().to_frame().T
        out.insert(0, "n_images", df["sample"].nunique())
        return out
    out = df.groupby(keys, sort=False)[numeric].mean().reset_index()
    out.insert(len(keys), "n_images", df.groupby(keys, sort=False)["sample"].nunique().to_numpy())
    return out


# ============================================================================ galleries
def _gallery_samples(run: RunDirectory, per_transition: int, available: np.ndarray | None) -> list[tuple[str, list[int]]]:
    tr = run.transitions
    if available is not None:
        tr = tr[tr["sample"].isin(available)]
    tr = tr[tr["counterfactual_label"] != tr["label"]] if "counterfactual_label" in tr else tr
    out = []
    for name, g in tr.groupby("transition", sort=True):
        out.append((str(name), [int(s) for s in g["sample"].iloc[:per_transition]]))
    return out


def _attribution_rows(run: RunDirectory, method: str) -> np.ndarray | None:
    """Data-set sample index of each row of an attribution array (None = row i is sample i)."""
    attrs = run.array_attrs("attributions.zarr", method)
    for key in ("samples", "sample", "sample_index"):
        if attrs.get(key) is not None:
            return np.asarray(attrs[key], dtype=np.int64)
    return None


@section
def attribution_galleries(run: RunDirectory, per_transition: int = 2, methods: Sequence[str] | None = None,
                          rows_per_figure: int = 6) -> None:
    """Per image: real and counterfactual per channel, then every method's map per channel.

    Each method has one colour scale shared by all its panels (all images, all channels).
    """
    if not require(run, "attributions.zarr", "dataset.zarr"):
        return
    names = sorted(run.array_names("attributions.zarr"), key=lambda m: _rank(m, run.method_order))
    methods = [m for m in (methods or names) if m in names]
    if not methods:
        note("The attribution store holds no arrays.", kind="missing")
        return
    channels = run.channels
    n_images = run.array_shape("dataset.zarr", "images")[0]
    rows_of = {m: _attribution_rows(run, m) for m in methods}
    available = np.arange(n_images)
    for m in methods:
        rows = rows_of[m]
        n = run.array_shape("attributions.zarr", m)[0]
        available = np.intersect1d(available, rows if rows is not None else np.arange(n))
    picks = _gallery_samples(run, per_transition, available)
    if not picks:
        note("No image has both a counterfactual of another class and maps from every method.", kind="info")
        return
    samples = sorted({s for _, ss in picks for s in ss})
    maps: dict[str, dict[int, np.ndarray]] = {}
    scales = {}
    for m in methods:
        rows = rows_of[m]
        row_idx = [int(np.flatnonzero(rows == s)[0]) if rows is not None else s for s in samples]
        arr = run.array("attributions.zarr", m, samples=row_idx).astype(np.float32)
        maps[m] = dict(zip(samples, arr))
        signed = run.array_attrs("attributions.zarr", m).get("signed")
        scales[m] = figures.map_scale(arr, signed=None if signed is None else bool(signed))
    ds_names = run.array_names("dataset.zarr")
    images = dict(zip(samples, run.array("dataset.zarr", "images", samples=samples)))
    cfs = dict(zip(samples, run.array("dataset.zarr", "counterfactuals", samples=samples))) if "counterfactuals" in ds_names else {}
    tr = run.transitions.set_index("sample")
    families: dict[str, list[str]] = {}
    for m in methods:
        families.setdefault(str(run.array_attrs("attributions.zarr", m).get("family") or ""), []).append(m)
    scale_rows = [{"method": m, "family": fam, "signed": scales[m]["signed"], "colour map": scales[m]["cmap"],
                   "scale min": scales[m]["vmin"], "scale max": scales[m]["vmax"]}
                  for fam, ms in families.items() for m in ms]
    show_table(_drop_empty(pd.DataFrame(scale_rows)), caption="Colour scale per method (shared by every panel of that method)")
    for transition, ss in picks:
        show_markdown(f"#### {transition}")
        for s in ss:
            label, cf_label = tr.loc[s, "label"], tr.loc[s, "counterfactual_label"]
            # a figure per method family, at most `rows_per_figure` methods each, so panels stay legible
            chunks = []
            for family, members in families.items():
                for k in range(0, len(members), rows_per_figure):
                    chunks.append((family, members[k:k + rows_per_figure]))
            for family, chunk in chunks:
                part = f" — {family}" if family else ""
                fig = figures.attribution_gallery(
                    images[s], cfs.get(s), {m: maps[m][s] for m in chunk}, channels, scales,
                    real_label=f"real\n({label})", counterfactual_label=f"counterfactual\n({cf_label})",
                    title=f"image {s}: {transition}{part}",
                )
                show_figure(fig)


# ============================================================================ DAC
def dac_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean DAC per method, strategy and channel over images (tidy: ``dac``, ``dac_sd``, ``n_images``).

    The mean of per-image areas equals the area under the mean curve when the curves share one
    mask-size grid (the trapezoid rule is linear), so this is the DAC of the method.
    """
    keys = [c for c in ("method", "strategy", "channel") if c in scores]
    d = scores.copy()
    if "channel" in d:
        d["channel"] = ["all" if _is_aggregate_channel(v) else str(v) for v in d["channel"]]
    g = d.groupby(keys, sort=False)["dac"]
    out = g.mean().rename("dac").reset_index()
    out["dac_sd"] = g.std(ddof=1).to_numpy()
    out["n_images"] = (d.groupby(keys, sort=False)["sample"].nunique() if "sample" in d else g.size()).to_numpy()
    return out


@section
def dac_curves(run: RunDirectory) -> None:
    """DAC table (method x strategy) and the mean DAC curves, a panel per mask strategy."""
    if not require(run, "dac_scores.parquet"):
        return
    scores = run.table("dac_scores.parquet")
    summary = dac_summary(scores)
    multi = summary[summary.get("strategy", pd.Series("", index=summary.index)) != SINGLE_CHANNEL]
    if "strategy" in multi and len(multi):
        strategies = _ordered(multi["strategy"], ("aggregate", "joint", "per_channel"))
        wide = multi.pivot_table(index="method", columns="strategy", values="dac", aggfunc="first", sort=False)
        wide = wide.reindex(index=_ordered(multi["method"], run.method_order), columns=strategies)
        wide.columns = [str(c) for c in wide.columns]
        wide["n_images"] = multi.groupby("method", sort=False)["n_images"].max().reindex(wide.index)
        show_table(wide.rename_axis("method").reset_index(),
                   caption="DAC per method and mask strategy (mean over images; higher = the map finds the evidence "
                           "with smaller masks)", max_rows=None)
    if not run.has("dac_curves.parquet"):
        missing_note(["dac_curves.parquet"], stage="dac")
        return
    curves = run.table("dac_curves.parquet")
    x = pick(curves, "mask_size", "size", "fraction")
    y = pick(curves, "score", "dac_score", "value")
    if curves.empty or x is None or y is None:
        note("`dac_curves.parquet` holds no curves with mask_size and score.", kind="info")
        return
    strategies = [s for s in _ordered(curves.get("strategy", pd.Series(["all"])),
                                      ("aggregate", "joint", "per_channel")) if s != SINGLE_CHANNEL]
    methods = _ordered(curves["method"], run.method_order)
    panels = {}
    for strat in strategies:
        sub = curves[curves["strategy"].astype(str) == strat] if "strategy" in curves else curves
        lines = {}
        for m in methods:
            part = sub[sub["method"].astype(str) == m]
            if part.empty:
                continue
            lines[m] = figures.mean_curve(part, x, y)
        if lines:
            panels[f"strategy: {strat}"] = lines
    if panels:
        show_figure(figures.curve_facets(panels, ylabel="score (gain in p(real class))", legend_title="method"))
        show_markdown("Score = p(real class | hybrid) − p(real class | counterfactual), mean over images "
                      "(band: ± 1 standard error); the hybrid is the real image where the mask is on and the "
                      "counterfactual elsewhere.")


@section
def single_channel_curves(run: RunDirectory) -> None:
    """Single-channel DAC (method x channel) as a table and heatmap, and its curves per method."""
    if not require(run, "dac_scores.parquet"):
        return
    summary = dac_summary(run.table("dac_scores.parquet"))
    if "strategy" not in summary or not (summary["strategy"] == SINGLE_CHANNEL).any():
        note("No `single_channel` strategy in `dac_scores.parquet`: the DAC stage was run without it.", kind="missing")
        return
    single = summary[summary["strategy"] == SINGLE_CHANNEL]
    channels = _ordered(single["channel"], run.channels)
    wide = single.pivot_table(index="method", columns="channel", values="dac", sort=False).reindex(columns=channels)
    wide.columns = [str(c) for c in wide.columns]
    show_table(wide.reset_index(), caption="Single-channel DAC (only this channel masked; mean over images)",
               max_rows=None)
    show_figure(figures.heatmap(wide, title="Single-channel DAC", cmap="viridis", colorbar_label="DAC",
                                xlabel="channel", ylabel="method"))
    if not run.has("dac_curves.parquet"):
        missing_note(["dac_curves.parquet"], stage="dac")
        return
    curves = run.table("dac_curves.parquet")
    if "strategy" not in curves:
        return
    curves = curves[curves["strategy"].astype(str) == SINGLE_CHANNEL]
    x, y = pick(curves, "mask_size", "size"), pick(curves, "score", "value")
    panels = {}
    for m in _ordered(curves["method"], run.method_order):
        part = curves[curves["method"].astype(str) == m]
        lines = {}
        for ch in _ordered(part["channel"], run.channels):
            lines[ch] = figures.mean_curve(part[part["channel"].astype(str) == ch], x, y)
        panels[m] = lines
    if panels:
        show_figure(figures.curve_facets(panels, colours=figures.channel_colours(channels),
                                         ylabel="score (only this channel real)", legend_title="channel"))


@section
def optimal_masks(run: RunDirectory) -> None:
    """The optimal masks of one image: a figure per mask strategy, a row per method, a panel per channel."""
    if not require(run, "dac_masks.zarr"):
        return
    names = run.array_names("dac_masks.zarr")
    channels = run.channels
    settings = run.group_attrs("dac_masks.zarr").get("settings")
    if isinstance(settings, dict) and settings:
        show_markdown("Mask settings: " + ", ".join(f"{k} = {format_value(v)}" for k, v in settings.items()) + ".")
    entries = []  # (strategy, method, array name, attrs)
    for name in names:
        shape = run.array_shape("dac_masks.zarr", name)
        if len(shape) not in (3, 4):
            continue
        attrs = run.array_attrs("dac_masks.zarr", name)
        method, _, strategy = name.partition(".")
        entries.append((str(attrs.get("strategy") or strategy or "masks"), str(attrs.get("method") or method), name, attrs))
    if not entries:
        note("`dac_masks.zarr` holds no (N, C, H, W) masks.", kind="info")
        return
    # the same image for every figure: the first one every array has
    common = None
    for *_, attrs in entries:
        rows = attrs.get("samples")
        common = set(rows) if common is None and rows is not None else (common & set(rows) if rows is not None else common)
    sample = min(common) if common else None
    strategies = _ordered([e[0] for e in entries], ("aggregate", "joint", "per_channel", "single_channel"))
    for strategy in strategies:
        masks = {}
        for strat, method, name, attrs in sorted(entries, key=lambda e: _rank(e[1], run.method_order)):
            if strat != strategy:
                continue
            rows = attrs.get("samples")
            row = rows.index(sample) if (rows is not None and sample is not None) else 0
            arr = run.array("dac_masks.zarr", name, samples=[row])[0].astype(np.float32)
            arr = arr[None] if arr.ndim == 2 else arr
            if arr.shape[0] not in (1, len(channels)):
                continue
            masks[method] = arr
        if masks:
            label = f"image {sample}" if sample is not None else "first image"
            tr = run.transitions
            if sample is not None and len(tr) > sample:
                label += f" ({tr.loc[sample, 'transition']})"
            show_figure(figures.mask_panels(masks, channels, title=f"Optimal masks, strategy {strategy}: {label}"))


@section
def smoothing_sweep(run: RunDirectory) -> None:
    """DAC over the closing x blur grid: a wide table and line plots (a panel per method / strategy / channel)."""
    if not require(run, "dac_sweep.parquet"):
        return
    df = run.table("dac_sweep.parquet")
    value = pick(df, "dac", "score", "value", "auc")
    if value is None:
        show_table(df, caption="Smoothing sweep")
        return
    groups = [c for c in ("method", "strategy", "channel") if c in df]
    skip = {value, "sample", "n_images", "n", "seed", "dac_sd", "sd", "sem"}
    params = [c for c in df.columns if c not in skip and c not in groups and df[c].nunique() > 1]
    if "sample" in df:
        df = df.groupby(groups + params, sort=False, dropna=False)[value].agg(["mean", "count"]).reset_index()
        df = df.rename(columns={"mean": value, "count": "n_images"})
    if "channel" in df:  # aggregate strategies first, then channels in stain order
        df = df.assign(_c=[_rank(str(c), ["all"] + run.channels) for c in df["channel"]]).sort_values(
            [c for c in ("method", "strategy") if c in df] + ["_c"], kind="stable").drop(columns="_c")
    table, constant = _split_constant(df, groups + ["n_images"])
    fixed = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items())
    if len(params) == 2 and len(table) > 8:  # wide: one column per value of the second parameter
        a, b = params
        keys = [c for c in table.columns if c not in (b, value, "n_images")]
        wide = table.pivot_table(index=keys, columns=b, values=value, aggfunc="first", sort=False)
        wide.columns = [f"{b}={format_value(c)}" for c in wide.columns]
        table = wide.reset_index()
    show_table(table, caption="Smoothing sweep: DAC for each closing / blur setting" + (f" ({fixed})" if fixed else ""),
               max_rows=60)
    if not params:
        return
    x, hue = params[0], (params[1] if len(params) > 1 else None)
    facet_cols = [c for c in groups if c in df and df[c].nunique() > 1]
    d = df.copy()
    d["_facet"] = [" · ".join(str(v) for v in row) for row in d[facet_cols].itertuples(index=False, name=None)] \
        if facet_cols else (fixed or "sweep")
    if not pd.api.types.is_numeric_dtype(d[x]):
        d[x] = d[x].astype(str)
    show_figure(figures.line_facets(d, x, value, hue, "_facet", ylabel=value.upper() if value == "dac" else value))


# ============================================================================ channel shares
@section
def channel_shares(run: RunDirectory) -> None:
    """Per-image channel shares as box/strip plots (panel per method, colour per transition) and their means."""
    if not require(run, "channel_mass.parquet"):
        return
    mass = _with_transition(run, run.table("channel_mass.parquet"))
    value = pick(mass, "share", "mass")
    channels = _ordered(mass["channel"], run.channels)
    hue = "transition" if "transition" in mass else pick(mass, "label", "Metadata_Class")
    show_figure(figures.share_boxes(mass, channels, value=value, facet="method" if "method" in mass else None,
                                    hue=hue, ylabel="share of |attribution|" if value == "share" else value))
    keys = [c for c in ("method", hue, "channel") if c and c in mass]
    summary = mass.groupby(keys, sort=False)[value].agg(["mean", "median", "count"]).reset_index()
    summary = summary.rename(columns={"mean": f"mean_{value}", "median": f"median_{value}", "count": "n_images"})
    wide_keys = [k for k in keys if k != "channel"]
    wide = summary.pivot_table(index=wide_keys, columns="channel", values=f"mean_{value}", sort=False)
    wide = wide.reindex(columns=[c for c in channels if c in wide.columns])
    wide.columns = [str(c) for c in wide.columns]
    show_table(wide.reset_index(), caption=f"Mean {value} per channel", max_rows=60)


TEST_COLUMNS = ("method", "transition", "test", "contrast", "channel_a", "channel_b", "statistic", "df1", "df2",
                "p_value", "p_adj", "effect_size", "effect_size_name", "dominant_channel", "dominant_share",
                "dominant_ci_low", "dominant_ci_high", "unit", "n_units", "n_samples", "note")
OVERALL = ("all", "", "*", "overall")


def _overall_first(df: pd.DataFrame, column: str = "transition") -> pd.DataFrame:
    """Rows of the pooled breakdown ("all") first, keeping the order within each part."""
    if column not in df:
        return df
    key = (~df[column].astype(str).str.lower().isin(OVERALL)).to_numpy()
    return df.iloc[np.argsort(key, kind="stable")]


def _is_true(series: pd.Series) -> np.ndarray:
    return series.fillna(False).astype(bool).to_numpy()


def _split_constant(df: pd.DataFrame, candidates: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """Drop the ``candidates`` columns that hold one value only; return them as {column: value}."""
    constant = {c: df[c].iloc[0] for c in candidates if c in df and len(df) and df[c].nunique(dropna=False) == 1}
    return df.drop(columns=list(constant)), constant


@section
def channel_tests(run: RunDirectory, max_pairwise: int = 30) -> None:
    """Primary test per method (bold), the other omnibus tests, then the pairwise channel contrasts."""
    if not require(run, "channel_tests.parquet"):
        return
    tests = run.table("channel_tests.parquet")
    primary = _is_true(tests["primary"]) if "primary" in tests else np.zeros(len(tests), bool)
    cols = [c for c in TEST_COLUMNS if c in tests and c != "note"]
    cols += [c for c in tests.columns if c not in TEST_COLUMNS and c not in ("primary", "q_value", "p_adj_method",
                                                                           "estimate")]
    if primary.any():
        prim = _overall_first(tests[primary])
        first = prim.iloc[0]
        unit = f"; unit of replication: {first['unit']}" if "unit" in prim and pd.notna(first["unit"]) else ""
        units = f" ({format_value(first['n_units'])} units)" if "n_units" in prim and pd.notna(first["n_units"]) else ""
        adj = f", p adjusted by {first['p_adj_method']}" if "p_adj_method" in prim and pd.notna(first["p_adj_method"]) else ""
        lines = []
        for _, row in prim.head(12).iterrows():
            if "transition" in row and str(row["transition"]).lower() not in OVERALL:
                continue
            p = f"p = {format_value(row['p_value'])}" if "p_value" in row and pd.notna(row.get("p_value")) else "no p-value"
            dom = f", dominant channel **{row['dominant_channel']}**" if pd.notna(row.get("dominant_channel")) else ""
            lines.append(f"- `{row.get('method', '')}`: {p}{dom}")
        note(f"**Primary test:** `{first.get('test', '')}`{unit}{units}{adj}."
             + ("\n\n" + "\n".join(lines) if lines else ""), kind="info")
        table, constant = _split_constant(prim[cols], ("test", "contrast", "channel_a", "channel_b", "unit", "n_units",
                                                       "n_samples", "effect_size_name"))
        fixed = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items() if pd.notna(v))
        show_table(_drop_empty(table), caption="Primary test per method" + (f" ({fixed})" if fixed else ""),
                   bold_rows=np.ones(len(table), bool), max_rows=None)
    rest = tests[~primary]
    if primary.any() and "transition" in rest and "test" in rest:
        # the primary test within each class transition (the primary rows pool the transitions)
        primary_test = str(tests[primary]["test"].iloc[0])
        per = rest[(rest["test"].astype(str) == primary_test)
                   & ~rest["transition"].astype(str).str.lower().isin(OVERALL)]
        if len(per):
            table, constant = _split_constant(per[cols], ("test", "contrast", "channel_a", "channel_b", "unit",
                                                          "n_units", "n_samples", "effect_size_name"))
            fixed = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items() if pd.notna(v))
            show_table(_drop_empty(table), caption=f"Primary test within each transition ({fixed})", max_rows=60)
            rest = rest.drop(per.index)
    omnibus = rest[rest["contrast"].astype(str) == "channel"] if "contrast" in rest else rest
    if len(omnibus):
        shown = omnibus
        if "transition" in shown and shown["transition"].astype(str).str.lower().isin(OVERALL).any():
            shown = shown[shown["transition"].astype(str).str.lower().isin(OVERALL)]
        table, constant = _split_constant(shown[cols], ("transition", "contrast", "unit", "n_units", "n_samples"))
        table = table.drop(columns=[c for c in ("dominant_channel", "dominant_share", "dominant_ci_low",
                                                "dominant_ci_high") if c in table])
        fixed = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items() if pd.notna(v))
        show_table(_drop_empty(table), caption="Other tests of equal shares across channels"
                   + (f" ({fixed})" if fixed else ""), max_rows=60)
    pairwise = rest.drop(omnibus.index) if "contrast" in rest else rest.iloc[:0]
    if len(pairwise):
        by = pick(pairwise, "p_adj", "p_value")
        shown = pairwise
        if "transition" in shown and shown["transition"].astype(str).str.lower().isin(OVERALL).any():
            shown = shown[shown["transition"].astype(str).str.lower().isin(OVERALL)]
        shown = shown.sort_values(by, kind="stable") if by else shown
        table, constant = _split_constant(shown[cols], ("transition", "test", "unit", "n_units", "n_samples",
                                                        "effect_size_name", "dominant_channel", "dominant_share",
                                                        "dominant_ci_low", "dominant_ci_high"))
        table = table.drop(columns=[c for c in ("dominant_channel", "dominant_share", "dominant_ci_low",
                                                "dominant_ci_high") if c in table])
        fixed = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items()
                          if pd.notna(v) and not k.startswith("dominant"))
        show_table(_drop_empty(table), caption=f"Pairwise channel contrasts, smallest {by} first"
                   + (f" ({fixed})" if fixed else ""), max_rows=max_pairwise)
    if "note" in tests and "test" in tests:
        notes = _overall_first(tests)[["test", "note"]]
        notes = notes[notes["note"].fillna("").astype(str).str.strip() != ""].drop_duplicates("test")
        if len(notes):
            show_table(notes, caption="Notes on the tests (first row of each)", max_rows=None, max_text=400)


@section
def channel_share_ci(run: RunDirectory) -> None:
    """Mean share per channel with bootstrap intervals: a compact table and a forest plot."""
    if not require(run, "channel_share_ci.parquet"):
        return
    ci = run.table("channel_share_ci.parquet")
    est = pick(ci, "share", "mean_share", "estimate", "mean", "median")
    low = pick(ci, "ci_low", "share_ci_low", "lower", "low")
    high = pick(ci, "ci_high", "share_ci_high", "upper", "high")
    if not (est and low and high and "channel" in ci):
        show_table(ci, caption="Channel shares with confidence intervals", max_rows=60)
        return
    chans = _ordered(ci["channel"], run.channels)
    keys = [c for c in ("method", "transition", "contrast") if c in ci]
    d = _overall_first(ci)
    d = d.assign(_cell=[f"{format_value(e)} [{format_value(lo)}, {format_value(hi)}]"
                        for e, lo, hi in zip(d[est], d[low], d[high])])
    if keys:
        wide = d.pivot_table(index=keys, columns="channel", values="_cell", aggfunc="first", sort=False)
        wide = wide.reindex(columns=[c for c in chans if c in wide.columns])
        wide.columns = [str(c) for c in wide.columns]
        extra = [c for c in ("prob_dominant", "unit", "n_units") if c in d]
        wide = wide.reset_index()
        if "dominant" in d:
            dom = d[_is_true(d["dominant"])].drop_duplicates(keys).set_index(keys)["channel"].rename("dominant")
            wide = wide.merge(dom.reset_index(), on=keys, how="left")
        if "n_units" in extra:
            wide = wide.merge(d.drop_duplicates(keys)[keys + ["n_units"]], on=keys, how="left")
        show_table(wide, caption=f"Channel shares: {est} [{low}, {high}]", max_rows=60)
    else:
        show_table(ci, caption="Channel shares with confidence intervals", max_rows=60)
    plot = d
    if "transition" in d and d["transition"].astype(str).str.lower().isin(OVERALL).any():
        plot = d[d["transition"].astype(str).str.lower().isin(OVERALL)]
    group_cols = [c for c in ("method", "transition", "contrast") if c in plot and plot[c].nunique() > 1]
    if group_cols:
        plot = plot.assign(_group=[" · ".join(str(v) for v in row)
                                   for row in plot[group_cols].itertuples(index=False, name=None)])
    show_figure(figures.interval_plot(plot, est, low, high, "channel", "_group" if group_cols else None,
                                      colours=figures.channel_colours(chans),
                                      xlabel=f"share ({est}, interval)", ref=1 / max(len(chans), 1)))


# ============================================================================ similarity
def _pair_columns(df: pd.DataFrame) -> tuple[str, str] | None:
    for a, b in (("channel_a", "channel_b"), ("method_a", "method_b"), ("method_1", "method_2"), ("method_x", "method_y"), ("a", "b"),
                 ("left", "right"), ("method", "other_method"), ("row", "column")):
        if a in df and b in df:
            return a, b
    cats = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    for i, a in enumerate(cats):
        for b in cats[i + 1:]:
            sa, sb = set(df[a].astype(str)), set(df[b].astype(str))
            if len(sa & sb) >= max(1, min(len(sa), len(sb)) // 2):
                return a, b
    return None


@section
def map_similarity(run: RunDirectory) -> None:
    """Spearman correlation between the channel maps of one image (mean over images), per method."""
    if not require(run, "map_similarity.parquet"):
        return
    sim = run.table("map_similarity.parquet")
    pair = _pair_columns(sim)
    value = pick(sim, "mean", "rho", "similarity", "spearman", "correlation", "value", "median")
    if pair is None or value is None:
        show_table(sim, caption="Map similarity")
        return
    a, b = pair
    facet_col = next((c for c in ("method", "metric", "measure", "strategy") if c in sim and c not in pair), None)
    facets = list(pd.unique(sim[facet_col])) if facet_col else [None]
    mats = {}
    for f in facets[:12]:
        sub = sim if f is None else sim[sim[facet_col] == f]
        agg = sub.groupby([a, b], sort=False)[value].mean().reset_index()
        names = _ordered(pd.concat([agg[a], agg[b]]).astype(str), run.channels)
        mat = pd.DataFrame(np.nan, index=names, columns=names)
        for _, r in agg.iterrows():
            mat.loc[str(r[a]), str(r[b])] = r[value]
            if pd.isna(mat.loc[str(r[b]), str(r[a])]):
                mat.loc[str(r[b]), str(r[a])] = r[value]
        if set(names) <= set(run.channels) or value in ("mean", "rho", "median", "spearman", "correlation"):
            for n in names:  # a map is perfectly correlated with itself
                if pd.isna(mat.loc[n, n]):
                    mat.loc[n, n] = 1.0
        mats["all" if f is None else str(f)] = mat
    show_figure(figures.heatmap_facets(mats, vmin=-1.0, vmax=1.0, cmap="RdBu_r",
                                       colorbar_label=f"Spearman ρ ({value} over images)"))
    show_markdown("Low correlation between two channels' maps means the method attributes different places in "
                  "different channels; values near 1 mean the channel maps are copies of one another. "
                  "Grey cells (n/a): the correlation is undefined because a channel's map is constant "
                  "(e.g. all zero) in every image.")
    if facet_col:
        per = sim.groupby(facet_col, sort=False)[value]
        summary = pd.DataFrame({
            f"mean {value}": per.mean(), f"lowest pair": per.min(), f"highest pair": per.max(),
            "pairs": per.size(), "pairs undefined": sim[value].isna().groupby(sim[facet_col], sort=False).sum(),
        })
        if "n_undefined" in sim:
            summary["image pairs undefined"] = sim.groupby(facet_col, sort=False)["n_undefined"].sum()
        show_table(summary.rename_axis(facet_col).reset_index(),
                   caption=f"Map similarity per {facet_col} (over channel pairs)", max_rows=None)
    else:
        show_table(_drop_empty(sim), caption="Map similarity per channel pair", max_rows=40)


COMPARISON_COLUMNS = ("method", "strategy", "channel", "a", "b", "mean_a", "mean_b", "estimate", "ci_low", "ci_high",
                      "statistic", "p_value", "p_adj", "effect_size", "effect_size_name", "unit", "n_units", "note")


@section
def strategy_comparison(run: RunDirectory) -> None:
    """Paired comparisons of DAC: strategies within a method, then methods within a strategy."""
    if not require(run, "strategy_comparison.parquet"):
        return
    comp = run.table("strategy_comparison.parquet")
    if "comparison" not in comp:
        show_table(_drop_empty(comp), caption="DAC comparisons", max_rows=60)
        return
    for kind, caption, fixed in (("strategy", "Mask strategies compared within each method (DAC of a − b)", "strategy"),
                                 ("method", "Methods compared within each strategy (DAC of a − b)", "method")):
        part = comp[comp["comparison"].astype(str) == kind]
        if part.empty:
            continue
        cols = [c for c in COMPARISON_COLUMNS if c in part and c != fixed]
        by = pick(part, "p_adj", "p_value")
        part = part.sort_values(by, kind="stable") if by and kind == "method" else part
        table, constant = _split_constant(part[cols], ("channel", "effect_size_name", "unit", "n_units", "note"))
        known = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items() if pd.notna(v) and str(v).strip())
        show_table(_drop_empty(table), caption=caption + (f", sorted by {by}" if kind == "method" and by else "")
                   + (f" ({known})" if known else ""), max_rows=40)
    other = comp[~comp["comparison"].astype(str).isin(("strategy", "method"))]
    if len(other):
        show_table(_drop_empty(other), caption="Other DAC comparisons", max_rows=40)


LOCALISATION_METRICS = ("pxap", "dice", "miou", "pointing_game", "relevance_mass", "relevance_rank", "auc",
                        "deletion_auc", "insertion_auc")


@section
def localisation(run: RunDirectory) -> None:
    """Localisation (vs the planted signal masks) and deletion / insertion faithfulness, per method."""
    if not require(run, "localisation.parquet"):
        return
    loc = run.table("localisation.parquet")
    summ = _summarise(loc, prefer=("method", "metric", "channel"))
    metric_col, value = pick(summ, "metric"), pick(summ, "value", "score")
    if metric_col and value and "method" in summ:  # long format: one column per metric
        keys = [c for c in ("method", "channel") if c in summ]
        summ = summ.pivot_table(index=keys, columns=metric_col, values=value, aggfunc="mean", sort=False).reset_index()
        summ.columns = [str(c) for c in summ.columns]
    metrics = [m for m in LOCALISATION_METRICS if m in summ and np.isfinite(summ[m].to_numpy(dtype=float)).any()]
    if metrics:  # rows without any value (a channel with no ground truth) say nothing
        has_value = np.isfinite(summ[metrics].to_numpy(dtype=float)).any(axis=1)
        dropped = int((~has_value).sum())
        summ = summ[has_value]
    else:
        dropped = 0
    table, constant = _split_constant(summ, ("n_images", "n_val", "n_test", "channel_resolved"))
    table = table.drop(columns=[c for c in table.columns if c.endswith("_threshold")])
    fixed = ", ".join(f"{k} {format_value(v)}" for k, v in constant.items())
    show_table(_drop_empty(table), caption="Localisation and faithfulness metrics" + (f" ({fixed})" if fixed else ""),
               max_rows=60)
    if dropped:
        show_markdown(f"{dropped} method × channel rows without ground truth (no signal in that channel) are not shown. "
                      "`channel = all`: the map summed over channels against the union of the signal masks.")
    if metrics and "method" in summ:
        hue = "channel" if "channel" in summ and summ["channel"].nunique() > 1 else None
        chans = _ordered(summ[hue], ["all"] + run.channels) if hue else []
        colours = figures.channel_colours(chans) if hue else None
        if colours and "all" in colours:
            colours["all"] = "#555555"
        faithful = [m for m in metrics if m.endswith("_auc")]
        for group in ([m for m in metrics if m not in faithful], faithful):
            if not group:
                continue
            rows = summ[np.isfinite(summ[group].to_numpy(dtype=float)).any(axis=1)]
            show_figure(figures.metric_panels(rows, group, "method", hue, colours=colours,
                                              order=_ordered(rows["method"], run.method_order)))
    if run.has("faithfulness_curves.parquet"):
        _faithfulness_curves(run)


def _faithfulness_curves(run: RunDirectory) -> None:
    curves = run.table("faithfulness_curves.parquet")
    x, y = pick(curves, "fraction", "step"), pick(curves, "score", "value")
    if not (x and y and "method" in curves and "metric" in curves):
        return
    if "channel" in curves:
        keep = "all" if (curves["channel"].astype(str) == "all").any() else str(curves["channel"].iloc[0])
        curves = curves[curves["channel"].astype(str) == keep]
    panels = {}
    for metric in _ordered(curves["metric"], ("deletion", "insertion", "road_morf", "road_lerf")):
        part = curves[curves["metric"].astype(str) == metric]
        panels[metric] = {m: figures.mean_curve(part[part["method"].astype(str) == m], x, y,
                                                grid=np.linspace(part[x].min(), part[x].max(), 51))
                          for m in _ordered(part["method"], [])}
    show_figure(figures.curve_facets(panels, xlabel="fraction of pixels removed / inserted",
                                     ylabel="p(real class)", legend_title="method"))
    show_markdown("Deletion: the most attributed pixels are removed first, so a faithful map makes the "
                  "probability fall fast (low area). Insertion: they are added first to a blurred image, so a "
                  "faithful map makes it rise fast (high area).")


# ============================================================================ CellProfiler
def _feature_channel(value) -> str:
    """One channel label per feature for colouring: the channel, "several", or "none"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [str(v) for v in value if str(v)]
    else:
        text = str(value).strip()
        items = [t.strip() for t in text.replace(";", ",").replace("|", ",").split(",") if t.strip()]
    items = [i for i in items if i.lower() not in ("none", "nan", "unknown")]
    if not items:
        return "none"
    return items[0] if len(set(items)) == 1 else "several"


@section
def cp_differential(run: RunDirectory, top: int = 20) -> None:
    """Volcano plot of the CellProfiler features (colour = channel) and the most significant ones."""
    if not require(run, "cp_differential.parquet"):
        return
    diff = run.table("cp_differential.parquet")
    effect = pick(diff, "effect_size", "log2_fold_change", "statistic")
    p = pick(diff, "p_value", "p")
    q = pick(diff, "q_value", "p_adj", "fdr")
    chan = pick(diff, "channels", "channel")
    d = diff.copy()
    if "status" in d:
        n_all = len(d)
        d = d[d["status"].astype(str) == "tested"]
        untested = n_all - len(d)
    else:
        untested = 0
    if chan:
        d["_channel"] = [_feature_channel(v) for v in d[chan]]
    if "significant" in d:
        n_sig = int(d["significant"].fillna(False).astype(bool).sum())
    else:
        n_sig = int((d[q] < 0.05).sum()) if q else None
    contrast = ""
    if "case" in d and "control" in d and len(d):
        contrast = f" ({d['case'].iloc[0]} vs {d['control'].iloc[0]}" + (f", per {d['level'].iloc[0]}" if "level" in d else "") + ")"
    text = f"{len(d)} features tested{contrast}"
    text += f"; {n_sig} significant" + (f" ({q} < 0.05)" if q and "significant" not in d else "") if n_sig is not None else ""
    text += f"; {untested} not tested (constant or missing)." if untested else "."
    show_markdown(text)
    if effect and p and len(d):
        show_figure(figures.volcano(d, effect, p, q, "_channel" if chan else None, run.channels or [],
                                    name=pick(d, "feature", "name")))
    sort_col = q or p
    shown = d.sort_values(sort_col) if sort_col else d
    keep = [c for c in ("feature", "compartment", "category", "channels", "channel", "n_case", "n_control", "mean_case",
                        "mean_control", "statistic", "p_value", "q_value", "effect_size", "ci_low", "ci_high",
                        "significant") if c in shown]
    show_table(shown[keep] if keep else shown, caption=f"Most significant features (top {top} by {sort_col})",
               max_rows=top)


@section
def channel_enrichment(run: RunDirectory) -> None:
    """Which channels are enriched among the significant CellProfiler features."""
    if not require(run, "channel_enrichment.parquet"):
        return
    enr = run.table("channel_enrichment.parquet")
    if "channel" not in enr:
        show_table(enr, caption="Channel enrichment")
        return
    d = enr.copy()
    chans = _ordered(d["channel"], run.channels)
    d["channel"] = d["channel"].astype(str)
    d = d.set_index("channel").loc[chans].reset_index()
    panels = []
    if "odds_ratio" in d:
        panels.append(("odds_ratio", "odds ratio (significant features)", 1.0, True))
    q = pick(d, "q_value", "p_adj", "p_value")
    if q:
        d["_mlq"] = -np.log10(np.clip(d[q].to_numpy(dtype=float), 1e-300, 1))
        panels.append(("_mlq", f"−log10 {q}", -math.log10(0.05), False))
    if "n_significant" in d and "n_features" in d:
        d["_count"] = [f"{int(a)}/{int(b)}" for a, b in zip(d["n_significant"], d["n_features"])]
    if panels:
        show_figure(figures.channel_bars(d, "channel", panels, annotate="_count" if "_count" in d else None))
    show_table(enr, caption="Channel enrichment of significant CellProfiler features", max_rows=None)


@section
def compartment_channel(run: RunDirectory) -> None:
    """Significant CellProfiler features per compartment x channel, as a heatmap and a table."""
    if not require(run, "compartment_channel.parquet"):
        return
    cc = run.table("compartment_channel.parquet")
    value = pick(cc, "fraction_significant", "frac_significant", "mean_abs_effect", "n_significant", "odds_ratio", "value")
    if not ("compartment" in cc and "channel" in cc and value):
        show_table(cc, caption="Compartment × channel")
        return
    chans = _ordered(cc["channel"], run.channels)
    mat = cc.pivot_table(index="compartment", columns="channel", values=value, aggfunc="mean", sort=False)
    mat = mat.reindex(columns=[c for c in chans if c in mat.columns])
    mat.columns = [str(c) for c in mat.columns]
    fmt = "{:.0f}" if value.startswith("n_") else "{:.2f}"
    show_figure(figures.heatmap(mat, title=f"Compartment × channel: {value}", cmap="magma", colorbar_label=value,
                                xlabel="channel", ylabel="compartment", fmt=fmt))
    show_table(cc, caption="Compartment × channel", max_rows=60)


@section
def concordance(run: RunDirectory) -> None:
    """Rank agreement between attribution shares and CellProfiler enrichment, per method."""
    if not require(run, "concordance.parquet"):
        return
    con = run.table("concordance.parquet")
    est = pick(con, "estimate", "tau", "rho", "value")
    if est is None and "statistic" in con and pd.api.types.is_numeric_dtype(con["statistic"]):
        est = "statistic"
    facet = "statistic" if est != "statistic" and "statistic" in con else None
    if "method" in con and est:
        d = con.copy()
        if "p_value" in d:
            d["_p"] = [f"p = {format_value(v)}" for v in d["p_value"]]
        show_figure(figures.estimate_intervals(d, "method", est, pick(d, "ci_low"), pick(d, "ci_high"), facet=facet,
                                               xlabel="rank agreement (attribution shares vs CellProfiler)",
                                               annotate="_p" if "_p" in d else None))
    rank_cols = [c for c in con.columns if c.startswith(("attribution_rank_", "feature_rank_"))]
    main = [c for c in con.columns if c not in rank_cols]
    show_table(_drop_empty(con[main]), caption="Concordance of attribution and CellProfiler channel rankings",
               max_rows=60)
    if run.has("concordance_ranks.parquet"):
        ranks = run.table("concordance_ranks.parquet")
        if {"attribution_rank", "feature_rank", "channel"} <= set(ranks.columns):
            show_figure(figures.rank_agreement(ranks, "feature_rank", "attribution_rank",
                                               _ordered(ranks["channel"], run.channels),
                                               xlabel="CellProfiler rank", ylabel="attribution rank"))
            show_markdown("Rank 1 = the channel with the largest attribution share (y) or CellProfiler enrichment "
                          "score (x). Points on the dashed line: both rank the channel alike.")


# ============================================================================ provenance
@section
def provenance(run: RunDirectory) -> None:
    """Stage timings, device, seed, versions and the configuration of the run."""
    prov = run.provenance
    if not prov:
        missing_note(["provenance.json"])
    else:
        stages = prov.get("stages") or {}
        rows = []
        for name, info in stages.items():
            info = info if isinstance(info, dict) else {"status": info}
            details = {k: v for k, v in info.items() if k not in ("status", "wall_s") and isinstance(v, (int, float, str, bool))}
            text = "; ".join(f"{k}={format_value(v)}" for k, v in details.items())
            rows.append({"stage": name, "status": info.get("status"), "wall time (s)": info.get("wall_s", np.nan),
                         "details": text[:160] + ("…" if len(text) > 160 else "")})
        if rows:
            show_table(pd.DataFrame(rows), caption=f"Stage timings (total {format_value(prov.get('total_wall_s'))} s)",
                       max_rows=None)
        device = prov.get("device")
        if isinstance(device, dict):
            show_table(pd.DataFrame({"item": list(device), "value": [format_value(v) for v in device.values()]}),
                       caption="Device")
        facts = {k: prov.get(k) for k in ("seed", "quick", "git_commit", "started", "finished")}
        show_table(pd.DataFrame({"item": list(facts), "value": [format_value(v) for v in facts.values()]}),
                   caption="Reproducibility")
        versions = prov.get("versions") or {}
        if versions:
            show_table(pd.DataFrame({"package": list(versions), "version": [format_value(v) for v in versions.values()]}),
                       caption="Package versions", max_rows=None)
    text = run.config_text()
    if text:
        show_code(text, "toml", summary="Configuration (config.toml, with the quick overrides merged in)")
    else:
        missing_note(["config.toml"])
