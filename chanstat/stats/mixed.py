"""Linear mixed model on ILR coordinates of every image: estimates only, no p-value.

The audit behind issue 16 measured its Wald test at 0.072-0.077 rejection under the null
with one plate and 0.26-0.63 with two plates (plate x channel sd 0.3): a large-sample test
with few wells. The model's variance components and CLR effects stay useful descriptions,
so the row keeps them (``statistic`` holds the Wald chi-square for reference) with
``p_value`` NaN; the calibrated parametric test is Hotelling's T^2 on ILR coordinates of
unit means (:func:`chanstat.stats.dominance.hotelling_ilr`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from chanstat.stats.compositional import closure, ilr
from chanstat.stats.design import Group, describe_keys


def _row(test: str, **fields) -> dict:
    return {"test": test, "contrast": "channel", **fields}


MIN_RANDOM_PLATES = 5  # fewer plates: a plate variance is not estimable, plates enter as fixed effects


def mixedlm_rows(group: Group, delta: float) -> list[dict]:
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
    coords = ilr(shares, delta=delta)  # (n_samples, k - 1)
    n_s = coords.shape[0]
    coord = np.tile(np.arange(k - 1), n_s)
    well = np.repeat(group.sample_well, k - 1)
    long = pd.DataFrame({"y": coords.ravel(), "well": well, "well_coord": well * (k - 1) + coord})
    fixed = []
    for j in range(k - 1):
        long[f"c{j}"] = (coord == j).astype(float)
        fixed.append(f"c{j}")
    plate_codes = (
        np.unique(group.sample_plate, return_inverse=True)[1] if group.sample_plate is not None else np.zeros(n_s, int)
    )
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
    clr_effects = ilr_basis(k) @ beta
    components = dict(zip(fit.model.exog_vc.names, np.asarray(fit.vcomp, dtype=float)))
    messages = sorted({str(w.message).split("\n")[0][:120] for w in caught})
    note = (
        "estimates only: the Wald chi-square (statistic) is large-sample and anti-conservative with few wells "
        "or plates, so no p-value is shown; random: "
        + ", ".join(f"{name} var={var:.3g}" for name, var in components.items())
        + f", residual var={float(fit.scale):.3g}; plates: {plates} ({n_plates})"
        + ("" if fit.converged else f"; NOT CONVERGED (Wald={wald:.4g} not reported)")
        + (f"; warnings: {'; '.join(messages)}" if messages else "")
        + "; CLR effects: "
        + ", ".join(f"{c}={e:+.3f}" for c, e in zip(group.channels, clr_effects))
    )
    return [
        _row(
            "mixedlm",
            statistic=wald if fit.converged else np.nan,
            df1=float(k - 1),
            p_value=np.nan,
            effect_size=float(np.linalg.norm(clr_effects)),
            effect_size_name="aitchison_distance_from_uniform",
            note=note,
        )
    ]
