"""Every kind of model a user brings runs every verb through the one adapter (issue 22)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import chanstat as cs
from chanstat.models import ModelAdapter, ModelAdapterError, as_model, load_model, unwrap
from chanstat.models.adapter import ModelSourceError, check_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_kinds import MODEL_KINDS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRADIENT_METHODS = ("ig", "d_ig", "saliency", "d_ixg")


@pytest.fixture(scope="module")
def small_set():
    return cs.synthetic(n_plates=1, wells_per_class=2, sites_per_well=2, size=16, seed=3)


@pytest.fixture(scope="module", params=sorted(MODEL_KINDS))
def kind(request, small_set):
    return request.param, MODEL_KINDS[request.param](len(small_set.channels), len(small_set.classes))


def _raw_scores(module, images):
    with torch.no_grad():
        out = module(images.to(torch.bfloat16) if as_model(module).dtype == torch.bfloat16 else images)
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, dict):
        out = out["logits"]
    return out.float()


def test_adapter_scores_are_the_models_own_as_k_class_float32(kind, small_set):
    name, module = kind
    adapter = as_model(module)
    assert as_model(adapter) is adapter and unwrap(adapter) is module
    with torch.no_grad():
        scores = adapter(small_set.images)
    raw = _raw_scores(module, small_set.images)
    assert scores.dtype == torch.float32 and scores.shape == (len(small_set), 2)
    if raw.shape[1] == 1:  # one logit: softmax of (0, z) is the sigmoid
        assert torch.allclose(adapter.probabilities(small_set.images)[:, 1], torch.sigmoid(raw[:, 0]), atol=1e-6)
    else:
        assert torch.allclose(scores, raw, atol=1e-5)


def test_gradient_methods_dac_shapley_and_nearest_run(kind, small_set):
    name, module = kind
    x, y = small_set.images, small_set.labels
    cf, y_cf = small_set.counterfactuals, small_set.counterfactual_target
    for method in GRADIENT_METHODS:
        maps = cs.attribute(module, x, y, method, counterfactuals=cf, counterfactual_target=y_cf)
        assert maps.shape == x.shape and bool(torch.isfinite(maps).all()), (name, method)
    maps = cs.attribute(module, x, y, "d_ig", counterfactuals=cf, counterfactual_target=y_cf)
    dac = cs.dac(module, x, y, maps, counterfactuals=cf, counterfactual_target=y_cf, channels=small_set.channels,
                 strategy="single_channel", steps=20)
    assert set(dac.scores["channel"]) >= set(small_set.channels)
    assert dac.scores["dac"].between(-1, 1).all()
    shapley = cs.channel_shapley(module, x, y, counterfactuals=cf, channels=small_set.channels)
    # efficiency: the values add up to p(y | x) - p(y | x') for every image
    probs = as_model(module).probabilities
    with torch.no_grad():
        expected = (probs(x).gather(1, y[:, None]) - probs(cf).gather(1, y[:, None]))[:, 0].numpy()
    total = shapley.values.groupby("sample")["shapley"].sum().to_numpy()
    np.testing.assert_allclose(total, expected, atol=2e-3 if name == "half" else 1e-5)
    result = cs.generate_counterfactuals(small_set, "nearest", model=module, require_predicted=False)
    assert result.counterfactuals.shape == x.shape
    # every counterfactual is an image of the other class
    flat = small_set.images.reshape(len(small_set), -1)
    for i, row in enumerate(result.counterfactuals.reshape(len(small_set), -1)):
        match = int(torch.nonzero((flat == row).all(dim=1))[0])
        assert int(small_set.labels[match]) != int(small_set.labels[i])


def test_one_logit_model_is_accepted_for_class_one(small_set):
    module = MODEL_KINDS["one_logit"](len(small_set.channels))
    x, cf = small_set.images, small_set.counterfactuals
    ones = torch.ones(len(small_set), dtype=torch.int64)
    maps = cs.attribute(module, x, 1 - ones, "d_ig", counterfactuals=cf, counterfactual_target=ones)
    result = cs.dac(module, x, 1 - ones, maps, counterfactuals=cf, counterfactual_target=ones, steps=10)
    assert len(result.scores) > 0


def test_torchscript_refuses_hook_methods_in_one_line(small_set):
    module = MODEL_KINDS["torchscript"](len(small_set.channels))
    for method in ("dl", "d_dl", "gradcam", "ggcam"):
        with pytest.raises(ModelAdapterError) as info:
            cs.attribute(module, small_set.images, small_set.labels, method,
                         counterfactuals=small_set.counterfactuals,
                         counterfactual_target=small_set.counterfactual_target)
        message = str(info.value)
        assert "\n" not in message and repr(method) in message and "ig, " in message and "TorchScript" in message


def test_output_selector_and_embedding_layer(small_set):
    module = MODEL_KINDS["dict_output"](len(small_set.channels))
    with torch.no_grad():
        by_key = as_model(module, output="logits")(small_set.images)
        assert torch.equal(by_key, module(small_set.images)["logits"])
        with pytest.raises(ModelAdapterError, match="does not index"):
            as_model(MODEL_KINDS["tuple_output"](len(small_set.channels)), output=5)(small_set.images)
        features = as_model(module, output="logits", embedding_layer="pool").embed(small_set.images)
        assert torch.allclose(features, module(small_set.images)["features"])
    with pytest.raises(ModelAdapterError, match="'nope' is not a layer"):
        as_model(module, embedding_layer="nope")


def test_default_embedding_is_the_input_of_the_last_linear(small_set):
    module = MODEL_KINDS["resnet"](len(small_set.channels))
    adapter = as_model(module)
    with torch.no_grad():
        pooled = torch.flatten(module.avgpool(module.layer4(module.layer3(module.layer2(module.layer1(
            module.maxpool(module.relu(module.bn1(module.conv1(small_set.images))))))))), 1)
        assert torch.allclose(adapter.embed(small_set.images), pooled, atol=1e-6)
    assert adapter.embedding_source == "input of the last Linear layer"


@pytest.mark.parametrize("source", ["os:system", "subprocess:run", "builtins:eval", "shutil.rmtree:x"])
def test_standard_library_callables_are_refused_before_import(source):
    with pytest.raises(ModelSourceError, match="standard library or builtins are refused"):
        check_source(source)


def test_load_model_gives_workers_the_same_adapter(tmp_path, small_set):
    module = MODEL_KINDS["tuple_output"](len(small_set.channels))
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model_kinds.py").write_text((ROOT / "tests" / "model_kinds.py").read_text())
    section = {"source": "model_kinds:tuple_output", "weights": "weights.pt", "output": 0,
               "kwargs": {"in_channels": len(small_set.channels)}}
    first, second = load_model(section, tmp_path), load_model(section, tmp_path)
    assert isinstance(first.module, ModelAdapter) and first.module.output == 0
    with torch.no_grad():
        assert torch.equal(first.module(small_set.images), second.module(small_set.images))
        assert torch.equal(first.module(small_set.images), module(small_set.images)[0])


def test_a_garbage_weights_file_is_one_line_without_torch_advice(tmp_path):
    (tmp_path / "model_kinds.py").write_text((ROOT / "tests" / "model_kinds.py").read_text())
    (tmp_path / "weights.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelSourceError) as info:
        load_model({"source": "model_kinds:vgg", "weights": "weights.pt"}, tmp_path)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_readme_own_model_example_runs_as_written(tmp_path, small_set):
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-model:start -->", 1)[1].split("<!-- own-model:end -->", 1)[0]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "mymodels.py").write_text(code)
    classifier = load_model({"source": "mymodels:resnet18",
                             "kwargs": {"in_channels": len(small_set.channels), "n_classes": 2}}, tmp_path)
    x, y = small_set.images, small_set.labels
    maps = cs.attribute(classifier.module, x, y, "dl")  # the reused ReLU is split for DeepLift
    assert maps.shape == x.shape and bool(torch.isfinite(maps).all())
    assert unwrap(classifier.module).conv1.in_channels == len(small_set.channels)


def test_discriminative_maps_without_a_contrast_warn(small_set):
    from chanstat.attribution.core import ContrastWarning

    module = MODEL_KINDS["vgg"](len(small_set.channels))
    with pytest.warns(ContrastWarning, match=f"equals target for {len(small_set)} of {len(small_set)} images"):
        cs.attribute(module, small_set.images, small_set.labels, "d_ig", counterfactuals=small_set.counterfactuals,
                     counterfactual_target=small_set.labels, n_steps=4)


def test_dac_filter_pairs_refuses_when_no_pair_is_classified_right(small_set):
    module = MODEL_KINDS["vgg"](len(small_set.channels))
    with torch.no_grad():
        predicted = as_model(module)(small_set.images).argmax(1)
    wrong = 1 - predicted  # every real image gets the class the model does not give it
    with pytest.warns(UserWarning, match="filter_pairs=True kept no pair"):
        result = cs.dac(module, small_set.images, wrong, torch.rand(small_set.images.shape), counterfactuals=small_set.images,
               counterfactual_target=predicted, filter_pairs=True, steps=5)
    assert len(result.scores) == 0 and len(result.dropped) == len(small_set)


def test_a_device_other_than_the_models_is_named(small_set):
    module = MODEL_KINDS["vgg"](len(small_set.channels))
    with pytest.raises(ValueError, match=r"device='meta' but the model is on cpu") as info:
        cs.attribute(module, small_set.images, small_set.labels, "saliency", device="meta")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"device='meta' but the model is on cpu"):
        cs.dac(module, small_set.images, small_set.labels, torch.rand(small_set.images.shape),
               counterfactuals=small_set.counterfactuals, counterfactual_target=small_set.counterfactual_target,
               device="meta")
    maps = cs.attribute(module, small_set.images, small_set.labels, "saliency", device="cpu")
    assert maps.shape == small_set.images.shape
