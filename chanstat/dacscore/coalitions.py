"""Class probabilities of channel coalitions, evaluated once and shared by DAC and Shapley.

A coalition ``S`` of image channels defines the hybrid ``h_S = where(S, x, b)``: the real
image ``x`` in the channels of ``S``, the baseline ``b`` (usually the counterfactual ``x'``)
elsewhere -- exact copies, no arithmetic on pixels. ``h_{}`` is ``b`` and ``h_{all}`` is ``x``.
Several verbs need the same hybrids of the same pairs:

- `chanstat.dacscore.dac` needs ``p(. | x)`` and ``p(. | x')`` (the baselines of every curve),
  and a ``single_channel`` curve's full mask is the coalition ``{k}``;
- `chanstat.decompose.channel_shapley` values every coalition (``2^C`` of them).

`coalition_probabilities` evaluates what is asked in shared batches and remembers the result
per model, so the second verb on the same pairs skips what the first one evaluated (DAC then
Shapley on five channels: 7 of the 32 coalitions per pair are already known). Coalitions that
differ only in channels where ``x`` and ``b`` are identical give identical hybrids and are
evaluated once.

What is remembered is keyed by the user's module (a weak reference: it goes with the model),
the state of its weights (a digest of every parameter's and buffer's bytes, so training or
``load_state_dict`` invalidates it), the output selector, the device,
dtype and memory layout the hybrids are fed in, and the bytes of each pair. A model whose
output depends on anything else (a Python attribute changed between calls) must call
`forget` after the change. At most `MAX_REMEMBERED_VALUES`
probabilities are kept per model (oldest dropped first).
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from chanstat.dacscore.scoring import ModelInput

#: probabilities kept per model (class scores, float32): about 128 MB at most
MAX_REMEMBERED_VALUES = 2**25

_MEMORY: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _user_module(model: torch.nn.Module) -> torch.nn.Module:
    from chanstat.models.adapter import unwrap

    return unwrap(model)


def _state_key(model: torch.nn.Module, feed: ModelInput) -> tuple:
    """What the model's output depends on besides its input (see the module docstring)."""
    module = _user_module(model)
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        flat = tensor.detach().reshape(-1).cpu().contiguous()
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    output = getattr(model, "output", None)
    selector = output if isinstance(output, (int, str, type(None))) else id(output)
    return (digest.digest(), selector, str(feed.device), str(feed.dtype), str(feed.memory_format))


def remembered(model: torch.nn.Module, feed: ModelInput) -> dict:
    """The remembered probabilities of this model state, ``{(pair key, coalition key): probs}``
    (a new, unremembered dict for a module that takes no weak reference).

    Call it once per verb: it hashes the model's weights.
    """
    module = _user_module(model)
    try:
        per_model = _MEMORY.setdefault(module, {})
    except TypeError:  # not weak-referenceable: nothing is remembered
        return {}
    key = _state_key(model, feed)
    if key not in per_model:
        per_model.clear()  # the weights changed: the old state is not kept
        per_model[key] = {}
    return per_model[key]


def forget(model: torch.nn.Module | None = None) -> None:
    """Drop the remembered probabilities of ``model`` (of every model when None)."""
    if model is None:
        _MEMORY.clear()
    else:
        _MEMORY.pop(_user_module(model), None)


def pair_keys(images: torch.Tensor, base: torch.Tensor) -> list[bytes]:
    """One digest per pair of the bytes of ``images[i]`` and ``base[i]`` (same shape, same dtype)."""
    x = images.detach().cpu().contiguous()
    b = base.detach().cpu().contiguous()
    shape = repr((tuple(x.shape[1:]), str(x.dtype))).encode()
    keys = []
    for i in range(x.shape[0]):
        digest = hashlib.blake2b(shape, digest_size=20)
        digest.update(x[i].numpy().tobytes())
        digest.update(b[i].numpy().tobytes())
        keys.append(digest.digest())
    return keys


def active_channels(images: torch.Tensor, base: torch.Tensor) -> np.ndarray:
    """Channels where ``images[i]`` and ``base[i]`` differ, bool (N, C)."""
    n, c = images.shape[:2]
    return (images != base).reshape(n, c, -1).any(dim=2).cpu().numpy()


def coalition_probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    base: torch.Tensor,
    coalitions: np.ndarray,
    *,
    batch_size: int,
    feed: ModelInput,
    keys: list[bytes] | None = None,
    memory: dict | None = None,
    bar: tqdm | None = None,
) -> tuple[torch.Tensor, int]:
    """Class probabilities of the hybrids ``where(S, images, base)`` of every pair and coalition.

    Parameters
    ----------
    model : the classifier, in eval mode (the caller's ``evaluating`` context).
    images, base : torch.Tensor, shape (N, C, H, W)
        Real images and what stands in for the channels outside a coalition (any device).
    coalitions : numpy.ndarray, bool, shape (K, C) (the same for every pair) or (N, K, C)
    batch_size : hybrids per forward pass (of several pairs and coalitions together).
    feed : device, memory layout and dtype of the forward passes.
    keys : `pair_keys` of the pairs, when the caller has them.
    memory : `remembered` of the model and ``feed``: results are looked up there and stored
        (None: nothing is remembered).
    bar : progress bar advanced by the hybrids of the request (known ones too).

    Returns
    -------
    (probabilities, evaluated)
        float32 tensor (N, K, n_classes) on the CPU, and the number of hybrids that went
        through the model.
    """
    n, c = images.shape[:2]
    masks = np.asarray(coalitions, dtype=bool)
    masks = np.broadcast_to(masks, (n, *masks.shape)) if masks.ndim == 2 else masks
    k = masks.shape[1]
    if n == 0 or k == 0:
        return torch.zeros((n, k, 0)), 0
    effective = masks & active_channels(images, base)[:, None, :]  # identical channels paste nothing
    packed = np.packbits(effective, axis=2)  # (N, K, bytes)
    keys = keys if keys is not None else pair_keys(images, base)
    table = memory if memory is not None else {}
    found: dict[tuple[bytes, bytes], Any] = {}
    todo: dict[tuple[bytes, bytes], tuple[int, int]] = {}
    for i in range(n):
        for j in range(k):
            key = (keys[i], packed[i, j].tobytes())
            if key in found or key in todo:
                continue
            if key in table:
                found[key] = table[key]
            else:
                todo[key] = (i, j)
    evaluated = len(todo)
    pending = list(todo.items())
    for start in range(0, len(pending), batch_size):
        part = pending[start : start + batch_size]
        rows = torch.as_tensor([i for _, (i, _) in part])
        lo, hi = int(rows.min()), int(rows.max()) + 1  # only the pairs this batch touches go to the device
        x = images[lo:hi].to(feed.device)[rows - lo]
        b = base[lo:hi].to(feed.device)[rows - lo]
        m = torch.as_tensor(np.stack([effective[i, j] for _, (i, j) in part])).to(feed.device)
        probs = feed(model, torch.where(m[:, :, None, None], x, b)).float().cpu()
        for (key, _), p in zip(part, probs):
            found[key] = p
        if bar is not None:
            bar.update(len(part))
    if memory is not None and todo:
        budget = max(1, MAX_REMEMBERED_VALUES // max(1, int(next(iter(found.values())).numel())))
        for key in todo:
            table[key] = found[key]
        while len(table) > budget:  # oldest first
            table.pop(next(iter(table)))
    out = torch.stack([torch.stack([found[(keys[i], packed[i, j].tobytes())] for j in range(k)]) for i in range(n)])
    if bar is not None:
        bar.update(n * k - evaluated)
    return out, evaluated
