"""Calibration and power of chanstat's channel tests, intervals and enrichment (issue 16).

(a) Null calibration: simulated channel-mass tables with plate/well structure and no channel
    effect but strong well-level nuisance (well sd 1.0 >> image sd 0.3 on the log scale). The
    default (primary) test must reject at alpha = 0.05 in 3-7 % of data sets; images treated as
    independent show what the well-level default protects against. Other designs and the
    secondary tests (Friedman chi-square, RM-ANOVA on CLR, mixed model) are reported too.
(b) Power: the same design with one channel's log-mass raised by an effect size.
(d) Issue 16: null rejection, power (with Monte Carlo SE) of every test the report shows
    (dominance, plate x channel, Friedman F, Hotelling, test_against_zero) and the coverage
    of the share intervals, over 1 plate x 4/6/8/24 wells (also 1-12 images per well),
    2 plates (plate x channel sd 0.3) and 6 plates (plate units); plus the dominance
    test's least-favourable null (two channels tied on top).
(e) The competitive channel enrichment on real LINCS DMSO wells split 12 v 12: false-call
    rate under a +1 SD shift of every feature and a random latent factor with the real
    feature correlation.
(f) Issue 24: the confidence set for the best channel (naming rate at the hardest null, also
    with a noisier tied pair, for the per-channel and the pooled variance; power against a
    one-sided test of a channel fixed in advance, at alpha and alpha/2), joint coverage of
    simultaneous share intervals, few plates, screens, skewed signed values against 0 (null
    at three skewness levels, and power), CAMERA-style correlation-adjusted enrichment beside
    the competitive permutation test (real LINCS correlation), and the per-cell link's
    table-wide false discovery; lognormal, t3 and Dirichlet generators, Monte-Carlo SEs.
    ``--sections best,zero`` runs a subset (``SECTIONS``).
(c) End to end on synthetic images (needs torch and the rest of chanstat): a classifier is
    trained per data set at phenotype effect size 0 and at planted sizes, maps come from IG
    and discriminative IG (oracle counterfactuals), and the default test runs on their channel
    mass. At effect 0 the oracle counterfactual equals the image, so discriminative maps are
    zero; the null is then checked on the vanilla IG maps by permuting channel labels per well
    (a realistic null with strong well structure).

Usage::

    python analyses/calibration.py --out runs/calibration            # full (a few minutes)
    python analyses/calibration.py --out runs/calibration --quick    # small, for a smoke test
    python analyses/calibration.py --out DIR --sims 2000 --skip-images
    python analyses/calibration.py --out DIR --parts de --quick         # issue 16 tables, ~2 min
    python analyses/calibration.py --out DIR --parts f --sims 1000     # issue 24 table

Prints every figure and writes ``null.csv``, ``power.csv``, ``images.csv``,
``images_null.csv`` and ``calibration_null.png``, ``calibration_power.png``,
``calibration_pvalues.png``, ``calibration_images.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from chanstat import stats as cs

ALPHA = 0.05
BAND = (0.03, 0.07)
DESIGN = dict(n_plates=2, wells_per_plate=8, images_per_well=8, well_sd=1.0, image_sd=0.3)

#: name -> (simulation settings, unit, secondary tests); the first is the issue's scenario.
NULL_SCENARIOS = {
    "strong well nuisance (16 wells x 8 images)": (DESIGN, "auto", ("friedman_f", "friedman", "rm_anova")),
    "same, images treated as independent": (DESIGN, "image", ("friedman_f", "friedman", "rm_anova")),
    "few wells (6 wells x 8 images)": (
        {**DESIGN, "wells_per_plate": 3},
        "auto",
        ("friedman_f", "friedman", "rm_anova"),
    ),
    "one image per well (16 wells)": ({**DESIGN, "images_per_well": 1}, "auto", ("friedman_f", "friedman", "rm_anova")),
    "no well nuisance, images independent": (
        {**DESIGN, "well_sd": 0.0},
        "image",
        ("friedman_f", "friedman", "rm_anova"),
    ),
    "plate nuisance sd 0.5 (2 plates; caveat)": (
        {**DESIGN, "plate_sd": 0.5},
        "auto",
        ("friedman_f", "friedman", "rm_anova"),
    ),
}


def null_study(n_sims: int, n_sims_mixed: int, seed: int = 0) -> pd.DataFrame:
    """Rejection rates under the null for every scenario (and the mixed model on the first)."""
    tables = []
    for i, (name, (sim, unit, tests)) in enumerate(NULL_SCENARIOS.items()):
        t0 = time.perf_counter()
        rate = cs.rejection_rate(n_sims=n_sims, seed=seed + i, tests=tests, unit=unit, **sim)
        rate.insert(0, "scenario", name)
        rate["wall_s"] = time.perf_counter() - t0
        tables.append(rate)
    if n_sims_mixed:
        t0 = time.perf_counter()
        rate = cs.rejection_rate(n_sims=n_sims_mixed, seed=seed + 100, tests=("mixedlm",), **DESIGN)
        rate = rate[rate["test"] == "mixedlm"].copy()
        rate.insert(0, "scenario", next(iter(NULL_SCENARIOS)))
        rate["wall_s"] = time.perf_counter() - t0
        tables.append(rate)
    out = pd.concat(tables, ignore_index=True)
    out["in_band"] = out["rejection_rate"].between(*BAND)
    return out


def null_pvalues(n_sims: int, seed: int = 0) -> pd.DataFrame:
    """Primary p-values of null data sets (default design), per unit, for the histogram."""
    table = cs.simulate_channel_mass(replicates=n_sims, seed=seed, **DESIGN)
    parts = []
    for unit in ("auto", "image"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cs.test_channels(table, by=("replicate",), tests=(), unit=unit, breakdown=None)
        parts.append(res[["replicate", "unit", "p_value"]])
    return pd.concat(parts, ignore_index=True)


def power_study(n_sims: int, effects: list[float], seed: int = 0) -> pd.DataFrame:
    rows = []
    for i, effect in enumerate(effects):
        rate = cs.rejection_rate(
            n_sims=n_sims, seed=seed + 1000 + i, tests=("friedman_f", "rm_anova"), effect=effect, **DESIGN
        )
        rows.append(rate)
    return pd.concat(rows, ignore_index=True)


def _permuted_null(mass: pd.DataFrame, n_perm: int, seed: int) -> pd.DataFrame:
    """Channel labels permuted per well (the same permutation for all images of a well)."""
    rng = np.random.default_rng(seed)
    channels = list(pd.unique(mass["channel"]))
    k = len(channels)
    wells = mass[["Metadata_Plate", "Metadata_Well"]].astype(str).agg("/".join, axis=1)
    well_code, well_names = pd.factorize(wells)
    channel_code = pd.Categorical(mass["channel"], categories=channels).codes
    reps = []
    for r in range(n_perm):
        perms = np.argsort(rng.random((len(well_names), k)), axis=1)
        new = mass.copy()
        new["channel"] = np.asarray(channels, dtype=object)[perms[well_code, channel_code]]
        new["replicate"] = r
        reps.append(new)
    return pd.concat(reps, ignore_index=True)


def image_study(effects: list[float], repeats: int, n_perm: int, quick: bool, seed: int = 0, progress: bool = True):
    """End to end on synthetic images; returns (per-run table, permutation-null table)."""
    import torch

    from chanstat.attribution import attribute
    from chanstat.data import synthetic
    from chanstat.models import VGGClassifier, train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = (
        dict(n_plates=2, wells_per_class=3, sites_per_well=6, size=48)
        if quick
        else dict(n_plates=2, wells_per_class=4, sites_per_well=8, size=48)
    )
    rows, null_rows = [], []
    for effect in effects:
        for rep in range(repeats):
            t0 = time.perf_counter()
            ds = synthetic(effect_size=effect, seed=seed + rep, **size)
            model = VGGClassifier(in_channels=len(ds.channels), n_classes=len(ds.classes))
            fit = train(model, ds, epochs=30, batch_size=16, lr=3e-3, seed=seed + rep, progress=False)
            val_acc = float(getattr(fit, "val_accuracy", np.nan)) if fit is not None else np.nan
            maps = {"ig": attribute(model, ds.images, ds.labels, "ig").numpy()}
            if effect > 0:
                maps["d_ig"] = attribute(
                    model,
                    ds.images,
                    None,
                    "d_ig",
                    counterfactuals=ds.counterfactuals,
                    counterfactual_target=ds.counterfactual_target,
                ).numpy()
            meta = ds.meta.reset_index(drop=True).copy()
            if "Metadata_Counterfactual_Class" not in meta.columns and ds.counterfactual_target is not None:
                meta["Metadata_Counterfactual_Class"] = [ds.classes[int(i)] for i in ds.counterfactual_target.tolist()]
            mass = cs.channel_mass(maps, ds.channels, meta)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cs.test_channels(mass, tests=(), breakdown=None, seed=rep)
                image_res = cs.test_channels(mass, tests=(), breakdown=None, unit="image")
            shares = mass.groupby(["method", "channel"], observed=True)["share"].mean().unstack("channel")
            for row in res.itertuples(index=False):
                rows.append(
                    {
                        "effect_size": effect,
                        "repeat": rep,
                        "method": row.method,
                        "p_value": row.p_value,
                        "p_value_image_unit": float(
                            image_res.loc[image_res["method"] == row.method, "p_value"].iloc[0]
                        ),
                        "dominant_channel": row.dominant_channel,
                        "dominant_share": row.dominant_share,
                        "dominant_ci_low": row.dominant_ci_low,
                        "dominant_ci_high": row.dominant_ci_high,
                        "mito_share": float(shares.loc[row.method, "Mito"]),
                        "n_wells": row.n_units,
                        "val_accuracy": val_acc,
                        "wall_s": time.perf_counter() - t0,
                    }
                )
            if effect == 0 and n_perm:
                permuted = _permuted_null(mass[mass["method"] == "ig"], n_perm, seed + rep)
                for unit in ("auto", "image"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = cs.test_channels(permuted, by=("replicate",), tests=(), unit=unit, breakdown=None)
                    p = res["p_value"].to_numpy(float)
                    null_rows.append(
                        {
                            "repeat": rep,
                            "unit": res["unit"].iloc[0],
                            "n_perm": n_perm,
                            "rejection_rate": float((p < ALPHA).mean()),
                            "mc_se": float(np.sqrt((p < ALPHA).mean() * (1 - (p < ALPHA).mean()) / len(p))),
                        }
                    )
            if progress:
                print(f"  images: effect {effect} repeat {rep} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return pd.DataFrame(rows), pd.DataFrame(null_rows)


# ---------------------------------------------------------------- plots


def plot_null(null: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s}\n[{t}, {u}]" for s, t, u in zip(null["scenario"], null["test"], null["unit"])]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(null) + 1.5))
    y = np.arange(len(null))[::-1]
    colors = ["tab:red" if p else "tab:gray" for p in null["primary"]]
    ax.barh(y, null["rejection_rate"], xerr=1.96 * null["mc_se"], color=colors)
    ax.axvspan(*BAND, color="tab:green", alpha=0.2, label="calibration band [0.03, 0.07]")
    ax.axvline(ALPHA, color="k", lw=0.8)
    ax.set_yticks(y, labels, fontsize=6)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("rejection rate at alpha = 0.05 under the null (red: primary test)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_pvalues(pvalues: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=False)
    for ax, (unit, part) in zip(axes, pvalues.groupby("unit", sort=False)):
        ax.hist(part["p_value"], bins=20, range=(0, 1), color="tab:blue")
        ax.axhline(len(part) / 20, color="k", lw=0.8, ls="--")
        ax.set_title(f"primary p-values under the null, unit={unit}", fontsize=8)
        ax.set_xlabel("p-value")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_power(power: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for test, part in power.groupby("test", sort=False):
        ax.errorbar(
            part["effect"],
            part["rejection_rate"],
            yerr=1.96 * part["mc_se"],
            marker="o",
            ms=3,
            label=f"{test}{' (primary)' if part['primary'].iloc[0] else ''}",
        )
    ax.axhline(ALPHA, color="k", lw=0.8, ls="--")
    ax.set_xlabel("planted effect (log-mass shift of one channel; well sd = 1)")
    ax.set_ylabel("power at alpha = 0.05")
    ax.set_title("16 wells x 8 images, 5 channels", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_images(images: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, part in images.groupby("method"):
        ax.scatter(part["effect_size"] + (0.02 if method == "d_ig" else -0.02), part["mito_share"], label=method, s=18)
    ax.axhline(0.2, color="k", lw=0.8, ls="--", label="equal shares (5 channels)")
    ax.set_xlabel("synthetic phenotype effect size (Mito)")
    ax.set_ylabel("mean Mito share of |attribution|")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# ---------------------------------------------------------------- (d) issue 16: every test and interval shown

#: name -> simulation settings; plate x channel sd 0.3 in the multi-plate designs
DESIGNS16 = {
    "1 plate x 4 wells": dict(n_plates=1, wells_per_plate=4),
    "1 plate x 8 wells": dict(n_plates=1, wells_per_plate=8),
    "1 plate x 24 wells": dict(n_plates=1, wells_per_plate=24),
    "1 plate x 6 wells, 1-12 images": dict(n_plates=1, wells_per_plate=6, images_per_well=(1, 12)),
    "2 plates x 4 wells, plate sd .3": dict(n_plates=2, wells_per_plate=4, plate_sd=0.3),
    "2 plates x 12 wells, plate sd .3": dict(n_plates=2, wells_per_plate=12, plate_sd=0.3),
    "6 plates x 4 wells, plate sd .3 (auto: plate unit)": dict(n_plates=6, wells_per_plate=4, plate_sd=0.3),
}
TESTS16 = ("dominance", "plate_x_channel", "friedman_f", "hotelling")


def _rate(p: np.ndarray) -> tuple[float, float, int]:
    p = p[np.isfinite(p)]
    r = float((p < ALPHA).mean()) if p.size else np.nan
    return r, float(np.sqrt(r * (1 - r) / p.size)) if p.size else np.nan, int(p.size)


def issue16_study(n_sims: int, seed: int = 0, effect: float = 1.5) -> pd.DataFrame:
    """Null rejection, power and coverage of every test and interval the report shows."""
    rows = []
    truth_table = cs.simulate_channel_mass(n_plates=1, wells_per_plate=20000, images_per_well=1, well_sd=1.0, seed=99)
    truth = truth_table.groupby("channel", observed=True)["share"].mean()
    for i, (name, design) in enumerate(DESIGNS16.items()):
        sim = {"images_per_well": 4, "well_sd": 1.0, "image_sd": 0.3, **design}
        for label, eff in (("null", 0.0), (f"power (effect {effect})", effect)):
            table = cs.simulate_channel_mass(replicates=n_sims, seed=seed + 10 * i + (eff > 0), effect=eff, **sim)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cs.test_channels(table, by=("replicate",), breakdown=None, tests=TESTS16, n_perm=199)
            for test in TESTS16:
                part = res[res["test"] == test]
                r, se, n = _rate(part["p_value"].to_numpy(float))
                rows.append(
                    dict(
                        design=name,
                        quantity=f"{label}: {test}",
                        rate=r,
                        mc_se=se,
                        n=n,
                        unit=str(part["unit"].iloc[0]) if len(part) else "",
                    )
                )
            if eff == 0.0:
                prim = res[res["primary"]]
                named = (prim["dominant_channel"] != "none").to_numpy()
                rows.append(
                    dict(
                        design=name,
                        quantity="null: any dominant channel named",
                        rate=named.mean(),
                        mc_se=np.sqrt(named.mean() * (1 - named.mean()) / len(named)),
                        n=len(named),
                        unit=str(prim["unit"].iloc[0]),
                    )
                )
                if design.get("plate_sd", 0) == 0:  # the truth is known for the one-plate designs only
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        for interval in ("boot_t", "t"):
                            ci = cs.channel_share_ci(
                                table, by=("replicate",), breakdown=None, interval=interval, n_boot=500
                            )
                            tv = ci["channel"].map(truth)
                            cov = ((ci["ci_low"] <= tv) & (tv <= ci["ci_high"])).to_numpy()
                            sim_cov = (
                                ((ci["simultaneous_ci_low"] <= tv) & (tv <= ci["simultaneous_ci_high"]))
                                .groupby(ci["replicate"])
                                .all()
                                .to_numpy()
                            )
                            for q, c in (
                                (f"coverage: share {interval} interval", cov),
                                (f"coverage: simultaneous {interval} (all channels)", sim_cov),
                            ):
                                rows.append(
                                    dict(
                                        design=name,
                                        quantity=q,
                                        rate=c.mean(),
                                        mc_se=np.sqrt(c.mean() * (1 - c.mean()) / len(c)),
                                        n=len(c),
                                        unit=str(ci["unit"].iloc[0]),
                                    )
                                )
    # signed per-image contributions (CLR of the log-masses: mean 0 per channel under the null)
    for i, (name, design) in enumerate(DESIGNS16.items()):
        sim = {"images_per_well": 4, "well_sd": 1.0, "image_sd": 0.3, **design}
        for label, eff in (("null", 0.0), (f"power (effect {effect})", effect)):
            table = cs.simulate_channel_mass(replicates=n_sims, seed=seed + 700 + 10 * i + (eff > 0), effect=eff, **sim)
            logs = np.log(table["mass"].to_numpy())
            table["contribution"] = (
                logs
                - table.assign(_l=logs)
                .groupby(["replicate", "sample"], observed=True)["_l"]
                .transform("mean")
                .to_numpy()
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cs.test_against_zero(table, value="contribution", by=("replicate",), breakdown=None)
            any_call = (res.groupby("replicate")["p_adj"].min() < ALPHA).to_numpy()
            rows.append(
                dict(
                    design=name,
                    quantity=f"{label}: test_against_zero (any channel, Holm)",
                    rate=any_call.mean(),
                    mc_se=np.sqrt(any_call.mean() * (1 - any_call.mean()) / n_sims),
                    n=n_sims,
                    unit=str(res["unit"].iloc[0]),
                )
            )
    # least-favourable null of the dominance test: two channels tied on top (normal unit means)
    rng = np.random.default_rng(seed + 500)
    for n_units in (4, 6, 12, 24):
        hits = np.array(
            [cs.dominance(rng.normal(size=(n_units, 5)) + [2, 2, 0, 0, 0])["dominant"] >= 0 for _ in range(n_sims)]
        )
        rows.append(
            dict(
                design=f"{n_units} units, two channels tied on top",
                quantity="null (tie): any dominant named",
                rate=hits.mean(),
                mc_se=np.sqrt(hits.mean() * (1 - hits.mean()) / n_sims),
                n=n_sims,
                unit="unit",
            )
        )
    return pd.DataFrame(rows)


#: real CellProfiler profiles (LINCS plate SQ00015054, normalised, feature-selected) in ../shared
LINCS_TABLE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "lincs_SQ00015054"
    / "SQ00015054_normalized_feature_select.csv.gz"
)


def enrichment_study(n_sims: int, n_perm: int, seed: int = 1) -> pd.DataFrame:
    """False-call rate of the competitive channel enrichment on real LINCS DMSO wells (split 12 v 12)."""
    from chanstat.cellprofiler import feature_columns, parse_features, read
    from chanstat.cellprofiler.enrichment import channel_incidence, competitive_test, feature_channels

    path = LINCS_TABLE
    lincs = read(path)
    dmso = lincs[lincs["Metadata_broad_sample"] == "DMSO"].reset_index(drop=True)
    features = feature_columns(dmso.columns)
    keep, _, incidence = channel_incidence(feature_channels(parse_features(features)[["feature", "channels"]]))
    x = dmso[features].to_numpy(float)[:, keep]
    centred, sd = x - x.mean(axis=0), x.std(axis=0, ddof=1)
    rows = []
    for kind in ("+1 SD on every feature", "random latent factor (real correlation)", "no shift"):
        rng = np.random.default_rng(seed)
        calls = 0
        for s in range(n_sims):
            is_case = np.zeros(len(x), bool)
            is_case[rng.choice(len(x), len(x) // 2, replace=False)] = True
            if kind.startswith("+1"):
                shift = sd
            elif kind.startswith("random"):
                z = rng.standard_normal(len(x)) @ centred / np.sqrt(len(x) - 1)
                shift = z / np.sqrt(np.mean((z / sd) ** 2))
            else:
                shift = np.zeros_like(sd)
            _, _, _, p = competitive_test(x + is_case[:, None] * shift, is_case, incidence, n_perm=n_perm, seed=s)
            calls += bool((cs.adjust(p, "holm") < ALPHA).any())
        r = calls / n_sims
        rows.append(
            dict(
                design="LINCS DMSO 12 v 12",
                quantity=f"enrichment false call (any channel): {kind}",
                rate=r,
                mc_se=np.sqrt(r * (1 - r) / n_sims),
                n=n_sims,
                unit="well",
            )
        )
    return pd.DataFrame(rows)


def _part_e(args, out: Path) -> None:
    n = args.sims or (60 if args.quick else 300)
    print(f"\n(e) competitive channel enrichment on real LINCS correlation, {n} splits per scenario")
    t0 = time.perf_counter()
    # 199 permutations at least: with 99 the smallest Holm-adjusted p over 5 channels is 0.05
    table = enrichment_study(n, n_perm=199 if args.quick else 499, seed=args.seed + 1)
    table.to_csv(out / "enrichment.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"({time.perf_counter() - t0:.0f} s)")


def _part_d(args, out: Path) -> None:
    n = args.sims or (150 if args.quick else 1000)
    print(f"\n(d) issue 16: rejection at alpha {ALPHA}, power and coverage (95 %), {n} data sets per design")
    t0 = time.perf_counter()
    table = issue16_study(n, seed=args.seed)
    table.to_csv(out / "issue16.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"({time.perf_counter() - t0:.0f} s)")


# ---------------------------------------------------------------- issue 24: which channel, with power


HARD_NULL = (0.44, 0.44, 0.04, 0.04, 0.04)  # two tied on top, the others far below: the hardest null
POWER_SHARES = (0.45, 0.1375, 0.1375, 0.1375, 0.1375)  # .45 vs .14


def _se(rate: float, n: int) -> float:
    return float(np.sqrt(max(rate * (1 - rate), 1e-12) / n))


def _fixed_channel(values: np.ndarray, alpha: float = ALPHA) -> bool:
    """One-sided paired t of channel 0 > every other (chosen in advance), intersection-union, raw shares.

    A level-``alpha`` test of "channel 0, named before the data, carries the largest mean share"
    (each of the C - 1 one-sided paired t-tests at ``alpha``; all must reject). Naming a channel
    chosen by the data must pay for both directions of the tie: its per-comparison level is
    ``alpha / 2``, so the same test at ``alpha / 2`` is given too."""
    from scipy import stats as sps

    d = values[:, :1] - values[:, 1:]
    t = d.mean(0) / (d.std(0, ddof=1) / np.sqrt(len(d)))
    return bool((t > sps.t.ppf(1 - alpha, len(d) - 1)).all())


SECTIONS = ("best", "scales", "intervals", "plates", "screen", "zero", "enrich", "link")
#: the "scales" section: few wells, the shares' own paired t (the alpha/2 reference by construction) beside the default
FEW_UNIT_PROCEDURES = {
    "best_channel default (log-ratio, channel_df)": {},
    "shares, each pair's own variance": {"scale": "raw", "variance": "pair"},
}
EIGHT_NULL = (0.44, 0.44) + (0.02,) * 6
EIGHT_POWER = (0.45,) + (0.55 / 7,) * 7


def issue24_study(
    n_sims: int, seed: int = 0, n_boot: int = 500, link_sims: int = 60, sections: tuple[str, ...] = SECTIONS
) -> pd.DataFrame:
    """Every row of issue 24's table: naming rate, power, joint coverage, few plates, skewed
    signed values, CAMERA-style enrichment, the per-cell link; three generators; Monte-Carlo SE
    per rate. ``sections`` picks a subset (``SECTIONS``)."""
    from scipy import stats as sps

    from chanstat.stats.against_zero import _boot_hall_p, _boot_t_p, _sign_flip_p
    from chanstat.stats.best import mcb
    from chanstat.stats.bootstrap import simultaneous_interval
    from chanstat.stats.simulate import GENERATORS, simulate_unit_means

    rng = np.random.default_rng(seed)
    rows = []

    def add(finding, generator, n_units, procedure, hits, target="", n=None):
        n = n or len(hits)
        rate = float(np.mean(hits))
        rows.append(
            {
                "finding": finding,
                "generator": generator,
                "n_units": n_units,
                "procedure": procedure,
                "rate": rate,
                "mc_se": _se(rate, n),
                "n_sims": n,
                "target": target,
            }
        )

    for gen in GENERATORS if "best" in sections else ():
        for n in (4, 6, 8, 12, 24):
            vals, _ = simulate_unit_means(gen, HARD_NULL, n_units=n, replicates=n_sims, seed=rng)
            for variance in ("channel_df", "channel", "pooled"):
                add(
                    "naming rate, hardest null (two tied on top)",
                    gen,
                    n,
                    f"best_channel variance={variance}",
                    [mcb(v, variance=variance)["named"] >= 0 for v in vals],
                    "<= .055",
                )
        if gen != "dirichlet":
            for n in (4, 6, 8, 12, 24):
                vals, _ = simulate_unit_means(gen, HARD_NULL, n_units=n, replicates=n_sims, noisy=2.0, seed=rng)
                for variance in ("channel_df", "channel", "pooled", "max"):
                    add(
                        "naming rate, tied pair twice as noisy",
                        gen,
                        n,
                        f"best_channel variance={variance}",
                        [mcb(v, variance=variance)["named"] >= 0 for v in vals],
                        "<= .055",
                    )
        for n in (4, 6, 12, 24):
            vals, _ = simulate_unit_means(gen, POWER_SHARES, n_units=n, replicates=n_sims, seed=rng)
            for variance in ("channel_df", "channel", "pooled"):
                add(
                    "power, shares .45 vs .14",
                    gen,
                    n,
                    f"best_channel variance={variance} (named the right channel)",
                    [mcb(v, variance=variance)["named"] == 0 for v in vals],
                    "within .03 of the fixed-channel test",
                )
            add(
                "power, shares .45 vs .14",
                gen,
                n,
                "one-sided test of a channel fixed in advance (alpha)",
                [_fixed_channel(v) for v in vals],
            )
            add(
                "power, shares .45 vs .14",
                gen,
                n,
                "same at alpha/2 (the per-direction level naming pays)",
                [_fixed_channel(v, ALPHA / 2) for v in vals],
            )
    for gen in GENERATORS if "scales" in sections else ():
        cells = [
            ("naming rate, hardest null (two tied on top)", HARD_NULL, {}, "<= .055"),
            ("power, shares .45 vs .14", POWER_SHARES, {}, ""),
            ("naming rate, hardest null, 8 channels", EIGHT_NULL, {}, "<= .055"),
            ("power, .45 vs 7 x .079, 8 channels", EIGHT_POWER, {}, ""),
        ]
        if gen != "dirichlet":
            cells.insert(1, ("naming rate, tied pair twice as noisy", HARD_NULL, {"noisy": 2.0}, "<= .055"))
        for n in (3, 4, 5, 6):
            for finding, shares, extra, target in cells:
                vals, _ = simulate_unit_means(gen, shares, n_units=n, replicates=n_sims, seed=rng, **extra)
                power = finding.startswith("power")
                for procedure, kw in FEW_UNIT_PROCEDURES.items():
                    named = np.array([mcb(v, **kw)["named"] for v in vals])
                    add(finding, gen, n, f"{procedure} [scales]", named == 0 if power else named >= 0, target)
                if power:
                    add(
                        finding,
                        gen,
                        n,
                        "fixed channel at alpha/2 [scales]",
                        [_fixed_channel(v, ALPHA / 2) for v in vals],
                    )
    for gen in GENERATORS if "intervals" in sections else ():
        truth = simulate_unit_means(gen, POWER_SHARES, n_units=1, replicates=20000, seed=rng)[0][:, 0].mean(0)
        for n in (4, 6, 12):
            vals, _ = simulate_unit_means(gen, POWER_SHARES, n_units=n, replicates=n_sims, seed=rng)
            cover = np.array(
                [
                    (lambda r: (r[1] <= truth) & (truth <= r[2]))(simultaneous_interval(v, 0.95, n_boot, rng))
                    for v in vals
                ]
            )
            add(
                "simultaneous share interval, all channels covered",
                gen,
                n,
                "max studentised deviation (bootstrap)",
                cover.all(1),
                ">= .93",
            )
            add(
                "simultaneous share interval, worst single channel",
                gen,
                n,
                "max studentised deviation (bootstrap)",
                cover.mean(0)[int(np.argmin(cover.mean(0)))] * np.ones(len(cover)),
                ">= .95",
            )
    for gen in GENERATORS if "plates" in sections else ():
        for plates, wells in ((2, 12), (5, 4), (6, 4)):
            vals, codes = simulate_unit_means(
                gen, HARD_NULL, n_units=plates * wells, replicates=n_sims, n_plates=plates, plate_sd=0.3, seed=rng
            )
            plate_means = np.stack([vals[:, codes == k].mean(1) for k in range(plates)], axis=1)
            add(
                f"few plates: {plates} plates x {wells} wells, tie, plate x channel sd .3",
                gen,
                plates,
                "best_channel unit=auto (plates; population)",
                [mcb(v)["named"] >= 0 for v in plate_means],
                "<= .07",
            )
            add(
                f"few plates: {plates} plates x {wells} wells, tie, plate x channel sd .3",
                gen,
                plates * wells,
                "wells as units (scope 'these plates')",
                [mcb(v)["named"] >= 0 for v in vals],
                "not a population claim",
            )
    # screens: 20 transitions of 4 wells each against one control, variance moderated across transitions
    from chanstat.stats.best import pooled_variance, squeeze_prior

    for gen in GENERATORS if "screen" in sections else ():
        for shares, finding in (
            (HARD_NULL, "screen, 20 transitions x 4 wells: naming rate at the hardest null"),
            (POWER_SHARES, "screen, 20 transitions x 4 wells: power at .45 vs .14"),
        ):
            plain, moderated = [], []
            for _ in range(max(1, n_sims // 20)):
                vals, _ = simulate_unit_means(gen, shares, n_units=4, replicates=20, seed=rng)
                prior = squeeze_prior(*np.array([pooled_variance(v) for v in vals]).T)
                plain += [mcb(v)["named"] for v in vals]
                moderated += [mcb(v, prior=prior)["named"] for v in vals]
            hit = (lambda k: k >= 0) if shares is HARD_NULL else (lambda k: k == 0)
            target = "<= .055" if shares is HARD_NULL else ""
            add(finding, gen, 4, "best_channel", [hit(k) for k in plain], target)
            add(finding, gen, 4, "best_channel moderate=True (empirical Bayes)", [hit(k) for k in moderated], target)
    # signed values (Shapley) against zero: right-skewed unit effects with mean 0
    for sigma in (0.25, 0.5, 1.0) if "zero" in sections else ():
        for n in (4, 6, 8, 12, 24):
            raw = rng.lognormal(0.0, sigma, size=(n_sims, n, 1)) - np.exp(sigma**2 / 2)
            x = raw + 0.1 * sigma * rng.standard_normal((n_sims, n, 1))
            t = x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n))
            p_t = 2 * sps.t.sf(np.abs(t[:, 0]), n - 1)
            p_f = np.array([_sign_flip_p(v, "two-sided")[0] for v in x])
            p_b = np.array([_boot_t_p(v, "two-sided", n_boot=n_boot, seed=k)[0] for k, v in enumerate(x)])
            p_h = np.array([_boot_hall_p(v, "two-sided", n_boot=n_boot, seed=k + 1)[0] for k, v in enumerate(x)])
            label = f"lognormal sd {sigma} (skewness {(np.exp(sigma**2) + 2) * np.sqrt(np.exp(sigma**2) - 1):.1f})"
            add("test_against_zero, right-skewed unit means (null)", label, n, "t alone", p_t < ALPHA, "<= .055")
            add(
                "test_against_zero, right-skewed unit means (null)",
                label,
                n,
                "max of t, sign-flip, bootstrap-t (before)",
                np.maximum(np.maximum(p_t, p_f), p_b) < ALPHA,
                "<= .055",
            )
            add(
                "test_against_zero, right-skewed unit means (null)",
                label,
                n,
                "robust (default: also bootstrap of Hall's skewness-corrected t)",
                np.maximum(np.maximum(np.maximum(p_t, p_f), p_b), p_h) < ALPHA,
                "<= .055",
            )
    for n in (6, 8, 12, 24) if "zero" in sections else ():  # power: normal unit means, mean = 1 sd
        x = 1.0 + rng.standard_normal((n_sims // 4, n, 1))
        p_t = 2 * sps.t.sf(np.abs(x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n)))[:, 0], n - 1)
        p_r = np.array(
            [
                max(
                    _sign_flip_p(v, "two-sided")[0],
                    _boot_t_p(v, "two-sided", n_boot=n_boot, seed=k)[0],
                    _boot_hall_p(v, "two-sided", n_boot=n_boot, seed=k + 1)[0],
                )
                for k, v in enumerate(x)
            ]
        )
        add("test_against_zero power, normal unit means, mean = 1 sd", "normal", n, "t alone", p_t < ALPHA)
        add(
            "test_against_zero power, normal unit means, mean = 1 sd",
            "normal",
            n,
            "robust (default)",
            np.maximum(p_t, p_r) < ALPHA,
        )
    if "enrich" in sections:
        rows.extend(camera_study(max(50, n_sims // 10), seed=seed + 7))
    if "link" not in sections:
        return pd.DataFrame(rows)
    # per-cell link: table-wide false discovery under the null (15 families), random map vs size features
    from chanstat.cellprofiler.percell import attribution_feature_link

    any_null, size_hits = [], []
    for _ in range(link_sims):
        objects, features, on = _null_link_data(rng)
        link = attribution_feature_link(objects, features, on=on)
        any_null.append(bool((link["q_value"] < ALPHA).any()))
        size_hits.append(bool((link.loc[link["feature"] == "Cells_AreaShape_Area", "q_value"] < ALPHA).any()))
    add(
        "per-cell link: any q < .05 in the whole table under the null (15 targets)",
        "random map",
        8,
        "density, partial on area, table-wide BH",
        any_null,
        "<= .07",
    )
    add(
        "per-cell link: random map linked to cell area",
        "random map",
        8,
        "density, partial on area, table-wide BH",
        size_hits,
        "<= .07",
    )
    return pd.DataFrame(rows)


def camera_p(x: np.ndarray, is_case: np.ndarray, incidence: np.ndarray, score: str = "magnitude") -> np.ndarray:
    """CAMERA-style competitive p per channel (Wu and Smyth 2012): the inside-minus-outside mean
    of the feature scores, its variance inflated by ``VIF = 1 + (m - 1) mean_corr`` (mean
    correlation of the within-group residuals of the m features of the channel; of their squares
    for |t| scores), t on G - 2 df.

    ``score="magnitude"``: |t - median t| (the competitive test's score; one-sided, "more
    affected"); ``"signed"``: Welch t, two-sided (CAMERA's own, directional sets)."""
    from scipy import stats as sps

    from chanstat.cellprofiler.enrichment import welch_t_many

    t = welch_t_many(x, is_case[None])[0]
    sc = np.abs(t - np.median(t)) if score == "magnitude" else t
    resid = x.copy()
    for g in (is_case, ~is_case):
        resid[g] -= resid[g].mean(0)
    resid /= np.linalg.norm(resid, axis=0)
    n_g = len(sc)
    out = np.empty(incidence.shape[1])
    for c in range(incidence.shape[1]):
        inside = incidence[:, c] > 0
        m = int(inside.sum())
        if score == "magnitude":  # |t| of two features correlate about as rho^2
            r = resid[:, inside].T @ resid[:, inside]
            rho = (float(np.sum(r**2)) - m) / max(m * (m - 1), 1)
        else:
            rho = (float(np.sum(resid[:, inside].sum(1) ** 2)) - m) / max(m * (m - 1), 1)
        vif = 1 + (m - 1) * rho
        diff = sc[inside].mean() - sc[~inside].mean()
        stat = diff / (sc.std(ddof=1) * np.sqrt(vif / m + 1 / (n_g - m)))
        out[c] = sps.t.sf(stat, n_g - 2) if score == "magnitude" else 2 * sps.t.sf(abs(stat), n_g - 2)
    return out


def camera_study(n_sims: int, n_perm: int = 499, seed: int = 7) -> list[dict]:
    """Competitive test (permutation, calibrated) against CAMERA-style variance inflation on real
    LINCS DMSO wells split 12 v 12: any false call under three nulls, Mito called under three
    Mito effects (Holm over the 5 channels in every case)."""
    from chanstat.cellprofiler import feature_columns, parse_features, read
    from chanstat.cellprofiler.enrichment import channel_incidence, competitive_test, feature_channels

    path = LINCS_TABLE
    if not path.exists():
        return []
    lincs = read(path)
    dmso = lincs[lincs["Metadata_broad_sample"] == "DMSO"].reset_index(drop=True)
    features = feature_columns(dmso.columns)
    keep, names, incidence = channel_incidence(feature_channels(parse_features(features)[["feature", "channels"]]))
    x = dmso[features].to_numpy(float)[:, keep]
    centred, sd = x - x.mean(axis=0), x.std(axis=0, ddof=1)
    mito = incidence[:, list(names).index("Mito")] > 0
    scenarios = {
        "null: no shift": (np.zeros_like(sd), False),
        "null: +1 SD on every feature": (sd, False),
        "null: random latent factor (real correlation)": (None, False),
        "power: Mito +1 SD": (sd * mito, True),
        "power: Mito +0.5 SD": (0.5 * sd * mito, True),
        "power: Mito +1 SD under a global +1 SD": (sd * (1 + mito), True),
    }
    rows = []
    for kind, (shift, is_power) in scenarios.items():
        rng = np.random.default_rng(seed)
        hits: dict[str, list[bool]] = {
            "competitive (permutation, ranks)": [],
            "CAMERA-style VIF, |t| scores": [],
            "CAMERA-style VIF, signed t": [],
        }
        for s in range(n_sims):
            is_case = np.zeros(len(x), bool)
            is_case[rng.choice(len(x), len(x) // 2, replace=False)] = True
            if shift is None:
                z = rng.standard_normal(len(x)) @ centred / np.sqrt(len(x) - 1)
                delta = z / np.sqrt(np.mean((z / sd) ** 2))
            else:
                delta = shift
            y = x + is_case[:, None] * delta
            p_comp = competitive_test(y, is_case, incidence, n_perm=n_perm, seed=s)[3]
            for name, p in zip(
                hits, (p_comp, camera_p(y, is_case, incidence, "magnitude"), camera_p(y, is_case, incidence, "signed"))
            ):
                called = cs.adjust(p, "holm") < ALPHA
                hits[name].append(bool(called[list(names).index("Mito")] if is_power else called.any()))
        for name, h in hits.items():
            r = float(np.mean(h))
            rows.append(
                {
                    "finding": "enrichment, LINCS DMSO 12 v 12: " + ("Mito called" if is_power else "any false call"),
                    "generator": kind,
                    "n_units": 24,
                    "procedure": name,
                    "rate": r,
                    "mc_se": _se(r, n_sims),
                    "n_sims": n_sims,
                    "target": "" if is_power else "<= .055",
                }
            )
    return rows


def _null_link_data(rng: np.random.Generator, n_wells: int = 8, per: int = 15, n_features: int = 30):
    wells = np.repeat([f"W{k}" for k in range(n_wells)], per)
    cells = np.arange(1, len(wells) + 1)
    area = rng.integers(50, 400, size=len(wells)).astype(float)
    frames = []
    for comp, frac in (("cells", 1.0), ("nuclei", 0.3), ("cytoplasm", 0.7)):
        for ch in ("DNA", "ER", "RNA", "AGP", "Mito"):
            a = area * frac
            frames.append(
                pd.DataFrame(
                    {
                        "sample": 0,
                        "compartment": comp,
                        "object": cells,
                        "cell": cells,
                        "channel": ch,
                        "mass": a * rng.gamma(4.0, size=len(wells)),
                        "area": a,
                        "Metadata_Plate": "P1",
                        "Metadata_Well": wells,
                    }
                )
            )
    features = pd.DataFrame(
        rng.normal(size=(len(wells), n_features)), columns=[f"Cells_Intensity_F{k}_Mito" for k in range(n_features)]
    )
    features["Cells_AreaShape_Area"] = area
    features["Metadata_ImageNumber"], features["Metadata_ObjectNumber"] = 0, cells
    features["Metadata_Plate"], features["Metadata_Well"] = "P1", wells
    return (
        pd.concat(frames, ignore_index=True),
        features,
        {"sample": "Metadata_ImageNumber", "cell": "Metadata_ObjectNumber"},
    )


def _part_f(args, out: Path) -> None:
    n = args.sims or (300 if args.quick else 2000)
    print(f"\n(f) issue 24: which channel, with the power the data allow; {n} studies per setting")
    t0 = time.perf_counter()
    table = issue24_study(
        n,
        seed=args.seed,
        n_boot=300 if args.quick else 1000,
        link_sims=40 if args.quick else 200,
        sections=tuple(args.sections.split(",")) if args.sections else SECTIONS,
    )
    table.to_csv(out / "issue24.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"({time.perf_counter() - t0:.0f} s)")


# ---------------------------------------------------------------- main


def _part_a(args, out: Path, n_sims: int) -> None:
    print(f"(a) null calibration: {n_sims} simulated data sets per scenario, alpha = {ALPHA}, band {BAND}")
    t0 = time.perf_counter()
    null = null_study(n_sims, n_sims_mixed=min(n_sims, 40 if args.quick else 300), seed=args.seed)
    null.to_csv(out / "null.csv", index=False)
    print(
        null[["scenario", "test", "primary", "unit", "n_valid", "rejection_rate", "mc_se", "in_band"]].to_string(
            index=False
        )
    )
    first = null[(null["scenario"] == next(iter(NULL_SCENARIOS))) & (null["test"] == "friedman_f")].iloc[0]
    print(
        "the primary dominance test is conservative under exchangeable channels (an interior point of its null);"
        " its least-favourable null is in part (d)"
    )
    print(
        f"equal-shares omnibus ({first['test']}, unit {first['unit']}) under strong well nuisance: rejection rate "
        f"{first['rejection_rate']:.4f} +- {first['mc_se']:.4f} -> {'PASS' if first['in_band'] else 'FAIL'} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    pvalues = null_pvalues(min(n_sims, 2000), seed=args.seed + 7)
    plot_null(null, out / "calibration_null.png")
    plot_pvalues(pvalues, out / "calibration_pvalues.png")


def _part_b(args, out: Path, n_sims: int) -> None:
    effects = [0.0, 0.5, 1.0, 1.5, 2.0] if args.quick else [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    print(f"\n(b) power over effect sizes ({n_sims} data sets each)")
    power = power_study(n_sims, effects, seed=args.seed)
    power.to_csv(out / "power.csv", index=False)
    print(power.pivot_table(index="effect", columns="test", values="rejection_rate").round(3).to_string())
    plot_power(power, out / "calibration_power.png")


def _part_c(args, out: Path) -> None:
    print("\n(c) end to end on synthetic images (trains one classifier per data set)")
    try:
        images, images_null = image_study(
            effects=[0.0, 1.0] if args.quick else [0.0, 0.5, 1.0],
            repeats=1 if args.quick else args.repeats,
            n_perm=100 if args.quick else 500,
            quick=args.quick,
            seed=args.seed,
        )
    except ImportError as exc:
        print(f"  skipped: {exc}")
        return
    images.to_csv(out / "images.csv", index=False)
    images_null.to_csv(out / "images_null.csv", index=False)
    print(
        images[
            [
                "effect_size",
                "repeat",
                "method",
                "val_accuracy",
                "p_value",
                "p_value_image_unit",
                "dominant_channel",
                "dominant_share",
                "mito_share",
            ]
        ].to_string(index=False, float_format=lambda v: f"{v:.4g}")
    )
    print(
        "\n  note: 'equal shares' is not the no-phenotype null for vanilla maps (channels differ in content,"
        "\n  so IG rejects at effect 0 too); discriminative maps at effect 0 are exactly zero (oracle"
        "\n  counterfactual = image). A realistic null with real maps: IG at effect 0 with channel labels"
        "\n  permuted per well:"
    )
    print(images_null.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    plot_images(images, out / "calibration_images.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for tables and plots")
    parser.add_argument("--quick", action="store_true", help="small version (fewer simulations, one image repeat)")
    parser.add_argument(
        "--sims", type=int, default=None, help="simulated data sets per scenario (default 2000; quick 200)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="image data sets per effect size in part (c)")
    parser.add_argument("--parts", default="abcdef", help="which parts to run, e.g. 'ab' or 'f' (default: abcdef)")
    parser.add_argument("--sections", default="", help=f"part (f) only: comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--skip-images", action="store_true", help="skip part (c), which trains classifiers (torch)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_sims = args.sims or (200 if args.quick else 2000)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)

    parts = set(args.parts) - ({"c"} if args.skip_images else set())
    if "a" in parts:
        _part_a(args, out, n_sims)
    if "b" in parts:
        _part_b(args, out, n_sims)
    if "c" in parts:
        _part_c(args, out)
    if "d" in parts:
        _part_d(args, out)
    if "e" in parts:
        _part_e(args, out)
    if "f" in parts:
        _part_f(args, out)
    print(f"\nwrote tables and plots to {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
