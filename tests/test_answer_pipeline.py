"""End to end through the pipeline (slow): a planted Mito phenotype judged with three counterfactual
providers (one classifier, trained once), and a classifier of classes without a difference."""
from __future__ import annotations

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

BASE = {
    "run": {"name": "answer", "seed": 0},
    "data": {"source": "synthetic", "synthetic": {"n_plates": 2, "wells_per_class": 3, "sites_per_well": 8, "size": 48}},
    "model": {"epochs": 40, "batch_size": 8, "lr": 0.002, "patience": 10, "min_epochs": 20},
    "counterfactual": {"provider": "oracle"},
    "attribution": {"methods": ["d_ig", "residual", "ig"], "options": {"d_ig": {"n_steps": 16}, "ig": {"n_steps": 16}}},
    "dac": {"methods": ["d_ig"], "strategies": ["joint", "single_channel"], "steps": 20, "sweep": {"enabled": False}},
    "decompose": {"interactions": False},
    "stats": {"n_boot": 300},
    "report": {"enabled": False},
}


def _run(root, name, **sections):
    import tomli_w

    from chanstat import pipeline

    cfg = {**BASE, **sections}
    path = root / f"{name}.toml"
    path.write_bytes(tomli_w.dumps(cfg).encode())
    out = pipeline.run(path, root / name, progress=False, log=lambda m: None)
    return out, pd.read_parquet(out / "verdict.parquet").set_index("transition").loc["all"]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("answer_e2e"), "oracle")


def test_oracle_counterfactuals_name_the_planted_channel_strongly(oracle):
    _, v = oracle
    assert v["channel"] == "Mito" and v["grade"] == "strong", list(v["reasons"])


def test_generator_counterfactuals_name_the_planted_channel_strongly(oracle, tmp_path):
    out, _ = oracle
    _, v = _run(tmp_path, "generator", model={"checkpoint": str(out / "model.pt")},
                counterfactual={"provider": "generator", "generator": {"steps": 3000}})
    assert v["channel"] == "Mito" and v["grade"] == "strong", list(v["reasons"])


def test_repeating_nearest_neighbours_are_not_strong_and_say_why(oracle, tmp_path):
    out, _ = oracle
    _, v = _run(tmp_path, "nearest", model={"checkpoint": str(out / "model.pt")},
                counterfactual={"provider": "nearest"})
    assert v["grade"] != "strong"
    assert set(v["rules"]) & {"repeated_counterfactuals", "low_flip_rate", "change_spread", "change_elsewhere",
                              "pieces_disagree"}, list(v["reasons"])


def test_classes_without_a_difference_give_none(tmp_path):
    data = {**BASE["data"], "synthetic": {**BASE["data"]["synthetic"], "effect_size": 0.0}}
    _, v = _run(tmp_path, "null", data=data)
    assert v["grade"] == "none", list(v["reasons"])
