"""Sections "Data and model" and "Classifier training"."""

from __future__ import annotations

import pandas as pd

from chanstat.report.display import format_value, missing_note, show_figure, show_table
from chanstat.report.plots import charts
from chanstat.report.sections.base import require, section
from chanstat.rundir import RunDirectory

#: metadata columns (Cell Painting names, ``Metadata_`` extras of ``meta``) used for the counts
CLASS, PLATE, WELL = "Metadata_Class", "Metadata_Plate", "Metadata_Well"


@section
def data_and_model(run: RunDirectory) -> None:
    """Reads ``data_summary`` (all columns) and ``meta`` (``Metadata_Class``, ``Metadata_Plate``,
    ``Metadata_Well`` when present): the summary table and the images (and wells) per class and plate."""
    if require(run, "data_summary"):
        show_table(run.table("data_summary"), caption="Data set summary (intensity per class and channel)")
    if run.has("meta"):
        meta = run.table("meta")
        if CLASS in meta:
            keys = [c for c in (CLASS, PLATE) if c in meta]
            agg = {"images": ("sample", "size")}
            if WELL in meta:
                agg["wells"] = (WELL, "nunique")
            counts = meta.groupby(keys, sort=True).agg(**agg).reset_index()
            show_table(counts, caption="Images (and wells) per class and plate", max_rows=60)
    elif run.has("data_summary"):  # (without either, the note above already names the data stage)
        missing_note(["meta.parquet"], stage="data")


@section
def model_training(run: RunDirectory) -> None:
    """Reads ``training_history`` (epoch, train/val loss and accuracy) and the model stage's provenance record."""
    model_info = (run.provenance.get("stages") or {}).get("model", {})
    if not require(run, "training_history"):
        return
    hist = run.table("training_history")
    show_figure(charts.training_curves(hist))
    last = hist.iloc[-1]
    facts = {k: last[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")}
    facts["best val_accuracy"] = float(hist["val_accuracy"].max())
    for k, v in (model_info if isinstance(model_info, dict) else {}).items():
        if (
            k not in ("status", "wall_s", "fingerprint", "outputs")
            and isinstance(v, (int, float, str, bool))
            and k not in facts
        ):
            facts[k] = v
    show_table(
        pd.DataFrame({"quantity": list(facts), "value": [format_value(v) for v in facts.values()]}),
        caption="Classifier (last epoch; the stage's own record)",
    )
