"""Signed values against zero (chanstat.stats.against_zero): Hall's skewness-corrected t, seeded calibration."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from chanstat import stats as cs
from chanstat.stats.against_zero import _boot_hall_p, _boot_t_p, _hall_t, _sign_flip_p


def test_hall_t_is_the_t_statistic_for_symmetric_units():
    """Sample skewness 0 (values mirrored about their mean): Hall's statistic is the studentised mean."""
    half = np.array([[0.1, 0.5], [0.7, 1.1], [1.6, 0.2]])
    x = np.vstack([half, 2 * half.mean(axis=0) - half])
    t = x.mean(0) / (x.std(0, ddof=1) / np.sqrt(len(x)))
    np.testing.assert_allclose(_hall_t(x, 0.0), t, rtol=1e-12)
    # right skew: the statistic moves up for a given studentised mean (g / (6 n) > 0)
    skewed = np.array([[-0.4], [-0.3], [-0.35], [-0.2], [1.5]])
    u = skewed.mean(0) / skewed.std(0, ddof=1)
    assert _hall_t(skewed, 0.0)[0] > np.sqrt(5) * u[0]


def test_robust_p_is_calibrated_for_moderately_skewed_units():
    """Lognormal (sd .5, skewness 1.75) unit means with mean 0, 8 units, 300 seeded studies: the
    default robust p (largest of t, sign-flip, bootstrap-t, bootstrap Hall-t) rejects at most
    alpha + 2 MC SE; the t-test alone rejects more often."""
    rng = np.random.default_rng(3)
    n, sims = 8, 300
    x = rng.lognormal(0.0, 0.5, size=(sims, n, 1)) - np.exp(0.125)
    p_t = 2 * sps.t.sf(np.abs(x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n)))[:, 0], n - 1)
    p_r = np.array(
        [
            max(
                _sign_flip_p(v, "two-sided")[0],
                _boot_t_p(v, "two-sided", n_boot=400, seed=k)[0],
                _boot_hall_p(v, "two-sided", n_boot=400, seed=k + 1)[0],
            )
            for k, v in enumerate(x)
        ]
    )
    robust = np.mean(np.maximum(p_t, p_r) < 0.05)
    assert robust <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sims)
    assert np.mean(p_t < 0.05) > robust


def test_skewed_units_get_a_note():
    rows = [
        dict(sample=w, method="shapley", channel="Mito", shapley=v, Metadata_Plate="P1", Metadata_Well=f"W{w}")
        for w, v in enumerate([0.1, 0.12, 0.09, 0.11, 0.1, 2.5])
    ]
    out = cs.test_against_zero(pd.DataFrame(rows), breakdown=None)
    assert "skewed" in out["note"].iloc[0]
    assert 0 <= out["p_value"].iloc[0] <= 1


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_boot_hall_p_in_unit_interval(alternative):
    x = np.random.default_rng(0).normal(0.3, 1.0, size=(7, 3))
    p = _boot_hall_p(x, alternative, n_boot=200)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
