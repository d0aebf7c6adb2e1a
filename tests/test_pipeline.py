"""The pipeline and CLI: run directory contents, provenance, refusing to overwrite."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from chanstat import pipeline
from chanstat.io import read_arrays

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_the_run_directory(quick_run):
    for name in ("config.toml", "provenance.json", "model.pt", "dataset.zarr", "meta.parquet", "training_history.parquet"):
        assert (quick_run / name).exists(), name
    prov = json.loads((quick_run / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["quick"] is True
    assert prov["versions"]["torch"].startswith("2.13.0")
    assert prov["device"]["device"] in ("cpu", "cuda")
    assert all(stage["status"] == "done" and stage["wall_s"] >= 0 for stage in prov["stages"].values())
    assert prov["stages"]["model"]["val_accuracy"] >= 0.8
    arrays, _ = read_arrays(quick_run / "dataset.zarr", ["images", "labels"])
    meta = pd.read_parquet(quick_run / "meta.parquet")
    assert arrays["images"].shape[0] == len(meta) == prov["stages"]["data"]["n_images"]
    config = tomllib.loads((quick_run / "config.toml").read_text())
    assert config["data"]["synthetic"]["size"] == 48  # the [quick] table was merged


def test_run_refuses_existing_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(FileExistsError, match="--force"):
        pipeline.run(ROOT / "analyses" / "demo.toml", out, quick=True)


def test_quick_merge_and_missing_config(tmp_path):
    cfg = pipeline.load_config(ROOT / "analyses" / "demo.toml", quick=True)
    assert "quick" not in cfg and cfg["model"]["batch_size"] == 8
    with pytest.raises(FileNotFoundError):
        pipeline.load_config(tmp_path / "nope.toml")


def test_cli_reports_errors_cleanly(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "x").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "chanstat.cli", "demo", "--out", str(out), "--quick"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_stats_and_cellprofiler_import_without_torch():
    code = "import sys, chanstat, chanstat.io; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_top_level_verbs_read_like_the_analysis(tiny_synthetic, trained_model):
    import numpy as np

    import chanstat as cs

    data = tiny_synthetic.subset(np.arange(0, len(tiny_synthetic), 6))
    maps = cs.attribute(
        trained_model, data.images, data.counterfactual_labels, "d_ig",
        counterfactuals=data.counterfactuals, counterfactual_target=data.counterfactual_labels, n_steps=8,
    )
    assert maps.shape == data.images.shape
    result = cs.dac(trained_model, data.images, data.counterfactuals, maps, data.labels,
                    strategy="single_channel", steps=20, channels=data.channels)
    per_channel = result.scores.groupby("channel")["dac"].mean()
    assert per_channel.idxmax() == "Mito" and (per_channel.drop("Mito") == 0).all()
    mass = cs.channel_mass(maps.numpy(), data.channels, data.meta, method="d_ig")
    primary = cs.test_channels(mass).query("primary")
    assert (primary["dominant_channel"] == "Mito").all() and (primary["unit"] == "well").all()
