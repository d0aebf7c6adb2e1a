"""Gather every piece of evidence a run holds and weigh it: the ``verdict`` table (no torch).

:func:`weigh_tables` works on a dict of tables (schema names -> DataFrames), so tests build
their own; :func:`weigh_run` reads them from a run directory (what the answer stage and the
report do).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from chanstat.answer.evidence import (
    POOLED,
    CounterfactualQuality,
    Piece,
    best_channel_piece,
    cell_link_piece,
    cellprofiler_piece,
    counterfactual_quality,
    dominance_piece,
    other_methods_piece,
    ranked_piece,
    unit_means,
    with_intervals,
)
from chanstat.answer.rules import DEFAULT_THRESHOLDS, RULES, Case, Thresholds, Verdict, weigh
from chanstat.vocabulary import N_BOOT

SINGLE_CHANNEL = "single_channel"
#: Tables the answer reads when the run holds them.
INPUTS = (
    "best_channel",
    "channel_tests",
    "channel_share_ci",
    "dac_scores",
    "channel_shapley",
    "shapley_tests",
    "channel_enrichment",
    "feature_link",
    "counterfactual_quality",
    "counterfactual_summary",
    "meta",
)


def _table(tables: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame | None:
    t = tables.get(name)
    return t if isinstance(t, pd.DataFrame) and not t.empty else None


def _units(meta: pd.DataFrame | None) -> pd.Series | None:
    """sample -> well (plate/well) when the metadata has wells, else None (the image is the unit)."""
    if meta is None or "Metadata_Well" not in meta:
        return None
    plate = meta["Metadata_Plate"].astype(str) + "/" if "Metadata_Plate" in meta else ""
    return pd.Series((plate + meta["Metadata_Well"].astype(str)).to_numpy(), index=meta["sample"].to_numpy())


def _primary_method(best, tests, dac) -> str:
    primary = (
        best[(best["role"].astype(str) == "primary") & (best["quantity"].astype(str) == "share")]
        if best is not None
        else None
    )
    if primary is not None and len(primary):
        return str(primary["method"].iloc[0])
    if tests is not None and "primary" in tests and tests["primary"].fillna(False).astype(bool).any():
        return str(tests[tests["primary"].fillna(False).astype(bool)]["method"].iloc[0])
    if dac is not None:
        return str(dac["method"].iloc[0])
    return ""


def _transitions(best, tests) -> list[str]:
    """Transitions of the primary method's rows: of ``best_channel``, else of ``channel_tests``, else pooled."""
    candidates = []
    if best is not None:
        candidates.append(best[(best["role"].astype(str) == "primary") & (best["quantity"].astype(str) == "share")])
    if tests is not None and "transition" in tests:
        candidates.append(tests[tests["primary"].fillna(False).astype(bool)] if "primary" in tests else tests)
    for rows in candidates:
        values = [str(v) for v in pd.unique(rows["transition"].astype(str))]
        if values:
            return sorted(values, key=lambda v: (v != POOLED, v))
    return [POOLED]


def _samples_of(sample_transition: pd.Series | None, transition: str) -> np.ndarray | None:
    if transition == POOLED or sample_transition is None:
        return None
    return sample_transition.index[sample_transition.astype(str) == transition].to_numpy()


def _per_sample(table: pd.DataFrame, samples: np.ndarray | None) -> pd.DataFrame:
    return table if samples is None else table[table["sample"].isin(samples)]


