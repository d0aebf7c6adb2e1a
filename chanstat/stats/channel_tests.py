"""Is the attribution share equal across channels? Omnibus, pairwise and mixed-model tests.

The primary (default) test is the **Friedman test on well-level mean shares with the
Iman-Davenport F approximation** (``"friedman_f"``). Why:

* *Replication unit.* Images of one well are not independent, and well-to-well variation in
  channel composition is typically much larger than image noise. Averaging images per well
  first makes each well count once, so the test's null distribution holds whatever the number
  of images per well. In the calibration study (``analyses/calibration.py``: 2 plates x 8 wells
  x 8 images, no channel effect, well sd 1.0 vs image sd 0.3 on the log scale) the default
  rejects 4.9 % of 10 000 null data sets at alpha 0.05; the same test on images rejects 85 %.
* *Compositional data without a transform.* Ranks within a well are the same for shares and
  for their centred log-ratios (CLR is monotone within a composition), so the rank test needs
  neither a log-ratio transform nor a zero replacement, and it is robust to the heavy tails of
  attribution masses.
* *Calibration at few wells.* The chi-square approximation of the Friedman statistic is
  conservative with few blocks (rejection rate 0.039 at 6 wells and 5 channels at alpha 0.05 in
  40 000 simulations); the Iman-Davenport F approximation stays at 0.050 from 6 to 32 wells.
* *Cheap*, so hundreds of simulated data sets are tested in seconds.

The parametric tests (repeated-measures ANOVA, paired t, mixed model) work on CLR/ILR
coordinates, because shares are compositional. The mixed model uses every image (channel
fixed; well, nested in plate, random; with fewer than 5 plates the plates enter as fixed
effects, since a plate variance cannot be estimated from 2-4 plates) but its Wald test is
large-sample, hence anti-conservative with few wells: it is reported, not primary.

Caveat: inference is about the plates in the table. Plate-by-channel variation (a plate whose
staining shifts every well's composition the same way) is not averaged out by 2 plates; with a
planted plate sd of 0.5 every well-level test rejects a null ~37 % of the time. With many
plates, ``unit="plate"`` (or the mixed model, which makes plates random from 5 plates on)
answers the population question.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from chanstat.stats.bootstrap import bootstrap_unit_means, percentile_interval
from chanstat.stats.compositional import DEFAULT_ZERO_DELTA, clr as clr_transform, closure, ilr
from chanstat.stats.design import ALL, PLATE_COLUMN, WELL_COLUMNS, Group, as_tuple, build_groups, describe_keys
from chanstat.stats.inference import ADJUSTMENTS, friedman, paired_t, rm_anova, wilcoxon_paired


@dataclass(frozen=True)
class Options:
    delta: float = DEFAULT_ZERO_DELTA


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
        raise ValueError(f"CLR of group {describe_keys(group.keys)} failed: {exc} (the value must be a non-negative share or mass)") from exc


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
    sphericity = "not assessable" if np.isnan(res.mauchly_p) else ("violated" if res.mauchly_p < 0.05 else "not rejected")
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
                note="" if kind == "wilcoxon" else "on CLR of unit-mean shares (log-ratio of the two channels); estimate is the share difference",
            )
        )
    return rows


MIN_RANDOM_PLATES = 5  # fewer plates: a plate variance is not estimable, plates enter as fixed effects


def _mixedlm_rows(group: Group, options: Options) -> list[dict]:
    """Linear mixed model on ILR coordinates of every image's shares.

    Model, for image i in well w of plate p and ILR coordinate j (an orthonormal basis of the
    CLR space, so the model is the CLR model without its redundant dimension):
    ``y_ij = beta_j + plate_pj + v_wj + e_ij`` with well-by-coordinate ``v`` and residual ``e``
    independent normal. Plates: random (``plate_pj`` normal) with at least
    :data:`MIN_RANDOM_PLATES` plates; with 2-4 plates, fixed plate-by-coordinate effects in
    sum-to-zero coding (a variance cannot be estimated from so few plates; ``beta`` is then the
    average over the plates present); absent with one plate. H0: beta = 0 (all channels' mean
    CLR equal) is tested with a Wald chi-square on k - 1 df. Effect size: the Aitchison
    distance of the fitted centre from the uniform composition, ``||V beta||``. A fit that
    does not converge gets ``p_value`` NaN (its numbers stay in ``note``).
    """
    import statsmodels.formula.api as smf  # imported here: slow to import, only this test needs it
    from scipy import stats as sps

    from chanstat.stats.compositional import ilr_basis

    if group.sample_well is None:
        return [_row("mixedlm", note="no well columns: the mixed model needs wells; skipped")]
    n_wells = len(np.unique(group.sample_well))
    if n_wells < 2:
        return [_row("mixedlm", note=f"only {n_wells} well: no random well effect can be estimated; skipped")]
    k = len(group.channels)
    try:
        shares = closure(group.sample_values)
    except ValueError as exc:
        raise ValueError(f"mixed model of group {describe_keys(group.keys)}: {exc}") from exc
    coords = ilr(shares, delta=options.delta)  # (n_samples, k - 1)
    n_s = coords.shape[0]
    coord = np.tile(np.arange(k - 1), n_s)
    well = np.repeat(group.sample_well, k - 1)
    long = pd.DataFrame({"y": coords.ravel(), "well": well, "well_coord": well * (k - 1) + coord})
    fixed = []
    for j in range(k - 1):
        long[f"c{j}"] = (coord == j).astype(float)
        fixed.append(f"c{j}")
    plate_codes = np.unique(group.sample_plate, return_inverse=True)[1] if group.sample_plate is not None else np.zeros(n_s, int)
    n_plates = int(plate_codes.max()) + 1
    plate = np.repeat(plate_codes, k - 1)
    if n_plates >= MIN_RANDOM_PLATES:
        long["plate"] = plate
        groups, vc, plates = "plate", {"plate_channel": "0 + C(coord)", "well_channel": "0 + C(well_coord)"}, "random"
        long["coord"] = coord
    else:
        # sum-to-zero plate contrasts within each coordinate: beta stays the plate average
        for q in range(n_plates - 1):
            contrast = (plate == q).astype(float) - (plate == n_plates - 1)
            for j in range(k - 1):
                long[f"c{j}_p{q}"] = long[f"c{j}"] * contrast
                fixed.append(f"c{j}_p{q}")
        long["coord"] = coord
        groups, vc = "well", {"well_channel": "0 + C(coord)"}
        plates = "fixed (sum-coded)" if n_plates > 1 else "single"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm("y ~ 0 + " + " + ".join(fixed), long, groups=groups, re_formula="0", vc_formula=vc)
        try:
            fit = model.fit(reml=True)
        except (np.linalg.LinAlgError, ValueError) as exc:
            return [_row("mixedlm", note=f"fit failed: {exc}")]
    if not np.isfinite(fit.scale) or fit.scale <= 1e-10 * max(float(long["y"].var()), np.finfo(float).tiny):
        return [_row("mixedlm", note="no residual variance (every image has the same composition): no test")]
    beta = np.asarray(fit.fe_params, dtype=float)[: k - 1]
    cov = np.asarray(fit.cov_params(), dtype=float)[: k - 1, : k - 1]
    try:
        wald = float(beta @ np.linalg.solve(cov, beta))
    except np.linalg.LinAlgError:
        wald = np.nan
    p_value = float(sps.chi2.sf(wald, k - 1)) if np.isfinite(wald) else np.nan
    clr_effects = ilr_basis(k) @ beta
    components = dict(zip(fit.model.exog_vc.names, np.asarray(fit.vcomp, dtype=float)))
    messages = sorted({str(w.message).split("\n")[0][:120] for w in caught})
    note = (
        "Wald chi-square, large-sample (anti-conservative with few wells); random: "
        + ", ".join(f"{name} var={var:.3g}" for name, var in components.items())
        + f", residual var={float(fit.scale):.3g}; plates: {plates} ({n_plates})"
        + ("" if fit.converged else f"; NOT CONVERGED (Wald={wald:.4g}, p={p_value:.4g} not reported)")
        + (f"; warnings: {'; '.join(messages)}" if messages else "")
        + "; CLR effects: "
        + ", ".join(f"{c}={e:+.3f}" for c, e in zip(group.channels, clr_effects))
    )
    return [
        _row(
            "mixedlm",
            statistic=wald if fit.converged else np.nan,
            df1=float(k - 1),
            p_value=p_value if fit.converged else np.nan,
            effect_size=float(np.linalg.norm(clr_effects)),
            effect_size_name="aitchison_distance_from_uniform",
            note=note,
        )
    ]


#: name -> function(group, options) -> rows. ``friedman_f`` is the default primary test.
TESTS: dict[str, Callable[[Group, Options], list[dict]]] = {
    "friedman_f": lambda g, o: _friedman_rows(g, o, "f"),
    "friedman": lambda g, o: _friedman_rows(g, o, "chisq"),
    "rm_anova": _rm_anova_rows,
    "wilcoxon": lambda g, o: _pairwise_rows(g, o, "wilcoxon"),
    "paired_t": lambda g, o: _pairwise_rows(g, o, "t"),
    "mixedlm": _mixedlm_rows,
}
DEFAULT_TESTS = ("friedman_f", "friedman", "rm_anova", "wilcoxon", "mixedlm")
PRIMARY_TEST = "friedman_f"
PAIRWISE_TESTS = ("wilcoxon", "paired_t")

COLUMNS = (
    "test",
    "contrast",
    "channel_a",
    "channel_b",
    "statistic",
    "df1",
    "df2",
    "p_value",
    "p_adj",
    "p_adj_method",
    "q_value",
    "effect_size",
    "effect_size_name",
    "estimate",
    "unit",
    "n_units",
    "n_samples",
    "primary",
    "dominant_channel",
    "dominant_share",
    "dominant_ci_low",
    "dominant_ci_high",
    "note",
)


def _dominant(group: Group, n_boot: int, ci: float, rng: np.random.Generator) -> dict:
    means = group.values.mean(axis=0)
    top = int(np.argmax(means))
    draws = bootstrap_unit_means(group.values[:, [top]], n_boot if group.n_units > 1 else 0, rng)
    low, high = percentile_interval(draws, ci)
    return {
        "dominant_channel": group.channels[top],
        "dominant_share": float(means[top]),
        "dominant_ci_low": float(low[0]),
        "dominant_ci_high": float(high[0]),
    }


def test_channels(
    mass: pd.DataFrame,
    value: str = "share",
    channel: str = "channel",
    sample: str = "sample",
    well: Sequence[str] = WELL_COLUMNS,
    plate: str | None = PLATE_COLUMN,
    by: Sequence[str] = ("method",),
    unit: str = "auto",
    breakdown: str | None = "transition",
    tests: Sequence[str] = DEFAULT_TESTS,
    primary: str = PRIMARY_TEST,
    padjust: str = "holm",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    delta: float = DEFAULT_ZERO_DELTA,
) -> pd.DataFrame:
    """Test whether the attribution share is equal across channels, at the right unit of replication.

    Every sample (image) must have one row per channel. The analysis runs separately for each
    group of the ``by`` columns (default: each attribution method) and, within it, pooled
    (``breakdown`` = ``"all"``) and per level of the ``breakdown`` column (default: each
    transition ``"A->B"``, i.e. real class -> counterfactual class).

    **Unit of replication.** With ``unit="auto"`` (default) the unit is the well, identified by
    the ``well`` columns (plate and well: well names repeat across plates): the values of a
    well's images are averaged per channel, and every test then treats wells as the
    independent units. If the ``well`` columns are missing, an error names them; pass
    ``unit="image"`` only when images are independent. ``unit="plate"`` averages per plate.
    The mixed model alone uses every image, with well (nested in plate) random effects.

    **Fallback for a group with a single unit** (e.g. a transition observed in one well): its
    rows keep their descriptive columns (dominant channel and share) but get ``p_value`` NaN
    and a ``note`` saying so, and a warning is issued. Nothing is silently computed per image.

    Tests (``tests``, registry :data:`TESTS`; the ``primary`` one always runs):

    ``friedman_f`` (primary)
        Friedman test on unit-mean values, Iman-Davenport F approximation; effect size
        Kendall's W.
    ``friedman``
        the same statistic with the chi-square approximation (= ``scipy.stats.friedmanchisquare``).
    ``rm_anova``
        repeated-measures ANOVA on the CLR of unit-mean shares, Greenhouse-Geisser corrected
        p-value (df shown corrected), Mauchly's sphericity test in ``note``; effect size partial
        eta squared.
    ``wilcoxon`` / ``paired_t``
        every channel pair: Wilcoxon signed-rank on unit-mean shares (rank-biserial
        correlation) or paired t on their CLR (Cohen's d_z).
    ``mixedlm``
        linear mixed model (statsmodels MixedLM) on ILR coordinates of every image's shares:
        channel fixed, well (nested in plate) random; Wald chi-square.

    Parameters
    ----------
    mass : DataFrame
        Tidy channel table, e.g. from :func:`chanstat.stats.channel_mass`.
    value : column tested (default ``"share"``; CLR-based tests need it non-negative).
    channel, sample : channel and sample-id columns.
    well : columns that together identify a well.
    plate : plate column (random plate effects in the mixed model; ``unit="plate"``).
    by : columns defining separate analyses (must exist in ``mass``).
    unit : ``"auto"`` (= well), ``"well"``, ``"plate"`` or ``"image"``.
    breakdown : column with sub-analyses (ignored when absent or all missing); None for none.
    tests : names from :data:`TESTS`.
    primary : the test marked ``primary=True`` in the pooled rows.
    padjust : ``"holm"`` (default) or ``"fdr_bh"``; method of ``p_adj``.
    n_boot, ci, seed : bootstrap (over units) of the dominant channel's mean share.
    delta : zero replacement before log-ratios.

    Returns
    -------
    DataFrame, one row per (group, test[, channel pair]):

    ``method`` (or the ``by`` columns; ``method="all"`` when ``by`` lacks it), ``transition``
    (the ``breakdown`` column; ``"all"`` for pooled rows)
        the group.
    ``test``
        test name (see above).
    ``contrast``, ``channel_a``, ``channel_b``
        ``"channel"`` for omnibus tests; ``"A - B"`` and the two channels for pairwise tests.
    ``statistic``, ``df1``, ``df2``
        test statistic (F, chi-square Q, Wilcoxon W, t, Wald chi-square) and its degrees of
        freedom where it has them.
    ``p_value``
        two-sided p-value.
    ``p_adj``, ``p_adj_method``
        p-value adjusted with ``padjust``: over channel pairs within a group for pairwise tests,
        over the ``by`` groups (same test and breakdown level) for omnibus tests.
    ``q_value``
        Benjamini-Hochberg adjusted p-value over the same family.
    ``effect_size``, ``effect_size_name``
        Kendall's W, partial eta squared, rank-biserial r, Cohen's d_z, or Aitchison distance.
    ``estimate``
        mean over units of ``value_a - value_b`` (pairwise rows).
    ``unit``, ``n_units``, ``n_samples``
        unit of replication used (``"well"``, ``"plate"``, ``"image"``; mixed model:
        ``"image (well random)"``), number of units and of samples in the group.
    ``primary``
        True on the pooled row of the primary test of each ``by`` group.
    ``dominant_channel``, ``dominant_share``, ``dominant_ci_low``, ``dominant_ci_high``
        the channel with the largest mean unit-level value, that mean, and its percentile
        bootstrap interval (resampling units; NaN with one unit or ``n_boot=0``).
    ``note``
        what else to know (approximation, corrections, fallbacks, convergence).
    """
    tests = list(dict.fromkeys([primary, *tests]))
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; known: {sorted(TESTS)}")
    if padjust not in ADJUSTMENTS:
        raise ValueError(f"padjust must be one of {sorted(ADJUSTMENTS)}; got {padjust!r}")
    by = as_tuple(by)
    groups = build_groups(mass, value, channel, sample, as_tuple(well), plate, by, unit, breakdown, who="test_channels")
    options = Options(delta=delta)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    lonely = []
    for group in groups:
        if group.n_units < 2:
            lonely.append(describe_keys(group.keys))
        shared = {
            **group.keys,
            "unit": group.unit,
            "n_units": group.n_units,
            "n_samples": group.sample_values.shape[0],
            **_dominant(group, n_boot, ci, rng),
        }
        pooled = breakdown is None or group.keys.get(breakdown, ALL) == ALL
        for name in tests:
            for row in TESTS[name](group, options):
                row = {**shared, **row, "primary": bool(pooled and name == primary)}
                if name == "mixedlm":
                    row["unit"] = "image (well random)"
                rows.append(row)
    if lonely:
        warnings.warn(
            f"test_channels: {len(lonely)} group(s) have a single {groups[0].unit}, so no p-value: {lonely[:5]}",
            stacklevel=2,
        )
    table = pd.DataFrame(rows)
    if breakdown and breakdown not in table.columns:
        table[breakdown] = ALL
    if "method" not in table.columns:
        table["method"] = ALL
    _adjust(table, by, breakdown, padjust)
    lead = [*dict.fromkeys(["method", *by]), *([breakdown] if breakdown else [])]
    return table[lead + [c for c in COLUMNS if c not in lead]].reset_index(drop=True)


test_channels.__test__ = False  # not a pytest test, despite the name


def _adjust(table: pd.DataFrame, by: tuple[str, ...], breakdown: str | None, padjust: str) -> None:
    """Fill p_adj / q_value: pairwise over pairs within a group, omnibus over groups."""
    adjust, bh = ADJUSTMENTS[padjust], ADJUSTMENTS["fdr_bh"]
    table["p_adj_method"] = padjust
    level = [breakdown] if breakdown else []
    pairwise = table["test"].isin(PAIRWISE_TESTS).to_numpy()
    families = [
        (pairwise, ["test", *by, *level]),
        (~pairwise, ["test", *level]),
    ]
    p_values = table["p_value"].to_numpy(float)
    p_adj = np.full(len(table), np.nan)
    q_value = np.full(len(table), np.nan)
    for mask, keys in families:
        family_of: dict[tuple, list[int]] = {}
        for i, key in zip(np.flatnonzero(mask), table.loc[mask, keys].itertuples(index=False, name=None)):
            family_of.setdefault(key, []).append(i)
        for idx in family_of.values():
            p_adj[idx] = adjust(p_values[idx])
            q_value[idx] = bh(p_values[idx])
    table["p_adj"] = p_adj
    table["q_value"] = q_value
