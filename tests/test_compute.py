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

from chanstat.compute import (
    ComputeConfig,
    Shard,
    ShardsFailed,
    ShardStore,
    check_plan,
    load_context,
    merge_arrays,
    merge_tables,
    plan_shards,
    run_shards,
    run_sharded,
    sharded_stage_names,
)
from chanstat.compute.worker import model_loads_here
from chanstat.io import read_arrays, read_json, write_arrays, write_table

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

    from chanstat.data import stage as data_stage
    from chanstat.models import VGGClassifier, save_checkpoint
    from chanstat.pipeline import RunContext

    out = tmp_path_factory.mktemp("compute") / "base"
    out.mkdir()
    ctx = RunContext(config=copy.deepcopy(CONFIG), out=out, seed=0, device=torch.device("cpu"), progress=False)
    data_stage.run(ctx)
    torch.manual_seed(0)
    model = VGGClassifier(len(ctx.dataset.channels), len(ctx.dataset.classes), widths=(8, 16)).eval()
    save_checkpoint(out / "model.pt", model, ctx.dataset.channels, ctx.dataset.classes)
    return out


def fresh_context(base_run: Path, tmp_path: Path, name: str):
    target = tmp_path / name
    shutil.copytree(base_run, target)
    return load_context(target, config=copy.deepcopy(CONFIG), device="cpu")


@pytest.fixture(scope="module")
def single(base_run, tmp_path_factory):
    """The attribution, dac and metrics stages run the ordinary way (one process)."""
    from chanstat.attribution import stage as attribution_stage
    from chanstat.dac import stage as dac_stage
    from chanstat.metrics import stage as metrics_stage

    ctx = fresh_context(base_run, tmp_path_factory.mktemp("single"), "run")
    infos = {"attribution": attribution_stage.run(ctx), "dac": dac_stage.run(ctx), "metrics": metrics_stage.run(ctx)}
    return ctx, infos


def assert_same_outputs(a: Path, b: Path, tables=(), groups=()) -> None:
    for name in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True)
    for name in groups:
        arrays_a, attrs_a = read_arrays(a / name)
        arrays_b, attrs_b = read_arrays(b / name)
        assert list(arrays_a) == list(arrays_b)
        for key in arrays_a:
            np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=f"{name}/{key}")
            assert attrs_a[key] == attrs_b[key]


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
    with pytest.raises(ValueError, match="unknown keys"):
        ComputeConfig.from_section({"schedular": "local"})
    with pytest.raises(ValueError, match="shard_by"):
        ComputeConfig.from_section({"shard_by": "site"})
    with pytest.raises(ValueError, match="n_workers"):
        ComputeConfig.from_section({"n_workers": 0})
    assert sharded_stage_names({"compute": {"stages": ["dac"]}}) == ["dac"]
    assert sharded_stage_names({"compute": {}}) == ["attribution", "dac", "metrics"]
    assert sharded_stage_names({"compute": {"enabled": False}}) == [] == sharded_stage_names({})


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
    merged = merge_tables([store.part_dir(s.shard_id) / "values.parquet" for s in shards], shards)
    np.testing.assert_array_equal(merged["sample"], np.arange(20))
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


def test_merge_of_interleaved_shards_puts_rows_back(tmp_path):
    shards = [Shard("00000", (0, 2, 4)), Shard("00001", (1, 3))]
    rows = np.arange(5 * 6, dtype=np.float32).reshape(5, 2, 3)
    for shard in shards:
        part = tmp_path / shard.shard_id
        write_arrays(part / "maps.zarr", {"m": rows[shard.index_array]}, attrs={"m": {"channels": ["a", "b"]}},
                     group_attrs={"methods": ["m"]}, mode="w")
        local = np.arange(len(shard))
        write_arrays(part / "masks.zarr", {"k": rows[shard.index_array][::-1]},
                     attrs={"k": {"samples": local[::-1].tolist()}}, mode="w")
        write_table(pd.DataFrame({"method": ["x"] * len(shard) + ["y"] * len(shard), "sample": np.r_[local, local]}),
                    part / "t.parquet")
    merge_arrays([tmp_path / s.shard_id / "maps.zarr" for s in shards], shards, tmp_path / "maps.zarr", 5)
    merge_arrays([tmp_path / s.shard_id / "masks.zarr" for s in shards], shards, tmp_path / "masks.zarr", 5)
    maps, attrs = read_arrays(tmp_path / "maps.zarr")
    np.testing.assert_array_equal(maps["m"], rows)
    assert attrs["m"]["channels"] == ["a", "b"]
    masks, attrs = read_arrays(tmp_path / "masks.zarr")
    np.testing.assert_array_equal(masks["k"], rows)  # sorted by data-set sample
    assert attrs["k"]["samples"] == [0, 1, 2, 3, 4]
    table = merge_tables([tmp_path / s.shard_id / "t.parquet" for s in shards], shards, ("method", "sample"))
    assert table["method"].tolist() == ["x"] * 5 + ["y"] * 5
    assert table["sample"].tolist() == [0, 1, 2, 3, 4] * 2


