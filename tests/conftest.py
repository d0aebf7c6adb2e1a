"""Shared fixtures: real data location, a small synthetic set, a trained model, a quick demo run."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}: clone with ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synthetic():
    from chanstat.data import synthetic

    return synthetic(n_plates=2, wells_per_class=3, sites_per_well=8, size=48, effect_size=1.0, seed=0)


@pytest.fixture(scope="session")
def trained_model(tiny_synthetic):
    import torch

    from chanstat.models import VGGClassifier, train

    torch.manual_seed(0)
    model = VGGClassifier(in_channels=len(tiny_synthetic.channels), n_classes=len(tiny_synthetic.classes))
    train(model, tiny_synthetic, epochs=40, batch_size=8, lr=2e-3, patience=10, min_epochs=20, seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    from chanstat import pipeline

    out = tmp_path_factory.mktemp("quick_run") / "run"
    pipeline.run(ROOT / "analyses" / "demo.toml", out, quick=True, progress=False, log=lambda msg: None)
    return out
