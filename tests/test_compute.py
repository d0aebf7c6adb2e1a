"""Sharded, resumable stages (chanstat.compute): same results as one process, resume, retries."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chanstat import pipeline
from chanstat.compute import (
    ComputeConfig,
    ModelSource,
    Shard,
    ShardsFailed,
    ShardStore,
    check_plan,
    plan_shards,
    run_parts,
    run_shards,
)
from chanstat.context import Classifier, PartTask
from chanstat.io import read_arrays, read_group_attrs, read_json, write_table
from chanstat.rundir import RunDirectory
from chanstat.stage import Arrays, merge_parts

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "run": {"seed": 0},
    "data": {"source": "synthetic", "synthetic": {"n_plates": 2, "wells_per_class": 2, "sites_per_well": 3, "size": 32}},
    "attribution": {
        "methods": ["saliency", "d_ig", "gradcam", "residual", "random"],
        "batch_size": 4,
        "options": {"d_ig": {"n_steps": 4}},
    },
    "dac": {"strategies": ["aggregate", "single_channel"], "steps": 8, "closing": 3, "sigma": 1.0, "max_samples": 14,
            "sweep": {"closings": [0, 3], "sigmas": [0], "steps": 4}},
    "metrics": {"faithfulness_images": 8, "steps": 4, "thresholds": 20, "methods": ["d_ig", "gradcam", "residual"]},
}


# ---------------------------------------------------------------------------------------------
# fixtures: one small run directory (data + an untrained model), copied per test
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    import torch

    from chanstat.models import VGGClassifier

    out = tmp_path_factory.mktemp("compute") / "base"
    ctx = pipeline.context(CONFIG, out)
    pipeline.run_stage("data", ctx)
    torch.manual_seed(0)
    model = VGGClassifier(len(ctx.dataset.channels), len(ctx.dataset.classes), widths=(8, 16)).eval()
    ctx.run.write("model", Classifier(model, list(ctx.dataset.channels), list(ctx.dataset.classes)))
    return out


def fresh_context(base_run: Path, tmp_path: Path, name: str, compute: dict | None = None):
    target = tmp_path / name
    shutil.copytree(base_run, target)
    config = copy.deepcopy(CONFIG)
    if compute is not None:
        config["compute"] = compute
    return pipeline.context(config, target)


@pytest.fixture(scope="module")
def single(base_run, tmp_path_factory):
    """The attribution, dac and metrics stages run the ordinary way (one process)."""
    ctx = fresh_context(base_run, tmp_path_factory.mktemp("single"), "run")
    infos = {name: pipeline.run_stage(name, ctx) for name in ("attribution", "dac", "metrics")}
    return ctx, infos


def assert_same_outputs(a: Path, b: Path, tables=(), groups=()) -> None:
    for name in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True)
    for name in groups:
        arrays_a, attrs_a = read_arrays(a / name)
        arrays_b, attrs_b = read_arrays(b / name)
        assert list(arrays_a) == list(arrays_b)
        assert read_group_attrs(a / name) == read_group_attrs(b / name)
        for key in arrays_a:
            np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=f"{name}/{key}")
            # "integration" records the work done (steps, errors) over one process's images, not the maps
            assert {k: v for k, v in attrs_a[key].items() if k != "integration"} == {
                k: v for k, v in attrs_b[key].items() if k != "integration"
            }


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------
def test_index_shards_are_fixed_ranges_covering_every_image():
    shards = plan_shards(10, shard_size=4)
    assert [s.indices for s in shards] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [s.shard_id for s in shards] == ["00000", "00001", "00002"]
    assert shards[0].region() == slice(0, 4)
    check_plan(shards, 10)
    assert Shard.from_dict(shards[2].to_dict()) == shards[2]


def test_well_shards_keep_wells_whole_and_pack_them():
    meta = pd.DataFrame({
        "Metadata_Plate": ["P1"] * 7 + ["P2"] * 3,
        "Metadata_Well": ["A01", "A02", "A01", "A02", "A03", "A03", "A01", "A01", "A01", "B01"],
    })
    shards = plan_shards(10, shard_size=4, by="well", meta=meta)
    check_plan(shards, 10)
    key = meta["Metadata_Plate"] + "/" + meta["Metadata_Well"]
    for s in shards:  # no well is split across shards
        for well in key.iloc[list(s.indices)].unique():
            assert set(np.flatnonzero(key == well)) <= set(s.indices)
    # P1/A01 (3 images) alone would leave room for 1, but P1/A02 has 2: the first shard is P1/A01 only
    assert shards[0].indices == (0, 2, 6) and not shards[0].contiguous
    assert len(plan_shards(10, shard_size=100, by="plate", meta=meta)) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0, "shard_size": 4}, "at least one image"),
        ({"n": 5, "shard_size": 0}, "shard_size"),
        ({"n": 5, "shard_size": 2, "by": "site"}, "shard_by"),
        ({"n": 5, "shard_size": 2, "by": "well"}, "metadata"),
    ],
)
def test_bad_plans_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_shards(**kwargs)


def test_compute_config_checks_its_keys():
    assert ComputeConfig.from_section({"scheduler": "sync", "n_workers": 2}).n_workers == 2
    with pytest.raises(ValueError, match="schedular"):
        ComputeConfig.from_section({"schedular": "local"})
    with pytest.raises(ValueError, match="shard_by"):
        ComputeConfig.from_section({"shard_by": "site"})
    with pytest.raises(ValueError, match="n_workers"):
        ComputeConfig.from_section({"n_workers": 0})
    assert ComputeConfig.from_section({"stages": "dac"}).stages == ["dac"]
    assert ComputeConfig.from_section({}).stages == ["attribution", "dac", "metrics"]


# ---------------------------------------------------------------------------------------------
# the runner: commit, resume, retry, report
# ---------------------------------------------------------------------------------------------
class SquareTask:
    """Writes squares of its indices; logs every call (a file, so that any process can append)."""

    def __init__(self, log: Path, fail: tuple[str, ...] = ()):
        self.log = str(log)
        self.fail = fail

    def __call__(self, shard: Shard, out_dir: Path) -> dict:
        with open(self.log, "a") as fh:
            fh.write(shard.shard_id + "\n")
        if shard.shard_id in self.fail:
            raise RuntimeError(f"planted failure in {shard.shard_id}")
        idx = shard.index_array
        write_table(pd.DataFrame({"sample": np.arange(len(idx)), "value": idx.astype(float) ** 2}), out_dir / "values.parquet")
        return {"n": len(idx)}


def calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_partial_run_then_resume_computes_only_missing_shards(tmp_path):
    shards = plan_shards(20, shard_size=4)
    store = ShardStore(tmp_path / "store")
    task = SquareTask(tmp_path / "calls.txt")
    first = run_shards(task, shards, store, "fp", only=["00000", "00001"])
    assert first.computed == ["00000", "00001"] and first.not_run == ["00002", "00003", "00004"]
    second = run_shards(task, shards, store, "fp")
    assert second.skipped == ["00000", "00001"] and second.computed == ["00002", "00003", "00004"]
    assert sorted(calls(tmp_path / "calls.txt")) == [s.shard_id for s in shards]  # each exactly once
    merged = pd.concat([pd.read_parquet(store.part_dir(s.shard_id) / "values.parquet") for s in shards])
    np.testing.assert_array_equal(merged["value"], np.arange(20.0) ** 2)
    manifest = read_json(store.root / "manifest.json")
    assert manifest["done"] == [s.shard_id for s in shards] and len(manifest["runs"]) == 2


def test_failing_shard_is_retried_then_reported_and_later_resumed(tmp_path):
    shards = plan_shards(12, shard_size=4)
    store = ShardStore(tmp_path / "store")
    log = tmp_path / "calls.txt"
    with pytest.raises(ShardsFailed, match="00001: RuntimeError: planted failure") as caught:
        run_shards(SquareTask(log, fail=("00001",)), shards, store, "fp", retries=2)
    report = caught.value.report
    assert report.computed == ["00000", "00002"] and list(report.failed) == ["00001"]
    assert calls(log).count("00001") == 3  # first try + 2 retries
    assert read_json(store.root / "manifest.json")["failed"] == {"00001": "RuntimeError: planted failure in 00001"}
    assert not any(store.staging.glob("*"))  # failed attempts leave no staging folders
    again = run_shards(SquareTask(log), shards, store, "fp")
    assert again.computed == ["00001"] and again.skipped == ["00000", "00002"]


def test_killed_process_resumes_with_only_the_unfinished_shards(tmp_path):
    """A hard kill (os._exit, no cleanup) after two committed shards; the re-run does the rest."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from test_compute import SquareTask
        from chanstat.compute import ShardStore, plan_shards, run_shards

        class DiesOnThird(SquareTask):
            def __call__(self, shard, out_dir):
                if shard.shard_id == "00002":
                    (out_dir / "half-written.parquet").write_text("garbage")
                    os._exit(9)
                return super().__call__(shard, out_dir)

        run_shards(DiesOnThird(Path({str(tmp_path / "calls.txt")!r})), plan_shards(20, shard_size=4),
                   ShardStore({str(tmp_path / "store")!r}), "fp")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    store = ShardStore(tmp_path / "store")
    assert store.committed() == ["00000", "00001"]
    assert any(store.staging.iterdir())  # the killed shard's staging folder is left behind ...
    report = run_shards(SquareTask(tmp_path / "calls.txt"), plan_shards(20, shard_size=4), store, "fp")
    assert report.skipped == ["00000", "00001"] and report.computed == ["00002", "00003", "00004"]
    assert not store.staging.exists() or not any(store.staging.iterdir())  # ... and cleared by the re-run
    assert calls(tmp_path / "calls.txt") == ["00000", "00001", "00002", "00003", "00004"]


