"""Hostile inputs (issue 23): every case gets a one-line error naming value and key, a warning,
or the right answer -- and nothing a user owns is lost or written outside a run."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

from chanstat import pipeline
from chanstat.cli import main
from chanstat.config import ConfigError
from chanstat.rundir import NotARunDirectory, RunDirectory

TINY = {
    "run": {"seed": 0, "device": "cpu"},
    "data": {"synthetic": {"n_plates": 2, "wells_per_class": 2, "sites_per_well": 2, "size": 16}},
    "model": {"widths": [4], "epochs": 1, "min_epochs": 1, "batch_size": 8},
    "counterfactual": {"provider": "oracle"},
    "attribution": {"methods": ["saliency", "residual"]},
    "stats": {"n_boot": 20, "tests": ["dominance"]},
}


def _with(**sections) -> dict:
    config = json.loads(json.dumps(TINY))
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value}
    return config


@pytest.mark.parametrize("sections, message", [
    ({"data": {"synthetic": {"noise": float("inf")}}}, r"\[data.synthetic\] noise: inf is not a finite number"),
    ({"data": {"synthetic": {"effect_size": float("nan")}}}, r"\[data.synthetic\] effect_size: nan is not a finite number"),
    ({"counterfactual": {"target_rule": "sideways"}}, r"\[counterfactual\] target_rule: 'sideways' is neither a rule"),
    ({"stats": {"primary": "wilcoxon"}}, r"\[stats\] primary: 'wilcoxon' is not among tests"),
    ({"data": {"channels": []}}, r"\[data\] channels: the list is empty"),
    ({"stats": {"n_boot": 0}}, r"\[stats\] n_boot: 0 bootstrap draws"),
    ({"model": {"widths": []}}, r"\[model\] widths"),
    ({"decompose": {"segment": {"nuclei_channel": "Nope"}}}, r"\[decompose.segment\] nuclei_channel: 'Nope' is not a channel"),
    ({"compute": {"stages": ["dca", "stats"]}}, r"\[compute\] stages: 'dca' \(did you mean 'dac'\?\), 'stats' cannot run sharded"),
    ({"model": {"epochs": 10**20}}, r"\[model\] epochs: 100000000000000000000 is too large"),
    ({"data": {"synthetic": {"size": 10**6}}}, r"\[data.synthetic\] .* need about .* GiB"),
    ({"stats": {"n_boot": 2_000_000_000}}, r"\[stats\] n_boot: 2000000000 draws need about"),
    ({"counterfactual": {"provider": "from_files"}}, r"\[counterfactual.from_files\] path: provider 'from_files' needs path"),
    ({"stats": {"ci": 1.5}}, r"\[stats\] ci: Input should be less than 1"),
    ({"counterfactual": {"provider": "generator", "generator": {"mixed_precision": "maybe"}}},
     r"\[counterfactual.generator\] mixed_precision: 'maybe'"),
])
def test_bad_values_are_one_line_errors_naming_the_key(sections, message):
    with pytest.raises(ConfigError, match=message) as caught:
        pipeline.load_config(_with(**sections))
    assert "\n" not in str(caught.value)


def _write(path: Path, config: dict) -> Path:
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def test_cli_arguments(tmp_path, capsys):
    config = _write(tmp_path / "cfg.toml", _with(metrics={"enabled": False}))
    assert main(["config", "--check", str(tmp_path)]) == 2
    assert "is a folder; give the path of a TOML file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--only: name at least one stage"):  # --debug after the subcommand re-raises
        main(["run", str(config), "--out", str(tmp_path / "a"), "--only", "", "--debug"])
    assert main(["run", str(config), "--out", str(tmp_path / "b"), "--only", "metrics"]) == 2
    assert "--only: stages ['metrics'] are off in the config" in capsys.readouterr().err


def test_config_naming_a_standard_library_callable_is_refused_before_the_call(tmp_path, capsys):
    witness = tmp_path / "ran"
    config = _write(tmp_path / "cfg.toml", _with(model={"source": "os:system", "kwargs": {"command": f"touch {witness}"}}))
    for argv in (["config", "--check", str(config)], ["run", str(config), "--out", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "standard library or builtins are refused" in err
    assert not witness.exists()


def test_readme_says_a_config_can_run_code():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "a config runs code" in text.lower()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    pipeline.run(TINY, out, progress=False, log=lambda m: None)
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".chanstat-run.lock")}


def test_force_keeps_the_old_run_until_the_new_one_finished(finished_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "my_notes.txt").write_text("mine")
    before = _snapshot(out)
    # refused up front (missing input): nothing touched
    with pytest.raises(ConfigError, match="from_files"):
        pipeline.run(_with(counterfactual={"provider": "from_files"}), out, force=True, progress=False)
    assert _snapshot(out) == before
    # failing late, inside a stage: the old run is still all there
    from chanstat.stats import stage as stats_stage

    def boom(ctx, outputs):
        raise RuntimeError("stats failed")

    stage = next(s for s in pipeline.stages() if s.name == "stats")
    object.__setattr__(stage, "whole_set", boom)
    try:
        with pytest.raises(RuntimeError, match="stats failed"):
            pipeline.run(TINY, out, force=True, progress=False, log=lambda m: None)
    finally:
        object.__setattr__(stage, "whole_set", stats_stage.whole_set)
    assert _snapshot(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".run.")]
    # finishing: the new run is swapped in and the user's file moves with it
    pipeline.run(TINY, out, force=True, progress=False, log=lambda m: None)
    assert (out / "my_notes.txt").read_text() == "mine" and RunDirectory(out).has("channel_mass")


def test_writes_only_into_runs_and_never_outside(finished_run, tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "report.html").write_text("the user's own page")
    with pytest.raises(NotARunDirectory):
        RunDirectory(folder)
    with pytest.raises(NotARunDirectory):
        RunDirectory(folder, create=True)
    assert main(["report", str(folder), "--to", "html"]) == 2
    assert "not a chanstat run directory" in capsys.readouterr().err
    assert (folder / "report.html").read_text() == "the user's own page"
    from chanstat.report.renderer import render

    with pytest.raises(ValueError, match="leaves the run directory"):
        render(finished_run, name="../../escaped")
    assert not list(tmp_path.rglob("escaped*"))
    with pytest.raises(ValueError, match="leaves the run directory"):
        RunDirectory(finished_run).inside("../x.txt")


def test_resume_reruns_a_damaged_output_and_what_follows(finished_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    path = out / "channel_mass.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    messages: list[str] = []
    pipeline.run(TINY, out, resume=True, progress=False, log=messages.append)
    stages = json.loads((out / "provenance.json").read_text())["stages"]
    assert not stages["stats"].get("resumed") and stages["attribution"].get("resumed")
    assert any("channel_mass.parquet changed or missing" in m for m in messages)
    pd.read_parquet(path)  # whole again
    assert all("checksums" in record for record in stages.values())


def test_resume_rerenders_the_report_when_upstream_changed(tmp_path):
    from chanstat.report.stage import STAGE as REPORT

    assert REPORT.reads_all
    from chanstat.metrics.stage import STAGE as METRICS

    assert "attribution" in METRICS.sections
    base = {"run": {"seed": 0}, "attribution": {"options": {"ig": {"n_steps": 4}}}}
    fp = pipeline.fingerprint(METRICS, pipeline.load_config(base)[0], {})
    base["attribution"]["options"]["ig"]["n_steps"] = 8
    assert pipeline.fingerprint(METRICS, pipeline.load_config(base)[0], {}) != fp


def test_python_results_save_as_they_are_and_read_back_equal(tmp_path, tiny_synthetic, trained_model):
    import chanstat as cs

    data = tiny_synthetic.subset(list(range(8)))
    cf, cf_labels = data.counterfactuals, data.counterfactual_target
    maps = cs.attribute(trained_model, data.images, data.labels, "residual", counterfactuals=cf,
                        counterfactual_target=cf_labels)
    shapley = cs.channel_shapley(trained_model, data.images, data.labels, counterfactuals=cf, channels=data.channels)
    compartments = cs.compartment_mass(maps.numpy(), data.objects, channels=data.channels)
    counterfactuals = cs.generate_counterfactuals(data, "oracle", model=trained_model)
    run = cs.RunDirectory(tmp_path / "mine", create=True)
    run.save(dataset=data, channel_shapley=shapley, compartment_mass=compartments, counterfactuals=counterfactuals)
    pd.testing.assert_frame_equal(run.table("channel_shapley"), shapley.values, check_dtype=False)
    pd.testing.assert_frame_equal(run.table("compartment_mass").drop(columns="method"), compartments.compartments,
                                  check_dtype=False)
    pd.testing.assert_frame_equal(run.table("counterfactual_quality"), counterfactuals.quality, check_dtype=False)


def test_imageset_meta_class_follows_its_labels_with_a_warning(tiny_synthetic):
    from chanstat.data.imageset import ImageSet

    meta = tiny_synthetic.meta.copy()
    meta.loc[0, "Metadata_Class"] = "treated" if meta.loc[0, "Metadata_Class"] == "control" else "control"
    with pytest.warns(UserWarning, match="Metadata_Class contradicted labels in 1 image"):
        fixed = ImageSet(images=tiny_synthetic.images, channels=tiny_synthetic.channels, labels=tiny_synthetic.labels,
                         classes=tiny_synthetic.classes, meta=meta)
    assert fixed.meta["Metadata_Class"].tolist() == tiny_synthetic.meta["Metadata_Class"].tolist()


def test_optimise_does_not_count_an_image_already_in_the_target_as_flipped(tiny_synthetic, trained_model):
    import chanstat as cs

    data = tiny_synthetic.subset(list(range(6)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cs.generate_counterfactuals(data, "optimise", model=trained_model, max_steps=2, confidence=1e-6)
    per_sample = result.quality.drop_duplicates("sample")
    already = per_sample["already_target"].to_numpy()
    assert already.any() and not per_sample["flipped"].to_numpy()[already].any()
    assert (already == (per_sample["p_target_real"].to_numpy() >= 1e-6)).all()
    assert any("already puts in the target class" in str(w.message) for w in caught)


def test_differential_names_a_feature_it_cannot_parse():
    import chanstat as cs

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"Metadata_Plate": "p", "Metadata_Well": [f"w{i}" for i in range(8)],
                          "Metadata_Class": ["a"] * 4 + ["b"] * 4, "Cells_測試_X_Mito": rng.normal(size=8),
                          "Cells_Intensity_MeanIntensity_Mito": rng.normal(size=8)})
    with pytest.warns(UserWarning, match="Cells_測試_X_Mito"):
        cs.differential(table, by="Metadata_Class", case="b", control="a")


def test_decompose_on_data_without_objects(tmp_path):
    from chanstat.decompose.stage import _labels

    class Data:
        objects = None
        channels = ["DNA", "ER", "RNA", "AGP", "Mito"]
        images = __import__("torch").rand(2, 5, 24, 24)

    section = {"labels": "auto", "segment": {"enabled": True, "nuclei_channel": "DNA", "cell_channel": None,
                                             "threshold": "otsu", "smoothing": 1.0, "min_nucleus_area": 10, "min_distance": 5}}
    assert set(_labels(None, Data, section)) == {"nuclei", "cells"}
    assert _labels(None, Data, {**section, "segment": {**section["segment"], "enabled": False}}) == {}


GENERATOR = {"steps": 2, "train_batch_size": 4, "n_latent": 1, "n_reference": 1,
             "architecture": {"widths": [4, 8], "style_dim": 4, "latent_dim": 3, "n_bottleneck": 1, "mapping_width": 8}}


def test_a_trained_generator_is_reused_from_a_config_and_from_python(tmp_path, capsys):
    import chanstat as cs
    from chanstat.counterfactual import train_generator

    data = cs.synthetic(n_plates=2, wells_per_class=2, sites_per_well=2, size=16, seed=0)
    network = train_generator(data, steps=2, batch_size=4, architecture=GENERATOR["architecture"], progress=False).network
    network.save(tmp_path / "generator.pt")
    config = _write(tmp_path / "cfg.toml", _with(counterfactual={"provider": "generator",
                                                                 "generator": {"generator": "generator.pt", "n_latent": 1,
                                                                               "n_reference": 1}}))
    assert main(["config", "--check", str(config)]) == 0
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, capsys.readouterr().err
    run = RunDirectory(tmp_path / "run")
    assert run.has("counterfactual_quality") and run.has("channel_mass")
    from chanstat.models import VGGClassifier

    model = VGGClassifier(len(data.channels), len(data.classes), widths=[4]).eval()
    result = cs.generate_counterfactuals(data, "generator", model=model, generator=tmp_path / "generator.pt", n_latent=1,
                                         n_reference=1)
    mine = cs.RunDirectory(tmp_path / "mine", create=True).save(counterfactuals=result)
    pd.testing.assert_frame_equal(mine.table("counterfactual_quality"), result.quality, check_dtype=False)
    # a generator for other channels is refused up front in one line
    three = cs.synthetic(n_plates=1, wells_per_class=2, sites_per_well=2, size=16, channels=["DNA", "ER", "Mito"])
    train_generator(three, steps=1, batch_size=4, architecture=GENERATOR["architecture"], progress=False).network.save(
        tmp_path / "three.pt")
    config = _write(tmp_path / "cfg3.toml", _with(counterfactual={"provider": "generator",
                                                                  "generator": {"generator": "three.pt"}}))
    assert main(["config", "--check", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[counterfactual.generator]" in err, err


@pytest.mark.parametrize("sections, content, message", [
    ({"counterfactual": {"provider": "generator", "generator": {"generator": "garbage.pt"}}}, b"\x80\x02garbage" * 20,
     r"\[counterfactual.generator\] not a readable PyTorch file"),
    ({"stats": {"breakdown": "Metadata_Nope"}}, None, r"\[stats\] breakdown: 'Metadata_Nope' is not a column"),
])
def test_config_check_catches_what_would_fail_late(tmp_path, capsys, sections, content, message):
    import re

    if content is not None:
        (tmp_path / "garbage.pt").write_bytes(content)
    config = _write(tmp_path / "cfg.toml", _with(**sections))
    assert main(["config", "--check", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err) and "weights_only" not in err, err


def test_config_check_refuses_stages_the_data_cannot_feed(tmp_path, capsys):
    """Data without signal masks or objects: metrics and the CellProfiler measurement are refused up front."""
    import chanstat as cs

    data = cs.synthetic(n_plates=2, wells_per_class=2, sites_per_well=2, size=16, seed=0)
    np.savez(tmp_path / "images.npz", images=data.images.numpy())
    arrays = {"source": "arrays", "arrays": {"path": "images.npz", "channels": list(data.channels),
                                             "classes": list(data.classes), "labels": data.labels.tolist()}}
    base = {**_with(counterfactual={"provider": "nearest"}), "data": arrays}
    for section, message in (("metrics", r"\[metrics\] localisation needs ground-truth masks"),
                             ("cellprofiler", r"\[cellprofiler\] has no table and the data set has no objects")):
        config = _write(tmp_path / f"{section}.toml", {**base, section: {}})
        assert main(["config", "--check", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
