"""Streamed well aggregation of per-cell tables equals the in-memory path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chanstat.cellprofiler import aggregate_wells, differential, read
from chanstat.cellprofiler.streaming import aggregate_wells_streaming, differential_streaming, parse_memory


def per_cell_table(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Cells of 2 plates x 12 wells; float32/float64/int features, NaNs, an all-NaN well,
    metadata constant within wells (compound, renamed from Image_Metadata_) and varying (site)."""
    rng = np.random.default_rng(seed)
    wells = rng.choice([f"{r}{c:02d}" for r in "AB" for c in range(1, 7)], n)
    frame = pd.DataFrame({
        "Metadata_Plate": rng.choice(["P2", "P1"], n),
        "Metadata_Well": wells,
        "Metadata_Site": rng.integers(1, 5, n),
        "Image_Metadata_Compound": np.where(pd.Series(wells).str[0] == "A", "dmso", "drug"),
        "Cells_AreaShape_Area": rng.integers(100, 1000, n),
        "Cells_Intensity_MeanIntensity_DNA": rng.standard_normal(n).astype(np.float32),
        "Nuclei_Intensity_MeanIntensity_Mito": rng.standard_normal(n) + (pd.Series(wells).str[0] == "B") * 0.8,
        "Cytoplasm_Texture_Contrast_ER_3_00_256": np.where(rng.random(n) < 0.1, np.nan, rng.standard_normal(n)),
        "Cells_Location_Center_X": rng.random(n),  # bookkeeping, not a feature
    })
    frame.loc[frame["Metadata_Well"] == "B03", "Cells_Intensity_MeanIntensity_DNA"] = np.nan
    return frame


@pytest.fixture(scope="module")
def cells_parquet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("streaming") / "cells.parquet"
    per_cell_table().to_parquet(path, row_group_size=700)
    return path


@pytest.mark.parametrize("memory_limit", ["512MB", "30kB", "1kB"])
def test_parquet_streaming_equals_in_memory(cells_parquet, memory_limit):
    """30 kB forces one feature per pass; 1 kB also splits wells into blocks of whole wells."""
    expected = aggregate_wells(read(cells_parquet))
    streamed = aggregate_wells_streaming(cells_parquet, memory_limit=memory_limit, batch_rows=333)
    pd.testing.assert_frame_equal(streamed, expected, check_exact=True)
    assert "Metadata_Compound" in streamed.columns and "Metadata_Site" not in streamed.columns
    assert streamed["Metadata_n_objects"].sum() == 3000


def test_streamed_medians_are_pandas_medians(cells_parquet):
    """An independent recomputation: plain pandas groupby median on the raw table."""
    raw = per_cell_table()
    streamed = aggregate_wells_streaming(cells_parquet, memory_limit="20kB")
    truth = raw.groupby(["Metadata_Plate", "Metadata_Well"])["Nuclei_Intensity_MeanIntensity_Mito"].median()
    np.testing.assert_array_equal(streamed["Nuclei_Intensity_MeanIntensity_Mito"].to_numpy(), truth.to_numpy())
    b03 = streamed["Metadata_Well"] == "B03"
    assert streamed.loc[b03, "Cells_Intensity_MeanIntensity_DNA"].isna().all()
    assert streamed["Cells_Intensity_MeanIntensity_DNA"].dtype == np.float32


def test_options_match_in_memory_options(cells_parquet, tmp_path):
    frame = pd.read_parquet(cells_parquet)
    features = ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_Mito"]
    expected = aggregate_wells(read(cells_parquet), features=features, func="mean", well=["Metadata_Well"])
    streamed = aggregate_wells_streaming(cells_parquet, features=features, func="mean", well=["Metadata_Well"],
                                         memory_limit="10kB")
    # medians are exact; a mean over a block of wells may differ in the last bit (pandas' summation)
    pd.testing.assert_frame_equal(streamed, expected, check_exact=False, rtol=1e-12)
    # a folder of files is one table (files in sorted order)
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:1234].to_parquet(folder / "part-0.parquet")
    frame.iloc[1234:].to_parquet(folder / "part-1.parquet")
    pd.testing.assert_frame_equal(aggregate_wells_streaming(folder, memory_limit="50kB"),
                                  aggregate_wells(read(cells_parquet)), check_exact=True)
    only_cells = aggregate_wells_streaming(cells_parquet, compartments=["Cells"])
    pd.testing.assert_frame_equal(only_cells, aggregate_wells(read(cells_parquet, compartments=["Cells"])))


def test_sqlite_streaming_equals_in_memory_on_real_cellprofiler_file(shared_data):
    path = next((shared_data / "cell_health_sqlite").glob("*.sqlite"))
    expected = aggregate_wells(read(path))
    # 50 kB holds fewer cells than one well: every well is its own chunk
    for limit in ("512MB", "50kB"):
        pd.testing.assert_frame_equal(aggregate_wells_streaming(path, memory_limit=limit), expected, check_exact=True)
    cells = aggregate_wells_streaming(path, compartments=["Cells"], memory_limit="50kB")
    pd.testing.assert_frame_equal(cells, aggregate_wells(read(path, compartments=["Cells"])), check_exact=True)


def test_differential_on_streamed_wells_equals_per_cell_differential(cells_parquet):
    expected = differential(read(cells_parquet), "Metadata_Compound", "drug", "dmso", unit="well")
    streamed = differential_streaming(cells_parquet, "Metadata_Compound", "drug", "dmso", memory_limit="30kB")
    pd.testing.assert_frame_equal(streamed, expected, check_exact=True)
    mito = streamed.set_index("feature").loc["Nuclei_Intensity_MeanIntensity_Mito"]
    assert mito["q_value"] < 0.05 and mito["statistic"] > 0  # the planted difference


def test_bad_inputs_give_clear_errors(cells_parquet, tmp_path):
    with pytest.raises(FileNotFoundError):
        aggregate_wells_streaming(tmp_path / "nope.parquet")
    with pytest.raises(ValueError, match="memory_limit"):
        aggregate_wells_streaming(cells_parquet, memory_limit="lots")
    with pytest.raises(ValueError, match="func"):
        aggregate_wells_streaming(cells_parquet, func="max")
    with pytest.raises(ValueError, match="features not in the table"):
        aggregate_wells_streaming(cells_parquet, features=["Cells_Nope_X"])
    no_well = tmp_path / "no_well.parquet"
    pd.read_parquet(cells_parquet).drop(columns=["Metadata_Well"]).to_parquet(no_well)
    with pytest.raises(ValueError, match="Metadata_Well"):
        aggregate_wells_streaming(no_well)
    text_feature = tmp_path / "text.parquet"
    pd.read_parquet(cells_parquet).assign(Cells_AreaShape_Area="big").to_parquet(text_feature)
    with pytest.raises(ValueError, match="not numeric"):
        aggregate_wells_streaming(text_feature)
    csv = tmp_path / "cells.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="Parquet"):
        aggregate_wells_streaming(csv)
    assert parse_memory("1 MiB") == 1 << 20 and parse_memory(2048) == 2048
