"""OME readers: an OME-Zarr HCS plate written by ome-zarr, an OME-TIFF written by tifffile, and the
same images as a LoadData CSV of TIFFs give the same ImageSet."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from chanstat.data import read_loaddata
from chanstat.data.ome import plate_fields, read_ome_tiff, read_ome_zarr

CHANNELS = ["DNA", "ER", "Mito"]
WELLS = [("A", "1"), ("A", "2"), ("B", "1")]
N_FIELDS = 2


def _fields(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {(r, c, f): rng.integers(0, 4000, (len(CHANNELS), 24, 20)).astype(np.uint16)
            for r, c in WELLS for f in range(N_FIELDS)}


def _omero():
    return {"channels": [{"label": ch, "color": "FFFFFF", "window": {"min": 0, "max": 65535, "start": 0, "end": 4000}}
                         for ch in CHANNELS]}


def write_plate(path, fields: dict) -> None:
    """An HCS plate written by ome-zarr (the library that writes the format)."""
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    root = zarr.open_group(str(path), mode="w")
    rows = sorted({r for r, _ in WELLS})
    cols = sorted({c for _, c in WELLS})
    write_plate_metadata(root, rows, cols, [f"{r}/{c}" for r, c in WELLS], field_count=N_FIELDS, name="P1")
    for r, c in WELLS:
        well = root.require_group(r).require_group(c)
        write_well_metadata(well, [str(f) for f in range(N_FIELDS)])
        for f in range(N_FIELDS):
            write_image(fields[r, c, f], well.require_group(str(f)), axes="cyx", scale_factors=[],
                        scale={"c": 1.0, "y": 0.65, "x": 0.65}, axes_units={"y": "micrometer", "x": "micrometer"},
                        omero=_omero())


def write_loaddata(folder, fields: dict):
    """The same fields as single-plane TIFFs listed in a LoadData CSV."""
    (folder / "images").mkdir()
    rows = []
    for (r, c, f), planes in fields.items():
        row = {"Metadata_Plate": "P1", "Metadata_Well": f"{r}{int(c):02d}", "Metadata_Row": r,
               "Metadata_Column": int(c), "Metadata_Site": f + 1}
        for ch, plane in zip(CHANNELS, planes):
            name = f"{r}{c}_f{f}_{ch}.tif"
            tifffile.imwrite(folder / "images" / name, plane)
            row[f"FileName_Orig{ch}"], row[f"PathName_Orig{ch}"] = name, "images"
        rows.append(row)
    csv = folder / "load_data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def assert_same(a, b) -> None:
    assert a.channels == b.channels
    np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    cols = ["Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Column", "Metadata_Site"]
    pd.testing.assert_frame_equal(a.meta[cols].astype(str), b.meta[cols].astype(str))
    assert a.meta.attrs["scaling"]["limits"] == b.meta.attrs["scaling"]["limits"]


def test_ome_zarr_plate_equals_loaddata(tmp_path):
    fields = _fields()
    write_plate(tmp_path / "plate.zarr", fields)
    csv = write_loaddata(tmp_path, fields)
    plate = read_ome_zarr(tmp_path / "plate.zarr")
    loaddata = read_loaddata(csv)
    from chanstat.data import read

    assert_same(read(tmp_path / "plate.zarr"), loaddata)  # read() knows the plate by its metadata
    assert plate.channels == CHANNELS and len(plate) == len(WELLS) * N_FIELDS
    assert_same(plate, loaddata)
    assert plate.meta["Metadata_Well"].tolist()[:3] == ["A01", "A01", "A02"]
    assert plate.meta.attrs["pixel_size"] == {"y": 0.65, "x": 0.65, "unit": "micrometer"}
    # raw intensities come through unchanged
    raw = read_ome_zarr(tmp_path / "plate.zarr", scaling="none", channels=["Mito", "DNA"])
    np.testing.assert_array_equal(raw.images[0].numpy(), fields["A", "1", 0][[2, 0]].astype(np.float32))


def test_ome_zarr_selection_platemap_and_errors(tmp_path):
    fields = _fields(1)
    write_plate(tmp_path / "plate.zarr", fields)
    table = plate_fields(tmp_path / "plate.zarr", wells=["A02"], fields=[2])
    assert table[["Metadata_Well", "Metadata_Site", "path"]].values.tolist() == [["A02", 2, "A/2/1"]]
    platemap = tmp_path / "platemap.csv"
    pd.DataFrame({"Metadata_Well": ["A01", "A02", "B01"], "Metadata_Treatment": ["DMSO", "drug", "drug"]}).to_csv(platemap, index=False)
    data = read_ome_zarr(tmp_path / "plate.zarr", platemap=str(platemap), label_column="Metadata_Treatment",
                         control_column="Metadata_Treatment", control_values="DMSO")
    assert data.classes == ["DMSO", "drug"] and data.labels.tolist() == [0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="unknown channels"):
        read_ome_zarr(tmp_path / "plate.zarr", channels=["AGP"])
    with pytest.raises(ValueError, match="not an OME-Zarr HCS plate"):
        read_ome_zarr(tmp_path / "plate.zarr" / "A" / "1" / "0")
    with pytest.raises(FileNotFoundError, match="OME-Zarr not found"):
        read_ome_zarr(tmp_path / "absent.zarr")


def test_ome_tiff_channel_names(tmp_path):
    fields = _fields(2)
    files = []
    for (r, c, f), planes in list(fields.items())[:3]:
        path = tmp_path / f"{r}{c}_{f}.ome.tif"
        tifffile.imwrite(path, planes, ome=True, metadata={"axes": "CYX", "Channel": {"Name": CHANNELS},
                                                           "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
        files.append(path)
    data = read_ome_tiff(tmp_path, scaling="none", channels=["ER", "DNA"])
    assert data.channels == ["ER", "DNA"]
    np.testing.assert_array_equal(data.images[0].numpy(), list(fields.values())[0][[1, 0]].astype(np.float32))
    assert data.meta.attrs["pixel_size"]["x"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match="no OME-XML"):
        plain = tmp_path / "plain" / "x.ome.tif"
        plain.parent.mkdir()
        tifffile.imwrite(plain, list(fields.values())[0], ome=False)
        read_ome_tiff(plain)


@pytest.mark.parametrize("scaling", ["plate", "image", "none"])
@pytest.mark.parametrize("pooled", [1 << 24, 50])
def test_lazy_scaling_equals_scale_images(monkeypatch, scaling, pooled):
    """Fields read one at a time are scaled to the same numbers (every pixel, or a subsampled grid)."""
    import chanstat.data.lazy as lazy
    import chanstat.data.scaling as scaling_module

    monkeypatch.setattr(lazy, "POOLED_PIXELS", pooled)
    monkeypatch.setattr(scaling_module, "POOLED_PIXELS", pooled)
    rng = np.random.default_rng(3)
    raw = [rng.gamma(2.0, 100.0, (2, 9, 7)).astype(np.float32) for _ in range(6)]
    plates = ["P1", "P2", "P1", "P2", "P1", "P2"]
    control = np.array([True, True, False, True, True, False]) if scaling == "plate" else None
    reads = []

    def read(i):
        reads.append(i)
        return raw[i]

    lazy_images, lazy_record = lazy.scale_lazily(read, (2, 9, 7), plates, ["DNA", "ER"], scaling, (1.0, 99.0), control)
    images, record = scaling_module.scale_images(raw, plates, ["DNA", "ER"], scaling, (1.0, 99.0), control)
    np.testing.assert_array_equal(lazy_images, images)
    assert lazy_record == record
    assert max(reads.count(i) for i in range(6)) <= (2 if pooled == 50 and scaling == "plate" else 1)


def test_data_stage_reads_an_ome_zarr_plate(tmp_path):
    from chanstat.config import validate_config
    from chanstat.context import RunContext
    from chanstat.data import stage as data_stage
    from chanstat.pipeline import stages
    from chanstat.rundir import RunDirectory

    write_plate(tmp_path / "plate.zarr", _fields(4))
    pd.DataFrame({"Metadata_Well": ["A01", "A02", "B01"], "Metadata_Treatment": ["DMSO", "drug", "drug"]}).to_csv(
        tmp_path / "platemap.csv", index=False)
    raw = {"data": {"source": "ome_zarr", "channels": ["Mito", "DNA"],
                    "ome_zarr": {"path": "plate.zarr", "platemap": "platemap.csv", "label_column": "Metadata_Treatment",
                                 "wells": ["A01", "A02"]}}}
    ctx = RunContext(config=validate_config(raw, stages()), run=RunDirectory(tmp_path / "run", create=True),
                     config_dir=tmp_path, progress=False)
    outputs, info = data_stage.whole_set(ctx, {})
    assert info["channels"] == ["Mito", "DNA"] and info["n_images"] == 4 and info["classes"] == ["DMSO", "drug"]
    assert info["pixel_size"]["unit"] == "micrometer" and info["image_source"]["format"] == "ome-zarr"
    with pytest.raises(Exception, match="ome_zarr"):
        validate_config({"data": {"source": "ome_zarr", "ome_zarr": {"path": "p.zarr", "wels": ["A01"]}}}, stages())


def test_ngff_04_plate_in_zarr_v2(tmp_path):
    """Plates written before Zarr v3 (OME-NGFF 0.4, metadata at the top of the attributes) read too."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    planes = _fields(5)["A", "1", 0]
    root = zarr.open_group(str(tmp_path / "p04.zarr"), mode="w", zarr_format=2)
    write_plate_metadata(root, ["A"], ["1"], ["A/1"], fmt=FormatV04(), name="P04")
    well = root.require_group("A").require_group("1")
    write_well_metadata(well, ["0"], fmt=FormatV04())
    write_image(planes, well.require_group("0"), axes="cyx", scale_factors=[], fmt=FormatV04(), omero=_omero())
    data = read_ome_zarr(tmp_path / "p04.zarr", scaling="none")
    assert data.channels == CHANNELS and data.meta["Metadata_Plate"].tolist() == ["P04"]
    np.testing.assert_array_equal(data.images[0].numpy(), planes.astype(np.float32))