def test_changed_fingerprint_discards_old_parts(tmp_path):
    shards = plan_shards(8, shard_size=4)
    store = ShardStore(tmp_path / "store")
    run_shards(SquareTask(tmp_path / "a.txt"), shards, store, "config-1")
    report = run_shards(SquareTask(tmp_path / "b.txt"), shards, store, "config-2")
    assert report.skipped == [] and report.computed == ["00000", "00001"]


def test_merge_parts_puts_rows_back_in_schema_order():
    first = {"dac_scores": pd.DataFrame({"sample": [0, 2, 0, 2], "method": ["x", "x", "y", "y"], "strategy": "a",
                                         "channel": "all", "dac": [0.0, 2.0, 10.0, 12.0]}),
             "attributions": Arrays({"m": np.zeros((2, 1, 2, 2))}, attrs={"m": {"channels": ["all"]}})}
    second = {"dac_scores": pd.DataFrame({"sample": [1, 1], "method": ["x", "y"], "strategy": "a", "channel": "all",
                                          "dac": [1.0, 11.0]}),
              "attributions": Arrays({"m": np.ones((1, 1, 2, 2))})}
    merged = merge_parts([first, second])
    scores = merged["dac_scores"]
    assert scores["method"].tolist() == ["x", "x", "x", "y", "y", "y"]  # method, strategy, sample
    assert scores["sample"].tolist() == [0, 1, 2, 0, 1, 2] and scores["dac"].tolist() == [0, 1, 2, 10, 11, 12]
    maps = merged["attributions"]
    assert maps.arrays["m"].shape == (3, 1, 2, 2) and maps.attrs["m"] == {"channels": ["all"]}
    assert merge_parts([first]) is not first and merge_parts([first])["dac_scores"] is first["dac_scores"]


