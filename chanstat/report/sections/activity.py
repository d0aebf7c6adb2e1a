"""Section "Phenotypic activity": which perturbations differ from the controls at all (mAP)."""

from __future__ import annotations

from chanstat.report.display import show_heading, show_markdown, show_table
from chanstat.report.sections.base import section
from chanstat.report.text import md
from chanstat.rundir import RunDirectory

ALPHA = 0.05
COLUMNS = ("perturbation", "n_replicates", "n_controls", "mean_average_precision", "p_value", "p_adj", "active")


@section
def activity(run: RunDirectory, top: int = 25) -> None:
    """Reads ``activity`` (perturbation, replicates, controls, mAP, p_value, p_adj, p_adj_method,
    active), written when a profile table was given (``RunDirectory.save(activity=
    chanstat.cellprofiler.activity(profiles))``); shows nothing otherwise."""
    if not run.has("activity"):
        return
    table = run.table("activity").sort_values(
        ["p_value", "mean_average_precision"], ascending=[True, False], kind="stable"
    )
    n_active = int(table["active"].astype(bool).sum())
    methods = sorted({str(m) for m in table["p_adj_method"].dropna()})
    show_heading("Phenotypic activity", level=3)
    show_markdown(
        md(
            "{} of {} perturbations are active: their replicates retrieve each other ahead of the controls "
            "(mean average precision against controls, permutation p-value adjusted with {}). Explain the "
            "active ones; for an inactive perturbation there is no difference for a classifier to find.",
            n_active,
            len(table),
            ", ".join(methods) or "no adjustment",
        )
    )
    show_table(
        table[list(COLUMNS)].rename(columns={"mean_average_precision": "mAP"}),
        caption="Phenotypic activity, most significant first",
        max_rows=top,
        bold_rows=table["active"].astype(bool).tolist(),
    )
