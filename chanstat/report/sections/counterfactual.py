"""Section "Counterfactuals": where each counterfactual changed the image and whether it flips the class."""

from __future__ import annotations

import pandas as pd

from chanstat.report.display import show_figure, show_markdown, show_table
from chanstat.report.plots import charts, style
from chanstat.report.sections.base import drop_empty, has_column, ordered, require, section
from chanstat.report.text import md
from chanstat.rundir import RunDirectory

_MEANS = ("mean_abs_diff", "change_share", "flipped", "success")


@section
def counterfactual_quality(run: RunDirectory) -> None:
    """Reads ``counterfactual_summary`` (else ``counterfactual_quality`` averaged per provider and channel):
    change share per channel as bars; candidate counts (``n_candidates``, ``candidate``,
    ``mean_candidates``) when those optional columns exist."""
    quality = run.table("counterfactual_quality") if run.has("counterfactual_quality") else None
    if run.has("counterfactual_summary"):
        summary = run.table("counterfactual_summary")
    elif require(run, "counterfactual_quality"):
        assert quality is not None  # require() found the table
        g = quality.groupby(["provider", "channel"], sort=False)
        summary = g[list(_MEANS)].mean().rename(columns={"flipped": "flip_rate", "success": "success_rate"})
        summary.insert(0, "n_samples", g["sample"].nunique())
        summary = summary.reset_index()
    else:
        return
    show_table(drop_empty(summary), caption="Counterfactuals per channel (means over images)", max_rows=40)
    d = summary.copy()
    d["channel"] = d["channel"].astype(str)
    hue = "provider" if d["provider"].nunique() > 1 else None
    chans = ordered(d["channel"], run.channels)
    show_figure(
        charts.grouped_bars(
            d,
            "channel",
            "change_share",
            hue=hue,
            ylabel="share of |x − x′|",
            colours=style.channel_colours(chans),
            ref=1 / max(len(chans), 1),
            title="Where the counterfactuals change the image",
        )
    )
    if quality is not None:
        _candidates(quality)
    _generator_quality(run)


def _generator_quality(run: RunDirectory) -> None:
    """The learned generator's held-out quality (provenance ``generator_quality``) next to good values."""
    info = ((run.provenance or {}).get("stages") or {}).get("counterfactual") or {}
    quality = info.get("generator_quality") if isinstance(info, dict) else None
    if not isinstance(quality, dict) or not quality:
        return
    good = quality.get("good_values") or {}
    rows = [
        {"measure": name, "held-out value": quality.get(f"held_out_{name}"), "good": good.get(name, "")}
        for name in ("flip_rate", "concentration", "realism_gap")
    ]
    show_table(
        pd.DataFrame(rows),
        caption=(
            f"Generator quality on {quality.get('n_held_out')} held-out images (checkpoint of step {quality.get('best_step')}, "
            f"stopped at {quality.get('stopped_at')}: {quality.get('stop_reason')}; top channel "
            f"{quality.get('held_out_top_channel')}){_open_channels(quality)}"
        ),
        max_rows=None,
    )


def _open_channels(quality: dict) -> str:
    """The channels the conversion may change per target class, after gate pruning (if it ran)."""
    gates = quality.get("open_channels")
    if not isinstance(gates, dict) or not gates:
        return ""
    kept = "; ".join(f"to {target}: {', '.join(map(str, channels)) or 'none'}" for target, channels in gates.items())
    step = quality.get("pruned_at_step")
    return f". Channels it may change ({'pruned at step ' + str(step) if step is not None else 'all open'}): {kept}"


def _candidates(quality: pd.DataFrame) -> None:
    """How many candidates each counterfactual was chosen from, and how often one candidate is reused."""
    per_image = quality.drop_duplicates("sample")
    rows = []
    for provider, g in per_image.groupby("provider", sort=False):
        row = {"provider": provider, "images": len(g), "flip rate": g["flipped"].mean()}
        if has_column(g, "counterfactual_quality", "n_candidates"):
            row.update({"mean candidates": g["n_candidates"].mean(), "fewest candidates": g["n_candidates"].min()})
        if has_column(g, "counterfactual_quality", "candidate"):
            used = g["candidate"].dropna().astype(str)
            row.update(
                {
                    "distinct counterfactuals": used.nunique(),
                    "most reuses of one": int(used.value_counts().max()) if len(used) else 0,
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table.columns) > 3:
        show_table(table, caption="Counterfactual candidates per provider", max_rows=None)
        if "distinct counterfactuals" in table and (table["distinct counterfactuals"] < table["images"]).any():
            worst = table.loc[(table["images"] - table["distinct counterfactuals"]).idxmax()]
            show_markdown(
                md(
                    "Provider {} reuses counterfactuals: {} images share {} distinct ones, so those images "
                    "are not independent comparisons.",
                    worst["provider"],
                    int(worst["images"]),
                    int(worst["distinct counterfactuals"]),
                )
            )
