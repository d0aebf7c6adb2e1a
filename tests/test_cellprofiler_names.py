"""CellProfiler feature-name parser: tricky names, channel maps, never crashing."""
from __future__ import annotations

import pandas as pd
import pytest

from chanstat.cellprofiler import parse_features, resolve_channel

NA = None

# name -> (compartment, category, measurement, channels, scale, angle, gray_levels, bin, params, ordered)
CASES = {
    # plain intensity / shape
    "Cells_Intensity_MeanIntensity_DNA": ("Cells", "Intensity", "MeanIntensity", ["DNA"], NA, NA, NA, NA, NA, False),
    "Nuclei_Intensity_IntegratedIntensityEdge_Mito": ("Nuclei", "Intensity", "IntegratedIntensityEdge", ["Mito"], NA, NA, NA, NA, NA, False),
    "Cells_AreaShape_Area": ("Cells", "AreaShape", "Area", [], NA, NA, NA, NA, NA, False),
    "Cells_AreaShape_Zernike_3_1": ("Cells", "AreaShape", "Zernike", [], NA, NA, NA, NA, "3_1", False),
    # texture, both suffix styles, and Gabor
    "Nuclei_Texture_AngularSecondMoment_ER_3_00_256": ("Nuclei", "Texture", "AngularSecondMoment", ["ER"], 3, 0, 256, NA, NA, False),
    "Cytoplasm_Texture_Contrast_AGP_5_03_256": ("Cytoplasm", "Texture", "Contrast", ["AGP"], 5, 3, 256, NA, NA, False),
    "Nuclei_Texture_InfoMeas1_AGP_10_0": ("Nuclei", "Texture", "InfoMeas1", ["AGP"], 10, 0, NA, NA, NA, False),
    "Cells_Texture_Correlation_RNA_20_1": ("Cells", "Texture", "Correlation", ["RNA"], 20, 1, NA, NA, NA, False),
    "Nuclei_Texture_Gabor_Mito_10": ("Nuclei", "Texture", "Gabor", ["Mito"], 10, NA, NA, NA, NA, False),
    # granularity: scale before channel
    "Cells_Granularity_12_Mito": ("Cells", "Granularity", "Granularity", ["Mito"], 12, NA, NA, NA, NA, False),
    "Cytoplasm_Granularity_1_CorrER": ("Cytoplasm", "Granularity", "Granularity", ["ER"], 1, NA, NA, NA, NA, False),
    # correlation: unordered pairs sorted, ordered pairs kept
    "Cytoplasm_Correlation_Correlation_Mito_DNA": ("Cytoplasm", "Correlation", "Correlation", ["DNA", "Mito"], NA, NA, NA, NA, NA, False),
    "Cytoplasm_Correlation_Correlation_DNA_Mito": ("Cytoplasm", "Correlation", "Correlation", ["DNA", "Mito"], NA, NA, NA, NA, NA, False),
    "Cells_Correlation_Overlap_AGP_ER": ("Cells", "Correlation", "Overlap", ["ER", "AGP"], NA, NA, NA, NA, NA, False),
    "Cells_Correlation_K_RNA_ER": ("Cells", "Correlation", "K", ["RNA", "ER"], NA, NA, NA, NA, NA, True),
    "Cells_Correlation_Manders_Mito_DNA": ("Cells", "Correlation", "Manders", ["Mito", "DNA"], NA, NA, NA, NA, NA, True),
    "Cells_Correlation_Costes_CorrBrightfield_CorrAGP": ("Cells", "Correlation", "Costes", ["Brightfield", "AGP"], NA, NA, NA, NA, NA, True),
    "Cells_Correlation_RWC_CorrRNA_CorrMito": ("Cells", "Correlation", "RWC", ["RNA", "Mito"], NA, NA, NA, NA, NA, True),
    # radial distribution
    "Cells_RadialDistribution_FracAtD_DNA_3of4": ("Cells", "RadialDistribution", "FracAtD", ["DNA"], NA, NA, NA, "3of4", NA, False),
    "Cells_RadialDistribution_ZernikeMagnitude_CorrRNA_9_9": ("Cells", "RadialDistribution", "ZernikeMagnitude", ["RNA"], NA, NA, NA, NA, "9_9", False),
    # Orig / Corr prefixes, mito_tubeness, brightfield variants (incl. 64-character truncations)
    "Cells_Intensity_MeanIntensity_OrigDNA": ("Cells", "Intensity", "MeanIntensity", ["DNA"], NA, NA, NA, NA, NA, False),
    "Nuclei_Intensity_StdIntensity_CorrMito": ("Nuclei", "Intensity", "StdIntensity", ["Mito"], NA, NA, NA, NA, NA, False),
    "Cells_Intensity_MeanIntensity_mito_tubeness": ("Cells", "Intensity", "MeanIntensity", ["Mito"], NA, NA, NA, NA, NA, False),
    "Cells_Texture_Variance_mito_tubeness_3_02_256": ("Cells", "Texture", "Variance", ["Mito"], 3, 2, 256, NA, NA, False),
    "Cells_Correlation_Correlation_mito_tubeness_DNA": ("Cells", "Correlation", "Correlation", ["DNA", "Mito"], NA, NA, NA, NA, NA, False),
    "Cells_Intensity_MeanIntensity_Brightfield": ("Cells", "Intensity", "MeanIntensity", ["Brightfield"], NA, NA, NA, NA, NA, False),
    "Cells_Granularity_3_BFHigh": ("Cells", "Granularity", "Granularity", ["Brightfield"], 3, NA, NA, NA, NA, False),
    "Nuclei_Intensity_MaxIntensity_BFLow": ("Nuclei", "Intensity", "MaxIntensity", ["Brightfield"], NA, NA, NA, NA, NA, False),
    "Cytoplasm_Texture_InverseDifferenceMoment_CorrBrightfld_3_03_256": ("Cytoplasm", "Texture", "InverseDifferenceMoment", ["Brightfield"], 3, 3, 256, NA, NA, False),
    "Cytoplasm_RadialDistribution_ZernikeMagnitude_CorrBrightfild_9_9": ("Cytoplasm", "RadialDistribution", "ZernikeMagnitude", ["Brightfield"], NA, NA, NA, NA, "9_9", False),
    # raw per-object CSV names: no compartment
    "Intensity_MeanIntensity_DNA": ("unknown", "Intensity", "MeanIntensity", ["DNA"], NA, NA, NA, NA, NA, False),
    "Texture_SumAverage_RNA_10_01_256": ("unknown", "Texture", "SumAverage", ["RNA"], 10, 1, 256, NA, NA, False),
    "Granularity_16_AGP": ("unknown", "Granularity", "Granularity", ["AGP"], 16, NA, NA, NA, NA, False),
    "AreaShape_Perimeter": ("unknown", "AreaShape", "Perimeter", [], NA, NA, NA, NA, NA, False),
    # cp_measure-style names
    "Intensity_MeanIntensity__DNA": ("unknown", "Intensity", "MeanIntensity", ["DNA"], NA, NA, NA, NA, NA, False),
    "AngularSecondMoment_3_00_256__ER": ("unknown", "Texture", "AngularSecondMoment", ["ER"], 3, 0, 256, NA, NA, False),
    "Correlation_3_01_256__AGP": ("unknown", "Texture", "Correlation", ["AGP"], 3, 1, 256, NA, NA, False),
    "Granularity_4__Mito": ("unknown", "Granularity", "Granularity", ["Mito"], 4, NA, NA, NA, NA, False),
    "RadialDistribution_MeanFrac_2of4__RNA": ("unknown", "RadialDistribution", "MeanFrac", ["RNA"], NA, NA, NA, "2of4", NA, False),
    "Correlation_Pearson__Mito__DNA": ("unknown", "Correlation", "Pearson", ["DNA", "Mito"], NA, NA, NA, NA, NA, False),
    "Correlation_Manders_1__ER__DNA": ("unknown", "Correlation", "Manders", ["ER", "DNA"], NA, NA, NA, NA, "1", True),
    "Area": ("unknown", "AreaShape", "Area", [], NA, NA, NA, NA, NA, False),
    "Zernike_2_0": ("unknown", "AreaShape", "Zernike", [], NA, NA, NA, NA, "2_0", False),
    # bookkeeping
    "Cells_Location_CenterMassIntensity_X_DNA": ("Cells", "Location", "CenterMassIntensity", ["DNA"], NA, NA, NA, NA, "X", False),
    "Cells_Location_Center_Y": ("Cells", "Location", "Center", [], NA, NA, NA, NA, "Y", False),
    "Cells_Neighbors_NumberOfNeighbors_Adjacent": ("Cells", "Neighbors", "NumberOfNeighbors", [], NA, NA, NA, NA, "Adjacent", False),
    "Nuclei_Children_Cytoplasm_Count": ("Nuclei", "Children", "Count", [], NA, NA, NA, NA, "Cytoplasm", False),
    "Cells_Parent_Nuclei": ("Cells", "Parent", "Nuclei", [], NA, NA, NA, NA, NA, False),
    "Cytoplasm_Number_Object_Number": ("Cytoplasm", "Number", "Object_Number", [], NA, NA, NA, NA, NA, False),
    "Image_ImageQuality_LocalFocusScore_DNA_20": ("Image", "ImageQuality", "LocalFocusScore", ["DNA"], 20, NA, NA, NA, NA, False),
    "Image_Granularity_2_RNA": ("Image", "Granularity", "Granularity", ["RNA"], 2, NA, NA, NA, NA, False),
    "Image_FileName_OrigAGP": ("Image", "FileName", "FileName", ["AGP"], NA, NA, NA, NA, NA, False),
    "Image_FileName_CellOutlines": ("Image", "FileName", "FileName", [], NA, NA, NA, NA, "CellOutlines", False),
    "Image_Metadata_Well": ("Image", "Metadata", "Well", [], NA, NA, NA, NA, NA, False),
    "Metadata_Plate": ("Metadata", "Metadata", "Plate", [], NA, NA, NA, NA, NA, False),
    "ObjectNumber": ("Metadata", "Identifier", "ObjectNumber", [], NA, NA, NA, NA, NA, False),
    # unknown tokens never crash
    "Cells_Frobnicate_Thing_DNA": ("Cells", "unknown", "unknown", [], NA, NA, NA, NA, NA, False),
    "totally_not_a_feature": ("totally", "unknown", "unknown", [], NA, NA, NA, NA, NA, False),
    "": ("unknown", "unknown", "unknown", [], NA, NA, NA, NA, NA, False),
    "___": ("unknown", "unknown", "unknown", [], NA, NA, NA, NA, NA, False),
    "Cells_Correlation": ("Cells", "Correlation", "Correlation", [], NA, NA, NA, NA, NA, False),
    "Cells_Texture_Contrast": ("Cells", "Texture", "Contrast", [], NA, NA, NA, NA, NA, False),
}


