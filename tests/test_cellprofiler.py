"""CellProfiler link on real data: readers, differential analysis, enrichment, concordance, cp-measure."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from chanstat.cellprofiler import (
    aggregate_wells,
    channel_enrichment,
    channel_ranks,
    channel_score_draws,
    compartment_channel_table,
    competitive_enrichment,
    concordance,
    differential,
    feature_columns,
    kendall_tau_b,
    parse_features,
    read,
    spearman_rho,
)
from chanstat.cellprofiler.names import CHANNEL_CATEGORIES, OBJECT_COMPARTMENTS

ROOT = Path(__file__).resolve().parents[1]
LINCS = "lincs_SQ00015054/SQ00015054_normalized_feature_select.csv.gz"
BORTEZOMIB_LIKE = "BRD-K50691590-001-02-2"  # proteasome-inhibitor positive control, 12 wells
STAINS_AND_BF = {"DNA", "ER", "RNA", "AGP", "Mito", "Brightfield"}


@pytest.fixture(scope="module")
def lincs(shared_data):
    return read(shared_data / LINCS)


@pytest.fixture(scope="module")
def lincs_diff(lincs):
    return differential(lincs, by="Metadata_broad_sample", case=BORTEZOMIB_LIKE, control="DMSO")


@pytest.fixture(scope="module")
def jump(shared_data):
    return read(shared_data / "jump_target2_BR00121431")


def assert_every_object_feature_assigned(columns):
    parsed = parse_features(columns)
    objects = parsed[parsed["compartment"].isin(OBJECT_COMPARTMENTS)]
    assert len(objects) > 100
    assert (objects["category"] != "unknown").all(), objects.loc[objects["category"] == "unknown", "feature"].tolist()
    resolved = objects[objects["category"].isin(CHANNEL_CATEGORIES)]
    assert (resolved["n_channels"] >= 1).all()
    assert (resolved.loc[resolved["category"] == "Correlation", "n_channels"] == 2).all()
    assert resolved["known_channels"].all()
    assert set(resolved["channels"].explode()) <= STAINS_AND_BF
    return objects


# ----------------------------------------------------------------------------- no torch


def test_package_never_imports_torch():
    code = (
        "import sys, numpy as np, pandas as pd\n"
        "import chanstat.cellprofiler as cp, chanstat.cellprofiler.cli, chanstat.cellprofiler.stage\n"
        "for name in cp.__all__: getattr(cp, name)\n"
        "class Fake: pass\n"
        "s = Fake(); s.images = np.random.default_rng(0).random((2, 2, 24, 24), dtype=np.float32)\n"
        "s.channels = ['DNA', 'Mito']; lab = np.zeros((2, 24, 24), np.int32); lab[:, 4:14, 4:14] = 1\n"
        "nuc = np.zeros_like(lab); nuc[:, 7:11, 7:11] = 1; s.objects = {'nuclei': nuc, 'cells': lab}\n"
        "s.meta = pd.DataFrame({'Metadata_Plate': ['P', 'P'], 'Metadata_Well': ['A01', 'A02']})\n"
        "cp.measure_synthetic(s)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- LINCS, well level


def test_lincs_differential_matches_independent_scipy_statsmodels(lincs, lincs_diff):
    case = lincs[lincs["Metadata_broad_sample"] == BORTEZOMIB_LIKE]
    control = lincs[lincs["Metadata_broad_sample"] == "DMSO"]
    assert len(case) == 12 and len(control) == 24
    diff = lincs_diff
    assert (diff["status"] == "tested").all()
    features = diff["feature"].tolist()
    # every non-metadata column except the two Location (position) features
    assert len(features) == 452
    welch = [stats.ttest_ind(case[f], control[f], equal_var=False) for f in features]
    mwu = [stats.mannwhitneyu(case[f], control[f]) for f in features]
    p_t = np.array([r.pvalue for r in welch])
    p_u = np.array([r.pvalue for r in mwu])
    np.testing.assert_allclose(diff["statistic"], [r.statistic for r in welch], rtol=1e-12)
    np.testing.assert_allclose(diff["dof"], [r.df for r in welch], rtol=1e-12)
    np.testing.assert_allclose(diff["p_value"], p_t, rtol=1e-12, atol=0)
    np.testing.assert_allclose(diff["q_value"], multipletests(p_t, method="fdr_bh")[1], rtol=1e-12)
    np.testing.assert_allclose(diff["mw_statistic"], [r.statistic for r in mwu], rtol=0)
    np.testing.assert_allclose(diff["mw_p_value"], p_u, rtol=1e-12)
    np.testing.assert_allclose(diff["mw_q_value"], multipletests(p_u, method="fdr_bh")[1], rtol=1e-12)
    # Hedges' g as pingouin computes it; its interval from the unequal-variance delta-method SE
    import pingouin as pg

    for f in features[:25]:
        g = pg.compute_effsize(case[f], control[f], eftype="hedges")
        row = diff.loc[diff["feature"] == f].iloc[0]
        assert row["effect_size"] == pytest.approx(g, rel=1e-12)
        a, b = case[f].to_numpy(), control[f].to_numpy()
        v1, v2, n1, n2 = a.var(ddof=1), b.var(ddof=1), 12, 24
        sp2 = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
        j = 1 - 3 / (4 * (n1 + n2) - 9)
        g0 = g / j
        se = j * np.sqrt((v1 / n1 + v2 / n2) / sp2 + g0**2 * ((n1 - 1) * v1**2 + (n2 - 1) * v2**2) / (2 * sp2**2 * 34**2))
        crit = stats.t.ppf(0.975, stats.ttest_ind(a, b, equal_var=False).df)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((g - crit * se, g + crit * se), rel=1e-10)
    assert diff["multiplicity_scope"].iloc[0] == "bh over 452 tested features of this contrast"


def test_lincs_by_correction_matches_statsmodels(lincs, lincs_diff):
    by = differential(lincs, by="Metadata_broad_sample", case=BORTEZOMIB_LIKE, control="DMSO", padjust="by")
    np.testing.assert_allclose(by["q_value"], multipletests(lincs_diff["p_value"], method="fdr_by")[1], rtol=1e-12)
    assert by["significant"].sum() <= lincs_diff["significant"].sum()


def test_lincs_per_channel_counts(lincs_diff, capsys):
    enrichment = channel_enrichment(lincs_diff)
    assert enrichment["channel"].tolist() == ["DNA", "ER", "RNA", "AGP", "Mito"]
    # independent count: explode the parsed channels of the significant features
    sig = lincs_diff[lincs_diff["q_value"] < 0.05]
    per_channel = sig.assign(channel=sig["channels"]).explode("channel").dropna(subset=["channel"])
    expected = per_channel.drop_duplicates(["feature", "channel"]).groupby("channel").size()
    assert enrichment.set_index("channel")["n_significant"].to_dict() == expected.to_dict()
    # Fisher's exact test of one channel, rebuilt by hand
    with_channel = lincs_diff[lincs_diff["channels"].map(len) > 0]
    has_er = with_channel["channels"].map(lambda c: "ER" in c)
    table = [[int((has_er & with_channel["significant"]).sum()), int((has_er & ~with_channel["significant"]).sum())],
             [int((~has_er & with_channel["significant"]).sum()), int((~has_er & ~with_channel["significant"]).sum())]]
    odds = table[0][0] * table[1][1] / (table[0][1] * table[1][0])  # a description: no p-value
    er = enrichment.set_index("channel").loc["ER"]
    assert er["odds_ratio"] == pytest.approx(odds)
    assert "p_value" not in enrichment.columns and "q_value" not in enrichment.columns
    print("\nLINCS BRD-K50691590 vs DMSO, significant features per channel (q < 0.05):")
    print(enrichment[["channel", "n_features", "n_significant", "odds_ratio", "mean_abs_effect"]].to_string(index=False))
    assert enrichment["n_significant"].sum() >= 300  # a strong positive control


def test_compartment_channel_table_adds_up(lincs_diff):
    table = compartment_channel_table(lincs_diff)
    assert set(table["compartment"]) == {"Cells", "Cytoplasm", "Nuclei"}
    enrichment = channel_enrichment(lincs_diff).set_index("channel")
    stains = table[table["channel"] != "none"].groupby("channel")[["n_features", "n_significant"]].sum()
    assert stains["n_features"].to_dict() == enrichment["n_features"].to_dict()
    assert stains["n_significant"].to_dict() == enrichment["n_significant"].to_dict()
    assert table["n_features"].sum() >= len(lincs_diff)


def test_correlation_modes(lincs_diff):
    both = channel_enrichment(lincs_diff, correlation="both").set_index("channel")
    excluded = channel_enrichment(lincs_diff, correlation="exclude").set_index("channel")
    pair = channel_enrichment(lincs_diff, correlation="pair").set_index("channel")
    n_corr = int((lincs_diff["category"] == "Correlation").sum())
    assert both["n_features"].sum() - excluded["n_features"].sum() == 2 * n_corr
    assert pair.loc[["DNA", "ER", "RNA", "AGP", "Mito"], "n_features"].equals(excluded["n_features"])
    assert pair["n_features"].sum() == excluded["n_features"].sum() + n_corr
    assert all("~" in c for c in pair.index if c not in both.index)


def test_robust_z_normalisation_per_plate():
    rng = np.random.default_rng(1)
    rows = []
    for plate, shift in (("P1", 0.0), ("P2", 5.0)):
        for w in range(8):
            cls = "ctrl" if w < 4 else "trt"
            rows.append({"Metadata_Plate": plate, "Metadata_Well": f"A{w:02d}", "Metadata_Treatment": cls,
                         "Cells_Intensity_MeanIntensity_DNA": shift + rng.normal() + (1.0 if cls == "trt" else 0),
                         "Cells_AreaShape_Area": 100 + 10 * rng.normal()})
    df = pd.DataFrame(rows)
    from chanstat.cellprofiler.feature_tests import prepare

    prepared = prepare(df, "Metadata_Treatment", "trt", "ctrl", normalize="robust_z")
    f = "Cells_Intensity_MeanIntensity_DNA"
    expected = []
    for plate in ("P1", "P2"):
        part = df[df["Metadata_Plate"] == plate]
        ctrl = part.loc[part["Metadata_Treatment"] == "ctrl", f]
        med = ctrl.median()
        mad = (ctrl - med).abs().median() * 1.4826
        expected.extend(((part[f] - med) / mad).tolist())
    got = prepared.values[:, prepared.features.index(f)]
    order = prepared.units["Metadata_Plate"].astype(str) + prepared.units["Metadata_Well"].astype(str)
    ref = pd.Series(expected, index=(df["Metadata_Plate"] + df["Metadata_Well"]).to_numpy())
    np.testing.assert_allclose(got, ref.loc[order.to_numpy()].to_numpy(), rtol=1e-12)
    diff = differential(df, by="Metadata_Treatment", case="trt", control="ctrl", normalize="robust_z")
    assert set(diff["status"]) == {"tested"}


def test_constant_and_all_nan_features_are_reported():
    df = pd.DataFrame({
        "Metadata_Plate": "P", "Metadata_Well": [f"A{i}" for i in range(6)], "Metadata_Group": ["a"] * 3 + ["b"] * 3,
        "Cells_Intensity_MeanIntensity_DNA": [1.0, 2, 3, 4, 5, 7],
        "Cells_Intensity_MeanIntensity_ER": 3.0,
        "Cells_Intensity_MeanIntensity_RNA": np.nan,
        "Cells_Intensity_MeanIntensity_AGP": [1.0, np.nan, np.nan, 2, 3, 4],
        "Cells_Intensity_MeanIntensity_Mito": [1.0, np.nan, 2, 2, np.inf, 5],
    })
    diff = differential(df, by="Metadata_Group", case="b", control="a").set_index("feature")
    assert diff["status"].to_dict() == {
        "Cells_Intensity_MeanIntensity_DNA": "tested", "Cells_Intensity_MeanIntensity_ER": "constant",
        "Cells_Intensity_MeanIntensity_RNA": "all_nan", "Cells_Intensity_MeanIntensity_AGP": "too_few_values",
        "Cells_Intensity_MeanIntensity_Mito": "tested",
    }
    assert diff.loc[diff["status"] != "tested", "p_value"].isna().all()
    # NaN (and inf, treated as missing) dropped per feature, as scipy does on the remaining values
    mito = stats.ttest_ind([2.0, 5.0], [1.0, 2.0], equal_var=False)
    assert diff.loc["Cells_Intensity_MeanIntensity_Mito", "p_value"] == pytest.approx(mito.pvalue, rel=1e-12)
    assert diff.loc["Cells_Intensity_MeanIntensity_Mito", "n_case"] == 2
    # BH over the two tested features only
    p = diff.loc[diff["status"] == "tested", "p_value"]
    np.testing.assert_allclose(diff.loc[p.index, "q_value"], multipletests(p, method="fdr_bh")[1])


# ----------------------------------------------------------------------------- JUMP raw CSVs, cell level


def test_jump_reader_joins_compartments_with_prefixes(jump, shared_data):
    assert len(jump) == 89 + 36
    assert jump.groupby("Metadata_Well").size().to_dict() == {"A01": 89, "A02": 36}
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "Metadata_Folder"} <= set(jump.columns)
    non_meta = [c for c in jump.columns if not c.startswith("Metadata_")]
    prefixes = {c.split("_")[0] for c in non_meta}
    assert prefixes == {"Cells", "Cytoplasm", "Nuclei"}
    raw = pd.read_csv(shared_data / "jump_target2_BR00121431/A01/Cells.csv", nrows=0).columns
    assert sum(c.startswith("Cells_") for c in non_meta) == len(raw) - 2  # all but ImageNumber/ObjectNumber
    # the cytoplasm links its cell and its nucleus; values came along with the right object
    a01 = jump[jump["Metadata_Well"] == "A01"].sort_values("Metadata_ObjectNumber")
    cells = pd.read_csv(shared_data / "jump_target2_BR00121431/A01/Cells.csv").set_index("ObjectNumber")
    np.testing.assert_allclose(a01["Cells_AreaShape_Area"].to_numpy(),
                               cells.loc[a01["Cytoplasm_Parent_Cells"], "AreaShape_Area"].to_numpy())
    assert_every_object_feature_assigned(jump.columns)


def test_jump_cell_level_warns_one_well_per_condition(jump):
    with pytest.warns(UserWarning, match="only one well per condition"):
        diff = differential(jump, by="Metadata_Well", case="A01", control="A02", unit="cell")
    tested = diff[diff["status"] == "tested"]
    assert len(tested) > 5000
    assert set(diff.loc[diff["status"] != "tested", "status"]) <= {"constant", "all_nan", "too_few_values"}
    f = "Cells_Intensity_MeanIntensity_DNA"
    a, b = jump.loc[jump["Metadata_Well"] == "A01", f], jump.loc[jump["Metadata_Well"] == "A02", f]
    row = diff.set_index("feature").loc[f]
    assert row["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert row["mw_p_value"] == pytest.approx(stats.mannwhitneyu(a, b).pvalue, rel=1e-12)
    assert (row["n_case"], row["n_control"]) == (89, 36)
    enrichment = channel_enrichment(diff, channels=["DNA", "ER", "RNA", "AGP", "Mito"])
    assert enrichment["channel"].tolist() == ["DNA", "ER", "RNA", "AGP", "Mito"]
    # a DNA-Brightfield correlation still counts for DNA when Brightfield is left out
    n_dna = int(tested["channels"].map(lambda c: "DNA" in c).sum())
    assert enrichment.set_index("channel").loc["DNA", "n_features"] == n_dna
    with pytest.raises(ValueError, match="at least 2 wells per group"):
        differential(jump, by="Metadata_Well", case="A01", control="A02", unit="well")


# ----------------------------------------------------------------------------- SQLite and pediatric Parquet


def test_sqlite_read_and_parsed(shared_data):
    df = read(shared_data / "cell_health_sqlite/test-SQ00014613.sqlite")
    assert len(df) == 12
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_TableNumber", "Metadata_ImageNumber"} <= set(df.columns)
    assert set(df["Metadata_Well"]) == {"A01", "O18"}
    prefixes = {c.split("_")[0] for c in df.columns if not c.startswith("Metadata_")}
    assert prefixes == {"Cells", "Cytoplasm", "Nuclei"}
    objects = assert_every_object_feature_assigned(df.columns)
    assert set(objects["channels"].explode().dropna()) == {"DNA", "ER", "RNA", "AGP", "Mito"}
    wells = aggregate_wells(df)
    assert len(wells) == 2 and wells["Metadata_n_objects"].sum() == 12


def test_pediatric_parquet_read_and_parsed(shared_data):
    path = shared_data / "pediatric_atlas_BR00143976_C03_3/BR00143976_shrunken.parquet"
    df = read(path)
    assert df.shape == (5, 3021)
    assert df[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].iloc[0].astype(str).tolist() == ["BR00143976", "C03", "3"]
    objects = assert_every_object_feature_assigned(df.columns)
    tokens = set(objects["channel_tokens"].explode().dropna())
    assert {"CorrDNA", "CorrMito", "CorrBrightfield", "CorrBrightfild", "CorrBrightfld"} <= tokens
    assert set(objects["channels"].explode().dropna()) == STAINS_AND_BF
    # lazily aggregated in column chunks == aggregated in memory
    chunked = read(path, aggregate="well", chunk_columns=97)
    whole = aggregate_wells(df)
    assert chunked.shape == whole.shape
    feats = feature_columns(df.columns)
    np.testing.assert_allclose(chunked[feats].to_numpy(float), whole[feats].to_numpy(float), equal_nan=True)
    np.testing.assert_allclose(whole[feats].to_numpy(float)[0], np.nanmedian(df[feats].to_numpy(float), axis=0), equal_nan=True)


# ----------------------------------------------------------------------------- bad input


def _toy(n_per_group=3):
    rng = np.random.default_rng(0)
    n = 2 * n_per_group
    return pd.DataFrame({
        "Metadata_Plate": "P1", "Metadata_Well": [f"B{i:02d}" for i in range(n)],
        "Metadata_Treatment": ["dmso"] * n_per_group + ["drug"] * n_per_group,
        "Cells_Intensity_MeanIntensity_DNA": rng.normal(size=n),
        "Cells_Texture_Contrast_Mito_3_00_256": rng.normal(size=n),
    })


def test_bad_input_no_overlapping_features():
    with pytest.raises(ValueError, match="no overlapping features"):
        differential(_toy(), by="Metadata_Treatment", case="drug", control="dmso", features=["Nuclei_AreaShape_Area", "x"])
    with pytest.raises(ValueError, match="not columns of the table"):
        differential(_toy(), by="Metadata_Treatment", case="drug", control="dmso",
                     features=["Cells_Intensity_MeanIntensity_DNA", "Nuclei_AreaShape_Area"])
    with pytest.raises(ValueError, match="no CellProfiler feature columns"):
        differential(_toy()[["Metadata_Plate", "Metadata_Well", "Metadata_Treatment"]], by="Metadata_Treatment",
                     case="drug", control="dmso")


def test_bad_input_absent_group():
    with pytest.raises(ValueError, match=r"case group\(s\) \['aspirin'\] not found in column 'Metadata_Treatment'"):
        differential(_toy(), by="Metadata_Treatment", case="aspirin", control="dmso")
    with pytest.raises(ValueError, match="control group"):
        differential(_toy(), by="Metadata_Treatment", case="drug", control="water")
    with pytest.raises(ValueError, match="not in the table"):
        differential(_toy(), by="Metadata_Compound", case="drug", control="dmso")
    with pytest.raises(ValueError, match="both case and control"):
        differential(_toy(), by="Metadata_Treatment", case="drug", control=["dmso", "drug"])


def test_bad_input_non_numeric_features():
    df = _toy()
    df["Cells_Intensity_MeanIntensity_DNA"] = ["1.0", "2.0", "n/a", "4", "5", "6"]
    with pytest.raises(ValueError, match="not numeric.*Cells_Intensity_MeanIntensity_DNA"):
        differential(df, by="Metadata_Treatment", case="drug", control="dmso")


def test_bad_input_duplicate_columns(tmp_path):
    df = _toy()
    dup = pd.concat([df, df[["Cells_Intensity_MeanIntensity_DNA"]]], axis=1)
    with pytest.raises(ValueError, match="duplicate column names.*Cells_Intensity_MeanIntensity_DNA"):
        differential(dup, by="Metadata_Treatment", case="drug", control="dmso")
    path = tmp_path / "profiles.csv"
    path.write_text("Metadata_Well,Cells_AreaShape_Area,Cells_AreaShape_Area\nA01,1,2\n")
    with pytest.raises(ValueError, match="duplicate column names"):
        read(path)


def test_bad_input_other():
    with pytest.raises(ValueError, match="at least 2 wells"):
        differential(_toy(1), by="Metadata_Treatment", case="drug", control="dmso")
    with pytest.raises(ValueError, match="unit must be"):
        differential(_toy(), by="Metadata_Treatment", case="drug", control="dmso", unit="plate")
    with pytest.raises(ValueError, match="padjust over features must be"):
        differential(_toy(), by="Metadata_Treatment", case="drug", control="dmso", padjust="bonferroni")
    with pytest.raises(FileNotFoundError):
        read("/nonexistent/table.parquet")
    mixed = _toy()
    mixed.loc[0, "Metadata_Well"] = mixed.loc[5, "Metadata_Well"]  # one well holds both groups
    with pytest.raises(ValueError, match="both case and control rows"):
        differential(mixed, by="Metadata_Treatment", case="drug", control="dmso")


# ----------------------------------------------------------------------------- competitive enrichment


def _correlated_channels(effects, seed=3, n_wells=16, per_channel=20):
    rng = np.random.default_rng(seed)
    treated = np.repeat([0, 1], n_wells // 2)
    data = {"Metadata_Plate": np.tile(["P1", "P2"], n_wells // 2),
            "Metadata_Well": [f"C{i:02d}" for i in range(n_wells)],
            "Metadata_Treatment": np.where(treated == 1, "drug", "dmso")}
    for channel in ("DNA", "ER", "RNA", "Mito"):
        shared = rng.normal(size=n_wells)  # correlated features within a channel (r ~ 0.36)
        for k in range(per_channel):
            x = 0.6 * shared + 0.8 * rng.normal(size=n_wells) + effects.get(channel, 0.0) * treated
            data[f"Cells_Texture_Entropy_{channel}_{k + 1}_00_256"] = x
    return pd.DataFrame(data)


def test_competitive_enrichment_finds_planted_channel_not_a_global_shift():
    planted = competitive_enrichment(_correlated_channels({"Mito": 2.0}), by="Metadata_Treatment", case="drug",
                                     control="dmso", n_perm=299, seed=0).set_index("channel")
    assert planted.loc["Mito", "p_adj"] < 0.05 and planted.loc["Mito", "enriched"]
    assert not planted.drop(index="Mito")["enriched"].any()
    assert (planted["p_adj_method"] == "holm").all() and (planted["n_perm"] == 299).all()
    # the same shift in every channel: no channel is singled out
    shifted = competitive_enrichment(_correlated_channels({c: 2.0 for c in ("DNA", "ER", "RNA", "Mito")}),
                                     by="Metadata_Treatment", case="drug", control="dmso", n_perm=299, seed=0)
    assert not shifted["enriched"].any()
    # normalisation recomputed per permutation gives a valid p-value too
    normed = competitive_enrichment(_correlated_channels({"Mito": 2.0}), by="Metadata_Treatment", case="drug",
                                    control="dmso", normalize="robust_z", n_perm=199, seed=0).set_index("channel")
    assert normed.loc["Mito", "p_value"] < 0.05 and normed.loc["DNA", "p_value"] > 0.5


def test_channel_score_draws_feed_concordance():
    df = _correlated_channels({"Mito": 2.0})
    draws = channel_score_draws(df, by="Metadata_Treatment", case="drug", control="dmso", n_boot=50, seed=0)
    assert len(draws) == 50 * 4 and set(draws["channel"]) == {"DNA", "ER", "RNA", "Mito"}
    diff = differential(df, by="Metadata_Treatment", case="drug", control="dmso")
    observed = channel_enrichment(diff).set_index("channel")["mean_abs_effect"]
    centre = draws.groupby("channel")["mean_abs_effect"].median()
    assert centre.idxmax() == observed.idxmax() == "Mito"
    mass = pd.concat([_channel_mass(["DNA", "ER", "RNA", "Mito", "AGP"]).query("channel != 'AGP'")])
    out = concordance(mass, channel_enrichment(diff), n_boot=50, feature_draws=draws)
    assert (out["resampled"] == "both").all() and out["ci_low"].notna().all()


def _lincs_dmso_arrays(lincs):
    from chanstat.cellprofiler.enrichment import channel_incidence, feature_channels

    dmso = lincs[lincs["Metadata_broad_sample"] == "DMSO"].reset_index(drop=True)
    features = feature_columns(dmso.columns)
    rows, _, incidence = channel_incidence(feature_channels(parse_features(features)[["feature", "channels"]]))
    return dmso[features].to_numpy(float)[:, rows], incidence


def _false_call_rate(lincs, kind, n_sims, n_perm, seed=1):
    """LINCS DMSO wells split 12 v 12; a +1 SD shift on every feature ("global") or along a random
    latent factor drawn with the real feature correlation ("latent"); false call = any channel p_adj < .05."""
    from chanstat.cellprofiler.enrichment import competitive_test
    from chanstat.stats.padjust import adjust

    x, incidence = _lincs_dmso_arrays(lincs)
    centred, sd = x - x.mean(axis=0), x.std(axis=0, ddof=1)
    rng = np.random.default_rng(seed)
    calls = 0
    for s in range(n_sims):
        is_case = np.zeros(len(x), bool)
        is_case[rng.choice(len(x), len(x) // 2, replace=False)] = True
        if kind == "global":
            shift = sd
        else:
            z = rng.standard_normal(len(x)) @ centred / np.sqrt(len(x) - 1)
            shift = z / np.sqrt(np.mean((z / sd) ** 2))
        _, _, _, p = competitive_test(x + is_case[:, None] * shift, is_case, incidence, n_perm=n_perm, seed=s)
        calls += bool((adjust(p, "holm") < 0.05).any())
    return calls / n_sims


def test_enrichment_false_calls_under_correlated_global_shift_small(lincs):
    """Small seeded version (default suite): at most 2 false calls in 30 splits.

    199 permutations: the smallest p is 1/200, so Holm over 5 channels can reach 0.025 (with
    99 permutations it could not reach 0.05 at all and the test would be vacuous).
    """
    assert _false_call_rate(lincs, "global", n_sims=30, n_perm=199) <= 2 / 30


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["global", "latent"])
def test_enrichment_false_call_rate_with_real_lincs_correlation(lincs, kind):
    """Issue 16: false-call rate <= 0.07 (measured: global 0.06, latent 0.01 in 100 splits)."""
    assert _false_call_rate(lincs, kind, n_sims=200, n_perm=199) <= 0.07


def test_lincs_proteasome_inhibitor_competitive_enrichment(lincs, capsys):
    """What the valid test finds on the positive control: every channel changes, none more than the rest."""
    out = competitive_enrichment(lincs, by="Metadata_broad_sample", case=BORTEZOMIB_LIKE, control="DMSO",
                                 n_perm=499, seed=0)
    print("\n" + out.drop(columns=["multiplicity_scope"]).to_string(index=False))
    assert out["channel"].tolist() == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert not out["enriched"].any() and out["p_value"].min() > 0.01


def test_hedges_interval_covers_with_unequal_variances():
    """Variance ratio 3.4 (the LINCS median), 12 case v 24 control: >= 93 % coverage of the true g."""
    from chanstat.cellprofiler import hedges_g

    rng = np.random.default_rng(0)
    n1, n2, sd1, sd2, delta = 12, 24, np.sqrt(3.4), 1.0, 1.0
    true = delta / np.sqrt(((n1 - 1) * sd1**2 + (n2 - 1) * sd2**2) / (n1 + n2 - 2))
    case = delta + sd1 * rng.standard_normal((n1, 4000))
    ctrl = sd2 * rng.standard_normal((n2, 4000))
    _, lo, hi = hedges_g(case, ctrl)
    coverage = np.mean((lo <= true) & (true <= hi))
    assert 0.93 <= coverage <= 0.975, coverage


# ----------------------------------------------------------------------------- concordance


def test_rank_statistics_match_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 6).astype(float), rng.normal(size=6)  # ties in x
        if np.ptp(x) == 0:
            continue
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def _channel_mass(order, n_wells=8, noise=0.02, seed=0, method="d_ig"):
    rng = np.random.default_rng(seed)
    channels = ["DNA", "ER", "RNA", "AGP", "Mito"]
    base = np.array([order.index(c) for c in channels], float)  # larger = more attribution
    rows = []
    for w in range(n_wells):
        for s in range(3):
            share = np.exp(base + rng.normal(0, noise, 5))
            share /= share.sum()
            for c, v in zip(channels, share):
                rows.append(dict(sample=w * 3 + s, method=method, channel=c, mass=v, share=v,
                                 Metadata_Plate="P1", Metadata_Well=f"D{w:02d}"))
    return pd.DataFrame(rows)


def test_concordance_exact_permutation_and_bootstrap():
    enrichment = pd.DataFrame({"channel": ["DNA", "ER", "RNA", "AGP", "Mito"],
                               "mean_abs_effect": [0.1, 0.2, 0.3, 0.4, 2.0], "p_value": [0.5] * 5})
    agree = _channel_mass(["DNA", "ER", "RNA", "AGP", "Mito"])
    reverse = _channel_mass(["Mito", "AGP", "RNA", "ER", "DNA"], method="reversed")
    table = concordance(pd.concat([agree, reverse]), enrichment, n_boot=200).set_index(["method", "statistic"])
    tau = table.loc[("d_ig", "kendall_tau")]
    assert tau["estimate"] == pytest.approx(1.0) and tau["exact"] and tau["n_orderings"] == 120
    assert tau["p_value"] == pytest.approx(1 / 120)  # only the identity ordering is as extreme
    assert table.loc[("d_ig", "spearman_rho"), "p_value"] == pytest.approx(1 / 120)
    assert tau["ci_low"] == pytest.approx(1.0)  # tiny noise: every resample keeps the ranking
    assert table.loc[("reversed", "kendall_tau"), "estimate"] == pytest.approx(-1.0)
    assert table.loc[("reversed", "kendall_tau"), "p_value"] == pytest.approx(1.0)
    assert tau["attribution_rank_Mito"] == 1 and tau["feature_rank_Mito"] == 1 and tau["feature_rank_DNA"] == 5
    # the exact p-value is the fraction of the 120 orderings at least as concordant
    a = np.arange(5, dtype=float)
    null = [stats.kendalltau(a, np.array(p)).statistic for p in itertools.permutations(range(5))]
    observed = stats.kendalltau(a, [0, 1, 2, 4, 3]).statistic
    enrichment2 = enrichment.assign(mean_abs_effect=[0.1, 0.2, 0.3, 2.0, 0.4])
    t2 = concordance(agree, enrichment2, n_boot=0).set_index("statistic").loc["kendall_tau"]
    assert t2["estimate"] == pytest.approx(observed)
    assert t2["p_value"] == pytest.approx(np.mean(np.array(null) >= observed - 1e-12))
    ranks = channel_ranks(agree, enrichment)
    assert ranks.set_index("channel")["attribution_rank"].to_dict() == {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}
    # what 5 ranks can show: smallest p 1/120, p < .05 needs tau >= 0.8 (at most one swap: 1 + 4 orderings)
    assert tau["min_p_value"] == pytest.approx(1 / 120) and tau["critical_estimate"] == pytest.approx(0.8)
    assert "0.00833" in tau["note"] and tau["resampled"] == "attribution only"
    three = concordance(agree[agree["channel"].isin(["DNA", "ER", "Mito"])], enrichment, n_boot=0)
    np.testing.assert_allclose(three["min_p_value"], 1 / 6)
    assert "no agreement can be significant" in three["note"].iloc[0]


def test_concordance_resamples_both_sides_and_finer_grain():
    enrichment = pd.DataFrame({"channel": ["DNA", "ER", "RNA", "AGP", "Mito"], "mean_abs_effect": [0.1, 0.2, 0.3, 0.4, 2.0]})
    agree = _channel_mass(["DNA", "ER", "RNA", "AGP", "Mito"])
    rng = np.random.default_rng(0)
    draws = pd.DataFrame([{"draw": b, "channel": c, "mean_abs_effect": v + rng.normal(0, 0.5)}
                          for b in range(200) for c, v in zip(enrichment["channel"], enrichment["mean_abs_effect"])])
    both = concordance(agree, enrichment, n_boot=200, feature_draws=draws).set_index("statistic").loc["kendall_tau"]
    fixed = concordance(agree, enrichment, n_boot=200).set_index("statistic").loc["kendall_tau"]
    assert both["resampled"] == "both" and fixed["ci_low"] == pytest.approx(1.0) and both["ci_low"] < 1.0
    # compartment x channel rows in both tables: ranks over 10 cells
    fine_mass = pd.concat([agree.assign(compartment="Cells"), agree.assign(compartment="Nuclei", share=agree["share"] * 0.5)])
    fine_enr = pd.concat([enrichment.assign(compartment="Cells"),
                          enrichment.assign(compartment="Nuclei", mean_abs_effect=enrichment["mean_abs_effect"] * 0.5)])
    fine = concordance(fine_mass, fine_enr, n_boot=0).set_index("statistic").loc["kendall_tau"]
    assert fine["grain"] == "compartment x channel" and fine["n_channels"] == 10 and fine["estimate"] > 0.8
    assert fine["p_value"] < 0.001 and not fine["exact"]


def test_concordance_bad_input():
    enrichment = pd.DataFrame({"channel": ["DNA", "Mito"], "mean_abs_effect": [0.1, 1.0]})
    with pytest.raises(ValueError, match="at least 3 channels"):
        concordance(_channel_mass(["DNA", "ER", "RNA", "AGP", "Mito"]), enrichment)
    with pytest.raises(ValueError, match="lacks columns"):
        concordance(pd.DataFrame({"method": [], "channel": []}), enrichment)


# ----------------------------------------------------------------------------- cp-measure on synthetic images


@pytest.fixture(scope="module")
def measured(tiny_synthetic):
    from chanstat.cellprofiler import measure_synthetic

    return measure_synthetic(tiny_synthetic)


def test_measure_synthetic_names_and_planted_mito_effect(measured, tiny_synthetic):
    assert len(measured) == int(sum(len(np.unique(lab[lab > 0])) for lab in tiny_synthetic.objects["cells"]))
    features = feature_columns(measured.columns)
    parsed = parse_features(features)
    assert set(parsed["compartment"]) == {"Nuclei", "Cells", "Cytoplasm"}
    assert {"Intensity", "Texture", "Granularity", "Correlation", "AreaShape"} <= set(parsed["category"])
    channel_rows = parsed[parsed["category"].isin(CHANNEL_CATEGORIES)]
    assert channel_rows["known_channels"].all() and (channel_rows["n_channels"] >= 1).all()
    assert set(channel_rows["channels"].explode()) == set(tiny_synthetic.channels)
    # CellProfiler's own mean intensity, recomputed by hand for one cell
    row = measured.iloc[0]
    image, cell = int(row["Metadata_ImageNumber"]), int(row["Metadata_ObjectNumber"])
    mask = tiny_synthetic.objects["cells"][image] == cell
    mito = np.asarray(tiny_synthetic.images)[image, tiny_synthetic.channels.index("Mito")]
    assert row["Cells_Intensity_MeanIntensity_Mito"] == pytest.approx(float(mito[mask].mean()), rel=1e-5)
    # the planted Mito phenotype makes Mito the enriched channel
    diff = differential(measured, by="Metadata_Class", case="treated", control="control")
    enrichment = channel_enrichment(diff).set_index("channel")
    assert enrichment["odds_ratio"].idxmax() == "Mito"
    assert enrichment["mean_abs_effect"].idxmax() == "Mito"


def test_stage_writes_run_files(tmp_path, tiny_synthetic):
    from chanstat.cellprofiler.stage import STAGE, CellProfilerConfig
    from chanstat.context import RunContext
    from chanstat.rundir import RunDirectory

    rng = np.random.default_rng(0)
    n, channels = len(tiny_synthetic), list(tiny_synthetic.channels)
    share = rng.dirichlet([1, 1, 1, 1, 6], size=n)
    mass = pd.DataFrame({"sample": np.repeat(np.arange(n), 5), "method": "d_ig", "channel": np.tile(channels, n),
                         "mass": share.ravel(), "share": share.ravel()})
    mass = pd.concat([mass, tiny_synthetic.meta.loc[np.repeat(np.arange(n), 5)].reset_index(drop=True)], axis=1)
    section = CellProfilerConfig(n_perm=199, n_boot=50).model_dump()
    ctx = RunContext(config={"cellprofiler": section}, run=RunDirectory(tmp_path, create=True), progress=False,
                     results={"dataset": tiny_synthetic, "channel_mass": mass})
    outputs, info = STAGE.whole_set(ctx, {})
    assert set(outputs) == {"cp_features", "cp_differential", "channel_enrichment", "compartment_channel", "concordance",
                            "concordance_ranks"}
    wells = outputs["cp_features"]
    assert len(wells) == tiny_synthetic.meta[["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0]
    diff = outputs["cp_differential"]
    assert {"feature", "compartment", "category", "channels", "statistic", "p_value", "q_value", "effect_size"} <= set(diff.columns)
    enrichment = outputs["channel_enrichment"].set_index("channel")
    # descriptive odds ratios and the valid competitive test side by side; only Mito's features differ
    assert {"n_features", "n_significant", "odds_ratio", "mean_abs_effect", "p_value", "p_adj", "enriched",
            "n_features_competitive"} <= set(enrichment.columns)
    assert enrichment["odds_ratio"].idxmax() == "Mito" and enrichment["statistic"].idxmax() == "Mito"
    assert info["enriched_channels"] in ([], ["Mito"])  # 6 wells per class: power, not a known answer
    conc = outputs["concordance"]
    assert {"method", "statistic", "p_value", "estimate", "ci_low", "ci_high", "resampled", "note"} <= set(conc.columns)
    assert set(conc["resampled"]) == {"both"}
    assert set(conc["statistic"]) == {"kendall_tau", "spearman_rho"}


def test_cli_diff(tmp_path, shared_data, capsys):
    from chanstat.cli import main

    code = main(["cellprofiler", "diff", str(shared_data / LINCS), "--by", "Metadata_broad_sample", "--case",
                 BORTEZOMIB_LIKE, "--control", "DMSO", "--out", str(tmp_path), "--fdr", "by"])
    assert code == 0
    diff = pd.read_parquet(tmp_path / "cp_differential.parquet")
    enrichment = pd.read_parquet(tmp_path / "channel_enrichment.parquet")
    assert len(diff) == 452 and enrichment["channel"].tolist() == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert "significant" in capsys.readouterr().out
    assert main(["cellprofiler", "diff", str(shared_data / LINCS), "--by", "Metadata_broad_sample", "--case",
                 "nope", "--control", "DMSO", "--out", str(tmp_path / "x")]) == 2


def test_quick_demo_run_has_cellprofiler_outputs(quick_run):
    for name in ("cp_features", "cp_differential", "channel_enrichment", "compartment_channel"):
        assert (quick_run / f"{name}.parquet").exists(), name
    enrichment = pd.read_parquet(quick_run / "channel_enrichment.parquet").set_index("channel")
    assert enrichment["odds_ratio"].idxmax() == "Mito"  # the demo plants a Mito phenotype
    conc = pd.read_parquet(quick_run / "concordance.parquet")
    assert {"method", "statistic", "p_value", "note"} <= set(conc.columns)
    assert conc["p_value"].between(1 / 120 - 1e-12, 1).all()  # 5 ranks: the smallest attainable p is 1/120


def test_sqlite_per_image_per_object_layout(tmp_path):
    import sqlite3

    path = tmp_path / "export.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE MyExpt_Per_Image (ImageNumber INTEGER, Image_Metadata_Plate TEXT, Image_Metadata_Well TEXT, "
                    "Image_Count_Cells INTEGER)")
        con.execute("CREATE TABLE MyExpt_Per_Object (ImageNumber INTEGER, ObjectNumber INTEGER, Cells_AreaShape_Area REAL, "
                    "Nuclei_Intensity_MeanIntensity_OrigDNA REAL)")
        con.executemany("INSERT INTO MyExpt_Per_Image VALUES (?, ?, ?, ?)", [(1, "P1", "A01", 2), (2, "P1", "A02", 1)])
        con.executemany("INSERT INTO MyExpt_Per_Object VALUES (?, ?, ?, ?)",
                        [(1, 1, 100.0, 0.5), (1, 2, 120.0, "nan"), (2, 1, 90.0, 0.7)])
    df = read(path)
    assert df.columns.tolist() == ["Metadata_ImageNumber", "Metadata_ObjectNumber", "Metadata_Plate", "Metadata_Well",
                                   "Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_OrigDNA"]
    assert df["Metadata_Well"].tolist() == ["A01", "A01", "A02"]
    assert np.isnan(df["Nuclei_Intensity_MeanIntensity_OrigDNA"].iloc[1])  # the text 'nan' became a number
    assert read(path, image_columns="all")["Image_Count_Cells"].tolist() == [2, 2, 1]