def gather(
    tables: Mapping[str, pd.DataFrame],
    channels: list[str],
    sample_transition: pd.Series | None = None,
    counterfactual_info: dict | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    n_boot: int = N_BOOT,
    min_effect: float = 0.02,
    seed: int = 0,
) -> list[Case]:
    """One :class:`Case` per transition from the run's tables.

    Parameters
    ----------
    tables : schema name -> table (any of :data:`INPUTS`; absent ones are skipped).
    channels : the channel names, in order.
    sample_transition : sample -> transition name (``"control → treated"``); None: pooled only.
    counterfactual_info : the counterfactual stage's provenance record (neighbour reuse).
    n_boot, seed : bootstrap of single-channel DAC / Shapley intervals (over wells when ``meta``
        has ``Metadata_Well``, else images).
    min_effect : a DAC or Shapley top mean at most this names no channel.
    """
    best, tests = _table(tables, "best_channel"), _table(tables, "channel_tests")
    dac, shap, shap_tests = (
        _table(tables, "dac_scores"),
        _table(tables, "channel_shapley"),
        _table(tables, "shapley_tests"),
    )
    share_ci, enrichment = _table(tables, "channel_share_ci"), _table(tables, "channel_enrichment")
    units = _units(_table(tables, "meta"))
    primary = _primary_method(best, tests, dac)
    alpha = thresholds.alpha
    if dac is not None:
        dac = dac[dac["strategy"].astype(str) == SINGLE_CHANNEL]
        dac = dac[dac["channel"].astype(str).isin(channels)] if channels else dac
        if not dac.empty:
            dac_method = primary if (dac["method"].astype(str) == primary).any() else str(dac["method"].iloc[0])
            dac = dac[dac["method"].astype(str) == dac_method]
        else:
            dac = None
    cp = cellprofiler_piece(enrichment, alpha, channels) if enrichment is not None else None
    link = cell_link_piece(_table(tables, "feature_link"), alpha, primary)
    cases = []
    for k, transition in enumerate(_transitions(best, tests)):
        samples = _samples_of(sample_transition, transition)
        pieces: dict[str, Piece | None] = {}
        # attribution: the primary method's confidence set, else its dominance test
        att = best_channel_piece(best, transition, "share") if best is not None else None
        if att is None and tests is not None:
            att = dominance_piece(tests, transition, "attribution", alpha, channels, primary=True)
        if att is not None and share_ci is not None:
            _joint_intervals(att, share_ci, transition)
        pieces["attribution"] = att
        # single-channel DAC
        d = (
            (
                best_channel_piece(best, transition, "dac", role="", method=primary)
                or best_channel_piece(best, transition, "dac", role="")
            )
            if best is not None
            else None
        )
        computed = None
        if dac is not None and len(_per_sample(dac, samples)):
            part = _per_sample(dac, samples)
            computed = ranked_piece(
                "dac",
                unit_means(part.rename(columns={"dac": "v"}), "v", units),
                str(part["method"].iloc[0]),
                n_boot=n_boot,
                min_effect=min_effect,
                seed=seed + k,
            )
        pieces["dac"] = (
            with_intervals(d, computed) if d is None or d.method == (computed.method if computed else "") else d
        )
        # Shapley: confidence set, else the dominance test, else the values themselves
        s = best_channel_piece(best, transition, "shapley", role="") if best is not None else None
        computed = None
        if shap is not None and len(_per_sample(shap, samples)):
            computed = ranked_piece(
                "shapley",
                unit_means(_per_sample(shap, samples), "shapley", units),
                "channel_shapley",
                n_boot=n_boot,
                min_effect=min_effect,
                seed=seed + 100 + k,
                share=True,
            )
        if s is None and shap_tests is not None and "source" in shap_tests:
            s = dominance_piece(
                shap_tests[shap_tests["source"].astype(str) == "shapley"],
                transition,
                "shapley",
                alpha,
                channels,
                primary=None,
            )
        if s is not None and computed is not None:
            s.detail = computed.detail + (f", {s.detail.split(', ', 1)[1]}" if ", " in s.detail else "")
        pieces["shapley"] = with_intervals(s, computed)
        pieces["methods"] = other_methods_piece(best, tests, transition, primary, alpha, channels)
        pieces["cellprofiler"] = cp
        pieces["link"] = link
        quality = counterfactual_quality(
            _table(tables, "counterfactual_quality"),
            _table(tables, "counterfactual_summary"),
            samples,
            counterfactual_info,
        )
        cases.append(Case(transition, list(channels), {n: p for n, p in pieces.items() if p is not None}, quality))
    return cases


