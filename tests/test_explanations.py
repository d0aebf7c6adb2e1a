"""cs.explanations: each image's best explanation across methods, filters, and the gallery picks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_fake_run import make_fake_run

import chanstat as cs
from chanstat.answer import gallery_picks
from chanstat.answer.explanations import best_explanations
from chanstat.rundir import RunDirectory

TABLES = ("dataset", "meta", "dac_scores", "dac_curves", "dac_masks", "config")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return RunDirectory(make_fake_run(tmp_path_factory.mktemp("expl") / "run", tables=TABLES, n=12))


def direct(run):
    """The best explanation per image, computed the plain way."""
    scores = run.table("dac_scores")
    scores = scores[scores["strategy"] != "single_channel"]
    best = scores.loc[scores.groupby("sample")["dac"].idxmax()]
    curves = run.table("dac_curves")
    out = {}
    for row in best.itertuples():
        c = curves[(curves["sample"] == row.sample) & (curves["method"] == row.method) & (curves["strategy"] == row.strategy)
                   & (curves["channel"] == row.channel)]
        d = c["mask_size"] ** 2 + (1 - c["score"]) ** 2
        out[row.sample] = (row.method, row.strategy, row.dac, float(c["mask_size"].iloc[int(np.argmin(d.to_numpy()))]))
    return out


def test_best_explanation_equals_a_direct_computation(run):
    table = cs.explanations(run)
    expected = direct(run)
    assert len(table) == run.n_images() and set(table["sample"]) == set(expected)
    for row in table.itertuples():
        method, strategy, dac, size = expected[row.sample]
        assert (row.method, row.strategy) == (method, strategy)
        assert row.dac == pytest.approx(dac) and row.mask_size == pytest.approx(size)
    assert (np.diff(table["dac"].to_numpy()) <= 0).all() and list(table["rank"]) == list(range(1, len(table) + 1))
    assert (table["n_explanations"] == 9).all()  # 3 methods x 3 whole-image strategies
    assert {"transition", "Metadata_Well", "Metadata_Plate"} <= set(table.columns)


def test_filters_by_transition_score_and_top(run):
    table = cs.explanations(run.path)
    transition = table["transition"].iloc[0]
    only = cs.explanations(run, transition=transition)
    assert len(only) and (only["transition"] == transition).all() and len(only) < len(table)
    cut = float(table["dac"].median())
    assert (cs.explanations(run, min_score=cut)["dac"] >= cut).all()
    top = cs.explanations(run, top=3)
    assert list(top["sample"]) == list(table["sample"].iloc[:3])
    assert len(cs.explanations(run, transition=transition, min_score=cut, top=2)) <= 2


def test_ties_keep_the_first_row_and_single_channel_counts_only_alone():
    scores = pd.DataFrame({"sample": [0, 0, 0, 1], "method": ["a", "b", "a", "a"],
                           "strategy": ["joint", "joint", "single_channel", "single_channel"],
                           "channel": ["all", "all", "Mito", "Mito"], "dac": [0.5, 0.5, 0.9, 0.2]})
    best = best_explanations(scores).set_index("sample")
    assert best.loc[0, "method"] == "a" and best.loc[0, "strategy"] == "joint"
    assert best_explanations(scores[scores["strategy"] == "single_channel"]).set_index("sample").loc[0, "dac"] == 0.9


def test_gallery_picks_are_the_best_and_the_median_image(run):
    table = cs.explanations(run)
    for transition, samples in gallery_picks(run, per_transition=2):
        part = table[table["transition"] == transition].reset_index(drop=True)
        assert samples[0] == part["sample"].iloc[0]  # best explained
        median = part["dac"].iloc[(len(part) - 1) // 2]
        assert abs(part.set_index("sample").loc[samples[1], "dac"] - median) == pytest.approx(
            (part["dac"] - median).abs().drop(index=0).min())


def test_explanations_without_dac_scores_say_so(tmp_path):
    run = RunDirectory(make_fake_run(tmp_path / "r", tables=("dataset", "meta"), n=4))
    with pytest.raises(FileNotFoundError, match="dac_scores"):
        cs.explanations(run)