# ---------------------------------------------------------------------------------------------
# pipeline stages: sharded == one process
# ---------------------------------------------------------------------------------------------
def test_sharded_stages_on_a_local_cluster_match_one_process(single, base_run, tmp_path):
    ctx_single, infos = single
    local = {"scheduler": "local", "n_workers": 2, "processes": False, "shard_size": 5, "shard_by": "well",
             "stages": ["attribution"]}
    ctx = fresh_context(base_run, tmp_path, "sharded", compute=local)
    info_attr = pipeline.run_stage("attribution", ctx)
    assert info_attr["compute"]["scheduler"] == "dask" and info_attr["compute"]["n_workers"] == 2
    assert info_attr["compute"]["n_computed"] == info_attr["compute"]["n_shards"] >= 3
    assert info_attr["methods"] == infos["attribution"]["methods"]
    assert_same_outputs(ctx_single.out, ctx.out, groups=["attributions.zarr"])

    ctx.config["compute"] = {**local, "shard_by": "index", "shard_size": 4, "stages": ["dac"]}
    info_dac = pipeline.run_stage("dac", ctx)
    assert info_dac["compute"]["n_shards"] == 4  # the 14 pairs of max_samples
    # DAC evaluates the hybrids of several pairs in one forward pass (issue 19), so a pair's
    # probabilities can differ in the last float bits with the batch's make-up (oneDNN picks its
    # kernels by shape): same rows, same steps, scores equal to 1e-6
    for name in ("dac_curves.parquet", "dac_scores.parquet", "dac_sweep.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(ctx_single.out / name), pd.read_parquet(ctx.out / name),
                                      check_exact=False, rtol=0, atol=1e-6)
    for key in ("methods", "strategies", "n_pairs"):
        assert info_dac[key] == infos["dac"][key], key
    assert info_dac["mean_dac"] == pytest.approx(infos["dac"]["mean_dac"], abs=1e-6)
    masks_single, masks = (RunDirectory(p).arrays("dac_masks") for p in (ctx_single.out, ctx.out))
    assert list(masks.arrays) == list(masks_single.arrays) and masks.samples.tolist() == masks_single.samples.tolist()
    assert not (ctx.out / "shards").exists()  # merged, then removed


