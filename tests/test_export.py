"""Exports: maps as OME-Zarr images the ome-zarr reader opens with one named channel per
channel x method, and per-image / per-well results as AnnData with the run's numbers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import chanstat as cs
from chanstat.data import from_arrays

CHANNELS = ["DNA", "ER", "Mito"]
METHODS = ["d_ig", "residual"]


@pytest.fixture
def run(tmp_path):
    """A small run saved from Python (as README's "From Python" does)."""
    rng = np.random.default_rng(0)
    n, h, w = 4, 12, 10
    meta = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": ["A01", "A01", "B02", "B02"],
                         "Metadata_Site": [1, 2, 1, 2], "Metadata_Treatment": ["DMSO", "DMSO", "drug", "drug"]})
    meta.attrs["pixel_size"] = {"y": 0.65, "x": 0.5, "unit": "micrometer"}
    data = from_arrays(rng.random((n, 3, h, w)).astype(np.float32), CHANNELS, labels=[0, 0, 1, 1],
                       classes=["DMSO", "drug"], meta=meta)
    maps = {"d_ig": rng.normal(size=(n, 3, h, w)).astype(np.float32),
            "residual": rng.random((n, 3, h, w)).astype(np.float32),
            "gradcam": rng.random((n, 1, h, w)).astype(np.float32)}
    mass = pd.DataFrame([{"sample": s, "method": m, "channel": ch, "mass": float(np.abs(maps[m][s, c]).sum()),
                          "share": float(np.abs(maps[m][s, c]).sum() / np.abs(maps[m][s]).sum())}
                         for m in METHODS for s in range(n) for c, ch in enumerate(CHANNELS)])
    scores = pd.DataFrame([{"sample": s, "method": m, "strategy": "single_channel", "channel": ch, "dac": 0.1 * s + 0.01 * c}
                           for m in METHODS for s in range(n) for c, ch in enumerate(CHANNELS)])
    path = tmp_path / "run"
    cs.RunDirectory(path, create=True).save(dataset=data, attributions=maps, channel_mass=mass, dac_scores=scores)
    return path, maps, mass, scores


def test_ome_zarr_export_opens_with_named_channels(run, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, maps, _, _ = run
    written = cs.export_ome_zarr(path, tmp_path / "out")
    assert [p.name for p in written] == ["00000_P1_A01_s1.ome.zarr", "00001_P1_A01_s2.ome.zarr",
                                         "00002_P1_B02_s1.ome.zarr", "00003_P1_B02_s2.ome.zarr"]
    node = next(iter(Reader(parse_url(str(written[2])))()))
    names = node.metadata["channel_names"]
    map_names = [f"{ch} · {m}" for m in METHODS for ch in CHANNELS] + ["all · gradcam"]
    assert names == CHANNELS + map_names  # the image, then one channel per channel x method
    data = np.asarray(node.data[0])
    assert data.shape == (len(names), 12, 10)
    np.testing.assert_array_equal(data[names.index("Mito · d_ig")], maps["d_ig"][2, 2])
    np.testing.assert_array_equal(data[names.index("all · gradcam")], maps["gradcam"][2, 0])
    scale = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == [1.0, 0.65, 0.5]  # the source image's pixel size
    only = cs.export_ome_zarr(path, tmp_path / "two", samples=[1], parts=("attributions",))
    assert len(only) == 1 and next(iter(Reader(parse_url(str(only[0])))())).metadata["channel_names"] == map_names
    with pytest.raises(ValueError, match="out of range"):
        cs.export_ome_zarr(path, tmp_path / "bad", samples=[9])


def test_anndata_export_holds_the_runs_numbers(run, tmp_path):
    import anndata

    path, _, mass, scores = run
    written = cs.export_anndata(cs.RunDirectory(path), tmp_path / "out")
    images = anndata.read_h5ad(written[0])
    assert images.n_obs == 4 and list(images.obs["Metadata_Well"].astype(str)) == ["A01", "A01", "B02", "B02"]
    assert {"channel", "method", "quantity"} <= set(images.var.columns)
    for s in range(4):
        row = mass[(mass["sample"] == s) & (mass["method"] == "d_ig") & (mass["channel"] == "Mito")].iloc[0]
        assert images[str(s), "Mito · d_ig · share"].X.item() == pytest.approx(row["share"], rel=1e-6)
        dac = scores[(scores["sample"] == s) & (scores["method"] == "residual") & (scores["channel"] == "ER")].iloc[0]
        assert images[str(s), "ER · residual · dac.single_channel"].X.item() == pytest.approx(dac["dac"], rel=1e-6)
    wells = anndata.read_h5ad(written[1])
    assert list(wells.obs["Metadata_Well"].astype(str)) == ["A01", "B02"]
    assert list(wells.obs["n_images"]) == [2, 2] and "Metadata_Site" not in wells.obs
    assert list(wells.obs["Metadata_Treatment"].astype(str)) == ["DMSO", "drug"]
    expected = mass[(mass["method"] == "residual") & (mass["channel"] == "DNA") & mass["sample"].isin([2, 3])]["mass"].mean()
    assert wells[wells.obs_names[1], "DNA · residual · mass"].X.item() == pytest.approx(expected, rel=1e-6)
    zarr_out = cs.export_anndata(path, tmp_path / "z", format="zarr", levels=("image",))
    assert anndata.read_zarr(zarr_out[0]).shape == images.shape


def test_export_cli(run, tmp_path, capsys):
    from chanstat.cli import main

    path = run[0]
    assert main(["export", str(path), "--to", "anndata,ome-zarr", "--out", str(tmp_path / "cli"), "--samples", "0"]) == 0
    printed = capsys.readouterr().out
    assert "images.h5ad" in printed and "00000_P1_A01_s1.ome.zarr" in printed
    assert main(["export", str(path), "--to", "napari"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown targets ['napari']" in err
