"""chanstat.stats: every statistic against an independent computation, units, errors, calibration."""
from __future__ import annotations

import subprocess
import sys
from itertools import combinations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import scipy.stats as sps
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

from chanstat import stats as cs
from chanstat.stats import inference

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
WELL = ["Metadata_Plate", "Metadata_Well"]


# ---------------------------------------------------------------- helpers


def well_means(table: pd.DataFrame, value: str = "share") -> pd.DataFrame:
    """Wide (well x channel) table of mean values, computed with plain pandas."""
    wide = table.groupby(WELL + ["channel"], observed=True)[value].mean().unstack("channel")
    return wide[[c for c in CHANNELS if c in wide.columns]]


def clr_pandas(wide: pd.DataFrame) -> pd.DataFrame:
    logs = np.log(wide.div(wide.sum(axis=1), axis=0))
    return logs.sub(logs.mean(axis=1), axis=0)


def long_of(wide: pd.DataFrame, name: str) -> pd.DataFrame:
    out = wide.copy()
    out.index = [f"u{i}" for i in range(len(out))]
    return out.rename_axis("unit").reset_index().melt(id_vars="unit", var_name="channel", value_name=name)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """Fixed simulated channel-mass table: 2 plates x 6 wells x 5 images, Mito raised."""
    return cs.simulate_channel_mass(n_plates=2, wells_per_plate=6, images_per_well=5, effect=1.0, seed=11)


@pytest.fixture(scope="module")
def result(table) -> pd.DataFrame:
    return cs.test_channels(table, tests=cs.DEFAULT_TESTS + ("friedman", "rm_anova", "wilcoxon", "mixedlm", "paired_t"), seed=0)


def pooled(result: pd.DataFrame, test: str) -> pd.DataFrame:
    return result[(result["test"] == test) & (result["transition"] == "all")]


# ---------------------------------------------------------------- torch independence