def _joint_intervals(att: Piece, share_ci: pd.DataFrame, transition: str) -> None:
    """Give the attribution piece the primary method's share means and joint (simultaneous) intervals."""
    ci = share_ci[(share_ci["method"].astype(str) == att.method) & (share_ci["transition"].astype(str) == transition)]
    if ci.empty:
        return
    joint = "simultaneous_ci_low" in ci and ci["simultaneous_ci_low"].notna().any()
    low, high = ("simultaneous_ci_low", "simultaneous_ci_high") if joint else ("ci_low", "ci_high")
    named = set(att.channels) if att.channels else set()
    att.estimates = pd.DataFrame(
        {
            "channel": ci["channel"].astype(str).to_numpy(),
            "estimate": ci["mean"].to_numpy(float),
            "ci_low": ci[low].to_numpy(float),
            "ci_high": ci[high].to_numpy(float),
            "in_set": ci["channel"].astype(str).isin(named).to_numpy(),
        }
    )


def verdict_rows(cases: list[Case], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``verdict``, ``verdict_evidence``) tables of weighed cases."""
    rows, evidence = [], []
    for case in cases:
        v: Verdict = weigh(case, thresholds, RULES)
        q: CounterfactualQuality = case.quality
        att = case.pieces.get("attribution")
        rows.append(
            {
                "transition": case.transition,
                "grade": v.grade,
                "channel": v.channel,
                "set_label": v.set_label,
                "sentence": v.sentence,
                "reasons": list(v.reasons),
                "rules": list(v.rules),
                "attribution": _say(case, "attribution"),
                "dac": _say(case, "dac"),
                "shapley": _say(case, "shapley"),
                "cellprofiler": _say(case, "cellprofiler"),
                "primary_method": att.method if att is not None else "",
                "p_value": float(att.p_value) if att is not None else float("nan"),
                "provider": q.provider,
                "flip_rate": float(q.flip_rate),
                "change_share": float(q.change_share.get(v.channel, np.nan)) if v.channel else float("nan"),
                "proximity": float(q.proximity),
                "n_distinct": int(q.n_distinct) if q.n_distinct is not None else -1,
                "realism": float(q.realism),
                "quality": q.line() if q.present else "",
            }
        )
        for name, piece in case.pieces.items():
            if piece.estimates is None or piece.estimates.empty:
                continue
            e = piece.estimates.copy()
            e.insert(0, "piece", name)
            e.insert(0, "transition", case.transition)
            e["method"] = piece.method
            evidence.append(e)
    verdict = pd.DataFrame(rows)
    cols = ["transition", "piece", "channel", "estimate", "ci_low", "ci_high", "in_set", "method"]
    ev = pd.concat(evidence, ignore_index=True)[cols] if evidence else pd.DataFrame({c: [] for c in cols})
    ev = ev.astype(
        {
            "transition": str,
            "piece": str,
            "channel": str,
            "method": str,
            "estimate": float,
            "ci_low": float,
            "ci_high": float,
            "in_set": bool,
        }
    )
    return verdict, ev


def _say(case: Case, name: str) -> str:
    piece = case.pieces.get(name)
    return "" if piece is None else piece.says


def read_tables(run) -> dict[str, pd.DataFrame]:
    """The tables of :data:`INPUTS` a run directory holds."""
    from chanstat.schema import SCHEMA

    return {name: run.table(name) for name in INPUTS if name in SCHEMA and run.has(name)}


def weigh_run(
    run, thresholds: Thresholds = DEFAULT_THRESHOLDS, *, n_boot: int = N_BOOT, min_effect: float = 0.02, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``verdict``, ``verdict_evidence``) of a :class:`~chanstat.rundir.RunDirectory`."""
    tables = read_tables(run)
    tr = run.transitions
    sample_transition = tr.set_index("sample")["transition"] if len(tr) else None
    info = ((run.provenance.get("stages") or {}).get("counterfactual") or {}) if run.has("provenance") else {}
    channels = list(run.channels)
    for name in ("best_channel", "channel_share_ci", "dac_scores", "channel_shapley", "counterfactual_summary"):
        if not channels and name in tables and "channel" in tables[name]:
            channels = [str(c) for c in pd.unique(tables[name]["channel"].astype(str)) if str(c) != "all"]
    cases = gather(
        tables, channels, sample_transition, info, thresholds, n_boot=n_boot, min_effect=min_effect, seed=seed
    )
    return verdict_rows(cases, thresholds)


__all__ = ["INPUTS", "gather", "read_tables", "verdict_rows", "weigh_run"]
