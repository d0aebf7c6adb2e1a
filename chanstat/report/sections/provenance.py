"""Section "Provenance": stage timings, device, seed, versions and the configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chanstat.report.display import format_value, missing_note, show_code, show_table
from chanstat.report.sections.base import facts_table, section
from chanstat.report.text import finished_time
from chanstat.rundir import RunDirectory

_NOT_DETAILS = ("status", "wall_s", "fingerprint", "outputs")


@section
def provenance(run: RunDirectory) -> None:
    """Reads ``provenance.json`` (stages, device, seed, versions) and ``config.toml`` (shown verbatim)."""
    prov = run.provenance
    if not prov:
        missing_note(["provenance.json"])
    else:
        rows = []
        for name, info in (prov.get("stages") or {}).items():
            info = info if isinstance(info, dict) else {"status": info}
            details = {
                k: v for k, v in info.items() if k not in _NOT_DETAILS and isinstance(v, (int, float, str, bool))
            }
            text = "; ".join(f"{k}={format_value(v)}" for k, v in details.items())
            rows.append(
                {
                    "stage": name,
                    "status": info.get("status"),
                    "wall time (s)": info.get("wall_s", np.nan),
                    "details": text[:160] + ("…" if len(text) > 160 else ""),
                }
            )
        if rows:
            show_table(
                pd.DataFrame(rows),
                caption=f"Stage timings (total {format_value(prov.get('total_wall_s'))} s)",
                max_rows=None,
            )
        device = prov.get("device")
        if isinstance(device, dict):
            show_table(facts_table(device), caption="Device")
        show_table(
            facts_table(
                {
                    **{k: prov.get(k) for k in ("seed", "quick", "git_commit", "started")},
                    "finished": finished_time(prov),
                }
            ),
            caption="Reproducibility",
        )
        versions = prov.get("versions") or {}
        if versions:
            show_table(
                pd.DataFrame({"package": list(versions), "version": [format_value(v) for v in versions.values()]}),
                caption="Package versions",
                max_rows=None,
            )
    text = run.config_text()
    if text:
        show_code(text, "toml", summary="Configuration (config.toml, with the quick overrides merged in)")
    else:
        missing_note(["config.toml"])
