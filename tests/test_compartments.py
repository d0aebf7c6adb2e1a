"""compartment_mass, label images from outlines, built-in segmentation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chanstat.decompose import compartment_mass, labels_from_outlines, match_objects, segment_cells

FIELD = "pediatric_atlas_BR00143976_C03_3"


@pytest.fixture(scope="module")
def small_set():
    from chanstat.data import synthetic

    return synthetic(n_plates=1, wells_per_class=1, sites_per_well=4, size=32, seed=3)


def test_nuclear_only_map_has_share_one(small_set):
    nuclei = small_set.objects["nuclei"]
    maps = np.zeros(small_set.images.shape, np.float32)
    mito = small_set.channels.index("Mito")
    maps[:, mito] = (nuclei > 0) * np.random.default_rng(0).uniform(0.5, 1.0, nuclei.shape)
    r = compartment_mass(maps, small_set.objects, small_set.channels, small_set.meta)
    hit = (r.compartments["compartment"] == "nuclei") & (r.compartments["channel"] == "Mito")
    np.testing.assert_allclose(r.compartments.loc[hit, "share"], 1.0)
    np.testing.assert_allclose(r.compartments.loc[~hit, "share"], 0.0)
    assert list(r.compartments.columns[:6]) == ["sample", "compartment", "channel", "mass", "share", "area_fraction"]
    assert "Metadata_Well" in r.compartments.columns
    np.testing.assert_allclose(r.compartments.groupby(["sample", "channel"])["area_fraction"].sum(), 1.0)  # a partition of the image


def test_compartments_add_up_to_channel_mass_and_objects_add_up(small_set):
    from chanstat.stats import channel_mass

    maps = np.random.default_rng(1).normal(size=small_set.images.shape).astype(np.float32)
    r = compartment_mass(maps, small_set.objects, small_set.channels, small_set.meta)
    summed = r.compartments.groupby(["sample", "channel"], sort=False)["mass"].sum().to_numpy()
    reference = channel_mass(maps, small_set.channels, small_set.meta)["mass"].to_numpy()
    np.testing.assert_allclose(summed, reference, rtol=1e-10)
    # every nucleus lies in its own cell here: per cell, cells = nuclei + cytoplasm, and the object
    # masses add up to the compartment masses
    o = r.objects
    wide = o.pivot_table(index=["sample", "cell", "channel"], columns="compartment", values="mass", aggfunc="sum")
    np.testing.assert_allclose(wide["cells"], wide["nuclei"] + wide["cytoplasm"], rtol=1e-10)
    per_comp = o[o["compartment"] != "cells"].groupby(["sample", "compartment", "channel"])["mass"].sum()
    c = r.compartments.set_index(["sample", "compartment", "channel"])["mass"]
    np.testing.assert_allclose(per_comp, c.loc[per_comp.index], rtol=1e-10)
    # object ids are the label ids; areas are the label areas
    cells = small_set.objects["cells"]
    areas = o[(o["compartment"] == "cells") & (o["channel"] == "DNA")]
    expected = [int((cells[s] == k).sum()) for s, k in zip(areas["sample"], areas["object"])]
    assert areas["area"].tolist() == expected


def test_objects_join_cp_measure_on_image_and_object_number(small_set):
    from chanstat.cellprofiler import measure_synthetic

    maps = np.abs(small_set.images.numpy() - small_set.counterfactuals.numpy())
    r = compartment_mass(maps, small_set.objects, small_set.channels, small_set.meta)
    feats = measure_synthetic(small_set, measurements={"sizeshape": ("Cells",)})
    cells = r.objects[(r.objects["compartment"] == "cells") & (r.objects["channel"] == "Mito")]
    joined = cells.merge(feats, left_on=["sample", "object"], right_on=["Metadata_ImageNumber", "Metadata_ObjectNumber"],
                         validate="one_to_one")
    assert len(joined) == len(feats) == len(cells)
    np.testing.assert_array_equal(joined["area"], joined["Cells_AreaShape_Area"])


def test_bad_inputs_are_named(small_set):
    maps = np.zeros(small_set.images.shape, np.float32)
    with pytest.raises(ValueError, match="unknown compartment"):
        compartment_mass(maps, {"golgi": small_set.objects["cells"]})
    with pytest.raises(ValueError, match=r"objects\['cells'\] must have shape"):
        compartment_mass(maps, {"cells": small_set.objects["cells"][:2]})
    with pytest.raises(ValueError, match="transform must be one of"):
        compartment_mass(maps, small_set.objects, transform="abs")


def test_a_dict_of_maps_gives_a_method_column_and_the_same_numbers(small_set):
    rng = np.random.default_rng(0)
    a = rng.normal(size=small_set.images.shape).astype(np.float32)
    b = np.abs(a) * 2
    both = compartment_mass({"a": a, "b": b}, small_set.objects, small_set.channels)
    alone = compartment_mass(a, small_set.objects, small_set.channels, method="a")
    assert list(both.compartments["method"].unique()) == ["a", "b"]
    pd.testing.assert_frame_equal(both.compartments[both.compartments["method"] == "a"].reset_index(drop=True),
                                  alone.compartments)
    # |2a| has twice the mass of |a| everywhere, and the same shares
    mass = both.compartments.pivot_table(index=["sample", "compartment", "channel"], columns="method", values="mass")
    np.testing.assert_allclose(mass["b"], 2 * mass["a"], rtol=1e-6)
    signed = compartment_mass(a, small_set.objects, small_set.channels, transform="signed").compartments
    assert (signed["mass"] < 0).any() and signed["mass"].sum() == pytest.approx(float(a.astype(np.float64).sum()), rel=1e-6)


def test_labels_from_outlines_recover_labels(small_set):
    from skimage.segmentation import find_boundaries

    cells = small_set.objects["cells"][0]
    outline = find_boundaries(cells, mode="inner")  # drawn on the objects' own edge pixels
    rebuilt = labels_from_outlines(outline, min_area=5)
    ids = [k for k in np.unique(cells) if k]
    ys, xs = zip(*[np.argwhere(cells == k).mean(axis=0) for k in ids])
    matched = match_objects(rebuilt, xs, ys, ids)
    assert set(np.unique(matched)) == set(ids) | {0}
    assert (matched == cells).mean() > 0.97


def test_real_field_outlines_give_cellprofiler_areas(shared_data):
    import tifffile

    folder = shared_data / FIELD
    table = pd.read_parquet(folder / "BR00143976_shrunken.parquet")
    for kind in ("Cells", "Nuclei"):
        labels = labels_from_outlines(tifffile.imread(folder / "images" / f"{kind}Outlines_BR00143976_C03_3.tiff"))
        numbers = table[f"Metadata_{kind}_Number_Object_Number"]
        matched = match_objects(labels, table[f"{kind}_Location_Center_X"], table[f"{kind}_Location_Center_Y"], numbers)
        areas = np.array([(matched == k).sum() for k in numbers])
        # CellProfiler's own areas, to within one pixel
        np.testing.assert_allclose(areas, table[f"{kind}_AreaShape_Area"], atol=1)


def test_segment_cells_finds_the_synthetic_nuclei(small_set):
    labels = segment_cells(small_set.images.numpy(), small_set.channels, min_distance=3)
    truth_n, truth_c = small_set.objects["nuclei"] > 0, small_set.objects["cells"] > 0
    found_n = labels["nuclei"] > 0
    iou = (found_n & truth_n).sum() / (found_n | truth_n).sum()
    assert iou > 0.7
    counts = [len(np.unique(lab)) - 1 for lab in labels["nuclei"]]
    assert counts == small_set.meta["Metadata_CellCount"].tolist()
    assert set(np.unique(labels["cells"])) >= set(np.unique(labels["nuclei"]))  # a cell per nucleus
    found_c = labels["cells"] > 0
    assert (found_c & truth_c).sum() / (found_c | truth_c).sum() > 0.6


def test_segment_cells_on_the_real_field_agrees_with_cellprofiler(shared_data):
    import tifffile

    folder = shared_data / FIELD / "images"
    stains = {"2": "ER", "3": "AGP", "4": "Mito", "5": "DNA", "6": "RNA"}
    planes = np.stack([tifffile.imread(folder / f"r03c03f03p01-ch{k}sk1fk1fl1.tiff").astype(np.float32) for k in stains])
    planes /= np.percentile(planes, 99.5, axis=(1, 2), keepdims=True)
    found = segment_cells(planes[None], list(stains.values()), smoothing=2.0, min_nucleus_area=200, min_distance=15,
                          threshold="li")
    truth = labels_from_outlines(tifffile.imread(folder / "NucleiOutlines_BR00143976_C03_3.tiff")) > 0
    nuclei = found["nuclei"][0] > 0
    assert (nuclei & truth).sum() / (nuclei | truth).sum() > 0.65
    assert 0.8 < found["nuclei"][0].max() / 37 < 1.25  # CellProfiler found 37 nuclei (with border ones)
