"""Keeping a user's model as it was: state snapshots, and models Captum's DeepLift can run.

Two concerns of running attribution methods on someone else's ``nn.Module``:

- :func:`untouched` restores everything an attribution method may leave behind on the model --
  hooks, attributes Captum sets on modules (DeepLift's ``input``/``output``), the dtype and
  ``requires_grad`` of every parameter and buffer -- also when the method fails half way.
  Training flags are restored by :func:`chanstat.tensors.evaluating`.
- :func:`deeplift_model` / :func:`unshared_nonlinearities` give every call of a nonlinearity
  its own module. Captum's
  DeepLift stores each nonlinearity's input and output on the module itself, so one
  ``nn.ReLU`` called several times (torchvision's ResNets reuse ``self.relu``) breaks it, and a
  functional ``F.relu`` is treated as linear (silently wrong multipliers). The model is traced
  with ``torch.fx``; the result shares every parameter with the model.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import fx, nn

#: Hook dictionaries of ``nn.Module`` (keyed by handle id); entries added during attribution go.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
#: Plain attributes whose value a hook registration may change (restored, not deleted).
_FLAGS = ("_is_full_backward_hook",)

#: Nonlinearities DeepLift treats with its own rule (one module per call needed).
NONLINEAR = tuple(SUPPORTED_NON_LINEAR)
_FUNCTIONAL_RELU = (torch.relu, torch.nn.functional.relu, torch.relu_)


@contextmanager
def untouched(model: nn.Module | None) -> Iterator[None]:
    """Restore the model's hooks, module attributes, dtypes and ``requires_grad`` on exit.

    Parameters
    ----------
    model : torch.nn.Module or None
        None (model-free methods) is accepted and ignored.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    hooks = [{name: set(getattr(m, name, {}) or {}) for name in _HOOK_DICTS} for m in modules]
    attributes = [set(vars(m)) for m in modules]
    flags = [{name: getattr(m, name) for name in _FLAGS if hasattr(m, name)} for m in modules]
    tensors = [
        (m, kind, name, t.dtype, t.requires_grad)
        for m in modules
        for kind in ("_parameters", "_buffers")
        for name, t in getattr(m, kind).items()
        if t is not None
    ]
    try:
        yield
    finally:
        for m, before, names, values in zip(modules, hooks, attributes, flags):
            for dict_name, keys in before.items():
                table = getattr(m, dict_name, None)
                if table:
                    for key in [k for k in table if k not in keys]:
                        del table[key]
            for name in set(vars(m)) - names:
                delattr(m, name)
            for name, value in values.items():
                setattr(m, name, value)
        for m, kind, name, dtype, requires_grad in tensors:
            t = getattr(m, kind)[name]
            if t is None:
                continue
            if t.dtype != dtype:
                t.data = t.data.to(dtype)
            if kind == "_parameters" and t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)


def unshared_nonlinearities(model: nn.Module) -> nn.Module:
    """The model with one nonlinearity module per call, for DeepLift.

    Returns ``model`` itself when every nonlinearity module (ReLU, max pooling, ... -- those
    DeepLift has a rule for) is called once and no functional ReLU is used, or when the model
    cannot be traced by ``torch.fx`` (DeepLift then reports a reused module itself). Otherwise a
    ``torch.fx.GraphModule`` computing the same function that shares every parameter and
    buffer with ``model``: each call site gets its own copy of the nonlinearity (not in-place),
    and ``torch.relu`` / ``F.relu`` / ``x.relu()`` calls become ``nn.ReLU`` modules.
    """
    from chanstat.models.adapter import ModelAdapter

    if isinstance(model, ModelAdapter):  # trace the user's module; the adapter's output handling stays
        inner = unshared_nonlinearities(model.model)
        return model if inner is model.model else model.with_module(inner)
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models (data-dependent control flow) run as they are
        return model
    calls: dict[str, int] = {}
    functional = []
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), NONLINEAR):
            calls[node.target] = calls.get(node.target, 0) + 1
        elif (node.op == "call_function" and node.target in _FUNCTIONAL_RELU) or (
            node.op == "call_method" and node.target in ("relu", "relu_")
        ):
            functional.append(node)
    if all(count == 1 for count in calls.values()) and not functional:
        return model
    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and node.target in calls:
            module = copy.deepcopy(graph_module.get_submodule(node.target))
        elif node in functional:
            module = nn.ReLU()
        else:
            continue
        if hasattr(module, "inplace"):
            # DeepLift needs the input and output as separate tensors. torch types Module.__setattr__
            # as Tensor | Module only, but plain attributes (nn.ReLU sets its own bool inplace) are fine
            module.inplace = False  # type: ignore[assignment]
        name = f"chanstat_nonlinearity_{count}"
        count += 1
        graph_module.add_submodule(name, module)
        if node.op == "call_module":
            node.target = name
        else:
            with graph_module.graph.inserting_before(node):
                replacement = graph_module.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(replacement)
            graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.training = model.training  # the GraphModule itself only; shared modules keep theirs
    return graph_module


#: Dtypes in which DeepLift's multipliers (output differences over input differences) underflow.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def deeplift_model(model: nn.Module) -> nn.Module:
    """The module DeepLift runs on: one module per nonlinearity call
    (:func:`unshared_nonlinearities`), in float32 when the model is float16/bfloat16.

    DeepLift's rescale rule divides output differences by input differences; in half precision
    small differences underflow and the maps become NaN. A low-precision model is therefore cast
    to float32 **in place** for the computation; :func:`untouched` (which
    :func:`~chanstat.attribution.attribute` wraps every call in) casts it back afterwards.
    """
    from chanstat.tensors import model_dtype

    if model_dtype(model) in LOW_PRECISION:
        model.float()
    return unshared_nonlinearities(model)
