"""Users' data: image scaling keeps intensity phenotypes; damaged tables give one-line errors."""
from __future__ import annotations

import gzip
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from chanstat.cellprofiler.readers import TableFileError, read, read_csv_table
from chanstat.data import ImageSet, read_loaddata

FIELD = "pediatric_atlas_BR00143976_C03_3"
FILES = {"DNA": "ch5", "ER": "ch2", "Mito": "ch4"}  # channel -> file token of the real field
CROPS = [(100, 100), (100, 500), (500, 100), (500, 500)]
SIZE = 192
BRIGHTER = 1.5  # the planted phenotype: ER 1.5x brighter in class "bright"


@pytest.fixture(scope="module")
def two_class_loaddata(shared_data, tmp_path_factory):
    """Four real crops per class; class "bright" is the same crops with ER x 1.5, nothing else."""
    import tifffile

    folder = tmp_path_factory.mktemp("two_class")
    raw = {ch: tifffile.imread(shared_data / FIELD / "images" / f"r03c03f03p01-{tok}sk1fk1fl1.tiff")
           for ch, tok in FILES.items()}
    rows = []
    for label, well in (("control", "A01"), ("bright", "A02")):
        for site, (y, x) in enumerate(CROPS):
            row = {"Metadata_Plate": "P1", "Metadata_Well": well, "Metadata_Site": site, "Metadata_Class": label}
            for ch, plane in raw.items():
                crop = plane[y : y + SIZE, x : x + SIZE].astype(np.float64)
                if label == "bright" and ch == "ER":
                    crop = crop * BRIGHTER
                name = f"{well}_s{site}_{ch}.tiff"
                tifffile.imwrite(folder / name, np.clip(np.round(crop), 0, 65535).astype(np.uint16))
                row[f"FileName_Orig{ch}"] = name
                row[f"PathName_Orig{ch}"] = "."
            rows.append(row)
    path = folder / "load_data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _class_means(s: ImageSet, channel: str) -> tuple[float, float]:
    k = s.channels.index(channel)
    per_image = s.images[:, k].mean(dim=(1, 2))
    bright = s.labels == s.classes.index("bright")
    return float(per_image[~bright].mean()), float(per_image[bright].mean())


def test_default_scaling_keeps_a_brightness_difference_between_classes(two_class_loaddata):
    s = read_loaddata(two_class_loaddata, label_column="Metadata_Class")
    assert s.meta.attrs["scaling"]["method"] == "plate"
    control, bright = _class_means(s, "ER")
    assert bright > 1.3 * control  # 1.5x planted; the top 0.5% of pixels are clipped at 1
    # the other channels are the same crops under the same plate limits: identical
    order = np.argsort(s.meta["Metadata_Class"].to_numpy(), kind="stable")
    for ch in ("DNA", "Mito"):
        k = s.channels.index(ch)
        assert torch.equal(s.images[order[:4], k], s.images[order[4:], k])


def test_per_image_scaling_erases_the_difference(two_class_loaddata):
    s = read_loaddata(two_class_loaddata, label_column="Metadata_Class", scaling="image")
    assert s.meta.attrs["scaling"]["method"] == "image"
    control, bright = _class_means(s, "ER")
    assert bright == pytest.approx(control, rel=0.01)  # each image mapped onto its own [1%, 99.5%]


def test_plate_scaling_from_control_images(two_class_loaddata, shared_data):
    import tifffile

    s = read_loaddata(two_class_loaddata, label_column="Metadata_Class",
                      control_column="Metadata_Class", control_values="control")
    record = s.meta.attrs["scaling"]
    assert record["control"] and record["control_column"] == "Metadata_Class"
    # the limits are the percentiles of the control crops' raw ER pixels, pooled
    folder = two_class_loaddata.parent
    pooled = np.concatenate([tifffile.imread(folder / f"A01_s{site}_ER.tiff").ravel() for site in range(4)])
    np.testing.assert_allclose(record["limits"]["P1"]["ER"], np.percentile(pooled.astype(np.float32), [1, 99.5]),
                               rtol=1e-6)
    control, bright = _class_means(s, "ER")
    assert bright > 1.3 * control
    with pytest.raises(ValueError, match="no row of .* has Metadata_Class in \\['mutant'\\]"):
        read_loaddata(two_class_loaddata, control_column="Metadata_Class", control_values=["mutant"])
    with pytest.raises(ValueError, match="scaling must be one of"):
        read_loaddata(two_class_loaddata, scaling="well")


def test_ragged_loaddata_row_is_an_error_naming_file_and_line(two_class_loaddata, tmp_path):
    lines = two_class_loaddata.read_text().splitlines()
    lines[2] = lines[2] + ",extra"
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TableFileError, match=r"ragged.csv, line 3: \d+ fields but the header has \d+"):
        read_loaddata(path)


