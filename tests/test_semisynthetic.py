"""Semi-synthetic sets: a phenotype planted in one channel of real Cell Painting tiles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi

from chanstat.data import ImageSet, read_loaddata, tile
from chanstat.data.semisynthetic import locate_cells, plant

ROOT = Path(__file__).resolve().parents[1]
STAINS = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture(scope="module")
def real_field(shared_data):
    # the repo's LoadData CSV points at ../shared/data; the fixture makes sure it is there
    assert (shared_data / "pediatric_atlas_BR00143976_C03_3" / "images").exists()
    return read_loaddata(ROOT / "analyses" / "real_field_loaddata.csv", channels=STAINS)


@pytest.fixture(scope="module")
def real_tiles(real_field):
    return tile(real_field, 64, 64, min_foreground=0.02, foreground_channel="DNA")


def test_loaddata_csv_lists_six_channels_of_the_real_field(real_field):
    table = pd.read_csv(ROOT / "analyses" / "real_field_loaddata.csv")
    for ch in ("Brightfield", "ER", "AGP", "Mito", "DNA", "RNA"):
        assert f"FileName_Orig{ch}" in table and f"PathName_Orig{ch}" in table
    assert table.loc[0, "FileName_OrigMito"].endswith("ch4sk1fk1fl1.tiff")
    assert real_field.shape == (1, 5, 1080, 1080)


def test_intensity_plant_on_real_tiles(real_field, real_tiles):
    s = plant(real_tiles, channel="Mito", kind="intensity", effect=0.5, dilation=10, pseudo_wells=(2, 2), seed=1)
    mito = s.channels.index("Mito")
    assert s.classes == ["control", "planted"]
    assert torch.equal(s.counterfactual_target, 1 - s.labels)
    diff = s.images != s.counterfactuals
    # only the planted channel differs, and only inside the cells
    assert not diff[:, [i for i in range(5) if i != mito]].any()
    assert diff[:, mito].any(dim=(1, 2)).all()
    cells = torch.as_tensor(s.objects["cells"] > 0)
    assert not (diff[:, mito] & ~cells).any()
    assert torch.equal(s.signal_masks, diff)
    # each tile's unplanted version is the real crop; its planted version is x * 1.5 inside cells
    field = real_field.images[0]
    high = float(real_tiles.images[:, mito].max())
    for i in range(len(s)):
        y, x = int(s.meta.loc[i, "Metadata_TileY"]), int(s.meta.loc[i, "Metadata_TileX"])
        crop = field[:, y : y + 64, x : x + 64]
        unplanted = s.counterfactuals[i] if s.labels[i] == 1 else s.images[i]
        planted = s.images[i] if s.labels[i] == 1 else s.counterfactuals[i]
        assert torch.equal(unplanted, crop)
        expected = torch.where(cells[i], (crop[mito] * 1.5).clamp(max=high), crop[mito])
        torch.testing.assert_close(planted[mito], expected)
    # pseudo-wells by 2 x 2 spatial block, each about half planted
    assert set(s.meta["Metadata_Well"]) <= {f"C03_b{k}" for k in range(4)}
    assert (s.meta["Metadata_SourceWell"] == "C03").all()
    per_well = s.meta.assign(planted=s.labels.numpy()).groupby("Metadata_Well")["planted"].agg(["sum", "size"])
    assert ((per_well["sum"] - per_well["size"] / 2).abs() <= 0.5).all()
    assert s.meta.attrs["planted_channel"] == "Mito"
    assert (s.meta["Metadata_Class"] == np.array(s.classes)[s.labels.numpy()]).all()


def test_texture_plant_adds_spots_inside_cells(real_tiles):
    s = plant(real_tiles, channel="ER", kind="texture", effect=0.4, spot_density=0.02, seed=0)
    er = s.channels.index("ER")
    planted = torch.where(s.labels[:, None, None] == 1, s.images[:, er], s.counterfactuals[:, er])
    unplanted = torch.where(s.labels[:, None, None] == 1, s.counterfactuals[:, er], s.images[:, er])
    assert (planted >= unplanted).all()
    assert not (s.signal_masks[:, er] & torch.as_tensor(s.objects["cells"] == 0)).any()
    assert torch.equal(s.signal_masks[:, er], planted != unplanted)
    assert not s.signal_masks[:, [i for i in range(5) if i != er]].any()
    # spots are sparse: a small part of the cell area
    cell_area = (s.objects["cells"] > 0).sum()
    assert 0 < s.signal_masks[:, er].sum() < 0.8 * cell_area


def toy_tiles(n=8, size=32) -> ImageSet:
    """Tiles with one bright square nucleus each, a 4 x 2 grid of tile positions."""
    rng = np.random.default_rng(0)
    images = rng.random((n, 5, size, size), dtype=np.float32) * 0.1 + 0.2
    images[:, 0, 10:20, 10:20] = 1.0  # DNA
    meta = pd.DataFrame({
        "Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": 1,
        "Metadata_TileY": [size * (i // 2) for i in range(n)], "Metadata_TileX": [size * (i % 2) for i in range(n)],
    })
    return ImageSet(images, STAINS, np.zeros(n, int), ["unlabelled"], meta)


def test_plant_with_user_masks_and_well_assignment():
    s = toy_tiles()
    masks = np.zeros((8, 32, 32), np.int32)
    masks[:, 4:12, 4:28] = 1
    s.objects = {"cells": masks}
    p = plant(s, channel="Mito", effect=0.3, cells="objects", pseudo_wells=(2, 1), assign="well", seed=0)
    changed = (p.images != p.counterfactuals).any(dim=1).numpy()
    assert changed.any() and not changed[:, masks[0] == 0].any()
    # whole pseudo-wells (top / bottom half of the grid) get one class
    assert p.meta.groupby("Metadata_Well")["Metadata_Class"].nunique().eq(1).all()
    assert sorted(p.meta["Metadata_Well"].unique()) == ["A01_b0", "A01_b1"]
    assert set(p.labels.tolist()) == {0, 1}


def test_locate_cells_grows_nuclei_by_the_dilation():
    dna = np.zeros((1, 40, 40), np.float32)
    dna[0, 5:12, 5:12] = 1.0
    dna[0, 25:33, 20:30] = 1.0
    dna[0, 1, 38] = 1.0  # debris below min_nucleus_area
    nuclei, cells, threshold = locate_cells(dna, dilation=3, min_nucleus_area=5)
    assert 0 < threshold < 1 and nuclei.max() == 2
    expected = ndi.distance_transform_edt(nuclei[0] == 0) <= 3
    np.testing.assert_array_equal(cells[0] > 0, expected)


def test_plant_errors():
    s = toy_tiles()
    with pytest.raises(ValueError, match="unknown phenotype kind"):
        plant(s, kind="shape")
    with pytest.raises(ValueError, match="effect must be non-zero"):
        plant(s, effect=-1.0)
    with pytest.raises(KeyError, match="unknown channel names"):
        plant(s, channel="Actin")
    with pytest.raises(ValueError, match="needs imageset.objects"):
        plant(s, cells="objects")
    two = ImageSet(s.images, STAINS, np.arange(8) % 2, ["a", "b"], s.meta)
    with pytest.raises(ValueError, match="single condition"):
        plant(two)
    with pytest.raises(ValueError, match="tiles have a cell area"):
        plant(s, min_cell_fraction=0.9)


# ---------------------------------------------------------------- the real-field configs


def _load(name):
    from chanstat.pipeline import load_config

    config, _ = load_config(ROOT / "analyses" / name)
    return config


def test_real_field_configs_differ_only_in_the_provider():
    oracle, optimise = _load("real_field.toml"), _load("real_field_optimise.toml")
    assert oracle["data"]["plant"]["channel"] == "Mito"
    assert (oracle["counterfactual"]["provider"], optimise["counterfactual"]["provider"]) == ("oracle", "optimise")
    for cfg in (oracle, optimise):
        cfg["run"].pop("name")
        cfg["counterfactual"].pop("provider")
    assert oracle == optimise


def test_real_field_data_stage(tmp_path, shared_data):
    from chanstat.context import RunContext
    from chanstat.data import stage as data_stage
    from chanstat.rundir import RunDirectory

    ctx = RunContext(config=_load("real_field.toml"), run=RunDirectory(tmp_path / "run", create=True),
                     config_dir=ROOT / "analyses", progress=False)
    outputs, info = data_stage.whole_set(ctx, {})
    s = outputs["dataset"]
    assert info["planted_channel"] == "Mito" and info["n_wells"] == 9
    assert info["scaling"]["method"] == "plate"  # the default, recorded for provenance
    assert s.channels == ["DNA", "ER", "RNA", "AGP", "Mito"] and s.classes == ["control", "planted"]
    assert 200 <= len(s) <= 400 and s.shape[2:] == (64, 64)
    assert abs(int(s.labels.sum()) - len(s) / 2) <= 9  # balanced within each of the 9 pseudo-wells
    assert s.signal_masks[:, :4].sum() == 0 and s.signal_masks[:, 4].any()
    assert sorted(s.meta["Metadata_Well"].unique()) == [f"C03_b{k}" for k in range(9)]


@pytest.mark.slow
def test_real_field_run_names_the_planted_channel(tmp_path, shared_data):
    """The whole real-field analysis (a few CPU minutes): stats name Mito as the dominant channel."""
    from chanstat import pipeline
    from chanstat.io import read_json

    out = pipeline.run(ROOT / "analyses" / "real_field.toml", tmp_path / "run", progress=False, log=lambda m: None)
    stages = read_json(out / "provenance.json")["stages"]
    assert stages["model"]["val_accuracy"] >= 0.85
    for method in ("d_ig", "d_ixg", "residual"):
        assert stages["stats"]["methods"][method]["dominant_channel"] == "Mito"
        assert stages["stats"]["methods"][method]["p_value"] < 0.01
    assert stages["counterfactual"]["change_share"]["Mito"] == 1.0
