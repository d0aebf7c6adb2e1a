"""The answer stage's rules, each on a constructed case, and the verdict on constructed evidence tables."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chanstat.answer import RULES, Case, CounterfactualQuality, Piece, gather, verdict_rows, weigh
from chanstat.schema import validate

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
ROOT = Path(__file__).resolve().parents[1]


def piece(name, *channels, detail=""):
    return Piece(name, tuple(channels), len(CHANNELS), detail=detail)


def good_quality(**kw):
    q = dict(provider="oracle", n_samples=100, flip_rate=1.0,
             change_share={"DNA": 0.02, "ER": 0.02, "RNA": 0.02, "AGP": 0.02, "Mito": 0.92}, proximity=0.05)
    q.update(kw)
    return CounterfactualQuality(**q)


def case(att=("Mito",), dac=("Mito",), shap=("Mito",), quality=None, **extra):
    pieces = {}
    for name, chans in (("attribution", att), ("dac", dac), ("shapley", shap)):
        if chans is not None:
            pieces[name] = piece(name, *chans)
    pieces.update(extra)
    return Case("control → treated", CHANNELS, pieces, quality or good_quality())


# ---- one constructed case per rule ---------------------------------------------------------------
def test_rule_no_evidence():
    v = weigh(Case("all", CHANNELS, {}, good_quality()))
    assert (v.grade, v.rules[0]) == ("none", "no_evidence")


def test_rule_nothing_named():
    v = weigh(case(att=(), dac=tuple(CHANNELS), shap=()))
    assert (v.grade, v.rules[0], v.channel) == ("none", "nothing_named", "")
    assert "No channel" in v.sentence


def test_rule_pieces_disagree_names_which_piece_says_what():
    v = weigh(case(att=("RNA",), dac=("ER",), shap=()))
    assert (v.grade, v.rules[0]) == ("conflicting", "pieces_disagree")
    assert "attribution names RNA" in v.reasons[0] and "single-channel DAC names ER" in v.reasons[0]
    assert "Shapley names none" in v.reasons[0]
    # a set that leaves the named channel out conflicts too
    assert weigh(case(att=("RNA",), dac=("ER", "DNA"), shap=("RNA",))).grade == "conflicting"


def test_rule_all_agree():
    v = weigh(case())
    assert (v.grade, v.channel, v.rules[0]) == ("strong", "Mito", "all_agree")
    assert v.sentence.startswith("Mito carries the difference")


def test_rule_two_agree():
    v = weigh(case(shap=()))
    assert (v.grade, v.rules[0]) == ("supported", "two_agree")
    assert "Shapley names none" in v.reasons[0]
    assert weigh(case(shap=None)).grade == "supported"
    assert weigh(case(shap=("Mito", "ER"))).grade == "supported"  # a set that allows it


def test_rule_one_names():
    v = weigh(case(dac=(), shap=None))
    assert (v.grade, v.rules[0], v.channel) == ("weak", "one_names", "Mito")


def test_rule_set_only():
    v = weigh(case(att=("Mito", "ER"), dac=("ER", "Mito"), shap=None))
    assert (v.grade, v.rules[0], v.channel) == ("weak", "set_only", "")
    assert v.set_label == "ER or Mito"


def test_rule_no_effect():
    v = weigh(case(att=("Mito", "ER", "AGP"), dac=(), shap=()))
    assert (v.grade, v.rules[0], v.channel, v.set_label) == ("none", "no_effect", "", "none")
    assert weigh(case(att=("Mito", "ER"), dac=(), shap=None)).grade == "none"
    assert weigh(case(att=("Mito", "ER"), dac=None, shap=None)).grade == "weak"  # nothing measures the effect


def test_cap_low_flip_rate():
    v = weigh(case(quality=good_quality(flip_rate=0.4)))
    assert v.grade == "weak" and "low_flip_rate" in v.rules and "40%" in " ".join(v.reasons)


def test_cap_repeated_counterfactuals():
    v = weigh(case(quality=good_quality(provider="nearest", n_samples=258, n_distinct=19, max_reuse=89)))
    assert v.grade == "weak" and "repeated_counterfactuals" in v.rules
    assert "19 distinct for 258 images, one used 89 times" in " ".join(v.reasons)
    assert "repeated_counterfactuals" not in weigh(case(quality=good_quality(n_samples=100, n_distinct=98, max_reuse=2))).rules


def test_cap_change_elsewhere():
    share = {"DNA": 0.25, "ER": 0.25, "RNA": 0.25, "AGP": 0.2, "Mito": 0.05}
    v = weigh(case(quality=good_quality(change_share=share)))
    assert v.grade == "weak" and "change_elsewhere" in v.rules


def test_cap_change_spread():
    share = {"DNA": 0.19, "ER": 0.19, "RNA": 0.19, "AGP": 0.19, "Mito": 0.24}
    v = weigh(case(quality=good_quality(change_share=share)))
    assert v.grade == "supported" and "change_spread" in v.rules and "change_elsewhere" not in v.rules


def test_cap_unrealistic():
    v = weigh(case(quality=good_quality(realism=0.2)))
    assert v.grade == "supported" and "unrealistic" in v.rules
    assert weigh(case(quality=good_quality(realism=0.9))).grade == "strong"


def test_cap_one_field():
    c = case()
    c.pieces["attribution"].scope = "one field"
    v = weigh(c)
    assert v.grade == "supported" and "one_field" in v.rules


def test_cap_methods_disagree():
    methods = Piece("methods", n_channels=5, others={"d_dl": "Mito", "residual": "ER", "ig": "none"})
    v = weigh(case(methods=methods))
    assert v.grade == "supported" and "methods_disagree" in v.rules
    assert "residual names ER" in " ".join(v.reasons)


def test_note_methods_agree():
    methods = Piece("methods", n_channels=5, others={"d_dl": "Mito", "ig": "none"})
    v = weigh(case(methods=methods))
    assert v.grade == "strong" and "methods_agree" in v.rules


def test_note_cellprofiler():
    agree = weigh(case(cellprofiler=piece("cellprofiler", "Mito", detail="Mito, p 0.001")))
    assert agree.grade == "strong" and "in agreement" in agree.reasons[-1]
    other = weigh(case(cellprofiler=piece("cellprofiler", "ER")))
    assert other.grade == "strong" and "not Mito" in other.reasons[-1]


def test_caps_never_raise_a_grade_and_poor_counterfactuals_are_named_on_conflicts():
    poor = good_quality(flip_rate=0.3)
    assert weigh(case(att=(), dac=(), shap=(), quality=poor)).grade == "none"
    v = weigh(case(att=("RNA",), dac=("ER",), quality=poor))
    assert v.grade == "conflicting" and "low_flip_rate" in v.rules


def test_every_rule_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    names = [r.name for r in RULES]
    assert len(set(names)) == len(names)
    assert all(f"`{n}`" in readme for n in names), [n for n in names if f"`{n}`" not in readme]


# ---- constructed evidence tables: the four paths of the "done when" --------------------------------
def _meta(n, wells=6):
    return pd.DataFrame({"sample": np.arange(n), "Metadata_Plate": ["P1"] * n,
                         "Metadata_Well": [f"C{1 + i % wells:02d}" for i in range(n)]})


def best_channel(in_set, transition="all", p=1e-6, method="d_ig", scope="these plates", quantity="share", role="primary",
                 estimates=None):
    est = estimates or {c: (0.6 if c in in_set else 0.1) for c in CHANNELS}
    named = in_set[0] if len(in_set) == 1 else ""
    return pd.DataFrame({
        "method": method, "role": role, "transition": transition, "quantity": quantity, "channel": CHANNELS,
        "estimate": [est[c] for c in CHANNELS], "gap": 0.1, "gap_ci_low": 0.05, "gap_ci_high": 0.2,
        "in_set": [c in in_set for c in CHANNELS], "named_channel": named, "set_label": " or ".join(in_set),
        "unit": "well", "n_units": 6, "scope": scope, "alpha": 0.05, "p_value": p, "p_adj": p, "note": ""})


def per_sample(values: dict, n, noise, rng, column):
    rows = [{"sample": s, "channel": c, column: values[c] + noise * rng.standard_normal()}
            for s in range(n) for c in CHANNELS]
    return pd.DataFrame(rows)


def dac_scores(values, n, noise, rng):
    t = per_sample(values, n, noise, rng, "dac")
    return t.assign(method="d_ig", strategy="single_channel")[["sample", "method", "strategy", "channel", "dac"]]


def quality(n, provider, flip, share, neighbour=None):
    rows = []
    for s in range(n):
        for c in CHANNELS:
            rows.append({"sample": s, "channel": c, "mean_abs_diff": share[c] * 0.1, "change_share": share[c], "label": s % 2,
                         "counterfactual_target": 1 - s % 2, "target_class": "x", "predicted_label": 0, "p_target": 0.9,
                         "p_target_real": 0.1, "flipped": bool(s < flip * n), "success": True, "provider": provider})
    q = pd.DataFrame(rows)
    if neighbour is not None:
        q["neighbour"] = q["sample"].map(lambda s: neighbour[s])
    return q


PLANTED = {"DNA": 0.0, "ER": 0.02, "RNA": 0.0, "AGP": 0.01, "Mito": 0.6}
CONCENTRATED = {"DNA": 0.03, "ER": 0.03, "RNA": 0.03, "AGP": 0.03, "Mito": 0.88}


def tables_for(path: str, n=60, seed=0):
    rng = np.random.default_rng(seed)
    meta = _meta(n)
    if path == "oracle":
        return {"best_channel": best_channel(["Mito"]), "dac_scores": dac_scores(PLANTED, n, 0.05, rng),
                "channel_shapley": per_sample({**PLANTED, "Mito": 0.7}, n, 0.05, rng, "shapley"),
                "counterfactual_quality": quality(n, "oracle", 1.0, CONCENTRATED), "meta": meta}
    if path == "generator":
        share = {"DNA": 0.1, "ER": 0.1, "RNA": 0.1, "AGP": 0.09, "Mito": 0.61}
        return {"best_channel": best_channel(["Mito"], p=2e-13), "dac_scores": dac_scores(PLANTED, n, 0.1, rng),
                "channel_shapley": per_sample({**PLANTED, "Mito": 0.5}, n, 0.1, rng, "shapley"),
                "counterfactual_quality": quality(n, "generator", 0.95, share), "meta": meta}
    if path == "nearest":
        # the nearest neighbours repeat: 4 distinct for 60 images; DAC and Shapley barely separate anything
        neighbour = {s: 1000 + (0 if s < 30 else s % 4) for s in range(n)}
        share = {"DNA": 0.2, "ER": 0.22, "RNA": 0.2, "AGP": 0.18, "Mito": 0.2}
        dac = {"DNA": 0.1, "ER": 0.19, "RNA": 0.1, "AGP": 0.1, "Mito": 0.17}
        return {"best_channel": best_channel(["Mito"], p=5e-9), "dac_scores": dac_scores(dac, n, 0.3, rng),
                "channel_shapley": per_sample({c: 0.05 for c in CHANNELS}, n, 0.3, rng, "shapley"),
                "counterfactual_quality": quality(n, "nearest", 0.9, share, neighbour), "meta": meta}
    if path == "no_difference":
        return {"best_channel": best_channel(CHANNELS, p=0.6), "dac_scores": dac_scores({c: 0.0 for c in CHANNELS}, n, 0.02, rng),
                "channel_shapley": per_sample({c: 0.0 for c in CHANNELS}, n, 0.01, rng, "shapley"),
                "counterfactual_quality": quality(n, "oracle", 0.1, {c: 0.2 for c in CHANNELS}), "meta": meta}
    raise ValueError(path)


def verdict_of(path):
    verdict, evidence = verdict_rows(gather(tables_for(path), CHANNELS, n_boot=300))
    validate(verdict, "verdict")
    validate(evidence, "verdict_evidence")
    assert list(verdict["transition"]) == ["all"]
    return verdict.iloc[0], evidence


@pytest.mark.parametrize("path", ["oracle", "generator"])
def test_good_counterfactuals_give_strong_evidence_for_the_planted_channel(path):
    v, evidence = verdict_of(path)
    assert (v["grade"], v["channel"]) == ("strong", "Mito"), v["reasons"]
    assert (v["attribution"], v["dac"], v["shapley"]) == ("Mito", "Mito", "Mito")
    assert set(evidence["piece"]) == {"attribution", "dac", "shapley"}


def test_nearest_with_repeating_neighbours_is_not_strong_and_says_why():
    v, _ = verdict_of("nearest")
    assert v["grade"] != "strong"
    assert "repeated_counterfactuals" in v["rules"]
    assert any("repeat" in r for r in v["reasons"])
    assert v["provider"] == "nearest" and v["n_distinct"] == 4


def test_a_classifier_of_classes_without_difference_gives_none():
    v, _ = verdict_of("no_difference")
    assert v["grade"] == "none" and v["channel"] == "" and v["set_label"] == "none"
    # attribution shares of noise still leave some channels out of the set (as measured end to end)
    t = tables_for("no_difference")
    t["best_channel"] = best_channel(["Mito", "ER", "AGP"], p=1.0)
    v = verdict_rows(gather(t, CHANNELS, n_boot=200))[0].iloc[0]
    assert (v["grade"], v["rules"][0]) == ("none", "no_effect")


def test_channel_tests_stand_in_for_a_missing_confidence_set():
    t = tables_for("oracle")
    t.pop("best_channel")
    t["channel_tests"] = pd.DataFrame({"method": ["d_ig", "residual"], "transition": "all", "test": "dominance",
                                       "primary": [True, False], "dominant_channel": ["Mito", "ER"],
                                       "p_value": [1e-5, 1e-3]})
    cases = gather(t, CHANNELS, n_boot=200)
    verdict, _ = verdict_rows(cases)
    v = verdict.iloc[0]
    assert v["attribution"] == "Mito" and v["primary_method"] == "d_ig"
    assert v["grade"] == "supported" and "methods_disagree" in v["rules"]  # residual names ER


def test_per_transition_verdicts_use_that_transitions_images():
    t = tables_for("oracle")
    t["best_channel"] = pd.concat([best_channel(["Mito"], transition="a → b"), best_channel(["Mito"], transition="b → a")])
    tr = pd.Series(["a → b" if s % 2 else "b → a" for s in range(60)], index=np.arange(60))
    verdict, evidence = verdict_rows(gather(t, CHANNELS, tr, n_boot=200))
    assert list(verdict["transition"]) == ["a → b", "b → a"]
    assert set(evidence["transition"]) == {"a → b", "b → a"}


def test_answer_package_imports_without_torch():
    code = "import sys, chanstat.answer, chanstat.answer.stage; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_attribution_piece_carries_the_joint_intervals_of_its_shares():
    t = tables_for("oracle")
    t["channel_share_ci"] = pd.DataFrame({
        "method": "d_ig", "transition": "all", "channel": CHANNELS, "mean": [0.1, 0.1, 0.1, 0.1, 0.6],
        "ci_low": 0.0, "ci_high": 0.2, "simultaneous_ci_low": [0.0, 0.0, 0.0, 0.0, 0.5],
        "simultaneous_ci_high": [0.2, 0.2, 0.2, 0.2, 0.7], "unit": "well", "n_units": 6, "n_samples": 60})
    _, evidence = verdict_rows(gather(t, CHANNELS, n_boot=100))
    att = evidence[evidence["piece"] == "attribution"].set_index("channel")
    assert att.loc["Mito", "ci_low"] == 0.5 and att.loc["Mito", "ci_high"] == 0.7 and att.loc["Mito", "in_set"]
    assert not att.loc["ER", "in_set"]


def test_dac_and_shapley_confidence_sets_from_best_channel_are_used_when_present():
    t = tables_for("oracle")
    t["best_channel"] = pd.concat([
        best_channel(["Mito"]),
        best_channel(["Mito", "ER"], quantity="dac", role="exploratory", method="residual"),
        best_channel(["Mito"], quantity="dac", role="exploratory"),  # the primary method's DAC
        best_channel(["ER"], quantity="shapley", role="exploratory", method="channel_shapley")])
    v = verdict_rows(gather(t, CHANNELS, n_boot=100))[0].iloc[0]
    assert (v["dac"], v["shapley"], v["grade"]) == ("Mito", "ER", "conflicting")
    assert "Shapley names ER" in v["reasons"][0]


def test_note_cell_link():
    t = tables_for("oracle")
    t["feature_link"] = pd.DataFrame({"feature": ["f1", "f2", "f3", "f4"], "compartment": "cells",
                                      "channel": ["Mito", "Mito", "ER", "DNA"], "q_value": [0.001, 0.01, 0.5, np.nan],
                                      "method": "d_ig"})
    v = verdict_rows(gather(t, CHANNELS, n_boot=100))[0].iloc[0]
    assert v["grade"] == "strong" and "cell_link" in v["rules"]
    assert any("2 CellProfiler feature(s) predict where the classifier looks in Mito" in r for r in v["reasons"])


def test_the_stage_weighs_a_run_directory_and_its_outputs_match_the_schema(tmp_path):
    from types import SimpleNamespace

    from report_fake_run import make_fake_run

    from chanstat.answer.stage import STAGE
    from chanstat.rundir import RunDirectory

    run = RunDirectory(make_fake_run(tmp_path / "run", tables=("dataset", "meta", "dac_scores", "channel_tests",
                                                               "channel_shapley", "counterfactual_quality")))
    assert STAGE.always and STAGE.writes == ("verdict", "verdict_evidence")
    ctx = SimpleNamespace(run=run, seed=0, section=lambda name: {"n_boot": 100})  # an absent section: defaults
    outputs, info = STAGE.whole_set(ctx, {})
    STAGE.check_outputs(outputs)
    validate(outputs["verdict"], "verdict")
    validate(outputs["verdict_evidence"], "verdict_evidence")
    assert outputs["verdict"].iloc[0]["channel"] == "Mito" and info
    ctx.section = lambda name: {"enabled": False}
    assert STAGE.whole_set(ctx, {})[0] == {}
