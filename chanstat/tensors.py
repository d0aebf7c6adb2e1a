"""Input checks shared by every torch verb: images, targets, channel names, the model's device.

One place for these, so ``attribute``, ``dac``, the metrics, the counterfactual providers and
``ImageSet`` accept the same inputs and refuse bad ones with the same one-line message.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

#: The name reserved for "every channel together" in tidy tables.
ALL = "all"


def as_images(x: Any, name: str = "images", allow_empty: bool = False) -> torch.Tensor:
    """Validate and convert a batch of images.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Real-valued images (any numeric dtype; integers are converted).
    name : str
        What the argument is called, for the error message.
    allow_empty : bool
        Accept N = 0.

    Returns
    -------
    torch.Tensor
        float32, shape (N, C, H, W), on the device ``x`` was on, detached.

    Raises
    ------
    TypeError
        ``x`` is not an array or tensor of real numbers.
    ValueError
        Wrong number of axes, no images, or NaN/inf values (the samples are named).
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers; got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must hold real numbers; got dtype {x.dtype}")
        t = x.detach()
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}")
    if t.ndim != 4:
        hint = " (a single image? add a batch axis: x[None])" if t.ndim == 3 else ""
        raise ValueError(f"{name} must have shape (N, C, H, W); got {tuple(t.shape)}{hint}")
    if t.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} holds no images (N = 0)")
    t = t.to(torch.float32)
    # one float64 reduction instead of an element-wise mask: the sum is non-finite exactly when
    # some value is NaN/inf (float32 values cannot overflow a float64 sum)
    if t.numel() and not bool(torch.isfinite(t.sum(dtype=torch.float64))):
        bad = ~torch.isfinite(t)
        samples = torch.nonzero(bad.flatten(1).any(dim=1)).flatten().tolist()
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf values (in samples {samples[:10]}"
            f"{' ...' if len(samples) > 10 else ''})"
        )
    return t


def as_target(y: Any, n: int, name: str = "target", n_classes: int | None = None) -> torch.Tensor:
    """Class indices, one per image.

    Parameters
    ----------
    y : int, sequence, numpy.ndarray or torch.Tensor
        One class index for all images, or shape (n,).
    n : int
        Number of images.
    name : str
        What the argument is called, for the error message.
    n_classes : int, optional
        When given, indices must lie in ``[0, n_classes)``.

    Returns
    -------
    torch.Tensor
        int64, shape (n,), on the CPU.
    """
    if isinstance(y, (bool, np.bool_)):
        raise TypeError(f"{name} must be a class index or one per image; got a bool")
    if isinstance(y, (int, np.integer)):
        t = torch.full((n,), int(y), dtype=torch.int64)
    else:
        if isinstance(y, torch.Tensor):
            t = y.detach().cpu()
        else:
            try:
                t = torch.as_tensor(np.asarray(y))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must be an int or a sequence of ints; got {type(y).__name__}") from exc
        if t.ndim == 0:
            t = t.reshape(1).expand(n)
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"{name} must be an int or have shape ({n},) (one per image); got shape {tuple(t.shape)}")
        if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_integer(t)):
            raise TypeError(f"{name} must hold integer class indices; got dtype {t.dtype}")
        if t.is_floating_point() and (not bool(torch.isfinite(t).all()) or not torch.equal(t, t.round())):
            raise ValueError(f"{name} must hold integer class indices; got {t[:5].tolist()} ...")
        t = t.to(torch.int64).contiguous()
    if n and int(t.min()) < 0:
        raise ValueError(f"{name} must hold class indices >= 0; got {int(t.min())}")
    if n_classes is not None and n and int(t.max()) >= n_classes:
        raise ValueError(f"{name} must lie in [0, {n_classes - 1}] for {n_classes} classes; got {int(t.max())}")
    return t


def _is_integer(t: torch.Tensor) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def channel_names(channels: Sequence[str] | None, n_channels: int, name: str = "channels") -> list[str]:
    """Channel names for ``n_channels`` planes: checked, or ``"ch0" ... "ch{C-1}"`` when None.

    ``"all"`` is reserved (it labels the every-channel rows of tidy tables).
    """
    if channels is None:
        return [f"ch{k}" for k in range(n_channels)]
    if isinstance(channels, str):
        raise TypeError(f"{name} must be a sequence of names, not one string {channels!r}")
    names = [str(c) for c in channels]
    if len(names) != n_channels:
        raise ValueError(f"got {len(names)} {name} {names} for {n_channels} image channels")
    if ALL in names:
        raise ValueError(f"{ALL!r} is reserved for the every-channel figure; rename that channel in {name}")
    if len(set(names)) != len(names):
        raise ValueError(f"{name} must be unique; got {names}")
    return names


def model_device(model: nn.Module | None) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for parameter-free models."""
    if model is None:
        return torch.device("cpu")
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def model_dtype(model: nn.Module | None) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 when it has none)."""
    if model is not None:
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float32


def device_of(device: Any, model: nn.Module | None = None) -> torch.device:
    """``device`` as a ``torch.device`` (``"auto"``: CUDA when available); None: the model's device."""
    if device is None:
        return model_device(model)
    if isinstance(device, torch.device):
        return device
    from chanstat.runtime import resolve_device

    return resolve_device(device)


@contextmanager
def evaluating(model: nn.Module, grad: bool = False) -> Iterator[nn.Module]:
    """Eval mode for the duration (inference mode too unless ``grad``); every module's own
    training flag is restored afterwards, also after an error."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if grad:
            yield model
        else:
            with torch.inference_mode():
                yield model
    finally:
        for module, mode in modes:
            module.training = mode


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a model's output.

    ``(N, K)`` scores with K >= 2 go through a softmax; a single-logit model ``(N, 1)`` or
    ``(N,)`` is read as a sigmoid for class 1, so its probabilities are ``[1 - s, s]``.
    """
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.ndim != 2:
        raise ValueError(f"model must return class scores of shape (N, n_classes); got {tuple(logits.shape)}")
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def transform_maps(maps: torch.Tensor, transform: str) -> torch.Tensor:
    """``maps`` as ``|a|`` (``"absolute"``), ``max(a, 0)`` (``"positive"``) or as they are (``"signed"``).

    The torch side of :data:`chanstat.vocabulary.MASS_TRANSFORMS` (same names, same meaning).
    """
    if transform == "absolute":
        return maps.abs()
    if transform == "positive":
        return maps.clamp(min=0)
    if transform == "signed":
        return maps
    from chanstat.vocabulary import MASS_TRANSFORMS

    raise ValueError(f"transform must be one of {list(MASS_TRANSFORMS)}; got {transform!r}")


def check_device(model: nn.Module, device: Any) -> None:
    """A one-line error when ``device`` is given and is not where ``model`` lives.

    Verbs compute where the model is; ``device=`` states it (and is checked) rather than moving
    a user's model behind their back.
    """
    if device is None:
        return
    wanted, actual = device_of(device), model_device(model)
    if wanted.type != actual.type or (
        wanted.index is not None and actual.index is not None and wanted.index != actual.index
    ):
        raise ValueError(
            f"device={str(device)!r} but the model is on {actual}; move it first (model.to({str(wanted)!r}))"
        )
