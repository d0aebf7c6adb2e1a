"""Saving and loading classifiers: chanstat checkpoints, users' modules and TorchScript."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from chanstat.models.vgg import VGGClassifier

ARCHITECTURES = {"vgg": VGGClassifier}


@dataclass
class Checkpoint:
    model: nn.Module
    channels: list[str]
    classes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, channels: Sequence[str], classes: Sequence[str], **extra) -> Path:
    """Write ``model.pt``: architecture name and arguments, weights, channel and class names."""
    if not isinstance(model, VGGClassifier):
        raise TypeError("save_checkpoint stores chanstat architectures; save user models with torch.save / TorchScript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "architecture": "vgg",
            "arguments": model.config,
            "state_dict": state,
            "channels": list(channels),
            "classes": list(classes),
            "extra": extra,
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path, device=None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`; the model is in eval mode."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    arch = blob.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in {path}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](**blob["arguments"])
    model.load_state_dict(blob["state_dict"])
    model.to(device or "cpu").eval()
    return Checkpoint(model=model, channels=list(blob["channels"]), classes=list(blob["classes"]), extra=blob.get("extra", {}))


class ModelSourceError(ValueError):
    """A ``[model] source`` that cannot be imported, called, or does not give a torch.nn.Module."""


def load_user_model(
    source: str,
    weights: str | Path | None = None,
    kwargs: dict | None = None,
    device=None,
    search_path: str | Path | None = None,
) -> nn.Module:
    """Load a user's classifier.

    Parameters
    ----------
    source : ``"package.module:callable"`` (a class or factory, called with ``kwargs``; then
        ``weights``, a state dict file, is loaded), or the path of a TorchScript file
        (``.pt``/``.ts``).
    weights : state-dict file for an import-path model.
    kwargs : keyword arguments of the callable.
    device : where the model goes (default CPU).
    search_path : folder searched first for ``package.module`` and for relative file paths
        -- the config file's folder, so ``source = "mymodels:resnet18"`` finds
        ``mymodels.py`` next to the config without setting PYTHONPATH.

    Returns
    -------
    torch.nn.Module in eval mode on ``device``.

    Raises
    ------
    ModelSourceError
        (a ValueError naming ``source``) the module cannot be imported, has no such callable,
        the call fails, or its result is not a ``torch.nn.Module``.
    FileNotFoundError
        A TorchScript or weights file that does not exist.
    """
    folder = Path(search_path) if search_path is not None else None

    def local(path: str | Path) -> Path:
        path = Path(path).expanduser()
        return folder / path if (folder is not None and not path.is_absolute() and (folder / path).exists()) else path

    if ":" in source and not local(source).exists():
        model = _build_from_import(source, kwargs, folder)
        if weights is not None:
            weights = local(weights)
            if not weights.exists():
                raise FileNotFoundError(f"weights file not found: {weights}")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    else:
        path = local(source)
        if not path.exists():
            raise FileNotFoundError(f"model file not found: {path}")
        model = torch.jit.load(str(path), map_location="cpu")
    return model.to(device or "cpu").eval()


def _build_from_import(source: str, kwargs: dict | None, folder: Path | None) -> nn.Module:
    """Import ``module:callable`` (``folder`` first on the search path) and call it."""
    module_name, _, attr = source.partition(":")
    if not module_name or not attr:
        raise ModelSourceError(f"model source {source!r} must look like 'package.module:callable'")
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))  # only while importing: the user's module is then cached
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (looked in {folder} and the Python path)" if folder is not None else ""
        raise ModelSourceError(f"model source {source!r}: cannot import {module_name!r}{where}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(str(folder))
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelSourceError(f"model source {source!r}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelSourceError(f"model source {source!r}: {attr!r} ({type(factory).__name__}) is not callable")
    try:
        model = factory(**(kwargs or {}))
    except TypeError as exc:
        raise ModelSourceError(f"model source {source!r} could not be called with kwargs {kwargs or {}}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSourceError(
            f"model source {source!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model