def test_sharded_metrics_match_one_process(single, base_run, tmp_path):
    ctx_single, infos = single
    ctx = fresh_context(base_run, tmp_path, "metrics", compute={"scheduler": "sync", "shard_size": 3, "stages": ["metrics"]})
    shutil.copytree(ctx_single.out / "attributions.zarr", ctx.out / "attributions.zarr")
    info = pipeline.run_stage("metrics", ctx)
    assert info["compute"]["n_shards"] == 3  # the 8 faithfulness images
    assert_same_outputs(ctx_single.out, ctx.out,
                        tables=["localisation.parquet", "faithfulness.parquet", "faithfulness_curves.parquet"])
    assert info["pxap_all"] == infos["metrics"]["pxap_all"]
    assert info["faithfulness"] == infos["metrics"]["faithfulness"]


def _attribution_task(ctx):
    model = ModelSource.from_checkpoint(ctx.run.file("model"))
    return PartTask(stage="chanstat.attribution.stage:STAGE", run_dir=str(ctx.out), config=ctx.config,
                    config_dir=str(ctx.config_dir), seed=0, quick=False, device="cpu", model=model), model


def test_interrupted_stage_resumes_only_missing_shards_with_same_result(single, base_run, tmp_path, monkeypatch):
    ctx_single, _ = single
    ctx = fresh_context(base_run, tmp_path, "resumed")
    loads = []
    original = ModelSource._load
    monkeypatch.setattr(ModelSource, "_load", lambda self, device: loads.append(1) or original(self, device))
    task, model = _attribution_task(ctx)
    rows = np.arange(len(ctx.dataset))
    settings = ComputeConfig(scheduler="sync", shard_size=4)
    store = ctx.out / "shards" / "attribution"
    parts, partial = run_parts(task, rows, settings, store, key="k" + model.digest, read=PartTask.read, only=["00000", "00002"])
    assert parts == [] and partial["merged"] is False and partial["n_computed"] == 2
    assert len(loads) == 1  # the model is loaded once per worker, not per shard
    # the same weights saved again (torch.save is not byte-for-byte reproducible) keep the shards valid
    from chanstat.models import load_checkpoint, save_checkpoint

    saved = load_checkpoint(ctx.out / "model.pt")
    save_checkpoint(ctx.out / "model.pt", saved.model, saved.channels, saved.classes)
    task, model = _attribution_task(ctx)
    parts, full = run_parts(task, rows, settings, store, key="k" + model.digest, read=PartTask.read)
    assert full["n_skipped"] == 2 and full["n_computed"] == full["n_shards"] - 2
    merged = merge_parts(parts)["attributions"]
    expected = RunDirectory(ctx_single.out).arrays("attributions")
    assert list(merged.arrays) == list(expected.arrays)
    for method, maps in expected.arrays.items():
        np.testing.assert_array_equal(merged.arrays[method], maps)


