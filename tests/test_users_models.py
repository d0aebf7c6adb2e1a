"""Users' own models: loading by "module:callable" from the config's folder, TorchScript, checks."""
from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch
from torch import nn

from chanstat.models import ModelSourceError, load_user_model

MODULE_TEXT = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, in_channels=5, n_classes=2):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3)
            self.fc = nn.Linear(4, n_classes)

        def forward(self, x):
            return self.fc(self.conv(x).mean(dim=(2, 3)))


    def resnet18(n_classes=2):
        torch.manual_seed(0)
        return Tiny(n_classes=n_classes)


    def not_a_model():
        return {"weights": [1, 2, 3]}


    NUMBER = 3
    """
)


@pytest.fixture
def config_dir(tmp_path):
    """A config folder holding a user's model module under a name unique to this test."""
    name = f"mymodels_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE_TEXT)
    yield tmp_path, name
    sys.modules.pop(name, None)


def test_module_next_to_the_config_is_importable_without_pythonpath(config_dir):
    folder, name = config_dir
    path_before = list(sys.path)
    model = load_user_model(f"{name}:resnet18", kwargs={"n_classes": 3}, search_path=folder)
    assert isinstance(model, nn.Module) and not model.training
    assert model(torch.rand(2, 5, 8, 8)).shape == (2, 3)
    assert sys.path == path_before  # the folder is searched, not left on the path


def test_module_not_found_without_the_config_folder(config_dir):
    _, name = config_dir
    with pytest.raises(ModelSourceError, match=rf"{name}:resnet18.*cannot import"):
        load_user_model(f"{name}:resnet18")


@pytest.mark.parametrize("attr, message", [
    ("not_a_model", r"returned a dict, not a torch.nn.Module"),
    ("NUMBER", r"\(int\) is not callable"),
    ("missing", r"has no attribute 'missing'"),
])
def test_a_source_that_is_not_a_model_is_refused_naming_it(config_dir, attr, message):
    folder, name = config_dir
    with pytest.raises(ModelSourceError, match=rf"model source '{name}:{attr}'.*{message}"):
        load_user_model(f"{name}:{attr}", search_path=folder)
    assert issubclass(ModelSourceError, ValueError)


def test_bad_kwargs_are_a_clear_error(config_dir):
    folder, name = config_dir
    with pytest.raises(ModelSourceError, match="could not be called with kwargs"):
        load_user_model(f"{name}:resnet18", kwargs={"depth": 18}, search_path=folder)


def test_weights_and_torchscript_relative_to_the_config_folder(config_dir):
    folder, name = config_dir
    reference = load_user_model(f"{name}:resnet18", search_path=folder)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(1.0)  # other weights than the factory's
    torch.save(reference.state_dict(), folder / "weights.pt")
    torch.jit.script(reference).save(str(folder / "model.ts"))
    x = torch.rand(3, 5, 8, 8)
    with_weights = load_user_model(f"{name}:resnet18", weights="weights.pt", search_path=folder)
    scripted = load_user_model("model.ts", search_path=folder)
    with torch.no_grad():
        torch.testing.assert_close(with_weights(x), reference(x))
        torch.testing.assert_close(scripted(x), reference(x))
    with pytest.raises(FileNotFoundError, match="missing.ts"):
        load_user_model("missing.ts", search_path=folder)
