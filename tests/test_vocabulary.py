"""One vocabulary, enforced: every public signature uses chanstat.vocabulary's names and defaults."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import chanstat
from chanstat.vocabulary import DEFAULTS, KEYWORD_ONLY, PADJUST_SCREEN, SCREENING_VERBS, SYNONYMS


def _public_callables():
    """(qualified name, function) of every callable a user reaches through an ``__all__``."""
    modules = ["chanstat"] + sorted(f"chanstat.{m.name}" for m in pkgutil.iter_modules(chanstat.__path__) if m.ispkg)
    seen: dict[int, str] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.ismodule(obj):
                continue
            fn = obj.__init__ if inspect.isclass(obj) else obj
            if not callable(fn) or id(fn) in seen or fn is object.__init__:
                continue
            try:
                inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            seen[id(fn)] = f"{module_name}.{attr}"
            yield f"{module_name}.{attr}", attr, fn


PUBLIC = list(_public_callables())


def test_the_scan_sees_the_verbs():
    names = {short for _, short, _ in PUBLIC}
    assert {"attribute", "dac", "channel_shapley", "channel_mass", "compartment_mass", "test_channels",
            "channel_share_ci", "test_against_zero", "differential", "generate_counterfactuals"} <= names
    assert len(PUBLIC) > 100


@pytest.mark.parametrize("qualified, short, fn", PUBLIC, ids=[q for q, _, _ in PUBLIC])
def test_signature_uses_the_vocabulary(qualified, short, fn):
    problems = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in SYNONYMS:
            problems.append(f"{p.name!r} (say {SYNONYMS[p.name]})")
        if p.name in DEFAULTS and p.default is not inspect.Parameter.empty:
            expected = DEFAULTS[p.name]
            if p.name == "padjust" and short in SCREENING_VERBS:
                expected = PADJUST_SCREEN
            allowed_none = p.name in ("well", "plate") and p.default is None
            if not allowed_none and p.default != expected:
                problems.append(f"{p.name}={p.default!r} (the default is {expected!r})")
        if p.name in KEYWORD_ONLY and p.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"{p.name!r} must be keyword-only")
    assert not problems, f"{qualified}: " + "; ".join(problems)


@pytest.mark.parametrize("verb", ["attribute", "dac", "channel_shapley"])
def test_torch_verbs_take_model_images_target_first_and_a_device(verb):
    parameters = list(inspect.signature(getattr(chanstat, verb)).parameters)
    assert parameters[:3] == ["model", "images", "target"]
    assert "device" in parameters and "counterfactuals" in parameters


def test_mass_verbs_share_their_arguments():
    channel = inspect.signature(chanstat.channel_mass).parameters
    compartment = inspect.signature(chanstat.compartment_mass).parameters
    assert list(channel)[0] == list(compartment)[0] == "maps"
    for name in ("channels", "meta", "transform", "method"):
        assert name in channel and name in compartment, name
        assert channel[name].default == compartment[name].default or name in ("channels", "meta"), name


def test_screening_verbs_exist():
    names = {short for _, short, _ in PUBLIC}
    assert SCREENING_VERBS <= names, SCREENING_VERBS - names
