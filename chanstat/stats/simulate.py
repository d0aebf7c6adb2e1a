"""Synthetic channel-mass tables with plate/well structure, for calibration and power studies."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd

DEFAULT_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def simulate_channel_mass(
    n_plates: int = 2,
    wells_per_plate: int = 8,
    images_per_well: int | tuple[int, int] = 8,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    effect: float = 0.0,
    effect_channel: str = "Mito",
    well_sd: float = 1.0,
    plate_sd: float = 0.0,
    image_sd: float = 0.3,
    method: str = "simulated",
    replicates: int = 1,
    seed: int | np.random.Generator = 0,
) -> pd.DataFrame:
    """A channel-mass table like :func:`chanstat.stats.channel_mass` returns, with known truth.

    Log-masses follow ``log m[i, c] = effect * [c == effect_channel] + plate_sd * u[p, c]
    + well_sd * v[w, c] + image_sd * e[i, c] + s[i]`` with standard normal ``u`` (plate x
    channel), ``v`` (well x channel), ``e`` (image x channel) and an image-level scale ``s``
    that cancels in shares. ``effect = 0`` is the null (channels exchangeable); ``well_sd``
    large compared with ``image_sd`` is strong well nuisance: images of one well share their
    composition. Half of each plate's wells are ``"control"``, half ``"treated"``.

    Parameters
    ----------
    n_plates, wells_per_plate : design sizes.
    images_per_well : images per well, or ``(low, high)``: each well draws its number of
        images uniformly from low..high (unequal images per well; e.g. ``(1, 12)``).
    channels : channel names.
    effect : log-scale increase of ``effect_channel``'s mass (0 = null).
    effect_channel : the channel that carries the effect.
    well_sd, plate_sd, image_sd : nuisance standard deviations on the log scale.
    method : value of the ``method`` column.
    replicates : number of independent data sets, stacked (column ``replicate``, 0-based;
        sample ids restart in each).
    seed : seed or Generator.

    Returns
    -------
    DataFrame with ``replicate``, ``sample``, ``method``, ``channel``, ``mass``, ``share``, ``Metadata_Plate``,
    ``Metadata_Well``, ``Metadata_Site``, ``Metadata_Class``, ``Metadata_Counterfactual_Class``,
    ``transition``.
    """
    channels = [str(c) for c in channels]
    if effect and effect_channel not in channels:
        raise ValueError(f"effect_channel {effect_channel!r} is not one of {channels}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    unequal = not np.isscalar(images_per_well)
    if unequal:  # np.isscalar does not narrow the union
        bounds = cast(tuple[int, int], images_per_well)
        i_low, i_high = int(bounds[0]), int(bounds[1])
    else:
        i_low = i_high = int(cast(int, images_per_well))
    r, p, w, i, k = replicates, n_plates, wells_per_plate, i_high, len(channels)
    if min(r, p, w, i_low) < 1 or i_low > i_high:
        raise ValueError("replicates, n_plates, wells_per_plate and images_per_well must be >= 1 (low <= high)")
    shift = np.array([effect if c == effect_channel else 0.0 for c in channels])
    log_mass = (
        shift
        + plate_sd * rng.standard_normal((r, p, 1, 1, k))
        + well_sd * rng.standard_normal((r, p, w, 1, k))
        + image_sd * rng.standard_normal((r, p, w, i, k))
        + rng.normal(8.0, 0.5, size=(r, p, w, i, 1))
    )
    mass = np.exp(log_mass).reshape(-1, k)
    share = mass / mass.sum(axis=1, keepdims=True)
    n = p * w * i
    plate_idx = np.tile(np.repeat(np.arange(p), w * i), r)
    well_idx = np.tile(np.repeat(np.arange(w), i), p * r)
    treated = well_idx >= w // 2
    plate_names = [f"P{j + 1}" for j in range(p)]
    well_names = [f"W{j + 1:02d}" for j in range(w)]
    class_names = ["control", "treated"]
    transitions = ["control → treated", "treated → control"]

    def categorical(codes: np.ndarray, names: list[str]) -> pd.Categorical:
        # categoricals: a million-row simulation stays fast to build and to group
        return pd.Categorical.from_codes(np.repeat(codes, k), categories=names)

    table = pd.DataFrame(
        {
            "replicate": np.repeat(np.arange(r), n * k),
            "sample": np.tile(np.repeat(np.arange(n), k), r),
            "method": pd.Categorical.from_codes(np.zeros(n * k * r, dtype=int), categories=[method]),
            "channel": pd.Categorical.from_codes(np.tile(np.arange(k), n * r), categories=channels),
            "mass": mass.ravel(),
            "share": share.ravel(),
            "Metadata_Plate": categorical(plate_idx, plate_names),
            "Metadata_Well": categorical(well_idx, well_names),
            "Metadata_Site": np.repeat(np.tile(np.arange(1, i + 1), p * w * r), k),
            "Metadata_Class": categorical(treated.astype(int), class_names),
            "Metadata_Counterfactual_Class": categorical(1 - treated.astype(int), class_names),
            "transition": categorical(treated.astype(int), transitions),
        }
    )
    if not unequal:
        return table
    # unequal images per well: keep the first n_images[well] images of each well
    n_images = rng.integers(i_low, i_high + 1, size=(r, p, w))
    site = np.tile(np.arange(i), r * p * w)
    keep = site < np.repeat(n_images.ravel(), i)
    return table.loc[np.repeat(keep, k)].reset_index(drop=True)


def rejection_rate(
    n_sims: int = 200,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    tests: Sequence[str] = (),
    unit: str = "auto",
    **simulation,
) -> pd.DataFrame:
    """Fraction of simulated data sets in which each test rejects at ``alpha``.

    ``n_sims`` data sets come from :func:`simulate_channel_mass` (``**simulation``, stacked as
    replicates) and are tested in one call of :func:`chanstat.stats.test_channels` with
    ``by=("replicate",)`` (pooled rows, the primary test plus ``tests``; no bootstrap), so the
    rates describe the public function itself.

    Returns
    -------
    DataFrame: ``test``, ``primary``, ``unit``, ``n_sims``, ``n_valid`` (simulations with a
    p-value), ``rejections``, ``rejection_rate``, ``mc_se`` (Monte-Carlo standard error
    ``sqrt(r (1 - r) / n_valid)``), plus the simulation settings.
    """
    from chanstat.stats.channel_tests import test_channels

    table = simulate_channel_mass(replicates=n_sims, seed=seed, **simulation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = test_channels(table, by=("replicate",), tests=tests, unit=unit, breakdown=None)
    omnibus = result[result["contrast"] == "channel"]
    pvalues: dict[tuple[str, bool, str], np.ndarray] = {
        (test, bool(primary), used_unit): part["p_value"].to_numpy(float)
        for (test, primary, used_unit), part in omnibus.groupby(["test", "primary", "unit"], sort=False)
    }
    rows = []
    for (test, primary, used_unit), ps in pvalues.items():
        ps = np.asarray(ps, dtype=float)
        valid = ps[np.isfinite(ps)]
        rate = float((valid < alpha).mean()) if valid.size else np.nan
        rows.append(
            {
                "test": test,
                "primary": primary,
                "unit": used_unit,
                "n_sims": n_sims,
                "n_valid": int(valid.size),
                "rejections": int((valid < alpha).sum()),
                "rejection_rate": rate,
                "mc_se": float(np.sqrt(rate * (1 - rate) / valid.size)) if valid.size else np.nan,
                "alpha": alpha,
                **{k: v for k, v in simulation.items() if np.isscalar(v)},
            }
        )
    return pd.DataFrame(rows)


GENERATORS = ("lognormal", "t3", "dirichlet")


def simulate_unit_means(
    generator: str = "lognormal",
    shares: Sequence[float] = (0.2, 0.2, 0.2, 0.2, 0.2),
    n_units: int = 6,
    replicates: int = 1000,
    images_per_unit: int = 8,
    unit_sd: float = 1.0,
    image_sd: float = 0.3,
    noisy: float = 1.0,
    n_plates: int = 1,
    plate_sd: float = 0.0,
    concentration: float = 15.0,
    image_concentration: float = 200.0,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-mean shares of many simulated studies at once (vectorised), for calibration studies.

    Images are nested in units (wells), units in plates. ``generator``:

    ``"lognormal"``
        ``log m = log shares + plate_sd u[plate] + unit_sd v[unit] + image_sd e[image]``
        (standard normal u, v, e per channel), shares = closure of m.
    ``"t3"``
        the same with Student t (3 df, scaled to unit variance) plate and unit effects: heavy tails.
    ``"dirichlet"``
        unit composition ~ Dirichlet(concentration x shares) (plate effect: the plate's own
        Dirichlet draw as the centre), image shares ~ Dirichlet(image_concentration x unit composition).

    ``noisy`` multiplies the unit-level sd of the first two channels (lognormal, t3): the
    "tied pair is noisier" case. Units are split evenly over ``n_plates`` plates.

    Returns
    -------
    (values, plates): values (replicates, n_units, C) unit-mean shares; plates (n_units,) plate codes.
    """
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}; got {generator!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    p = np.asarray(shares, dtype=float)
    p = p / p.sum()
    c = p.size
    r, n, i = int(replicates), int(n_units), int(images_per_unit)
    plates = np.arange(n) * n_plates // n
    if generator == "dirichlet":
        centre = np.broadcast_to(p, (r, n_plates, c))
        if plate_sd > 0:
            centre = rng.gamma(concentration / plate_sd**2 * p, size=(r, n_plates, c))
            centre = centre / centre.sum(-1, keepdims=True)
        unit = rng.gamma(concentration * centre[:, plates, :])
        unit = unit / unit.sum(-1, keepdims=True)
        img = rng.gamma(image_concentration * unit[:, :, None, :] + 1e-3, size=(r, n, i, c))
        return (img / img.sum(-1, keepdims=True)).mean(axis=2), plates
    sd = np.full(c, unit_sd)
    sd[:2] *= noisy

    def draw(shape):
        z = rng.standard_normal(shape) if generator == "lognormal" else rng.standard_t(3, size=shape) / np.sqrt(3.0)
        return z

    log_m = (
        np.log(p)
        + plate_sd * draw((r, n_plates, 1, c))[:, plates]
        + sd * draw((r, n, 1, c))
        + image_sd * rng.standard_normal((r, n, i, c))
    )
    m = np.exp(log_m - log_m.max(-1, keepdims=True))
    return (m / m.sum(-1, keepdims=True)).mean(axis=2), plates
