"""Illumination correction: a known flat field gives the known corrected image (LoadData columns,
the JUMP folder layout, the data stage's record)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from chanstat.data import read_loaddata
from chanstat.data.illumination import Illumination, correct, illum_columns, load_illum
from chanstat.data.jump import read_jump

H, W = 16, 12


def _flat() -> np.ndarray:
    """A vignetting field: 1 in the centre, 0.5 in the corners."""
    y, x = np.mgrid[0:H, 0:W]
    r2 = ((y - (H - 1) / 2) / (H / 2)) ** 2 + ((x - (W - 1) / 2) / (W / 2)) ** 2
    return (1.0 - 0.25 * r2).astype(np.float32)


def _truth(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 1000, (2, H, W)).astype(np.float32)


def test_correct_divides_by_the_flat_field():
    truth, flat = _truth(0), _flat()
    observed = truth * np.stack([flat, np.ones_like(flat)])
    out = correct(observed, [flat, None])
    np.testing.assert_allclose(out, truth, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        correct(observed, [flat[:4], None])
    assert illum_columns(["FileName_IllumDNA", "PathName_IllumDNA", "FileName_IllumER"]) == {
        "DNA": ("FileName_IllumDNA", "PathName_IllumDNA")}


def test_load_illum_rejects_bad_files(tmp_path):
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="zero.npy: illumination function has non-finite or non-positive"):
        load_illum(tmp_path / "zero.npy")
    with pytest.raises(FileNotFoundError, match="illumination function not found"):
        load_illum(tmp_path / "absent.npy")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown illumination file type"):
        load_illum(tmp_path / "f.png")
    np.save(tmp_path / "three.npy", np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="one 2-D plane"):
        load_illum(tmp_path / "three.npy")


def _loaddata(folder, flat, with_illum=True):
    (folder / "images").mkdir(parents=True)
    np.save(folder / "P1_IllumDNA.npy", flat)
    rows, truths = [], []
    for i in range(3):
        truth = _truth(i)
        truths.append(truth)
        row = {"Metadata_Plate": "P1", "Metadata_Well": f"A0{i + 1}", "Metadata_Site": 1}
        for ch, plane in zip(("DNA", "ER"), (truth[0] * flat, truth[1])):
            tifffile.imwrite(folder / "images" / f"w{i}_{ch}.tif", plane)
            row[f"FileName_Orig{ch}"], row[f"PathName_Orig{ch}"] = f"w{i}_{ch}.tif", "images"
        if with_illum:
            row["FileName_IllumDNA"], row["PathName_IllumDNA"] = "P1_IllumDNA.npy", "."
        rows.append(row)
    csv = folder / "load_data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, np.stack(truths)


def test_loaddata_illum_columns_correct_before_scaling(tmp_path):
    flat = _flat()
    csv, truth = _loaddata(tmp_path, flat)
    data = read_loaddata(csv, scaling="none")
    np.testing.assert_allclose(data.images.numpy(), truth, rtol=1e-5)
    record = data.meta.attrs["illumination"]
    assert record["applied"] and record["uncorrected"] == ["ER"]
    assert [p.endswith("P1_IllumDNA.npy") for p in record["channels"]["DNA"]] == [True]
    off = read_loaddata(csv, scaling="none", illum="off")
    np.testing.assert_allclose(off.images.numpy()[:, 0], truth[:, 0] * flat, rtol=1e-5)
    assert off.meta.attrs["illumination"]["applied"] is False
    # plate scaling comes after the correction: its limits are those of the corrected images
    scaled = read_loaddata(csv)
    lo, hi = scaled.meta.attrs["scaling"]["limits"]["P1"]["DNA"]
    assert lo == pytest.approx(np.percentile(truth[:, 0], 1.0), rel=1e-4)
    assert hi == pytest.approx(np.percentile(truth[:, 0], 99.5), rel=1e-4)
    with pytest.raises(ValueError, match="illum must be one of"):
        Illumination(pd.DataFrame(), tmp_path, {}, "on")


def test_jump_layout_finds_images_and_illum(tmp_path):
    flat = _flat()
    root = tmp_path / "jump"
    (root / "workspace" / "load_data_csv" / "B1" / "P1").mkdir(parents=True)
    images = root / "images" / "B1" / "images" / "P1__2021-01-01" / "Images"
    images.mkdir(parents=True)
    (root / "images" / "B1" / "illum" / "P1").mkdir(parents=True)
    np.save(root / "images" / "B1" / "illum" / "P1" / "P1_IllumDNA.npy", flat)
    rows, truths = [], []
    for i in range(2):
        truth = _truth(10 + i)
        truths.append(truth)
        row = {"Metadata_Plate": "P1", "Metadata_Well": f"B0{i + 1}", "Metadata_Site": 1}
        for ch, plane in zip(("DNA", "ER"), (truth[0] * flat, truth[1])):
            tifffile.imwrite(images / f"r0{i}c01f01-{ch}.tiff", plane)
            row[f"FileName_Orig{ch}"] = f"r0{i}c01f01-{ch}.tiff"
            row[f"PathName_Orig{ch}"] = "s3://cellpainting-gallery/cpg0016/P1__2021-01-01/Images"  # as JUMP lists them
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "workspace" / "load_data_csv" / "B1" / "P1" / "load_data.csv.gz", index=False)
    platemap = tmp_path / "platemap.csv"
    pd.DataFrame({"Metadata_Well": ["B01", "B02"], "Metadata_Treatment": ["DMSO", "drug"]}).to_csv(platemap, index=False)
    data = read_jump(root, scaling="none", platemap=platemap, label_column="Metadata_Treatment")
    assert data.classes == ["DMSO", "drug"] and data.labels.tolist() == [0, 1]
    np.testing.assert_allclose(data.images.numpy(), np.stack(truths), rtol=1e-5)
    assert data.meta["Metadata_Well"].tolist() == ["B01", "B02"]
    assert data.meta.attrs["illumination"]["channels"]["DNA"][0].endswith("P1_IllumDNA.npy")
    with pytest.raises(ValueError, match="no load_data_csv for plates"):
        read_jump(root, plates=["P9"])


def test_data_stage_records_illumination(tmp_path):
    from chanstat.config import validate_config
    from chanstat.context import RunContext
    from chanstat.data import stage as data_stage
    from chanstat.pipeline import stages
    from chanstat.rundir import RunDirectory

    csv, truth = _loaddata(tmp_path / "d", _flat())
    config = validate_config({"data": {"source": "loaddata", "loaddata": {"path": str(csv), "scaling": "none"}}}, stages())
    ctx = RunContext(config=config, run=RunDirectory(tmp_path / "run", create=True), config_dir=tmp_path, progress=False)
    outputs, info = data_stage.whole_set(ctx, {})
    assert info["illumination"]["applied"] and info["illumination"]["uncorrected"] == ["ER"]
    assert info["illum"] == "divided: DNA; uncorrected: ER"
    np.testing.assert_allclose(outputs["dataset"].images.numpy(), truth, rtol=1e-5)
    off = validate_config({"data": {"source": "loaddata", "loaddata": {"path": str(csv), "illum": "off"}}}, stages())
    assert off["data"]["loaddata"]["illum"] == "off"