def test_stats_never_imports_torch():
    code = (
        "import sys; import chanstat.stats, chanstat.stats.stage, chanstat.stats.channel_tests; "
        "import chanstat.stats.similarity, chanstat.stats.strategies, chanstat.stats.simulate; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- channel mass


def _meta(n: int, counterfactual: bool = True) -> pd.DataFrame:
    meta = pd.DataFrame(
        {
            "Metadata_Plate": ["P1"] * n,
            "Metadata_Well": [f"W{i // 2}" for i in range(n)],
            "Metadata_Site": [i % 2 for i in range(n)],
            "Metadata_Class": ["control" if i < n // 2 else "treated" for i in range(n)],
        }
    )
    if counterfactual:
        meta["Metadata_Counterfactual_Class"] = ["treated" if i < n // 2 else "control" for i in range(n)]
    return meta


def test_channel_mass_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    out = cs.channel_mass(a, ["A", "B", "C"], _meta(4), method="ig")
    assert len(out) == 12
    assert list(out.columns[:5]) == ["sample", "method", "channel", "mass", "share"]
    expected = np.abs(a.astype(np.float64)).sum(axis=(2, 3))
    np.testing.assert_allclose(out["mass"].to_numpy().reshape(4, 3), expected, rtol=1e-6)
    np.testing.assert_allclose(out["share"].to_numpy().reshape(4, 3), expected / expected.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(out.groupby("sample")["share"].sum(), 1.0)
    assert out["transition"].iloc[0] == "control → treated" and out["transition"].iloc[-1] == "treated → control"
    assert (out["Metadata_Well"].to_numpy()[::3] == ["W0", "W0", "W1", "W1"]).all()
    assert set(out["method"]) == {"ig"}

    positive = cs.channel_mass(a, ["A", "B", "C"], _meta(4), transform="positive")
    np.testing.assert_allclose(positive["mass"].to_numpy().reshape(4, 3), np.maximum(a, 0).astype(np.float64).sum(axis=(2, 3)), rtol=1e-6)
    assert set(positive["method"]) == {"attribution"}

    both = cs.channel_mass({"ig": a, "dl": 2 * a}, ["A", "B", "C"], _meta(4))
    assert both.groupby("method").size().to_dict() == {"dl": 12, "ig": 12}
    np.testing.assert_allclose(both.loc[both.method == "dl", "share"].to_numpy(), out["share"].to_numpy(), rtol=1e-6)

    no_cf = cs.channel_mass(a, ["A", "B", "C"], _meta(4, counterfactual=False))
    assert no_cf["transition"].isna().all()


def test_channel_mass_errors():
    a = np.ones((4, 3, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="channel-agnostic"):
        cs.channel_mass(np.ones((4, 1, 2, 2)), ["A"], _meta(4))
    with pytest.raises(ValueError, match="2 channel names given for 3"):
        cs.channel_mass(a, ["A", "B"], _meta(4))
    with pytest.raises(KeyError, match="Metadata_Well"):
        cs.channel_mass(a, ["A", "B", "C"], _meta(4).drop(columns="Metadata_Well"))
    with pytest.raises(ValueError, match="3 rows but the attributions hold 4"):
        cs.channel_mass(a, ["A", "B", "C"], _meta(3))
    bad = a.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cs.channel_mass(bad, ["A", "B", "C"], _meta(4))
    zero = a.copy()
    zero[1] = 0
    with pytest.warns(UserWarning, match="zero total attribution mass"):
        out = cs.channel_mass(zero, ["A", "B", "C"], _meta(4))
    assert out.loc[out["sample"] == 1, "share"].isna().all()
    with pytest.warns(UserWarning, match="dropped 1 image"):
        cs.test_channels(out, unit="image")


# ---------------------------------------------------------------- compositional transforms


def test_clr_ilr_and_zero_replacement():
    x = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    c = cs.clr(x)
    np.testing.assert_allclose(c, np.log(x) - np.log(x).mean(axis=1, keepdims=True))
    np.testing.assert_allclose(c.sum(axis=1), 0, atol=1e-12)
    basis = cs.ilr_basis(5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(basis.sum(axis=0), 0, atol=1e-12)
    y = np.random.default_rng(1).dirichlet(np.ones(5), size=7)
    np.testing.assert_allclose(cs.ilr(y) @ basis.T, cs.clr(y), atol=1e-12)
    # zeros: replaced by delta, non-zero ratios kept
    z = cs.multiplicative_replacement(np.array([[0.0, 0.25, 0.75]]), delta=0.01)
    np.testing.assert_allclose(z, [[0.01, 0.2475, 0.7425]])
    assert np.isfinite(cs.clr(np.array([[0.0, 0.4, 0.6]]))).all()
    with pytest.raises(ValueError, match="negative"):
        cs.clr(np.array([[-0.1, 0.5, 0.6]]))
    # table form equals the array form
    tab = pd.DataFrame({"sample": np.repeat([0, 1], 3), "channel": list("abc") * 2, "share": x.ravel()})
    out = cs.clr(tab)
    np.testing.assert_allclose(out["clr"].to_numpy().reshape(2, 3), c)


# ---------------------------------------------------------------- statistics vs scipy / pingouin / statsmodels


def test_friedman_matches_scipy_and_pingouin():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 5))
    x[2, 1] = x[2, 3]  # a tie
    x[4, :3] = 7.0  # a triple tie
    res = inference.friedman(x)
    ref = sps.friedmanchisquare(*x.T)
    assert res.q == pytest.approx(ref.statistic, rel=1e-10)
    assert res.p_chisq == pytest.approx(ref.pvalue, rel=1e-10)
    wide = pd.DataFrame(x, columns=CHANNELS)
    chisq = pg.friedman(wide)
    assert res.kendall_w == pytest.approx(chisq["W"].iloc[0], rel=1e-10)
    f = pg.friedman(wide, method="f")
    assert res.f == pytest.approx(f["F"].iloc[0], rel=1e-10)
    assert res.df1 == pytest.approx(f["ddof1"].iloc[0]) and res.df2 == pytest.approx(f["ddof2"].iloc[0])
    assert res.p_f == pytest.approx(f["p_unc"].iloc[0], rel=1e-10)
    # batched form = one call per data set
    batch = rng.normal(size=(6, 9, 5))
    np.testing.assert_allclose(inference.friedman(batch).p_f, [inference.friedman(b).p_f for b in batch])


def test_rm_anova_matches_pingouin():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(10, 4)) * [1.0, 2.0, 0.5, 1.5] + [0, 0.5, 0.2, 0.1] + rng.normal(size=(10, 1))
    res = inference.rm_anova(y)
    long = long_of(pd.DataFrame(y, columns=list("abcd")), "y")
    ref = pg.rm_anova(long, dv="y", within="channel", subject="unit", correction=True, detailed=True)
    row = ref[ref["Source"] == "channel"].iloc[0]
    assert res.f == pytest.approx(row["F"], rel=1e-8)
    assert res.p == pytest.approx(row["p_unc"], rel=1e-8)
    assert res.p_gg == pytest.approx(row["p_GG_corr"], rel=1e-8)
    assert res.eps_gg == pytest.approx(row["eps"], rel=1e-8)
    assert res.generalized_eta_squared == pytest.approx(row["ng2"], rel=1e-8)
    assert res.mauchly_w == pytest.approx(row["W_spher"], rel=1e-8)
    assert res.mauchly_p == pytest.approx(row["p_spher"], rel=1e-8)
    spher = pg.sphericity(long, dv="y", within="channel", subject="unit")
    assert res.mauchly_chi2 == pytest.approx(spher.chi2, rel=1e-8)


def test_adjustments_match_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.001, 0.5])
    ok = ~np.isnan(p)
    for name, ours in (("holm", inference.adjust_holm), ("fdr_bh", inference.adjust_bh)):
        expected = multipletests(p[ok], method=name)[1]
        got = ours(p)
        np.testing.assert_allclose(got[ok], expected, rtol=1e-12)
        assert np.isnan(got[~ok]).all()


def test_omnibus_rows_match_direct_computation(table, result):
    wide = well_means(table)
    assert len(wide) == 12
    primary = result[result["primary"]]
    assert len(primary) == 1 and primary["test"].iloc[0] == "dominance"
    dom = primary.iloc[0]
    row = pooled(result, "friedman_f").iloc[0]
    assert row["role"] == "secondary"
    assert row["unit"] == "well" and row["n_units"] == 12 and row["n_samples"] == 60

    f = pg.friedman(wide, method="f")
    assert row["statistic"] == pytest.approx(f["F"].iloc[0], rel=1e-10)
    assert row["p_value"] == pytest.approx(f["p_unc"].iloc[0], rel=1e-10)
    assert row["effect_size"] == pytest.approx(f["W"].iloc[0], rel=1e-10)

    chisq = pooled(result, "friedman").iloc[0]
    ref = sps.friedmanchisquare(*wide.to_numpy().T)
    assert chisq["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert chisq["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)

    rm = pooled(result, "rm_anova").iloc[0]
    ref = pg.rm_anova(long_of(clr_pandas(wide), "clr"), dv="clr", within="channel", subject="unit", correction=True, detailed=True)
    ref = ref[ref["Source"] == "channel"].iloc[0]
    assert rm["statistic"] == pytest.approx(ref["F"], rel=1e-8)
    assert rm["p_value"] == pytest.approx(ref["p_GG_corr"], rel=1e-8)
    assert rm["df1"] == pytest.approx(4 * ref["eps"], rel=1e-8)

    # dominance: intersection-union of paired t on well means, candidate = largest mean here
    means = wide.mean()
    assert dom["channel_a"] == means.idxmax() == "Mito"
    expected = max(sps.ttest_rel(wide["Mito"], wide[c]).pvalue for c in CHANNELS if c != "Mito")
    assert dom["p_value"] == pytest.approx(expected, rel=1e-10)
    assert dom["dominant_channel"] == ("Mito" if expected < 0.05 else "none")


def test_pairwise_rows_match_pingouin(table, result):
    wide = well_means(table)
    long = long_of(wide, "share")
    wil = pooled(result, "wilcoxon").set_index("contrast")
    assert len(wil) == 10
    ref = pg.pairwise_tests(long, dv="share", within="channel", subject="unit", parametric=False, padjust="holm")
    for r in ref.itertuples(index=False):
        a, b = r.A, r.B
        ours = wil.loc[f"{a} - {b}"] if f"{a} - {b}" in wil.index else wil.loc[f"{b} - {a}"]
        assert ours["p_value"] == pytest.approx(r.p_unc, rel=1e-10)
        assert ours["p_adj"] == pytest.approx(r.p_corr, rel=1e-10)
    for a, b in combinations(CHANNELS, 2):
        ours = wil.loc[f"{a} - {b}"]
        single = pg.wilcoxon(wide[a], wide[b])
        assert ours["statistic"] == pytest.approx(single["W_val"].iloc[0])
        assert ours["effect_size"] == pytest.approx(single["RBC"].iloc[0], rel=1e-10)
        assert ours["estimate"] == pytest.approx((wide[a] - wide[b]).mean())
    bh = pg.pairwise_tests(long, dv="share", within="channel", subject="unit", parametric=False, padjust="fdr_bh")
    np.testing.assert_allclose(np.sort(wil["q_value"].to_numpy()), np.sort(bh["p_corr"].to_numpy()), rtol=1e-10)

    tt = pooled(result, "paired_t").set_index("contrast")
    clr_wide = clr_pandas(wide)
    for a, b in combinations(CHANNELS, 2):
        ref = pg.ttest(clr_wide[a], clr_wide[b], paired=True)
        ours = tt.loc[f"{a} - {b}"]
        assert ours["statistic"] == pytest.approx(ref["T"].iloc[0], rel=1e-8)
        assert ours["p_value"] == pytest.approx(ref["p_val"].iloc[0], rel=1e-8)
        d = clr_wide[a] - clr_wide[b]
        assert ours["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-8)


def test_mixedlm_row_matches_statsmodels(table, result):
    row = pooled(result, "mixedlm").iloc[0]
    assert row["unit"] == "image (well random)" and "NOT CONVERGED" not in row["note"]
    # independent construction: closed shares -> ILR with a Helmert basis -> long table
    wide = table.pivot_table(index=["sample", *WELL], columns="channel", values="share", observed=True)[CHANNELS]
    logs = np.log(wide.to_numpy())
    clr_values = logs - logs.mean(axis=1, keepdims=True)
    helmert = np.zeros((5, 4))
    for j in range(1, 5):
        helmert[:j, j - 1] = np.sqrt(j / (j + 1)) / j
        helmert[j, j - 1] = -np.sqrt(j / (j + 1))
    coords = clr_values @ helmert
    samples = wide.index.to_frame(index=False)
    long = pd.DataFrame(
        {
            "y": coords.ravel(),
            "coord": np.tile(np.arange(4), len(wide)),
            # two plates: fixed plate-by-channel effects, sum-to-zero coded
            "plate_contrast": np.repeat(np.where(samples["Metadata_Plate"].astype(str) == "P1", 1.0, -1.0), 4),
            "well": np.repeat((samples["Metadata_Plate"].astype(str) + samples["Metadata_Well"].astype(str)).to_numpy(), 4),
        }
    )
    fit = smf.mixedlm(
        "y ~ 0 + C(coord) + C(coord):plate_contrast", long, groups="well", re_formula="0",
        vc_formula={"well_channel": "0 + C(coord)"},
    ).fit(reml=True)
    assert fit.converged and len(fit.fe_params) == 8
    main = [f"C(coord)[{j}]" for j in range(4)]
    beta = fit.fe_params[main].to_numpy()
    wald = beta @ np.linalg.solve(fit.cov_params().loc[main, main].to_numpy(), beta)
    assert row["statistic"] == pytest.approx(wald, rel=1e-4)
    assert np.isnan(row["p_value"]) and row["role"] == "descriptive"  # estimates only
    assert row["effect_size"] == pytest.approx(np.linalg.norm(helmert @ beta), rel=1e-4)


def test_breakdown_and_by_groups(table, result):
    transitions = set(result["transition"])
    assert transitions == {"all", "control → treated", "treated → control"}
    sub = result[(result["transition"] == "control → treated") & (result["test"] == "friedman_f")].iloc[0]
    part = table[table["transition"] == "control → treated"]
    f = pg.friedman(well_means(part), method="f")
    assert sub["p_value"] == pytest.approx(f["p_unc"].iloc[0], rel=1e-10)
    assert sub["n_units"] == 6 and not sub["primary"]
    # two methods: each has its own primary row; omnibus p_adj is Holm over the methods
    two = pd.concat([table, table.assign(method="other", share=table["share"][::-1].to_numpy())], ignore_index=True)
    two = two.drop(columns=["share"]).merge(two[["method", "sample", "channel", "share"]], on=["method", "sample", "channel"])
    res = cs.test_channels(two, tests=("friedman",), breakdown=None)
    prim = res[res["primary"]]
    assert set(prim["method"]) == {"simulated", "other"}
    np.testing.assert_allclose(prim["p_adj"].to_numpy(), multipletests(prim["p_value"].to_numpy(), method="holm")[1])


# ---------------------------------------------------------------- replication unit


def test_unit_of_replication(table):
    def first(**kw):
        res = cs.test_channels(table, tests=("friedman_f",), breakdown=None, **kw)
        return res[res["test"] == "friedman_f"].iloc[0]

    auto, image, plate = first(), first(unit="image"), first(unit="plate")
    assert (auto["unit"], auto["n_units"]) == ("well", 12)
    assert (image["unit"], image["n_units"]) == ("image", 60)
    assert (plate["unit"], plate["n_units"]) == ("plate", 2)
    per_image = table.pivot_table(index="sample", columns="channel", values="share", observed=True)[CHANNELS]
    assert image["p_value"] == pytest.approx(pg.friedman(per_image, method="f")["p_unc"].iloc[0], rel=1e-10)
    # without the well columns the default refuses, naming the column
    with pytest.raises(KeyError, match="Metadata_Well"):
        cs.test_channels(table.drop(columns=["Metadata_Well"]))
    # one image per well: well units equal image units
    single = table[table["Metadata_Site"] == 1]
    a = cs.test_channels(single, tests=(), breakdown=None).iloc[0]
    b = cs.test_channels(single, tests=(), breakdown=None, unit="image").iloc[0]
    assert a["test"] == b["test"] == "dominance"
    assert a["n_units"] == b["n_units"] == 12 and a["p_value"] == pytest.approx(b["p_value"])


def test_bad_input_errors(table):
    with pytest.raises(ValueError, match="at least 2 channels"):
        cs.test_channels(table[table["channel"] == "DNA"])
    nan = table.copy()
    nan.loc[3, "share"] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 image"):
        cs.test_channels(nan)
    with pytest.raises(ValueError, match="empty"):
        cs.test_channels(table.iloc[:0])
    with pytest.raises(ValueError, match="lacks channel 'ER'"):
        cs.test_channels(table.drop(index=1))
    doubled = pd.concat([table, table.assign(method="other")], ignore_index=True)
    with pytest.raises(ValueError, match="`by`"):
        cs.test_channels(doubled, by=())
    with pytest.raises(KeyError, match="'condition'"):
        cs.test_channels(table, by=("condition",))
    with pytest.raises(ValueError, match="unknown test"):
        cs.test_channels(table, tests=("anova2",))
    with pytest.raises(ValueError, match="unit must be one of"):
        cs.test_channels(table, unit="cell")


def test_group_with_one_well_falls_back_to_no_p_value(table):
    lonely = table[~((table["transition"] == "control → treated") & ~((table["Metadata_Plate"] == "P1") & (table["Metadata_Well"] == "W01")))]
    with pytest.warns(UserWarning, match="single well"):
        res = cs.test_channels(lonely)
    sub = res[res["transition"] == "control → treated"]
    assert (sub["n_units"] == 1).all() and sub["p_value"].isna().all()
    assert sub["note"].str.contains("only 1 well").any()
    assert sub["dominant_channel"].notna().all() and sub["dominant_ci_low"].isna().all()
    pooled_primary = res[res["primary"]].iloc[0]
    assert np.isfinite(pooled_primary["p_value"])


# ---------------------------------------------------------------- intervals, similarity, strategies


def test_channel_share_ci(table):
    out = cs.channel_share_ci(table, interval="t")
    allrows = out[out["transition"] == "all"].set_index("channel")
    wide = well_means(table)
    np.testing.assert_allclose(allrows.loc[CHANNELS, "mean"], wide.mean()[CHANNELS])
    half = sps.t.ppf(0.975, len(wide) - 1) * wide.std(ddof=1) / np.sqrt(len(wide))
    np.testing.assert_allclose(allrows.loc[CHANNELS, "ci_high"], (wide.mean() + half)[CHANNELS], rtol=1e-10)
    wider = sps.t.ppf(1 - 0.025 / 5, len(wide) - 1) / sps.t.ppf(0.975, len(wide) - 1)
    np.testing.assert_allclose((allrows["simultaneous_ci_high"] - allrows["mean"]) / (allrows["ci_high"] - allrows["mean"]), wider)
    assert allrows.loc["Mito", "rank"] == 1
    boot = cs.channel_share_ci(table, seed=1).set_index(["transition", "channel"]).loc["all"]
    assert (boot["interval"] == "boot_t").all() and (boot["ci_low"] < boot["mean"]).all() and (boot["mean"] < boot["ci_high"]).all()

def test_map_similarity_matches_scipy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 4, 6, 7))
    a[:, 1] = a[:, 0] * 2 + 0.1 * rng.normal(size=(3, 6, 7))  # channel 1 ~ channel 0
    a[2, 3] = 0.0  # constant map: rho undefined
    a[0, 2, :3] = 0.0  # ties
    names = ["A", "B", "C", "D"]
    per = cs.map_similarity(a, names, per_image=True, transform="signed")
    for n in range(3):
        for i, j in combinations(range(4), 2):
            got = per[(per["sample"] == n) & (per["channel_a"] == names[i]) & (per["channel_b"] == names[j])]["rho"].iloc[0]
            if n == 2 and j == 3:
                assert np.isnan(got)
                continue
            assert got == pytest.approx(sps.spearmanr(a[n, i].ravel(), a[n, j].ravel()).statistic, abs=1e-12)
    summary = cs.map_similarity({"m": a}, names, transform="signed").set_index(["channel_a", "channel_b"])
    ab = per[(per["channel_a"] == "A") & (per["channel_b"] == "B")]["rho"]
    assert summary.loc[("A", "B"), "mean"] == pytest.approx(ab.mean())
    assert summary.loc[("A", "B"), "sd"] == pytest.approx(ab.std(ddof=1))
    assert summary.loc[("A", "B"), "mean"] > 0.9
    assert summary.loc[("A", "D"), "n"] == 2 and summary.loc[("A", "D"), "n_undefined"] == 1
    absolute = cs.map_similarity(a, names, per_image=True)
    assert absolute["rho"].iloc[0] == pytest.approx(sps.spearmanr(np.abs(a[0, 0]).ravel(), np.abs(a[0, 1]).ravel()).statistic)
    with pytest.raises(ValueError, match="at least 2 channels"):
        cs.map_similarity(a[:, :1], ["A"])


