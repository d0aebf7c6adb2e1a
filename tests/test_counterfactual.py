"""Counterfactual providers: shapes, targets, quality table, flip rates, file validation, stage."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn

from chanstat.counterfactual import (
    PROVIDERS,
    QUALITY_COLUMNS,
    SUMMARY_COLUMNS,
    CounterfactualFileError,
    choose_targets,
    counterfactual_quality,
    generate_counterfactuals,
    get_provider,
    optimise_counterfactuals,
    pair_counterfactuals,
    total_variation,
)
from chanstat.data import ImageSet

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def small_set(n=8, c=5, h=12, w=10, seed=0, with_cf=False) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.random((n, c, h, w), dtype=np.float32)
    labels = np.arange(n) % 2
    meta = pd.DataFrame({
        "Metadata_Plate": [("P1", "P1", "P2", "P2")[i % 4] for i in range(n)],  # both classes on each plate
        "Metadata_Well": [f"w{i // 2}" for i in range(n)],
        "Metadata_Site": 1,
    })
    cf = rng.random((n, c, h, w), dtype=np.float32) if with_cf else None
    return ImageSet(images, CHANNELS[:c], labels, ["control", "treated"], meta,
                    counterfactuals=cf, counterfactual_target=1 - labels if with_cf else None)


class MitoMeanModel(nn.Module):
    """logits = (0, k * (mean Mito - 0.5)): only the Mito channel matters."""

    def __init__(self, channel: int = 4, k: float = 40.0):
        super().__init__()
        self.channel, self.k = channel, k
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        score = self.k * (x[:, self.channel].mean(dim=(1, 2)) - 0.5) + 0 * self.dummy
        return torch.stack([torch.zeros_like(score), score], dim=1)

    def embed(self, x):
        return x.mean(dim=(2, 3))


# ---------------------------------------------------------------- targets


def test_target_rules():
    labels = torch.tensor([0, 1, 2, 0])
    classes = ["a", "b", "c"]
    assert choose_targets(torch.tensor([0, 1, 1]), ["a", "b"]).tolist() == [1, 0, 0]
    assert choose_targets(labels, classes, "next").tolist() == [1, 2, 0, 1]
    probs = torch.tensor([[0.5, 0.1, 0.4], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.9, 0.06, 0.04]])
    assert choose_targets(labels, classes, "most_likely", probs).tolist() == [2, 0, 0, 1]
    assert choose_targets(labels, classes, "auto", probs).tolist() == [2, 0, 0, 1]
    # a class name: everyone else targets it; its own images fall back to the most likely other
    assert choose_targets(labels, classes, "a", probs).tolist() == [2, 0, 0, 1]
    with pytest.raises(ValueError, match="exactly two classes"):
        choose_targets(labels, classes, "other")
    with pytest.raises(ValueError, match="needs the classifier's probabilities"):
        choose_targets(labels, classes, "most_likely")
    with pytest.raises(ValueError, match="unknown target rule"):
        choose_targets(labels, classes, "sideways")


# ---------------------------------------------------------------- quality table


def test_quality_table_recomputes_distance_share_and_flip():
    s = small_set(with_cf=True)
    model = MitoMeanModel()
    q = counterfactual_quality(s.images, s.counterfactuals, s.labels, s.counterfactual_target, s.channels, s.classes,
                               model=model, confidence=0.7, provider="test")
    assert list(q.columns) == list(QUALITY_COLUMNS)
    assert len(q) == len(s) * len(s.channels)
    expected = np.abs(s.images.numpy() - s.counterfactuals.numpy()).mean(axis=(2, 3))
    np.testing.assert_allclose(q["mean_abs_diff"].to_numpy().reshape(len(s), -1), expected, rtol=1e-6)
    np.testing.assert_allclose(q.groupby("sample")["change_share"].sum().to_numpy(), 1.0, rtol=1e-6)
    with torch.no_grad():
        p = torch.softmax(model(s.counterfactuals), 1)[torch.arange(len(s)), s.counterfactual_target].numpy()
    per_sample = q.drop_duplicates("sample")
    np.testing.assert_allclose(per_sample["p_target"].to_numpy(), p, rtol=1e-5)
    assert per_sample["flipped"].tolist() == (p > 0.5).tolist()
    assert per_sample["success"].tolist() == (p >= 0.7).tolist()
    from chanstat.counterfactual import summarise_quality

    summary = summarise_quality(q)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary["flip_rate"].iloc[0] == pytest.approx((p > 0.5).mean())
    np.testing.assert_allclose(summary["mean_abs_diff"].to_numpy(), expected.mean(axis=0), rtol=1e-6)


# ---------------------------------------------------------------- registry


def test_registry_and_option_errors():
    assert set(PROVIDERS) == {"oracle", "from_files", "nearest", "optimise", "generator"}
    with pytest.raises(ValueError, match="unknown counterfactual provider 'magic'"):
        get_provider("magic")
    with pytest.raises(ValueError, match=r"does not take options \['l2'\]"):
        get_provider("optimise", MitoMeanModel(), l2=1.0)
    with pytest.raises(ValueError, match="needs a trained classifier"):
        get_provider("nearest", None)


# ---------------------------------------------------------------- oracle


def test_oracle_on_trained_model(tiny_synthetic, trained_model):
    s = tiny_synthetic
    res = generate_counterfactuals(s, "oracle", model=trained_model)
    assert res.counterfactuals.shape == s.images.shape
    assert torch.equal(res.counterfactuals, s.counterfactuals)
    assert torch.equal(res.counterfactual_target, s.counterfactual_target)
    with torch.no_grad():
        flips = (trained_model(s.counterfactuals).argmax(1) == s.counterfactual_target).float().mean().item()
    assert res.summary["flip_rate"].iloc[0] == pytest.approx(flips)
    # the synthetic phenotype lives in one channel: only it differs between image and oracle counterfactual
    planted = s.meta.attrs.get("planted_channel", "Mito")
    share = res.summary.set_index("channel")["change_share"]
    assert share[planted] == pytest.approx(1.0) and share.drop(planted).max() == 0.0


def test_oracle_needs_counterfactuals():
    with pytest.raises(ValueError, match="needs a data set with counterfactuals"):
        generate_counterfactuals(small_set(), "oracle")


# ---------------------------------------------------------------- nearest


def test_nearest_is_the_closest_target_image_in_embedding(tiny_synthetic, trained_model):
    s = tiny_synthetic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the loose mode may warn about its flip rate
        res = generate_counterfactuals(s, "nearest", model=trained_model, require_predicted=False)
    assert res.counterfactuals.shape == s.images.shape
    with torch.no_grad():
        feats = trained_model.embed(s.images).numpy()
    per_sample = res.quality.drop_duplicates("sample")
    neighbour = per_sample["neighbour"].to_numpy().copy()
    labels = s.labels.numpy()
    for i in range(len(s)):
        pool = np.flatnonzero(labels == 1 - labels[i])
        d = cdist(feats[i : i + 1], feats[pool])[0]
        assert neighbour[i] == pool[np.argmin(d)]
        assert torch.equal(res.counterfactuals[i], s.images[neighbour[i]])
    assert (labels[neighbour] == res.counterfactual_target.numpy()).all()
    # the flip rate is the classifier's accuracy on the chosen neighbours (often low: the nearest
    # target-class images are the ones that look most like the real class)
    with torch.no_grad():
        on_neighbours = (trained_model(s.images[neighbour]).argmax(1) == res.counterfactual_target).float().mean().item()
    assert res.summary["flip_rate"].iloc[0] == pytest.approx(on_neighbours)
    assert res.info["flip_rate"] == pytest.approx(on_neighbours)
    assert res.info["n_distinct_neighbours"] == len(np.unique(neighbour))
    # the default restricts candidates to images the classifier assigns to the target: every pair flips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        strict = generate_counterfactuals(s, "nearest", model=trained_model)
    assert strict.summary["flip_rate"].iloc[0] == 1.0


def _decoy_set() -> ImageSet:
    """Six control images (Mito 0.40) and two treated: a misclassified decoy (Mito 0.45, the
    nearest treated image to every control) and a correctly classified one (Mito 0.80)."""
    s = small_set(n=8)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    images = s.images.clone()
    images[:, 4] = torch.as_tensor([0.40, 0.401, 0.402, 0.403, 0.404, 0.405, 0.45, 0.80])[:, None, None]
    return ImageSet(images, s.channels, labels, s.classes, s.meta)


def test_nearest_defaults_to_neighbours_the_classifier_puts_in_the_target_class():
    s = _decoy_set()
    model = MitoMeanModel()  # predicts treated iff mean Mito > 0.5: the decoy is misclassified
    with pytest.warns(UserWarning, match="repeat"):  # 8 images, 2 distinct neighbours
        res = generate_counterfactuals(s, "nearest", model=model, space="embed")
    neighbour = res.quality.drop_duplicates("sample")["neighbour"].to_numpy()
    assert (neighbour[:6] == 7).all()  # not the nearer decoy 6
    assert res.info["flip_rate"] == 1.0 and res.summary["flip_rate"].iloc[0] == 1.0
    assert res.info["n_distinct_neighbours"] == len(np.unique(neighbour)) == 2
    assert res.info["max_neighbour_reuse"] == 6


def test_nearest_warns_about_a_low_flip_rate():
    s = _decoy_set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = generate_counterfactuals(s, "nearest", model=MitoMeanModel(), require_predicted=False)
    messages = " | ".join(str(w.message) for w in caught)
    assert "only 25% of the 8 neighbours" in messages and "8 images share 2 distinct neighbours" in messages
    neighbour = res.quality.drop_duplicates("sample")["neighbour"].to_numpy()
    assert (neighbour[:6] == 6).all()  # the decoy, nearest in the embedding
    assert res.info["flip_rate"] == pytest.approx(2 / 8)


def test_nearest_within_groups_and_pixel_space():
    s = small_set(n=8)
    res = generate_counterfactuals(s, "nearest", model=MitoMeanModel(), space="pixels", match=["Metadata_Plate"],
                                   require_predicted=False)  # every target-class image of the plate is a candidate
    q = res.quality.drop_duplicates("sample")
    flat = s.images.reshape(len(s), -1).numpy()
    plates = s.meta["Metadata_Plate"].to_numpy()
    for i, j in enumerate(q["neighbour"]):
        pool = np.flatnonzero((s.labels.numpy() == 1 - s.labels.numpy()[i]) & (plates == plates[i]))
        assert j == pool[np.argmin(cdist(flat[i : i + 1], flat[pool])[0])]
    with pytest.raises(ValueError, match="not in the metadata"):
        generate_counterfactuals(s, "nearest", model=MitoMeanModel(), match=["Metadata_Row"])


# ---------------------------------------------------------------- optimise


@pytest.mark.parametrize("optimizer", ["adam", "gradient"])
def test_optimise_changes_only_the_channel_the_model_reads(optimizer):
    s = small_set(n=6)
    s.images[:, 4] = torch.where(s.labels[:, None, None] == 1, 0.6, 0.4) + 0.0 * s.images[:, 4]
    model = MitoMeanModel()
    res = generate_counterfactuals(s, "optimise", model=model, l1=0.0, tv=0.0, lr=0.02, max_steps=100, confidence=0.9,
                                   optimizer=optimizer)
    assert res.counterfactuals.shape == s.images.shape
    changed = (res.counterfactuals != s.images).flatten(2).any(2)
    assert not changed[:, :4].any() and changed[:, 4].all()
    per_sample = res.quality.drop_duplicates("sample")
    assert per_sample["success"].all() and (per_sample["p_target"] >= 0.9).all()
    # early stop: the first step at which the confidence is reached, not later
    p = torch.softmax(model(res.counterfactuals), 1)[torch.arange(len(s)), res.counterfactual_target]
    assert (p >= 0.9).all() and (p < 0.99).all()
    assert res.info["converged_rate"] == 1.0


def test_optimise_respects_step_sizes_range_and_batching():
    s = small_set(n=6)
    model = MitoMeanModel(k=4.0)
    kwargs = dict(l1=0.01, tv=0.01, lr=0.05, max_steps=20, confidence=0.99, data_range=(0.0, 1.0))
    cf_a, det = optimise_counterfactuals(model, s.images, 1 - s.labels, step_size=torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]),
                                         batch_size=6, **kwargs)
    cf_b, _ = optimise_counterfactuals(model, s.images, 1 - s.labels, step_size=torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]),
                                       batch_size=2, **kwargs)
    torch.testing.assert_close(cf_a, cf_b)  # per-sample optimiser state: the batch does not matter
    assert torch.equal(cf_a[:, 2], s.images[:, 2])  # step size 0 freezes RNA
    assert cf_a.min() >= 0.0 and cf_a.max() <= 1.0
    assert list(det.columns) == ["n_steps", "converged", "final_loss"]
    assert (det["n_steps"] <= 20).all()


def test_total_variation_closed_form():
    x = torch.zeros(1, 1, 3, 4)
    x[0, 0, :, 2:] = 1.0  # one vertical edge: 3 of 9 horizontal pairs differ, no vertical pair
    assert total_variation(x).item() == pytest.approx(3 / 9)


def test_optimise_flips_the_trained_model(tiny_synthetic, trained_model):
    s = tiny_synthetic.subset(np.arange(0, len(tiny_synthetic), 6))
    res = generate_counterfactuals(s, "optimise", model=trained_model, max_steps=60, lr=0.02, confidence=0.8,
                                   step_size={"default": 1.0})
    assert res.counterfactuals.shape == s.images.shape
    assert res.summary["flip_rate"].iloc[0] >= 0.9
    assert res.summary["success_rate"].iloc[0] >= 0.9
    assert (res.counterfactuals >= s.images.min()).all() and (res.counterfactuals <= s.images.max()).all()


def test_step_size_table_errors():
    from chanstat.counterfactual import channel_step_sizes

    assert channel_step_sizes({"Mito": 2.0, "default": 0.5}, CHANNELS).tolist() == [0.5, 0.5, 0.5, 0.5, 2.0]
    with pytest.raises(ValueError, match="unknown channels"):
        channel_step_sizes({"Actin": 1.0}, CHANNELS)
    with pytest.raises(ValueError, match="5 channels"):
        channel_step_sizes([1.0, 2.0], CHANNELS)


# ---------------------------------------------------------------- from_files


def keyed_set(n=6, seed=0) -> ImageSet:
    """small_set whose images are told apart by (plate, well, site)."""
    s = small_set(n=n, seed=seed)
    meta = s.meta.copy()
    meta["Metadata_Site"] = np.arange(n)
    return ImageSet(s.images, s.channels, s.labels, s.classes, meta)


def _write_csv(tmp_path, arrays, meta, targets=None, channels=CHANNELS, drop=None):
    """A LoadData-style counterfactual CSV: one row per array, keyed by the rows of ``meta``."""
    import tifffile

    folder = tmp_path / "cf_images"
    folder.mkdir(exist_ok=True)
    rows = []
    for row, arr in enumerate(arrays):
        rec = {k: meta.iloc[row][k] for k in ("Metadata_Plate", "Metadata_Well", "Metadata_Site")}
        for ci, ch in enumerate(channels):
            name = f"cf{row}_{ch}.tiff"
            tifffile.imwrite(folder / name, arr[ci])
            rec[f"FileName_Orig{ch}"] = name
            rec[f"PathName_Orig{ch}"] = "cf_images"
        if targets is not None:
            rec["Metadata_TargetClass"] = targets[row]
        rows.append(rec)
    table = pd.DataFrame(rows)
    if drop:
        table = table.drop(columns=drop)
    path = tmp_path / "counterfactuals.csv"
    table.to_csv(path, index=False)
    return path


def test_from_files_csv_pairs_by_metadata_keys(tmp_path):
    s = keyed_set(n=6)
    cf = np.random.default_rng(3).random(s.images.shape, dtype=np.float32)
    order = np.array([3, 0, 5, 1, 4, 2])
    targets = [s.classes[1 - int(s.labels[i])] for i in order]
    path = _write_csv(tmp_path, cf[order], s.meta.iloc[order], targets)
    res = generate_counterfactuals(s, "from_files", path=path)
    np.testing.assert_array_equal(res.counterfactuals.numpy(), cf)
    assert res.counterfactual_target.tolist() == (1 - s.labels).tolist()
    assert np.isnan(res.summary["flip_rate"].iloc[0])  # no model given


def test_from_files_pairs_a_shuffled_subset(tmp_path):
    s = keyed_set(n=6)
    cf = np.random.default_rng(6).random(s.images.shape, dtype=np.float32)
    targets = [s.classes[1 - int(k)] for k in s.labels]
    path = _write_csv(tmp_path, cf, s.meta, targets)  # counterfactuals of all six images, in order
    picked = [4, 1, 3]
    subset = s.subset(picked)  # fewer images, another order: row numbers no longer pair
    res = generate_counterfactuals(subset, "from_files", path=path)
    np.testing.assert_array_equal(res.counterfactuals.numpy(), cf[picked])
    assert res.counterfactual_target.tolist() == (1 - s.labels[picked]).tolist()
    # arrays with a key table pair the same way
    np.save(tmp_path / "cf.npy", cf)
    s.meta.to_csv(tmp_path / "keys.csv", index=False)
    res = generate_counterfactuals(subset, "from_files", path=tmp_path / "cf.npy", key_table=tmp_path / "keys.csv")
    np.testing.assert_array_equal(res.counterfactuals.numpy(), cf[picked])


def test_from_files_keys_must_identify_images(tmp_path):
    s = small_set(n=4)  # images 0 and 1 share plate, well and site
    good = np.zeros(s.images.shape, np.float32)
    path = _write_csv(tmp_path, good, s.meta)
    with pytest.raises(CounterfactualFileError, match="do not identify the images uniquely"):
        generate_counterfactuals(s, "from_files", path=path)
    k = keyed_set(n=4)
    path = _write_csv(tmp_path, good[:3], k.meta.iloc[:3])
    with pytest.raises(CounterfactualFileError, match="1 of 4 images have no counterfactual"):
        generate_counterfactuals(k, "from_files", path=path)
    path = _write_csv(tmp_path, good, k.meta, drop=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
    with pytest.raises(CounterfactualFileError, match="share no Metadata_"):
        generate_counterfactuals(k, "from_files", path=path)


def test_from_files_npy_and_zarr(tmp_path):
    from chanstat.io import write_arrays

    s = small_set(n=4)
    cf = np.random.default_rng(4).random(s.images.shape, dtype=np.float32)
    np.save(tmp_path / "cf.npy", cf[::-1].copy())
    np.save(tmp_path / "idx.npy", np.arange(4)[::-1].copy())
    res = generate_counterfactuals(s, "from_files", path=tmp_path / "cf.npy", index=tmp_path / "idx.npy")
    np.testing.assert_array_equal(res.counterfactuals.numpy(), cf)
    # Zarr with channels stored in another order: reordered to the data set's
    perm = [4, 3, 2, 1, 0]
    write_arrays(tmp_path / "cf.zarr", {"counterfactuals": cf[:, perm], "counterfactual_target": (1 - s.labels).numpy()},
                 attrs={"counterfactuals": {"channels": [CHANNELS[p] for p in perm]}})
    res = generate_counterfactuals(s, "from_files", path=tmp_path / "cf.zarr")
    np.testing.assert_array_equal(res.counterfactuals.numpy(), cf)


def test_from_files_validation_errors(tmp_path):
    s = small_set(n=4)
    good = np.zeros(s.images.shape, np.float32)
    with pytest.raises(CounterfactualFileError, match="are 12x9 .* real images are 12x10"):
        pair_counterfactuals(s, good[..., :9])
    with pytest.raises(CounterfactualFileError, match="have 4 channels; the data set has 5"):
        pair_counterfactuals(s, good[:, :4])
    with pytest.raises(CounterfactualFileError, match="do not match the data set's channels"):
        pair_counterfactuals(s, good, channels=["DNA", "ER", "RNA", "AGP", "Actin"])
    with pytest.raises(CounterfactualFileError, match="1 of 4 images have no counterfactual"):
        pair_counterfactuals(s, good[:3])
    with pytest.raises(CounterfactualFileError, match="more than one counterfactual"):
        pair_counterfactuals(s, good, index=[0, 1, 1, 2])
    with pytest.raises(CounterfactualFileError, match="outside"):
        pair_counterfactuals(s, good, index=[0, 1, 2, 7])
    with pytest.raises(CounterfactualFileError, match="unknown target class 'mutant'"):
        pair_counterfactuals(s, good, targets=["treated", "control", "mutant", "control"])
    with pytest.raises(CounterfactualFileError, match="target their real image's own class"):
        pair_counterfactuals(s, good, targets=["control", "control", "control", "control"])
    k = keyed_set(n=4)
    path = _write_csv(tmp_path, good, k.meta, drop=["FileName_OrigMito", "PathName_OrigMito"])
    with pytest.raises(CounterfactualFileError, match=r"lacks FileName_Orig<Channel> columns for channels \['Mito'\]"):
        generate_counterfactuals(k, "from_files", path=path)
    path = _write_csv(tmp_path, good[..., :8, :], k.meta)
    with pytest.raises(CounterfactualFileError, match="are 8x10"):
        generate_counterfactuals(k, "from_files", path=path)
    with pytest.raises(FileNotFoundError):
        generate_counterfactuals(s, "from_files", path=tmp_path / "missing.csv")


# ---------------------------------------------------------------- stage


def _stage_context(section: dict, dataset, model, config_dir=None):
    from types import SimpleNamespace

    from chanstat.counterfactual.stage import CounterfactualConfig

    validated = CounterfactualConfig(**section).model_dump()
    resolve = (lambda p: config_dir / p) if config_dir is not None else (lambda p: p)
    return SimpleNamespace(section=lambda name: validated, dataset=dataset, model=model, device="cpu",
                           progress=False, seed=0, resolve_path=resolve, resume=False,
                           run=SimpleNamespace(path=Path("unused-run-directory")))


def test_stage_replaces_counterfactuals_and_reports_quality():
    from chanstat.counterfactual import stage

    s = small_set(n=6, with_cf=True)
    section = {"provider": "optimise", "optimise": {"l1": 0.0, "tv": 0.0, "lr": 0.05, "max_steps": 30,
                                                    "confidence": 0.6, "batch_size": 4},
               "nearest": {"metric": "cosine"}}
    outputs, info = stage.whole_set(_stage_context(section, s, MitoMeanModel(k=8.0)), {})
    assert info["provider"] == "optimise" and info["n_samples"] == 6
    q = outputs["counterfactual_quality"]
    assert set(QUALITY_COLUMNS) <= set(q.columns) and len(q) == 6 * 5
    assert len(outputs["counterfactual_summary"]) == 5
    new = outputs["dataset"]
    np.testing.assert_array_equal(outputs["oracle_counterfactuals"].arrays["counterfactuals"], s.counterfactuals.numpy())
    assert not torch.equal(new.counterfactuals, s.counterfactuals)
    assert torch.equal(new.images, s.images)


# ---------------------------------------------------------------- comparing runs


def _fake_run(path, provider, dominant, dac_by_channel):
    from chanstat.io import write_json
    from chanstat.rundir import RunDirectory

    run = RunDirectory(path, create=True)  # written through the run directory: every table is schema-valid
    write_json({"stages": {"data": {"planted_channel": "Mito"}, "counterfactual": {"provider": provider}}},
               run.file("provenance"))
    run.write_table("channel_tests", pd.DataFrame({
        "method": ["d_ig", "d_ig", "d_ig"], "transition": ["all", "all", "control → treated"],
        "test": ["friedman_f", "wilcoxon", "friedman_f"], "contrast": "channels", "statistic": 1.0, "p_value": 0.01, "unit": "well", "n_units": 4, "n_samples": 8, "primary": [True, False, False],
        "dominant_channel": [dominant, "DNA", "DNA"],
    }))
    rows = []
    for sample in range(4):
        for ch, value in dac_by_channel.items():
            rows.append(dict(sample=sample, method="d_ig", strategy="single_channel", channel=ch, dac=value + 0.01 * sample))
        rows.append(dict(sample=sample, method="d_ig", strategy="aggregate", channel=None, dac=0.5))
    run.write_table("dac_scores", pd.DataFrame(rows))


def test_compare_runs_dominant_agreement_and_dac_difference(tmp_path):
    from chanstat.counterfactual.compare import DAC_COLUMNS, DOMINANT_COLUMNS, compare_runs

    _fake_run(tmp_path / "oracle", "oracle", "Mito", {"Mito": 0.8, "ER": 0.1})
    _fake_run(tmp_path / "opt", "optimise", "ER", {"Mito": 0.5, "ER": 0.2})
    result = compare_runs(tmp_path / "oracle", tmp_path / "opt")
    assert list(result.dominant.columns) == list(DOMINANT_COLUMNS)
    by_evidence = result.dominant.set_index("evidence")
    assert by_evidence.loc["attribution_mass", "reference_dominant"] == "Mito"
    assert by_evidence.loc["attribution_mass", "other_dominant"] == "ER"
    assert not by_evidence.loc["attribution_mass", "agree"]
    assert by_evidence.loc["single_channel_dac", "agree"]  # Mito has the highest DAC in both
    assert result.summary["dominant_agreement"] == 0.5
    assert list(result.dac.columns) == list(DAC_COLUMNS)
    dac = result.dac.set_index(["strategy", "channel"])["dac_difference"]
    assert dac[("single_channel", "Mito")] == pytest.approx(-0.3)
    assert dac[("single_channel", "ER")] == pytest.approx(0.1)
    assert dac[("aggregate", "all")] == pytest.approx(0.0)
    assert result.summary["mean_abs_dac_difference"] == pytest.approx((0.3 + 0.1 + 0.0) / 3)
    assert result.summary["other_provider"] == "optimise"


def test_stage_from_files_resolves_paths_against_the_config(tmp_path):
    from chanstat.counterfactual import stage

    s = small_set(n=4)
    cf = np.random.default_rng(5).random(s.images.shape, dtype=np.float32)
    (tmp_path / "config").mkdir()
    np.save(tmp_path / "config" / "cf.npy", cf)
    section = {"provider": "from_files", "from_files": {"path": "cf.npy"}}
    outputs, info = stage.whole_set(_stage_context(section, s, MitoMeanModel(), tmp_path / "config"), {})
    assert info["provider"] == "from_files" and info["path"].endswith("cf.npy")
    np.testing.assert_array_equal(outputs["dataset"].counterfactuals.numpy(), cf)
    assert outputs["dataset"].counterfactual_target.tolist() == (1 - s.labels).tolist()


def test_from_files_scales_raw_files_with_the_data_sets_plate_limits(tmp_path):
    s = keyed_set(n=4)
    s.meta.attrs["scaling"] = {"method": "plate", "percentiles": [1.0, 99.5], "control": False,
                               "limits": {"P1": {ch: [100.0, 300.0] for ch in CHANNELS},
                                          "P2": {ch: [0.0, 1000.0] for ch in CHANNELS}}}
    raw = np.full(s.images.shape, 200.0, np.float32)  # raw camera units
    np.save(tmp_path / "cf.npy", raw)
    res = generate_counterfactuals(s, "from_files", path=tmp_path / "cf.npy", scale="dataset")
    plates = s.meta["Metadata_Plate"].to_numpy()
    expected = np.where(plates == "P1", 0.5, 0.2)  # (200 - 100) / 200 and (200 - 0) / 1000
    np.testing.assert_allclose(res.counterfactuals.mean(dim=(1, 2, 3)).numpy(), expected, rtol=1e-6)
    s.meta.attrs["scaling"] = {"method": "image"}
    with pytest.raises(CounterfactualFileError, match="needs images read with per-plate scaling"):
        generate_counterfactuals(s, "from_files", path=tmp_path / "cf.npy", scale="dataset")


def test_compare_runs_reads_only_run_directories(tmp_path):
    from chanstat.counterfactual.compare import compare_runs
    from chanstat.rundir import NotARunDirectory

    _fake_run(tmp_path / "oracle", "oracle", "Mito", {"Mito": 0.8, "ER": 0.1})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "my_notes.txt").write_text("not a run")
    with pytest.raises(NotARunDirectory, match="not a chanstat run directory"):
        compare_runs(tmp_path / "oracle", tmp_path / "notes")