def _value(v):
    return None if v is pd.NA or (isinstance(v, float) and v != v) else v


@pytest.mark.parametrize("name", list(CASES))
def test_parse_tricky_names(name):
    row = parse_features([name]).iloc[0]
    compartment, category, measurement, channels, scale, angle, gray, bin_, params, ordered = CASES[name]
    got = (
        row["compartment"], row["category"], row["measurement"], list(row["channels"]),
        _value(row["scale"]), _value(row["angle"]), _value(row["gray_levels"]), _value(row["bin"]),
        _value(row["params"]), bool(row["ordered"]),
    )
    assert got == (compartment, category, measurement, channels, scale, angle, gray, bin_, params, ordered)
    assert row["n_channels"] == len(channels)


def test_output_is_tidy_and_in_input_order():
    names = list(CASES)
    table = parse_features(names)
    assert table["feature"].tolist() == names
    assert list(table.columns[:5]) == ["feature", "compartment", "category", "measurement", "channels"]
    assert str(table["scale"].dtype) == "Int64"


def test_unknown_stain_passes_through_and_channel_map_renames():
    plain = parse_features(["Cells_Intensity_MeanIntensity_Tubulin"]).iloc[0]
    assert list(plain["channels"]) == ["Tubulin"] and not plain["known_channels"]
    mapped = parse_features(
        ["Cells_Intensity_MeanIntensity_Tubulin", "Cells_Intensity_MeanIntensity_CorrAGP", "Cells_Granularity_2_Hoechst"],
        channel_map={"tubulin": "Microtubules", "AGP": "Actin"},
    )
    assert [list(c) for c in mapped["channels"]] == [["Microtubules"], ["Actin"], ["DNA"]]
    assert mapped["known_channels"].all()
    assert resolve_channel("OrigMito") == ("Mito", True)
    assert resolve_channel("Phalloidin") == ("AGP", True)


def test_non_string_and_huge_inputs_do_not_crash():
    table = parse_features([1, 2.5, None, "a" * 500, "Cells_" * 50])
    assert len(table) == 5
    assert set(table["category"]) <= {"unknown", "Identifier", "Metadata"}
    with pytest.raises(TypeError):
        parse_features("Cells_AreaShape_Area")
