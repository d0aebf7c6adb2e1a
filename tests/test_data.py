"""ImageSet validation, the synthetic generator, and the LoadData/TIFF reader on the real field."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from chanstat.data import ImageSet, read, read_loaddata, rescale_percentiles, synthetic, tile

FIELD = "pediatric_atlas_BR00143976_C03_3"
# ch1..ch6 of the pediatric-atlas field, as its data README gives them
FIELD_CHANNELS = {"1": "Brightfield", "2": "ER", "3": "AGP", "4": "Mito", "5": "DNA", "6": "RNA"}


def _meta(n):
    return pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": [f"W{i}" for i in range(n)], "Metadata_Site": 1})


def _valid(**over):
    args = dict(images=np.zeros((3, 2, 8, 6), np.float32), channels=["DNA", "Mito"], labels=[0, 1, 0],
                classes=["a", "b"], meta=_meta(3))
    args.update(over)
    return ImageSet(**args)


class TestImageSetValidation:
    def test_valid_set_keeps_non_square_shape(self):
        s = _valid()
        assert s.shape == (3, 2, 8, 6)
        assert s.images.dtype == torch.float32
        assert list(s.meta["Metadata_Class"]) == ["a", "b", "a"]

    @pytest.mark.parametrize(
        "over, message",
        [
            (dict(channels=["DNA"]), "2 channels but 1 channel names"),
            (dict(channels=["DNA", "DNA"]), "unique"),
            (dict(labels=[0, 2, 0]), "must lie in"),
            (dict(labels=[0, 1]), "shape"),
            (dict(meta=_meta(2)), "rows"),
            (dict(meta=_meta(3).drop(columns="Metadata_Well")), "Metadata_Well"),
            (dict(images=np.zeros((3, 2, 8), np.float32)), r"\(N, C, H, W\)"),
            (dict(counterfactuals=np.zeros((3, 2, 8, 5), np.float32), counterfactual_target=[1, 0, 1]), "match images"),
            (dict(counterfactuals=np.zeros((3, 2, 8, 6), np.float32)), "counterfactual_target are required"),
            (dict(signal_masks=np.zeros((3, 1, 8, 6), bool)), "signal_masks"),
        ],
    )
    def test_bad_input_is_named(self, over, message):
        with pytest.raises(ValueError, match=message):
            _valid(**over)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_nan_and_inf_rejected(self, bad):
        images = np.zeros((3, 2, 8, 6), np.float32)
        images[1, 0, 2, 2] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            _valid(images=images)

    def test_unknown_channel_names(self):
        with pytest.raises(KeyError, match="unknown channel names"):
            _valid().select_channels(["ER"])


class TestSynthetic:
    def test_deterministic_for_a_seed(self):
        a = synthetic(n_plates=1, wells_per_class=1, sites_per_well=2, size=32, seed=3)
        b = synthetic(n_plates=1, wells_per_class=1, sites_per_well=2, size=32, seed=3)
        c = synthetic(n_plates=1, wells_per_class=1, sites_per_well=2, size=32, seed=4)
        assert torch.equal(a.images, b.images) and torch.equal(a.counterfactuals, b.counterfactuals)
        pd.testing.assert_frame_equal(a.meta, b.meta)
        assert not torch.equal(a.images, c.images)

    def test_design_plates_wells_classes(self, tiny_synthetic):
        s = tiny_synthetic
        per_well = s.meta.groupby(["Metadata_Plate", "Metadata_Well"])["Metadata_Class"].agg(["nunique", "size"])
        assert (per_well["nunique"] == 1).all() and (per_well["size"] == 8).all()
        assert s.meta.groupby("Metadata_Class")["Metadata_Well"].size().tolist() == [48, 48]
        assert set(s.objects) == {"nuclei", "cells"}
        # every nucleus lies inside its own cell
        nuc, cel = s.objects["nuclei"], s.objects["cells"]
        assert np.all(cel[nuc > 0] == nuc[nuc > 0])

    @pytest.mark.parametrize("phenotype, channel", [("mito_fragmentation", "Mito"), ("er_intensity", "ER"), ("nuclear_size", "DNA")])
    def test_counterfactual_differs_only_in_planted_channel_inside_mask(self, phenotype, channel):
        s = synthetic(n_plates=1, wells_per_class=2, sites_per_well=2, size=40, phenotype=phenotype, seed=1)
        k = s.channels.index(channel)
        diff = (s.images != s.counterfactuals)
        assert diff[:, k].any()
        others = [i for i in range(len(s.channels)) if i != k]
        assert not diff[:, others].any()
        assert not (diff & ~s.signal_masks).any()
        assert not s.signal_masks[:, others].any()
        assert (s.counterfactual_target == 1 - s.labels).all()

    def test_only_planted_channel_differs_between_classes_without_nuisance(self):
        s = synthetic(n_plates=1, wells_per_class=6, sites_per_well=6, size=48, nuisance=False, seed=2)
        x = s.images.numpy()
        treated = s.labels.numpy() == 1
        flat = x.reshape(*x.shape[:2], -1)
        statistics = {
            "mean": x.mean(axis=(2, 3)),
            "peakiness": np.quantile(flat, 0.995, axis=-1) / flat.mean(axis=-1),
        }
        for name, values in statistics.items():
            pvals = {ch: stats.mannwhitneyu(values[treated, i], values[~treated, i]).pvalue for i, ch in enumerate(s.channels)}
            # 5 channels x 2 statistics: a Bonferroni-sized margin for the unplanted ones
            assert all(p > 0.005 for ch, p in pvals.items() if ch != "Mito"), (name, pvals)
            if name == "peakiness":  # fragmentation turns tubules into bright puncta
                assert pvals["Mito"] < 1e-8, pvals

    def test_effect_size_zero_is_a_true_null(self):
        s = synthetic(n_plates=1, wells_per_class=1, sites_per_well=3, size=32, effect_size=0.0, seed=5)
        assert torch.equal(s.images, s.counterfactuals)
        assert not s.signal_masks.any()

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="unknown phenotype"):
            synthetic(phenotype="nope")
        with pytest.raises(ValueError, match="not among channels"):
            synthetic(channels=["DNA", "ER"])
        with pytest.raises(ValueError, match="effect_size"):
            synthetic(effect_size=-1)


def test_rescale_percentiles_per_channel():
    img = np.stack([np.arange(100.0).reshape(10, 10), 1000 + 3 * np.arange(100.0).reshape(10, 10)])
    out = rescale_percentiles(img, 0, 100)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert out.min() == 0 and out.max() == 1


@pytest.fixture(scope="module")
def field_loaddata(shared_data, tmp_path_factory):
    folder = shared_data / FIELD / "images"
    row = {"Metadata_Plate": "BR00143976", "Metadata_Well": "C03", "Metadata_Site": 3}
    for ch in FIELD_CHANNELS:
        row[f"FileName_Orig{ch}"] = f"r03c03f03p01-ch{ch}sk1fk1fl1.tiff"
        row[f"PathName_Orig{ch}"] = str(folder)
    path = tmp_path_factory.mktemp("loaddata") / "load_data.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_real_field_through_loaddata(field_loaddata, shared_data):
    import tifffile

    stains = ["DNA", "ER", "RNA", "AGP", "Mito"]
    s = read_loaddata(field_loaddata, channels=stains, channel_map=FIELD_CHANNELS)
    assert s.shape == (1, 5, 1080, 1080) and s.channels == stains
    raw_dna = tifffile.imread(shared_data / FIELD / "images" / "r03c03f03p01-ch5sk1fk1fl1.tiff").astype(np.float32)
    assert raw_dna.dtype == np.float32 and raw_dna.shape == (1080, 1080)
    lo, hi = np.percentile(raw_dna, [1, 99.5])
    np.testing.assert_allclose(s.images[0, 0].numpy(), np.clip((raw_dna - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert s.meta.loc[0, "Metadata_Well"] == "C03"
    # the generic reader dispatches on the suffix
    assert read(field_loaddata, channels=["DNA"], channel_map=FIELD_CHANNELS).shape == (1, 1, 1080, 1080)
    with pytest.raises(ValueError, match="unknown channel names"):
        read_loaddata(field_loaddata, channels=["DNA", "Actin"], channel_map=FIELD_CHANNELS)


def test_tiling_keeps_metadata_and_drops_empty_tiles(field_loaddata):
    s = read_loaddata(field_loaddata, channels=["DNA", "Mito"], channel_map=FIELD_CHANNELS)
    tiles = tile(s, 128)
    assert tiles.shape == (64, 2, 128, 128)
    assert (tiles.meta["Metadata_Well"] == "C03").all()
    y, x = tiles.meta.loc[10, ["Metadata_TileY", "Metadata_TileX"]]
    assert torch.equal(tiles.images[10], s.images[0, :, y : y + 128, x : x + 128])
    kept = tile(s, 128, min_foreground=0.05, foreground_channel="DNA")
    assert 0 < len(kept) < len(tiles)


def test_npz_labels_are_kept_when_the_config_leaves_labels_unset(tmp_path):
    from chanstat.data.readers import read_numpy

    images = np.random.default_rng(0).random((4, 2, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([0, 1, 0, 1]))
    data = read_numpy(tmp_path / "set.npz", ["DNA", "Mito"], labels=None)  # what the data stage passes
    assert data.labels.tolist() == [0, 1, 0, 1]
    given = read_numpy(tmp_path / "set.npz", ["DNA", "Mito"], labels=[1, 1, 0, 0])
    assert given.labels.tolist() == [1, 1, 0, 0]