# ---------------------------------------------------------------------------------------------
# pipeline stages: sharded == one process
# ---------------------------------------------------------------------------------------------
def test_sharded_stages_on_a_local_cluster_match_one_process(single, base_run, tmp_path):
    ctx_single, infos = single
    ctx = fresh_context(base_run, tmp_path, "sharded")
    local = {"scheduler": "local", "n_workers": 2, "processes": False, "shard_size": 5, "shard_by": "well"}
    info_attr = run_sharded(ctx, "attribution", config=local)
    assert info_attr["compute"]["scheduler"] == "dask" and info_attr["compute"]["n_workers"] == 2
    assert info_attr["compute"]["n_computed"] == info_attr["compute"]["n_shards"] >= 3
    assert info_attr["methods"] == infos["attribution"]["methods"]
    assert_same_outputs(ctx_single.out, ctx.out, groups=["attributions.zarr"])
    assert list(ctx.artifacts["attributions"]) == list(ctx_single.artifacts["attributions"])  # same order
    for method, maps in ctx_single.artifacts["attributions"].items():
        np.testing.assert_array_equal(ctx.artifacts["attributions"][method], maps)

    info_dac = run_sharded(ctx, "dac", config={**local, "shard_by": "index", "shard_size": 4})
    assert_same_outputs(ctx_single.out, ctx.out, tables=["dac_curves.parquet", "dac_scores.parquet", "dac_sweep.parquet"],
                        groups=["dac_masks.zarr"])
    for key in ("methods", "strategies", "n_pairs", "hybrids", "forward_passes", "mean_dac"):
        assert info_dac[key] == infos["dac"][key], key
    assert info_dac["sweep"] == infos["dac"]["sweep"]
    pd.testing.assert_frame_equal(ctx.artifacts["dac_scores"], ctx_single.artifacts["dac_scores"])
    assert not (ctx.out / "shards").exists()  # merged, then removed


def test_sharded_metrics_match_one_process(single, base_run, tmp_path):
    ctx_single, infos = single
    ctx = fresh_context(base_run, tmp_path, "metrics")
    shutil.copytree(ctx_single.out / "attributions.zarr", ctx.out / "attributions.zarr")
    ctx.artifacts["attributions"] = dict(ctx_single.artifacts["attributions"])
    info = run_sharded(ctx, "metrics", config={"scheduler": "sync", "shard_size": 3})
    assert info["compute"]["n_shards"] == 3  # the 8 faithfulness images
    assert_same_outputs(ctx_single.out, ctx.out,
                        tables=["localisation.parquet", "faithfulness.parquet", "faithfulness_curves.parquet"])
    assert info["pxap_all"] == infos["metrics"]["pxap_all"]
    assert info["faithfulness"]["methods"] == infos["metrics"]["faithfulness"]["methods"]


def test_interrupted_stage_resumes_only_missing_shards_with_same_result(single, base_run, tmp_path):
    ctx_single, _ = single
    ctx = fresh_context(base_run, tmp_path, "resumed")
    config = {"scheduler": "sync", "shard_size": 4}
    loads = model_loads_here()
    partial = run_sharded(ctx, "attribution", config=config, only=["00000", "00002"])
    assert partial["merged"] is False and partial["compute"]["n_computed"] == 2
    assert model_loads_here() == loads + 1  # the model is loaded once per worker, not per shard
    assert not (ctx.out / "attributions.zarr").exists()
    # a resumed pipeline re-runs the model stage: the same weights saved again (torch.save is
    # not byte-for-byte reproducible) must not invalidate the committed shards
    from chanstat.models import load_checkpoint, save_checkpoint

    saved = load_checkpoint(ctx.out / "model.pt")
    save_checkpoint(ctx.out / "model.pt", saved.model, saved.channels, saved.classes)
    full = run_sharded(ctx, "attribution", config=config)
    n_shards = full["compute"]["n_shards"]
    assert full["compute"]["n_skipped"] == 2 and full["compute"]["n_computed"] == n_shards - 2
    assert_same_outputs(ctx_single.out, ctx.out, groups=["attributions.zarr"])


