"""Bad statistics inputs are refused in one line naming the value, never answered silently."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import chanstat as cs
from chanstat.stats import simulate_channel_mass
from chanstat.stats.design import drop_incomplete
from chanstat.stats.stage import _label


@pytest.fixture(scope="module")
def mass():
    return simulate_channel_mass(effect=1.0, seed=0)


@pytest.mark.parametrize("verb", ["test_channels", "channel_share_ci", "test_against_zero"])
def test_a_breakdown_column_that_does_not_exist_is_an_error(mass, verb):
    options = {"value": "share"} if verb == "test_against_zero" else {"n_boot": 20}
    with pytest.raises(ValueError, match=r"breakdown column 'nope' is not in the table") as info:
        getattr(cs, verb)(mass, breakdown="nope", **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("verb", ["test_channels", "channel_share_ci"])
@pytest.mark.parametrize("ci", [1.5, 0, -0.1, float("nan")])
def test_an_interval_level_outside_zero_one_is_named(mass, verb, ci):
    with pytest.raises(ValueError, match=rf"{verb}: ci must lie strictly between 0 and 1"):
        getattr(cs, verb)(mass, ci=ci, n_boot=20)


def test_dropped_images_are_counted_once_whatever_the_methods():
    table = pd.DataFrame({
        "sample": np.repeat([0, 1, 2], 4), "method": np.tile(np.repeat(["a", "b"], 2), 3),
        "channel": np.tile(["DNA", "Mito"], 6), "share": [np.nan, np.nan, np.nan, np.nan, .5, .5, .5, .5, .2, .8, .3, .7],
    })
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept, n = drop_incomplete(table, "share", "sample", ("method",), who="x")
    assert n == 1 and set(kept["sample"]) == {1, 2}
    assert "dropped 1 image(s) (2 image x method rows)" in str(caught[0].message)


def test_a_test_row_without_a_breakdown_is_labelled_by_its_method():
    Row = pd.DataFrame({"method": ["d_ig"], "dominant_channel": ["Mito"]}).itertuples(index=False)
    assert _label(next(Row)) == "d_ig"
    row = next(pd.DataFrame({"method": ["d_ig"], "transition": ["a → b"]}).itertuples(index=False))
    assert _label(row) == "d_ig [a → b]"
