"""Reference classifier: accuracy on planted data, checkpoints, users' models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from chanstat.models import (
    VGGClassifier,
    default_cam_layer,
    evaluate,
    load_checkpoint,
    load_user_model,
    save_checkpoint,
    split_by_group,
)


def test_trained_model_beats_chance_on_held_out_wells(tiny_synthetic, trained_model):
    s = tiny_synthetic
    wells = s.meta["Metadata_Plate"] + "/" + s.meta["Metadata_Well"]
    _, val = split_by_group(wells, s.labels.numpy(), 0.25, seed=0)
    _, acc = evaluate(trained_model, s.images[val], s.labels[val])
    assert acc >= 0.8, acc


def test_validation_split_holds_out_whole_wells(tiny_synthetic):
    s = tiny_synthetic
    wells = s.meta["Metadata_Plate"] + "/" + s.meta["Metadata_Well"]
    train, val = split_by_group(wells, s.labels.numpy(), 0.25, seed=0)
    assert set(wells[train]).isdisjoint(set(wells[val]))
    assert set(s.labels[val].tolist()) == {0, 1}
    assert len(train) + len(val) == len(s)


def test_any_channel_count_and_non_square_input():
    model = VGGClassifier(in_channels=7, n_classes=3).eval()
    assert model(torch.rand(2, 7, 40, 24)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"expects input \(N, 7, H, W\)"):
        model(torch.rand(2, 5, 32, 32))
    assert isinstance(default_cam_layer(model), nn.Conv2d)
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_checkpoint_round_trip(tmp_path, trained_model, tiny_synthetic):
    path = save_checkpoint(tmp_path / "model.pt", trained_model, tiny_synthetic.channels, tiny_synthetic.classes)
    ckpt = load_checkpoint(path)
    x = tiny_synthetic.images[:4]
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), trained_model(x))
    assert ckpt.channels == tiny_synthetic.channels and ckpt.classes == ["control", "treated"]


class TwoLayer(nn.Module):
    def __init__(self, channels: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_user_model_by_import_path_and_torchscript(tmp_path):
    torch.manual_seed(0)
    ref = TwoLayer()
    torch.save(ref.state_dict(), tmp_path / "weights.pt")
    x = torch.rand(3, 5, 16, 16)
    loaded = load_user_model(f"{__name__}:TwoLayer", weights=tmp_path / "weights.pt")
    torch.testing.assert_close(loaded(x), ref(x))
    torch.jit.script(ref).save(str(tmp_path / "model.ts"))
    scripted = load_user_model(str(tmp_path / "model.ts"))
    torch.testing.assert_close(scripted(x), ref(x))
    with pytest.raises(FileNotFoundError):
        load_user_model(str(tmp_path / "missing.ts"))
