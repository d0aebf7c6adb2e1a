"""``attribute``: validate inputs once, then run a registered method chunk by chunk."""

from __future__ import annotations

import inspect
import warnings
from typing import overload

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from chanstat.attribution.maps import AGGREGATIONS, aggregate_channels
from chanstat.attribution.modelstate import untouched
from chanstat.attribution.registry import METHODS, AttributionBatch, MethodSpec, get_method
from chanstat.models.adapter import as_model, refuse_scripted, unwrap
from chanstat.tensors import as_images, as_target, check_device, device_of, evaluating, model_device, model_dtype

#: Images per chunk when ``batch_size`` is not given. Integrated gradients evaluates
#: ``chunk * steps_per_pass`` images per forward pass, so this also bounds its memory.
DEFAULT_BATCH_SIZE = 32

#: Captum notices about things chanstat does on purpose (inputs without requires_grad, hooks
#: on ReLUs); silenced so real warnings stay visible.
_CAPTUM_NOTICES = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting forward, backward hooks and attributes on non-linear",
    r"Setting backward hooks on ReLU activations",
)


class ContrastWarning(UserWarning):
    """A discriminative method was asked to explain a class against itself."""


class _ForwardGuard:
    """Checks the model's forward passes during attribution, at no extra compute.

    Instead of a probe forward pass before the work, hooks on the model check each real
    forward pass: the output must be (batch, n_classes) scores with a column for every class
    asked about. The check runs before Captum indexes the output with the targets, so an
    out-of-range class is a clear error (not a CUDA device-side assert). ``failed_inside``
    tells whether an exception came from inside the model's own forward (then the inputs did
    not fit it).
    """

    def __init__(self, model: nn.Module, needed: dict[str, torch.Tensor | None]) -> None:
        self.model = model
        self.limits = {name: int(t.max()) for name, t in needed.items() if t is not None}
        self.running = 0
        self.handles: list = []

    def _pre(self, module, args) -> None:
        self.running += 1

    def _post(self, module, args, output) -> None:
        self.running -= 1
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"model must return class scores of shape (N, n_classes); got {shape}")
        n_classes = int(output.shape[1])
        for name, top in self.limits.items():
            if top >= n_classes:
                raise ValueError(
                    f"{name} must lie in [0, {n_classes - 1}] for a model with {n_classes} outputs; got {top}"
                )

    @property
    def failed_inside(self) -> bool:
        return self.running > 0

    def __enter__(self) -> "_ForwardGuard":
        self.handles = [self.model.register_forward_pre_hook(self._pre), self.model.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    """The layer for Grad-CAM methods: a module of ``model``, a dotted name, or the default
    (:func:`chanstat.models.default_cam_layer`, the last ``nn.Conv2d``)."""
    if layer is None:
        from chanstat.models import default_cam_layer

        return default_cam_layer(model)
    if isinstance(layer, str):
        own = unwrap(model)  # layer names are the user's, not the adapter's
        try:
            return own.get_submodule(layer)
        except AttributeError:
            convs = [name for name, m in own.named_modules() if isinstance(m, nn.Conv2d)]
            raise ValueError(f"model has no layer named {layer!r}; its Conv2d layers are {convs}") from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer is not a submodule of model")
        return layer
    raise TypeError(f"layer must be an nn.Module, a dotted layer name or None; got {type(layer).__name__}")


def _check_options(spec: MethodSpec, options: dict) -> None:
    params = inspect.signature(spec.fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"method {spec.name!r} does not take option(s) {unknown}; its options are {known if known else 'none'}"
        )


# ---------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------
def attribute(
    model: nn.Module | None,
    images,
    target,
    method: str,
    *,
    counterfactuals=None,
    counterfactual_target=None,
    aggregate: str | None = None,
    layer: nn.Module | str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    device=None,
    **method_options,
) -> torch.Tensor:
    """Per-channel attribution maps of a classifier's decision.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier mapping (N, C, H, W) images to (N, n_classes) scores. It runs in eval mode
        on its own device and in its own floating dtype (a half-precision model gets
        half-precision inputs). It is left as it was, also after an error: every module's
        train/eval flag, the dtype and ``requires_grad`` of its parameters, and its hooks are
        restored. May be None for the model-free baselines (``residual``, ``random``).
    images : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Real images.
    target : int or sequence/array/tensor of shape (N,)
        Class of the real images: the class vanilla methods explain. Ignored (may be None) by
        discriminative methods, which explain ``counterfactual_target``, and by the model-free
        baselines.
    method : str
        A key of :data:`chanstat.attribution.METHODS`, e.g. ``"ig"``, ``"d_ig"``, ``"gradcam"``.
    counterfactuals : torch.Tensor or numpy.ndarray, shape (N, C, H, W), optional
        The same images as they would look in the other class; required by methods with
        ``needs_counterfactual`` (``d_*`` and ``residual``); ignored by the others.
    counterfactual_target : int or shape (N,), optional
        Class of each counterfactual; required by the ``d_*`` methods.
    aggregate : {None, "mean", "sum", "max", "abs_mean", "abs_sum", "abs_max"}
        None keeps one map per channel, (N, C, H, W), for channel-resolving methods; any other
        value combines channels with :func:`aggregate_channels` into (N, 1, H, W).
        Channel-agnostic methods (``resolves_channels=False``) always give (N, 1, H, W).
    layer : torch.nn.Module or str, optional
        Convolutional layer for the Grad-CAM family (default: the model's last Conv2d).
    batch_size : int, optional
        Images per chunk (default 32). Each chunk goes to the model's device and its maps come
        back to the CPU, so memory stays bounded for any N.
    progress : bool
        Show a progress bar over chunks.
    device : str or torch.device, optional
        Where the work runs: the model's device (default); given, it must be the model's
        (a one-line error otherwise), and model-free methods run there.
    **method_options
        Passed to the method, e.g. ``n_steps`` and ``steps_per_pass`` for ``ig``/``d_ig``,
        ``relu``/``interpolate_mode`` for ``gradcam``, ``sigma``/``seed`` for ``random``.

    Returns
    -------
    torch.Tensor, float32, on the CPU, shape (N, C, H, W) or (N, 1, H, W).
    Each sample's map depends only on that sample (never on the rest of the batch).

    Raises
    ------
    ValueError
        Unknown method (the known ones are listed), wrong shapes or channel count, NaN/inf in
        the images, missing counterfactuals or counterfactual classes, class indices out of
        range, unknown or invalid options.
    """
    spec = get_method(method)
    if aggregate is not None and aggregate not in AGGREGATIONS:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose None or one of {', '.join(AGGREGATIONS)}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    _check_options(spec, method_options)
    if layer is not None and not spec.uses_layer:
        cam = [name for name, s in METHODS.items() if s.uses_layer]
        raise ValueError(f"method {spec.name!r} does not use a layer; layer= applies to {cam}")
    if spec.uses_model and not isinstance(model, nn.Module):
        raise TypeError(f"method {spec.name!r} needs a torch.nn.Module model; got {type(model).__name__}")

    x = as_images(images, "images")
    n = x.shape[0]
    # only what the method uses is checked and moved; the rest is ignored
    x_cf = y = y_cf = None
    if spec.needs_counterfactual:
        if counterfactuals is None:
            raise ValueError(
                f"method {spec.name!r} needs counterfactuals= (the same images as they would look in the "
                f"other class, shape {tuple(x.shape)})"
            )
        x_cf = as_images(counterfactuals, "counterfactuals")
        if x_cf.shape != x.shape:
            raise ValueError(
                f"counterfactuals must have the same shape as images; got {tuple(x_cf.shape)} vs {tuple(x.shape)}"
            )
    if spec.explains == "real":
        if target is None:
            raise ValueError(f"method {spec.name!r} needs target= (the class of each real image)")
        y = as_target(target, n, "target")
    if spec.explains == "counterfactual":
        if counterfactual_target is None:
            raise ValueError(f"method {spec.name!r} needs counterfactual_target= (the class of each counterfactual)")
        y_cf = as_target(counterfactual_target, n, "counterfactual_target")
        if target is not None:
            same = int((as_target(target, n, "target") == y_cf).sum())
            if same:
                warnings.warn(
                    f"{spec.name}: counterfactual_target equals target for {same} of {n} images; a discriminative map "
                    "explains the contrast between two classes, so those maps explain none (pass the counterfactual's "
                    "class, e.g. ImageSet.counterfactual_target)",
                    ContrastWarning,
                    stacklevel=2,
                )

    if not isinstance(model, nn.Module):
        return _attribute_chunks(
            spec, None, x, x_cf, y, y_cf, None, aggregate, batch_size, progress, method_options, device_of(device)
        )
    model = as_model(model)
    check_device(model, device)
    if spec.needs_hooks:
        refuse_scripted(model, spec.name, [m.name for m in METHODS.values() if not m.needs_hooks])
    declared = model.in_channels
    if spec.uses_model and isinstance(declared, int) and declared != x.shape[1]:
        raise ValueError(f"model expects {declared} input channels; images have {x.shape[1]}")
    with untouched(model), evaluating(model, grad=True):
        layer_module = resolve_layer(model, layer) if spec.uses_layer else None
        return _attribute_chunks(
            spec, model, x, x_cf, y, y_cf, layer_module, aggregate, batch_size, progress, method_options
        )


def _attribute_chunks(
    spec,
    model,
    x,
    x_cf,
    y,
    y_cf,
    layer_module,
    aggregate,
    batch_size,
    progress,
    options,
    device: torch.device | None = None,
):
    """Run the method chunk by chunk on the model's device (model-free methods: ``device``) and
    dtype; float32 CPU maps."""
    n = x.shape[0]
    runner = spec.prepare(model) if (spec.prepare is not None and model is not None) else model
    device = model_device(runner) if runner is not None else (device or torch.device("cpu"))
    # the model's own dtype (after prepare, which may change it); model-free methods keep float32
    dtype = model_dtype(runner) if spec.uses_model else torch.float32
    chunk = int(batch_size or DEFAULT_BATCH_SIZE)
    result: torch.Tensor | None = None
    starts = range(0, n, chunk)
    if progress:
        starts = tqdm(starts, desc=f"attribute {spec.name}", leave=False)
    for start in starts:
        stop = min(start + chunk, n)
        batch = AttributionBatch(
            images=_chunk(x, start, stop, device, dtype),
            target=_chunk(y, start, stop, device),
            counterfactuals=_chunk(x_cf, start, stop, device, dtype),
            counterfactual_target=_chunk(y_cf, start, stop, device),
            layer=layer_module,
        )
        maps = _run_method(spec, runner, batch, options, y, y_cf)
        maps = _check_output(spec, maps, batch.images.shape, dtype)
        if aggregate is not None:
            maps = aggregate_channels(maps.float(), aggregate)
        maps = maps.detach().to("cpu", torch.float32)
        if result is None:
            result = torch.empty((n,) + tuple(maps.shape[1:]), dtype=torch.float32)
        result[start:stop] = maps
    assert result is not None
    return result


def _run_method(spec: MethodSpec, model, batch: AttributionBatch, options: dict, y, y_cf) -> torch.Tensor:
    with warnings.catch_warnings():
        for message in _CAPTUM_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        if not spec.uses_model:
            return spec.fn(model, batch, **options)
        guard = _ForwardGuard(model, {"target": y, "counterfactual_target": y_cf})
        try:
            with guard:
                return spec.fn(model, batch, **options)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the likely cause named
            if "used more than once" in str(exc):  # Captum's DeepLift on an untraceable model
                raise ValueError(
                    f"method {spec.name!r} needs every ReLU/pooling module to be called once per forward pass; "
                    "this model reuses one and torch.fx could not trace it to separate the calls. "
                    "Give each call its own module (e.g. nn.ReLU() per use)"
                ) from exc
            if not guard.failed_inside:
                raise
            raise ValueError(
                f"model could not process images of shape (N, {', '.join(map(str, batch.images.shape[1:]))}): "
                f"{type(exc).__name__}: {exc}. Does the model expect a different number of channels or size?"
            ) from exc


@overload
def _chunk(
    t: torch.Tensor, start: int, stop: int, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor: ...
@overload
def _chunk(t: None, start: int, stop: int, device: torch.device, dtype: torch.dtype | None = None) -> None: ...
@overload
def _chunk(
    t: torch.Tensor | None, start: int, stop: int, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor | None: ...
def _chunk(
    t: torch.Tensor | None, start: int, stop: int, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor | None:
    if t is None:
        return None
    return t[start:stop].to(device, dtype=dtype or t.dtype, non_blocking=True)


def _check_output(spec: MethodSpec, maps: torch.Tensor, input_shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    n, c, h, w = input_shape
    expected = (n, c if spec.resolves_channels else 1, h, w)
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != expected:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise RuntimeError(f"method {spec.name!r} returned {got}; its registry entry promises {expected}")
    if not bool(torch.isfinite(maps).all()):  # never hand on NaN maps as numbers
        hint = f" (the model runs in {dtype}; try model.float())" if dtype in (torch.float16, torch.bfloat16) else ""
        raise ValueError(f"method {spec.name!r} produced {int((~torch.isfinite(maps)).sum())} NaN/inf map values{hint}")
    return maps