@pytest.fixture(scope="module")
def dac_scores() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    rows = []
    for sample in range(24):
        plate, well = f"P{sample // 12 + 1}", f"W{sample % 12 // 2:02d}"
        base = rng.normal(0.3, 0.1)
        for method, shift in (("d_ig", 0.1), ("random", 0.0)):
            for strategy, s_shift in (("aggregate", 0.0), ("joint", 0.05), ("per_channel", 0.08)):
                rows.append((sample, plate, well, method, strategy, "all", base + shift + s_shift + rng.normal(0, 0.03)))
            for ch in ("DNA", "Mito"):
                rows.append((sample, plate, well, method, "single_channel", ch, base / 2 + rng.normal(0, 0.03)))
    return pd.DataFrame(rows, columns=["sample", "Metadata_Plate", "Metadata_Well", "method", "strategy", "channel", "dac"])


def test_compare_strategies_matches_pingouin(dac_scores):
    out = cs.compare_strategies(dac_scores)
    strat = out[(out["comparison"] == "strategy") & (out["method"] == "d_ig") & (out["channel"] == "all")]
    assert len(strat) == 3 and (strat["unit"] == "well").all() and (strat["n_units"] == 12).all()
    wells = dac_scores[(dac_scores["method"] == "d_ig") & (dac_scores["channel"] == "all")]
    wide = wells.groupby(["Metadata_Plate", "Metadata_Well", "strategy"])["dac"].mean().unstack("strategy")
    ps = []
    for row in strat.itertuples(index=False):
        ref = pg.wilcoxon(wide[row.a], wide[row.b])
        assert row.statistic == pytest.approx(ref["W_val"].iloc[0])
        assert row.p_value == pytest.approx(ref["p_val"].iloc[0], rel=1e-10)
        assert row.effect_size == pytest.approx(ref["RBC"].iloc[0], rel=1e-10)
        assert row.estimate == pytest.approx((wide[row.a] - wide[row.b]).mean())
        assert row.ci_low < row.estimate < row.ci_high
        ps.append(row.p_value)
    np.testing.assert_allclose(strat["p_adj"], multipletests(ps, method="holm")[1])
    # aggregate < per_channel by construction
    agg = strat[(strat["a"] == "aggregate") & (strat["b"] == "per_channel")].iloc[0]
    assert agg["estimate"] < 0 and agg["effect_size"] == pytest.approx(-1.0)
    # single_channel is only compared with strategies that score the same channel: none
    assert not ((out["comparison"] == "strategy") & (out["channel"] == "Mito")).any()
    meth = out[(out["comparison"] == "method") & (out["strategy"] == "joint")].iloc[0]
    assert {meth["a"], meth["b"]} == {"d_ig", "random"} and meth["method"] == "*"
    with pytest.raises(KeyError, match="Metadata_Well"):
        cs.compare_strategies(dac_scores.drop(columns="Metadata_Well"))
    image = cs.compare_strategies(dac_scores.drop(columns=WELL), unit="image")
    assert (image["n_units"] == 24).all() and image["ci_low"].notna().all()


