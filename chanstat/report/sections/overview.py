"""Section "Run overview": run facts and, per stage, its status and which of its files exist."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import note, show_table
from chanstat.report.sections.base import facts_table, files_by_stage, section
from chanstat.report.text import finished_time
from chanstat.rundir import RunDirectory


@section
def overview(run: RunDirectory) -> None:
    """Reads ``provenance.json`` (facts, stage status and wall time) and the presence of every schema file."""
    prov = run.provenance
    device = prov.get("device")
    facts = {
        "run directory": str(run.path),
        "run name": prov.get("chanstat_run"),
        "started": prov.get("started"),
        "finished": finished_time(prov),
        "quick version": prov.get("quick"),
        "seed": prov.get("seed"),
        "device": device.get("device") if isinstance(device, dict) else device,
        "channels": ", ".join(run.channels) or None,
        "classes": ", ".join(run.classes) or None,
        "images": len(run.transitions) or None,
    }
    if not run.has("provenance"):
        note("Saved from Python (no provenance.json): the report shows what the analysis saved.", kind="info")
    show_table(facts_table(facts), caption="Run")
    stages = prov.get("stages")
    if not isinstance(stages, dict):
        stages = {}
    rows = []
    for stage, files in files_by_stage().items():
        info = stages.get(stage)
        if not isinstance(info, dict):
            info = {}
        present = [f for f in files if run.has(f)]
        rows.append(
            {
                "stage": stage,
                "status": info.get("status", "done" if present else "not run"),
                "wall time (s)": info.get("wall_s", np.nan),
                "files present": ", ".join(present) or "–",
                "files missing": ", ".join(f for f in files if f not in present) or "–",
            }
        )
    show_table(pd.DataFrame(rows), caption="Stages and the files they write", max_rows=None, max_text=400)