def test_failed_stage_shards_are_reported(base_run, tmp_path):
    ctx = fresh_context(base_run, tmp_path, "fails", compute={"scheduler": "sync", "shard_size": 12, "retries": 1,
                                                              "stages": ["attribution"]})
    ctx.config["attribution"]["batch_size"] = -3  # invalid past validation: every shard fails in attribute()
    with pytest.raises(ShardsFailed, match="batch_size"):
        pipeline.run_stage("attribution", ctx)
    manifest = read_json(ctx.out / "shards" / "attribution" / "manifest.json")
    assert sorted(manifest["failed"]) == ["00000", "00001"] and manifest["done"] == []


def test_compute_imports_neither_the_pipeline_nor_any_stage():
    import ast

    for path in (ROOT / "chanstat" / "compute").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name != "chanstat.pipeline" and not name.endswith(".stage") and name != "chanstat.context", (path, name)


def test_example_config_has_a_compute_section():
    config = pipeline.load_config(ROOT / "analyses" / "sharded.toml")[0]
    compute = ComputeConfig.from_section(config["compute"])
    assert compute.stages and set(compute.stages) <= {"attribution", "dac", "metrics", "decompose"}
    assert json.dumps(compute.to_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_one_worker_per_gpu_gives_the_cpu_maps(single, base_run, tmp_path):
    import torch

    from chanstat.compute import default_n_workers

    ctx_single, _ = single
    ctx = fresh_context(base_run, tmp_path, "gpu", compute={"scheduler": "local", "shard_size": 6, "device": "cuda",
                                                            "stages": ["attribution"]})
    info = pipeline.run_stage("attribution", ctx)
    assert info["compute"]["n_workers"] == default_n_workers() == torch.cuda.device_count()
    expected = RunDirectory(ctx_single.out).arrays("attributions").arrays
    got = RunDirectory(ctx.out).arrays("attributions").arrays
    for method, maps in expected.items():
        np.testing.assert_allclose(got[method], maps, rtol=1e-3, atol=1e-5)


def test_workers_rebuild_the_pipelines_classifier_with_its_channels_and_classes(base_run, tmp_path):
    """A worker's model comes from the one [model] interpreter: same adapter, channels and classes."""
    import pickle

    import torch

    from chanstat.context import load_classifier, model_spec

    kinds = Path(__file__).resolve().parent / "model_kinds.py"
    ctx = fresh_context(base_run, tmp_path, "user")
    (ctx.run.path / "model.pt").unlink()
    shutil.copy(kinds, tmp_path / "model_kinds.py")
    ctx.config["model"] = {**ctx.config["model"], "source": "model_kinds:tuple_output", "output": 0,
                           "kwargs": {"in_channels": len(ctx.dataset.channels)}}
    ctx.config_dir = tmp_path
    here = load_classifier(ctx)
    source = pickle.loads(pickle.dumps(ModelSource.from_spec(model_spec(ctx))))
    worker = source.load("cpu")
    assert worker.channels == here.channels == list(ctx.dataset.channels)
    assert worker.classes == here.classes == list(ctx.dataset.classes)
    assert worker.module.output == 0
    with torch.no_grad():
        assert torch.equal(worker.module(ctx.dataset.images[:4]), here.module(ctx.dataset.images[:4]))
    checkpoint = ModelSource.from_spec(model_spec(fresh_context(base_run, tmp_path, "ours")))
    assert checkpoint.load("cpu").channels == list(ctx.dataset.channels)