def test_changed_inputs_invalidate_committed_shards(base_run, tmp_path):
    """Other counterfactuals in dataset.zarr (e.g. another provider) between the interrupted run
    and its re-run: the committed shards are stale and everything is recomputed."""
    ctx = fresh_context(base_run, tmp_path, "stale")
    config = {"scheduler": "sync", "shard_size": 12}
    run_sharded(ctx, "attribution", config=config, only=["00000"])
    arrays, _ = read_arrays(ctx.out / "dataset.zarr", ["counterfactuals"])
    write_arrays(ctx.out / "dataset.zarr", {"counterfactuals": arrays["counterfactuals"][::-1].copy()})
    info = run_sharded(ctx, "attribution", config=config)
    assert info["compute"]["n_skipped"] == 0 and info["compute"]["n_computed"] == 2


def test_failed_stage_shards_are_reported(base_run, tmp_path):
    ctx = fresh_context(base_run, tmp_path, "fails")
    ctx.config["attribution"]["methods"] = ["no_such_method"]
    with pytest.raises(ShardsFailed, match="unknown attribution method 'no_such_method'"):
        run_sharded(ctx, "attribution", config={"scheduler": "sync", "shard_size": 12, "retries": 1})
    manifest = read_json(ctx.out / "shards" / "attribution" / "manifest.json")
    assert sorted(manifest["failed"]) == ["00000", "00001"] and manifest["done"] == []


def test_run_sharded_refuses_unknown_stage_and_missing_run_files(base_run, tmp_path):
    ctx = fresh_context(base_run, tmp_path, "errors")
    with pytest.raises(ValueError, match="cannot run sharded"):
        run_sharded(ctx, "report", config={"scheduler": "sync"})
    (ctx.out / "meta.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="meta.parquet"):
        run_sharded(ctx, "attribution", config={"scheduler": "sync"})


def test_example_config_has_a_compute_section():
    import tomllib

    config = tomllib.loads((ROOT / "analyses" / "sharded.toml").read_text())
    compute = ComputeConfig.from_section(config["compute"])
    assert compute.stages and set(compute.stages) <= {"attribution", "dac", "metrics"}
    assert json.dumps(compute.to_dict())


@pytest.mark.gpu
def test_one_worker_per_gpu_gives_the_cpu_maps(single, base_run, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from chanstat.compute import default_n_workers

    ctx_single, _ = single
    ctx = fresh_context(base_run, tmp_path, "gpu")
    info = run_sharded(ctx, "attribution", config={"scheduler": "local", "shard_size": 6, "device": "cuda"})
    assert info["compute"]["n_workers"] == default_n_workers() == torch.cuda.device_count()
    for method, maps in ctx_single.artifacts["attributions"].items():
        if method != "random":  # random maps are seeded per image on the CPU: identical anyway
            np.testing.assert_allclose(ctx.artifacts["attributions"][method], maps, rtol=1e-3, atol=1e-5)


def test_metrics_with_pixelcam_runs_in_one_process(single, base_run, tmp_path):
    """A PixelCAM head is trained on every image: nothing to shard, and the run says so."""
    ctx_single, _ = single
    ctx = fresh_context(base_run, tmp_path, "pixelcam")
    shutil.copytree(ctx_single.out / "attributions.zarr", ctx.out / "attributions.zarr")
    ctx.config["metrics"] = {**CONFIG["metrics"], "faithfulness_images": 0, "pixelcam": {"steps": 2}}
    info = run_sharded(ctx, "metrics", config={"scheduler": "sync"})
    assert info["compute"]["sharded"] is False and "pixelcam" in info["compute"]["reason"]
    assert (ctx.out / "localisation.parquet").exists()
