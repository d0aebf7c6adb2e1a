"""Row builders of :func:`chanstat.stats.test_channels`: one function per test, on a Group."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from chanstat.stats.compositional import DEFAULT_ZERO_DELTA, closure
from chanstat.stats.compositional import clr as clr_transform
from chanstat.stats.design import Group, describe_keys
from chanstat.stats.dominance import dominance, hotelling_ilr, plate_heterogeneity
from chanstat.stats.inference import friedman, paired_t, rm_anova, wilcoxon_paired


@dataclass(frozen=True)
class Options:
    delta: float = DEFAULT_ZERO_DELTA
    alpha: float = 0.05
    pairwise: str = "t"
    n_perm: int = 999
    seed: int = 0
    compositional: bool = True


def _row(test: str, contrast: str = "channel", **fields) -> dict:
    base = {
        "test": test,
        "contrast": contrast,
        "channel_a": pd.NA,
        "channel_b": pd.NA,
        "statistic": np.nan,
        "df1": np.nan,
        "df2": np.nan,
        "p_value": np.nan,
        "effect_size": np.nan,
        "effect_size_name": "",
        "estimate": np.nan,
        "note": "",
    }
    base.update(fields)
    return base


def _too_few_units(group: Group, test: str, needed: int) -> list[dict] | None:
    if group.n_units >= needed:
        return None
    return [
        _row(
            test,
            note=f"only {group.n_units} {group.unit}(s): at least {needed} needed for this test; no p-value "
            f"(pass unit='image' to test images as if independent)",
        )
    ]


def _dominance_rows(group: Group, options: Options) -> list[dict]:
    short = _too_few_units(group, "dominance", 3 if options.pairwise == "t" else 2)
    if short:
        return short
    res = dominance(group.values, alpha=options.alpha, pairwise=options.pairwise, seed=options.seed)
    k = res["candidate"]
    names = group.channels
    others = [j for j in range(len(names)) if j != k]
    means = res["means"]
    worst = others[int(np.argmax(res["p"][k, others]))]
    diffs = group.values[:, [k]] - group.values[:, others]
    with np.errstate(invalid="ignore", divide="ignore"):
        dz = diffs.mean(axis=0) / diffs.std(axis=0, ddof=1)
    n = group.n_units
    note = (
        f"intersection-union test of '{names[k]} > every other channel': paired "
        f"{'t' if options.pairwise == 't' else 'sign-flip'} tests on {group.unit} means, p = largest pairwise "
        f"p (2 x one-sided, so naming a channel when two tie happens with probability <= alpha); hardest "
        f"pair {names[k]} > {names[worst]}"
    )
    if options.pairwise == "sign_flip" and n < 6:
        note += f"; with {n} units a sign-flip p-value cannot fall below {min(1.0, 2 / 2**n):.3g}"
    rows = [
        _row(
            "dominance",
            channel_a=names[k],
            channel_b=names[worst],
            statistic=float(res["t"][k, worst]),
            df1=float(n - 1),
            p_value=res["p_value"],
            effect_size=float(np.nanmin(dz)) if np.isfinite(dz).any() else np.nan,
            effect_size_name="min_cohen_dz",
            estimate=float(means[k] - means[others].max()),
            note=note,
        )
    ]
    for j in others:
        if j == worst:  # the hardest pair is the dominance row itself: one row per test
            continue
        rows.append(
            _row(
                "dominance_pair",
                contrast=f"{names[k]} > {names[j]}",
                channel_a=names[k],
                channel_b=names[j],
                statistic=float(res["t"][k, j]),
                df1=float(n - 1),
                p_value=float(res["p"][k, j]),
                estimate=float(means[k] - means[j]),
                note="component of the dominance test (no adjustment needed: intersection-union)",
            )
        )
    return rows


def _hotelling_rows(group: Group, options: Options) -> list[dict]:
    k = len(group.channels)
    short = _too_few_units(group, "hotelling", k)
    if short:
        return short
    try:
        res = hotelling_ilr(group.values, delta=options.delta)
    except ValueError as exc:
        return [_row("hotelling", note=f"not applicable: {exc} (Hotelling needs non-negative shares)")]
    note = "Hotelling T^2 on ILR coordinates of unit-mean compositions; H0: equal (geometric mean) shares"
    if not np.isfinite(res["p_value"]):
        note = "singular covariance of the ILR coordinates: no test"
    return [
        _row(
            "hotelling",
            statistic=res["f"],
            df1=res["df1"],
            df2=res["df2"],
            p_value=res["p_value"],
            effect_size=res["distance"],
            effect_size_name="aitchison_distance_from_uniform",
            note=note + (f"; T^2={res['t2']:.4g}" if np.isfinite(res["t2"]) else ""),
        )
    ]


def _plate_rows(group: Group, options: Options) -> list[dict]:
    plates = group.unit_plate
    if group.unit != "well" or plates is None:
        return [_row("plate_x_channel", note=f"not applicable with unit={group.unit}")]
    n_plates = len(np.unique(plates))
    if n_plates < 2:
        return [_row("plate_x_channel", note="one plate: no plate x channel heterogeneity to test")]
    try:
        res = plate_heterogeneity(
            group.values,
            plates,
            n_perm=options.n_perm,
            seed=options.seed,
            delta=options.delta,
            compositional=options.compositional,
        )
    except ValueError:
        res = plate_heterogeneity(group.values, plates, n_perm=options.n_perm, seed=options.seed, compositional=False)
    return [
        _row(
            "plate_x_channel",
            statistic=res["statistic"],
            df1=float(n_plates - 1),
            p_value=res["p_value"],
            note=f"permutation test ({res['n_perm']} relabellings of wells across {n_plates} plates) of equal "
            f"composition across plates; a small p means the well-level answer holds for these plates only",
        )
    ]


def _friedman_rows(group: Group, options: Options, approximation: str) -> list[dict]:
    test = "friedman_f" if approximation == "f" else "friedman"
    short = _too_few_units(group, test, 2)
    if short:
        return short
    res = friedman(group.values)
    w = float(res.kendall_w)
    note = "" if np.isfinite(w) else "every unit has all channels tied; no test"
    if approximation == "f":
        if w >= 1:
            note = "perfect concordance (Kendall's W = 1): F is infinite; p-value from the chi-square approximation"
        return [
            _row(
                test,
                statistic=float(res.f),
                df1=float(res.df1),
                df2=float(res.df2),
                p_value=float(res.p_f),
                effect_size=w,
                effect_size_name="kendall_w",
                note=note or f"Iman-Davenport F; chi-square Q={float(res.q):.4g}, p={float(res.p_chisq):.4g}",
            )
        ]
    return [
        _row(
            test,
            statistic=float(res.q),
            df1=float(len(group.channels) - 1),
            p_value=float(res.p_chisq),
            effect_size=w,
            effect_size_name="kendall_w",
            note=note,
        )
    ]


def _unit_clr(group: Group, options: Options) -> np.ndarray:
    try:
        return clr_transform(closure(group.values), delta=options.delta)
    except ValueError as exc:
        raise ValueError(
            f"CLR of group {describe_keys(group.keys)} failed: {exc} (the value must be a non-negative share or mass)"
        ) from exc


def _rm_anova_rows(group: Group, options: Options) -> list[dict]:
    short = _too_few_units(group, "rm_anova", 2)
    if short:
        return short
    res = rm_anova(_unit_clr(group, options))
    if not np.isfinite(res.p_gg):
        return [
            _row(
                "rm_anova",
                statistic=res.f,
                effect_size=res.partial_eta_squared,
                effect_size_name="partial_eta_squared",
                note="no residual variance (the CLR profile is identical in every unit): F is undefined; no p-value",
            )
        ]
    sphericity = (
        "not assessable" if np.isnan(res.mauchly_p) else ("violated" if res.mauchly_p < 0.05 else "not rejected")
    )
    return [
        _row(
            "rm_anova",
            statistic=res.f,
            df1=res.df1 * res.eps_gg,
            df2=res.df2 * res.eps_gg,
            p_value=res.p_gg,
            effect_size=res.partial_eta_squared,
            effect_size_name="partial_eta_squared",
            note=(
                f"CLR of unit-mean shares; Greenhouse-Geisser eps={res.eps_gg:.3f} (df shown corrected); "
                f"uncorrected p={res.p:.4g}; Mauchly W={res.mauchly_w:.3g}, p={res.mauchly_p:.3g} (sphericity {sphericity})"
            ),
        )
    ]


def _pairwise_rows(group: Group, options: Options, kind: str) -> list[dict]:
    test = "wilcoxon" if kind == "wilcoxon" else "paired_t"
    short = _too_few_units(group, test, 2)
    if short:
        return [{**short[0], "contrast": "pairs"}]
    data = group.values if kind == "wilcoxon" else _unit_clr(group, options)
    n_pairs = len(group.channels) * (len(group.channels) - 1) // 2
    floor = min(1.0, n_pairs * 2 / 2**group.n_units)
    reach = (
        (
            f"; with {group.n_units} units the smallest Holm-adjusted p over {n_pairs} pairs is {floor:.3g}"
            + (": no pair can reach 0.05" if floor >= 0.05 else "")
        )
        if kind == "wilcoxon"
        else ""
    )
    rows = []
    for i, j in combinations(range(len(group.channels)), 2):
        a, b = group.channels[i], group.channels[j]
        res = (wilcoxon_paired if kind == "wilcoxon" else paired_t)(data[:, i], data[:, j])
        rows.append(
            _row(
                test,
                contrast=f"{a} - {b}",
                channel_a=a,
                channel_b=b,
                statistic=res.statistic,
                df1=float(res.n - 1) if kind == "t" else np.nan,
                p_value=res.p,
                effect_size=res.effect_size,
                effect_size_name="rank_biserial" if kind == "wilcoxon" else "cohen_dz",
                estimate=float(np.mean(group.values[:, i] - group.values[:, j])),
                note=reach.lstrip("; ")
                if kind == "wilcoxon"
                else "on CLR of unit-mean shares (log-ratio of the two channels); estimate is the share difference",
            )
        )
    return rows
