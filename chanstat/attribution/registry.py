"""The method registry: what each attribution method is and how to call it.

Every method is described by a :class:`MethodSpec` and called through one signature,
``fn(model, batch, **options) -> torch.Tensor``, where ``batch`` is an :class:`AttributionBatch`
already validated and moved to the model's device. Family modules (``gradients``, ``cam``,
``discriminative``, ``baselines``, ...) call :func:`register` when they are imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

#: What class a method explains: the real image's class, the counterfactual's class, or none
#: (model-free baselines such as ``residual`` and ``random``).
EXPLAINS = ("real", "counterfactual", "none")


@dataclass(frozen=True)
class AttributionBatch:
    """One chunk of validated inputs, on the model's device.

    Attributes
    ----------
    images : torch.Tensor, shape (n, C, H, W), in the model's floating dtype
        Real images.
    target : torch.Tensor, shape (n,), int64, or None
        Class of each real image (None when the method does not use it).
    counterfactuals : torch.Tensor, shape (n, C, H, W), in the model's dtype, or None
        The same images as they would look in the other class.
    counterfactual_target : torch.Tensor, shape (n,), int64, or None
        Class of each counterfactual.
    layer : torch.nn.Module or None
        Layer for the Grad-CAM family (resolved by :func:`chanstat.attribution.attribute`).
    """

    images: torch.Tensor
    target: torch.Tensor | None = None
    counterfactuals: torch.Tensor | None = None
    counterfactual_target: torch.Tensor | None = None
    layer: nn.Module | None = None


@dataclass(frozen=True)
class MethodSpec:
    """Description of one attribution method.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"d_ig"``.
    family : str
        Module family, e.g. ``"gradients"``, ``"cam"``, ``"discriminative"``, ``"baseline"``.
    resolves_channels : bool
        True if maps are ``(N, C, H, W)`` (one map per input channel); False if the method
        returns one map per image, ``(N, 1, H, W)`` (the Grad-CAM family).
    needs_counterfactual : bool
        True if the method needs ``counterfactuals`` (the discriminative ``d_*`` methods and
        ``residual``).
    signed : bool
        True if maps can be negative (with default options).
    description : str
        One line for tables and reports.
    fn : callable
        ``fn(model, batch: AttributionBatch, **options) -> Tensor`` of shape ``(n, C, H, W)``
        or ``(n, 1, H, W)`` on the batch's device. Must treat each sample independently.
    explains : str
        ``"real"`` (uses ``batch.target``), ``"counterfactual"`` (uses
        ``batch.counterfactual_target``) or ``"none"`` (model-free baseline).
    uses_layer : bool
        True if the method reads ``batch.layer`` (a convolutional layer).
    prepare : callable, optional
        ``prepare(model) -> nn.Module``: the module the method actually runs on, built once
        per :func:`~chanstat.attribution.attribute` call (DeepLift: one module per ReLU call,
        :func:`~chanstat.attribution.modelstate.unshared_nonlinearities`). It must compute the
        same function and share the model's parameters.
    """

    name: str
    family: str
    resolves_channels: bool
    needs_counterfactual: bool
    signed: bool
    description: str
    fn: Callable[..., torch.Tensor]
    explains: str = "real"
    uses_layer: bool = False
    prepare: Callable[[nn.Module], nn.Module] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"method name must be a Python identifier; got {self.name!r}")
        if self.explains not in EXPLAINS:
            raise ValueError(f"explains must be one of {EXPLAINS}; got {self.explains!r}")
        if self.explains == "counterfactual" and not self.needs_counterfactual:
            raise ValueError(
                f"method {self.name!r} explains the counterfactual class but does not need counterfactuals"
            )
        if not callable(self.fn):
            raise TypeError(f"fn of method {self.name!r} must be callable")
        if self.prepare is not None and not callable(self.prepare):
            raise TypeError(f"prepare of method {self.name!r} must be callable or None")

    @property
    def uses_model(self) -> bool:
        return self.explains != "none"

    @property
    def needs_hooks(self) -> bool:
        """True if the method hooks the model's modules (a layer, or a rebuilt module such as
        DeepLift's): TorchScript models cannot run it."""
        return self.uses_model and (self.uses_layer or self.prepare is not None)


#: name -> MethodSpec of every registered method, in registration order.
METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add a method to :data:`METHODS`.

    Parameters
    ----------
    spec : MethodSpec
    replace : bool
        Allow replacing a method of the same name (otherwise that is an error, so two
        modules cannot silently shadow each other).
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register() takes a MethodSpec; got {type(spec).__name__}")
    if spec.name in METHODS and not replace:
        raise ValueError(f"attribution method {spec.name!r} is already registered; pass replace=True to override")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; a ValueError listing the known names otherwise."""
    if isinstance(name, MethodSpec):
        return name
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attribution method {name!r}; known methods: {', '.join(METHODS)}") from None