# ---------------------------------------------------------------------------------------------
# damaged tables
# ---------------------------------------------------------------------------------------------
PROFILE = "Metadata_Plate,Metadata_Well,Cells_AreaShape_Area,Nuclei_Intensity_MeanIntensity_DNA\nP,A01,1.5,2.5\nP,A02,3.5,4.5\nP,A03,5.5,6.5\n"


def test_a_clean_profile_reads(tmp_path):
    path = tmp_path / "profile.csv"
    path.write_text(PROFILE)
    df = read(path)
    assert df["Cells_AreaShape_Area"].tolist() == [1.5, 3.5, 5.5]
    assert df["Metadata_Well"].tolist() == ["A01", "A02", "A03"]


@pytest.mark.parametrize("line, edit", [(3, ",9.9"), (2, None)])  # a field too many / too few
def test_ragged_profile_row_is_an_error_not_a_shifted_table(tmp_path, line, edit):
    lines = PROFILE.splitlines()
    lines[line - 1] = lines[line - 1] + edit if edit else lines[line - 1].rsplit(",", 1)[0]
    path = tmp_path / "profile.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TableFileError, match=rf"profile.csv, line {line}: \d fields but the header has 4"):
        read(path)


def _gzip_bytes(text: str) -> bytes:
    return gzip.compress(text.encode())


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty"),
    ("binary.csv", bytes(range(256)) * 8, "binary data"),
    ("latin1.csv", "Metadata_Well,Caf\xe9\nA01,1\n".encode("latin-1"), "UnicodeDecodeError"),
    ("truncated.csv.gz", _gzip_bytes(PROFILE * 50)[:-40], "EOFError|BadGzip|zlib"),
    ("notgzip.csv.gz", PROFILE.encode(), "BadGzipFile"),
    ("empty.csv.gz", _gzip_bytes(""), "the file is empty"),
])
def test_damaged_csv_gives_one_line_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TableFileError, match=message) as info:
        read(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_read_csv_table_falls_back_when_types_change_late(tmp_path):
    # pyarrow infers int64 from the first block; a late text value must still read, unshifted
    rows = "\n".join(f"{i},{i}" for i in range(200_000))
    path = tmp_path / "late.csv"
    path.write_text("a,b\n" + rows + "\nx,1\n")
    df = read_csv_table(path)
    assert df.shape == (200_001, 2) and df["a"].iloc[-1] == "x" and df["b"].iloc[-1] == 1


def test_corrupt_sqlite_gives_one_line_error(tmp_path):
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    with pytest.raises(TableFileError, match=r"broken.sqlite as an SQLite database") as info:
        read(path)
    assert "\n" not in str(info.value)


def test_sqlite_table_name_with_a_double_quote_is_read(tmp_path):
    path = tmp_path / "quoted.sqlite"
    with sqlite3.connect(path) as con:
        con.execute('CREATE TABLE "Per_Image" (ImageNumber INTEGER, Image_Metadata_Well TEXT, Image_Metadata_Plate TEXT)')
        con.executemany('INSERT INTO "Per_Image" VALUES (?, ?, ?)', [(1, "A01", "P"), (2, "A02", "P")])
        con.execute('CREATE TABLE "Per_Cells""x" (ImageNumber INTEGER, ObjectNumber INTEGER, Cells_AreaShape_Area REAL)')
        con.executemany('INSERT INTO "Per_Cells""x" VALUES (?, ?, ?)', [(1, 1, 10.0), (1, 2, 20.0), (2, 1, 30.0)])
    con.close()
    df = read(path)
    assert df["Metadata_Well"].tolist() == ["A01", "A01", "A02"]
    area = [c for c in df.columns if c.endswith("AreaShape_Area")]
    assert len(area) == 1 and df[area[0]].tolist() == [10.0, 20.0, 30.0]


# ---------------------------------------------------------------------------------------------
# the ImageSet in a run directory
# ---------------------------------------------------------------------------------------------
def test_imageset_save_and_load_rows(tmp_path):
    from chanstat.data import synthetic
    from chanstat.rundir import RunDirectory

    s = synthetic(n_plates=1, wells_per_class=1, sites_per_well=3, size=24, seed=0)
    s.meta.attrs["scaling"] = {"method": "plate", "percentiles": [1.0, 99.5]}
    run = RunDirectory(tmp_path / "run", create=True).save(dataset=s)
    back = run.dataset()
    assert torch.equal(back.images, s.images) and torch.equal(back.counterfactuals, s.counterfactuals)
    pd.testing.assert_frame_equal(back.meta, s.meta, check_dtype=False)
    assert back.meta.attrs["scaling"]["method"] == "plate"
    rows = [4, 1, 3]
    part = run.dataset(rows)
    expected = s.subset(rows)
    assert torch.equal(part.images, expected.images) and torch.equal(part.labels, expected.labels)
    assert part.meta["Metadata_Well"].tolist() == expected.meta["Metadata_Well"].tolist()
    assert set(part.objects) == set(s.objects)