# ---------------------------------------------------------------- calibration and power


def test_null_calibration_under_strong_well_nuisance():
    """Primary test at alpha 0.05: within [0.03, 0.07] over 1000 null data sets (MC se ~0.007).

    Same design as analyses/calibration.py: 2 plates x 8 wells x 8 images, well sd 1.0 >>
    image sd 0.3 on the log scale. Images treated as independent reject most of the time.
    """
    rate = cs.rejection_rate(n_sims=1000, seed=2024, tests=("friedman_f",), n_plates=1, wells_per_plate=16)
    primary = rate[rate["primary"]].iloc[0]
    assert primary["test"] == "dominance" and primary["unit"] == "well" and primary["n_valid"] == 1000
    # exchangeable channels are an interior null of the dominance test: conservative
    assert primary["rejection_rate"] <= 0.07, primary.to_dict()
    friedman_f = rate[rate["test"] == "friedman_f"].iloc[0]
    assert 0.03 <= friedman_f["rejection_rate"] <= 0.07, friedman_f.to_dict()
    naive = cs.rejection_rate(n_sims=200, seed=2024, unit="image", tests=("friedman_f",))
    assert naive.loc[naive["test"] == "friedman_f", "rejection_rate"].iloc[0] > 0.5


def test_power_with_planted_channel_effect():
    """16 wells, one channel's log-mass raised by `effect` (well sd 1.0): power rises to ~1.

    Reference (1000 simulations): power 0.19 at 0.5, 0.67 at 1.0, 0.96 at 1.5.
    """
    rates = {e: cs.rejection_rate(n_sims=200, seed=7, effect=e, n_plates=1, wells_per_plate=16)["rejection_rate"].iloc[0]
             for e in (0.5, 2.5)}
    assert rates[2.5] >= 0.8, rates
    assert rates[0.5] < rates[2.5]


