"""attribution_feature_link: planted per-cell relation on the synthetic set; runs on the real field."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chanstat.cellprofiler import LINK_COLUMNS, attribution_feature_link
from chanstat.decompose import compartment_mass, labels_from_outlines, match_objects

FIELD = "pediatric_atlas_BR00143976_C03_3"


@pytest.fixture(scope="module")
def planted():
    """Residual maps |x - x'| of the oracle counterfactuals (Mito fragmentation, 12 wells), plus
    faint uniform noise in every channel, and cp-measure features of the same cells."""
    from chanstat.cellprofiler import measure_synthetic
    from chanstat.data import synthetic

    data = synthetic(n_plates=2, wells_per_class=3, sites_per_well=4, size=32, seed=0)
    rng = np.random.default_rng(1)
    maps = np.abs(data.images.numpy() - data.counterfactuals.numpy()) + 1e-3 * rng.random(data.images.shape)
    mass = compartment_mass(maps, data.objects, data.channels, data.meta)
    features = measure_synthetic(data, measurements={"intensity": ("Cells",), "sizeshape": ("Cells",)})
    features["Cells_Intensity_MeanIntensity_Placebo"] = rng.random(len(features))  # a feature tied to nothing
    return mass, features


def test_recovers_planted_relation(planted):
    mass, features = planted
    link = attribution_feature_link(mass.objects, features, channels=["Mito", "ER"], value="density")
    assert list(link.columns) == LINK_COLUMNS
    cyto_mito = link[(link["compartment"] == "cytoplasm") & (link["channel"] == "Mito")].set_index("feature")
    # cells with more Mito signal change more under the planted phenotype, so draw more Mito mass per pixel
    top = cyto_mito["p_value"].idxmin()
    assert top.endswith("_Mito")
    hit = cyto_mito.loc["Cells_Intensity_MeanIntensity_Mito"]
    assert hit["estimate"] > 0.5 and hit["q_value"] < 1e-4
    assert hit["n_wells"] == 12 and hit["n_cells"] == len(features)
    # the ER map holds only uniform noise: its density follows no Mito feature
    cyto_er = link[(link["compartment"] == "cytoplasm") & (link["channel"] == "ER")].set_index("feature")
    assert cyto_er.loc["Cells_Intensity_MeanIntensity_Mito", "q_value"] > 0.05
    placebo = link[link["feature"] == "Cells_Intensity_MeanIntensity_Placebo"]
    assert (placebo["q_value"] > 0.05).all()


def test_one_well_gives_estimate_without_test(planted):
    mass, features = planted
    one = features[(features["Metadata_Plate"] == "P1") & (features["Metadata_Well"] == features["Metadata_Well"].iloc[0])]
    link = attribution_feature_link(mass.objects, one, feature_columns=["Cells_Intensity_MeanIntensity_Mito"],
                                    channels=["Mito"])
    assert (link["n_wells"] == 1).all()
    assert link["estimate"].notna().all() and link["p_value"].isna().all() and link["statistic"].isna().all()


def test_bad_keys_are_named(planted):
    mass, features = planted
    with pytest.raises(KeyError, match="features lacks the key column 'ImageNumber'"):
        attribution_feature_link(mass.objects, features, on={"sample": "ImageNumber", "cell": "Metadata_ObjectNumber"})


def test_runs_on_the_real_field(shared_data):
    import tifffile

    folder = shared_data / FIELD
    table = pd.read_parquet(folder / "BR00143976_shrunken.parquet")
    labels = {}
    for kind in ("Cells", "Nuclei"):
        raw = labels_from_outlines(tifffile.imread(folder / "images" / f"{kind}Outlines_BR00143976_C03_3.tiff"))
        labels[kind.lower()] = match_objects(raw, table[f"{kind}_Location_Center_X"], table[f"{kind}_Location_Center_Y"],
                                             table[f"Metadata_{kind}_Number_Object_Number"])[None]
    channels = ["Brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]
    maps = np.random.default_rng(0).random((1, 6) + labels["cells"].shape[1:], dtype=np.float32)
    meta = pd.DataFrame({"Metadata_ImageNumber": [3]})
    mass = compartment_mass(maps, labels, channels, meta)
    link = attribution_feature_link(
        mass.objects, table, on={"Metadata_ImageNumber": "Metadata_ImageNumber", "cell": "Metadata_Cells_Number_Object_Number"},
        well=["Image_Metadata_Plate", "Image_Metadata_Well"], channels=["DNA", "Mito"], compartments=["cells"],
        value="mass", adjust_area=False)
    assert list(link.columns) == LINK_COLUMNS and len(link) > 100
    assert (link["n_wells"] <= 1).all() and link["p_value"].isna().all()  # one well: no test, honestly
    area = link[(link["feature"] == "Cells_AreaShape_Area") & (link["channel"] == "DNA")].iloc[0]
    assert area["n_cells"] == 5 and area["n_wells"] == 1
    # uniform noise maps: a cell's mass grows with its area, so its rank correlation with the area is ~1
    assert area["estimate"] > 0.8


def test_link_p_values_are_calibrated_under_the_null():
    """400 features unrelated to the cells' attribution mass (8 wells x 15 cells): the well-level
    test rejects at alpha 0.05 about 5 % of the time (seeded; Monte Carlo SE 0.011)."""
    rng = np.random.default_rng(3)
    wells = np.repeat([f"W{k}" for k in range(8)], 15)
    cells = np.arange(1, len(wells) + 1)
    objects = pd.DataFrame({"sample": 0, "compartment": "cells", "object": cells, "cell": cells, "channel": "Mito",
                            "mass": rng.gamma(2.0, size=len(wells)), "area": 100,
                            "Metadata_Plate": "P1", "Metadata_Well": wells})
    features = pd.DataFrame(rng.normal(size=(len(wells), 400)), columns=[f"Cells_Intensity_F{k}_Mito" for k in range(400)])
    features["Metadata_ImageNumber"] = 0
    features["Metadata_ObjectNumber"] = cells
    features["Metadata_Plate"], features["Metadata_Well"] = "P1", wells
    link = attribution_feature_link(objects, features, on={"sample": "Metadata_ImageNumber", "cell": "Metadata_ObjectNumber"},
                                    compartments=("cells",), channels=["Mito"])
    assert len(link) == 400 and (link["n_wells"] == 8).all()
    assert 0.02 <= (link["p_value"] < 0.05).mean() <= 0.08


def test_random_map_links_no_size_feature_and_table_wide_fdr():
    """A random map on cells of random size: with the defaults (density, partial on area, one
    table-wide family) no size feature is linked; summed mass without the area adjustment links
    the area in every compartment (the failure the defaults avoid)."""
    rng = np.random.default_rng(5)
    n_wells, per = 8, 20
    wells = np.repeat([f"W{k}" for k in range(n_wells)], per)
    cells = np.arange(1, len(wells) + 1)
    area = rng.integers(50, 400, size=len(wells)).astype(float)
    rows = []
    for comp, frac in (("cells", 1.0), ("nuclei", 0.3), ("cytoplasm", 0.7)):
        for ch in ("DNA", "ER", "Mito"):
            a = area * frac
            rows.append(pd.DataFrame({"sample": 0, "compartment": comp, "object": cells, "cell": cells, "channel": ch,
                                      "mass": a * rng.gamma(4.0, size=len(wells)), "area": a,
                                      "Metadata_Plate": "P1", "Metadata_Well": wells}))
    objects = pd.concat(rows, ignore_index=True)
    features = pd.DataFrame(rng.normal(size=(len(wells), 40)), columns=[f"Cells_Intensity_F{k}_Mito" for k in range(40)])
    features["Cells_AreaShape_Area"] = area
    features["Cells_Intensity_IntegratedIntensity_DNA"] = area * rng.gamma(9.0, size=len(wells))
    features["Metadata_ImageNumber"], features["Metadata_ObjectNumber"] = 0, cells
    features["Metadata_Plate"], features["Metadata_Well"] = "P1", wells
    on = {"sample": "Metadata_ImageNumber", "cell": "Metadata_ObjectNumber"}
    link = attribution_feature_link(objects, features, on=on)
    assert len(link) == 42 * 9
    assert (link["q_value"].fillna(1) >= 0.05).all()
    naive = attribution_feature_link(objects, features, on=on, value="mass", adjust_area=False)
    area_rows = naive[naive["feature"] == "Cells_AreaShape_Area"]
    assert (area_rows["q_value"] < 0.05).all()