# ---------------------------------------------------------------- pipeline stage (no model needed)


class _Dataset:
    def __init__(self, meta, channels, classes, counterfactual_target):
        self.meta, self.channels, self.classes, self.counterfactual_target = meta, channels, classes, counterfactual_target


def test_stage_writes_tables(tmp_path, dac_scores):
    """The stats stage on plain arrays (no torch): Mito carries the mass, d_gradcam is channel-agnostic."""
    from chanstat.context import RunContext
    from chanstat.rundir import RunDirectory
    from chanstat.stage import Arrays
    from chanstat.stats.stage import STAGE, StatsConfig

    rng = np.random.default_rng(0)
    n = 24
    meta = pd.DataFrame(
        {
            "Metadata_Plate": [f"P{i // 12 + 1}" for i in range(n)],
            "Metadata_Well": [f"W{i % 12 // 2:02d}" for i in range(n)],
            "Metadata_Site": [i % 2 for i in range(n)],
            "Metadata_Class": ["control" if (i // 2) % 2 == 0 else "treated" for i in range(n)],
        }
    )
    cf = np.array([1 if c == "control" else 0 for c in meta["Metadata_Class"]])
    planted = rng.normal(size=(n, 5, 8, 8)).astype(np.float32)
    planted[:, 4] *= 3.0  # Mito carries the mass
    results = {
        "dataset": _Dataset(meta, CHANNELS, ["control", "treated"], cf),
        "attributions": Arrays({"d_ig": planted, "d_gradcam": rng.normal(size=(n, 1, 8, 8)).astype(np.float32)}),
        "dac_scores": dac_scores[dac_scores["sample"] < n].drop(columns=WELL),
    }
    ctx = RunContext(config={"stats": StatsConfig(n_boot=200).model_dump()}, run=RunDirectory(tmp_path, create=True),
                     results=results, progress=False)
    outputs, info = STAGE.whole_set(ctx, {})
    assert set(outputs) == {"channel_mass", "channel_tests", "channel_share_ci", "map_similarity", "strategy_comparison",
                            "best_channel"}
    best = outputs["best_channel"]
    pooled = best[(best["quantity"] == "share") & (best["transition"] == "all")]
    assert set(pooled["role"]) == {"primary"} and pooled["named_channel"].iloc[0] == "Mito"
    assert set(best["quantity"]) >= {"share"}
    mass = outputs["channel_mass"]
    assert set(mass["method"]) == {"d_ig"} and set(mass["transition"]) == {"control → treated", "treated → control"}
    tests = outputs["channel_tests"]
    primary = tests[tests["primary"] & (tests["transition"] == "all")]
    assert len(primary) == 1 and primary["dominant_channel"].iloc[0] == "Mito" and primary["p_value"].iloc[0] < 0.05
    assert info["dominant_channel"]["d_ig"] == "Mito" and info["unit"] == "well"
    mito = pooled[pooled["channel"] == "Mito"].iloc[0]
    assert 0 <= mito["gap_ci_low"] <= mito["gap"] <= mito["gap_ci_high"] and mito["gap"] > 0  # Hsu: cut at 0


def test_calibration_script_smoke(tmp_path):
    """analyses/calibration.py parts (a) and (b) run and write their tables and plots."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analyses" / "calibration.py"
    spec = importlib.util.spec_from_file_location("chanstat_calibration_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path), "--quick", "--sims", "20", "--parts", "ab"]) == 0
    for name in ("null.csv", "power.csv", "calibration_null.png", "calibration_power.png", "calibration_pvalues.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    null = pd.read_csv(tmp_path / "null.csv")
    naive = null[(null["unit"] == "image") & null["scenario"].str.startswith("same") & (null["test"] == "friedman_f")]
    assert len(naive) == 1
    assert (naive["rejection_rate"] > 0.3).all()


def test_degenerate_shares_give_notes_not_crashes(table):
    """All mass on one channel (e.g. discriminative maps of a one-channel phenotype)."""
    one_hot = table.assign(share=np.where(table["channel"] == "Mito", 1.0, 0.0))
    res = cs.test_channels(one_hot, breakdown=None, tests=cs.DEFAULT_TESTS + ("rm_anova", "mixedlm"))
    prim = res[res["primary"]].iloc[0]
    # every well agrees exactly: Mito > each other channel with no spread, p = 0
    assert prim["test"] == "dominance" and prim["p_value"] == 0.0
    assert (prim["dominant_channel"], prim["dominant_share"], prim["dominant_ci_low"]) == ("Mito", 1.0, 1.0)
    fried = pooled(res.assign(transition="all"), "friedman_f").iloc[0]
    wide = well_means(one_hot)
    assert fried["effect_size"] == pytest.approx(1.0)
    assert fried["p_value"] == pytest.approx(sps.friedmanchisquare(*wide.to_numpy().T).pvalue)
    assert "perfect concordance" in fried["note"]
    for test in ("rm_anova", "mixedlm"):
        row = pooled(res.assign(transition="all"), test).iloc[0]
        assert np.isnan(row["p_value"]) and "no residual variance" in row["note"]


def test_wilcoxon_with_ties_uses_normal_approximation():
    a = np.array([0.3, 0.3, 0.2, 0.5, 0.4, 0.4, 0.1, 0.6])
    b = np.array([0.1, 0.1, 0.2, 0.2, 0.1, 0.3, 0.2, 0.1])
    res = inference.wilcoxon_paired(a, b)
    ref = sps.wilcoxon(a - b, correction=True, method="asymptotic")
    assert res.p == pytest.approx(ref.pvalue, rel=1e-12) and res.statistic == pytest.approx(ref.statistic)
    assert res.effect_size == pytest.approx(pg.wilcoxon(a, b)["RBC"].iloc[0])
