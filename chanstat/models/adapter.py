"""One adapter between a user's classifier and every chanstat verb, stage and worker.

Whatever a user brings -- an ``nn.Module``, a TorchScript module, a one-logit model, a model
whose forward returns a tuple or a dict, half or bfloat16 weights, any device -- is wrapped
once by :func:`as_model` into a :class:`ModelAdapter`, and every verb sees the same thing:

* ``adapter(images)`` returns float32 class scores of shape ``(N, K)`` with ``K >= 2``. A
  one-logit model's score ``z`` becomes the pair ``(0, z)``, so a softmax over the pair is
  ``(1 - sigmoid(z), sigmoid(z))``: class 1 is the sigmoid, as everywhere in chanstat.
* images are cast to the model's own dtype on the way in, so a half-precision model runs in
  half precision while every probability, map and score chanstat computes is float32.
* ``adapter.embed(images)`` gives an embedding for ``nearest`` counterfactuals: the model's
  own ``embed()`` when it has one, a named layer's output, else the input of the last
  ``nn.Linear`` (the penultimate activations of the usual classifier heads).
* ``adapter.scripted`` says whether module hooks are unavailable (TorchScript), so methods
  that need hooks can refuse in one line, naming the methods that work.

The adapter is an ``nn.Module`` holding the user's module as ``adapter.model``, so Captum
sees (and hooks) the user's own layers, and wrapping twice returns the same adapter.
:func:`load_model` is the one place that interprets a config's ``[model]`` section; workers
call it with the same section and get exactly the same adapter.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from chanstat.tensors import model_device, model_dtype

#: How a model's raw output is reduced to its class scores: a tuple/list index, a dict key,
#: or a callable taking the raw output.
OutputSelector = int | str | Callable[[Any], torch.Tensor] | None

#: Dict keys tried, in order, when a model returns a dict and no selector is given.
LOGIT_KEYS = ("logits", "scores", "output", "out")


class ModelAdapterError(ValueError):
    """A model whose output or layers cannot be used as documented (the message says why)."""


def _is_scripted(module: nn.Module) -> bool:
    return isinstance(module, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule))


class ModelAdapter(nn.Module):
    """A classifier seen the way every chanstat verb needs it.

    Parameters
    ----------
    model : torch.nn.Module
        The user's classifier (a TorchScript module too). Its parameters are shared, not copied.
    output : int, str or callable, optional
        Where the class scores are in the model's output when it is not one tensor: an index
        into a returned tuple/list, a key of a returned dict, or a function of the raw output.
        Default: the tensor itself; the first tensor of a tuple/list; the first of the keys
        ``logits``, ``scores``, ``output``, ``out`` of a dict.
    embedding_layer : str, optional
        Dotted name of the layer whose output is the embedding (``embed``); default the model's
        own ``embed()`` method, else the input of its last ``nn.Linear``.
    """

    def __init__(self, model: nn.Module, output: OutputSelector = None, embedding_layer: str | None = None) -> None:
        super().__init__()
        if isinstance(model, ModelAdapter):
            raise TypeError("model is already a ModelAdapter; use as_model() to wrap idempotently")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if output is not None and not isinstance(output, (int, str)) and not callable(output):
            raise TypeError(f"output must be an index, a dict key or a callable; got {type(output).__name__}")
        self.model = model
        self.output = output
        self.embedding_layer = embedding_layer
        if embedding_layer is not None:
            self._embedding_module()  # fail now, naming the layer, not at the first embed()

    # -- what the model is -------------------------------------------------------------------
    @property
    def scripted(self) -> bool:
        """True for TorchScript: module hooks (DeepLift, Grad-CAM, guided backprop) are unavailable."""
        return _is_scripted(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return model_dtype(self.model)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def in_channels(self) -> int | None:
        """Input channels the model declares as ``in_channels``, else None."""
        declared = getattr(self.model, "in_channels", None)
        return declared if isinstance(declared, int) and not isinstance(declared, bool) else None

    def expected_channels(self) -> int | None:
        """Input channels: declared, else those of the first ``nn.Conv2d`` (None for TorchScript)."""
        if self.in_channels is not None or self.scripted:
            return self.in_channels
        convs = [m for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        return int(convs[0].in_channels) if convs else None

    def get_submodule(self, target: str) -> nn.Module:
        """A layer by the user's dotted name (``"layer4.1.conv2"``); the adapter's own names work too."""
        if target:
            try:
                return self.model.get_submodule(target)
            except AttributeError:
                pass
        return super().get_submodule(target)

    def with_module(self, module: nn.Module) -> "ModelAdapter":
        """The same adapter around another module computing the same function (e.g. a traced copy)."""
        return ModelAdapter(module, output=self.output, embedding_layer=self.embedding_layer)

    # -- forward -----------------------------------------------------------------------------
    def scores(self, raw: Any) -> torch.Tensor:
        """The class-score tensor inside a model's raw output (see ``output``)."""
        selector = self.output
        picked: Any
        if callable(selector) and not isinstance(selector, (int, str)):
            picked = selector(raw)
        elif isinstance(raw, torch.Tensor):
            if selector is not None:
                raise ModelAdapterError(f"[model] output = {selector!r} given, but the model returns one tensor")
            picked = raw
        elif isinstance(raw, (tuple, list)):
            if selector is None:
                picked = next((r for r in raw if isinstance(r, torch.Tensor)), None)
            elif isinstance(selector, int) and -len(raw) <= selector < len(raw):
                picked = raw[selector]
            else:
                raise ModelAdapterError(
                    f"[model] output = {selector!r} does not index the model's {type(raw).__name__} of {len(raw)} items"
                )
        elif isinstance(raw, Mapping):
            keys = [selector] if selector is not None else [k for k in LOGIT_KEYS if k in raw]
            if not keys or keys[0] not in raw:
                raise ModelAdapterError(
                    f"the model returns a dict with keys {sorted(map(str, raw))}; name the class scores with "
                    f'[model] output = "<key>" (as_model(model, output=...))'
                )
            picked = raw[keys[0]]
        else:
            raise ModelAdapterError(f"the model returned a {type(raw).__name__}; expected class scores (a tensor)")
        if not isinstance(picked, torch.Tensor):
            raise ModelAdapterError(
                f"the model's class scores must be a tensor; the output selected is a {type(picked).__name__}"
            )
        return picked

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores, float32, shape (N, K >= 2), for images (N, C, H, W)."""
        dtype = self.dtype
        if images.is_floating_point() and images.dtype != dtype:
            images = images.to(dtype)
        logits = self.scores(self.model(images))
        if logits.ndim == 1:
            logits = logits[:, None]
        if logits.ndim != 2:
            raise ModelAdapterError(
                f"model must return class scores of shape (N, n_classes); got {tuple(logits.shape)}"
            )
        logits = logits.float()
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities, float32, shape (N, K >= 2)."""
        return torch.softmax(self(images), dim=1)

    # -- embedding ---------------------------------------------------------------------------
    def _embedding_module(self) -> nn.Module | None:
        if self.embedding_layer is None:
            return None
        if self.scripted:
            raise ModelAdapterError(
                f"embedding_layer = {self.embedding_layer!r}: a TorchScript model cannot be hooked; leave it unset "
                "(its embed() method, if scripted, or its class scores are used)"
            )
        try:
            return self.model.get_submodule(self.embedding_layer)
        except AttributeError:
            names = [n for n, _ in self.model.named_modules() if n][:20]
            raise ModelAdapterError(
                f"embedding_layer = {self.embedding_layer!r} is not a layer of the model; its layers include {names}"
            ) from None

    @property
    def embedding_source(self) -> str:
        """Where :meth:`embed` reads from, in words (for provenance and messages)."""
        if self.embedding_layer is not None:
            return f"layer {self.embedding_layer}"
        if callable(getattr(self.model, "embed", None)):
            return "model.embed()"
        if self.scripted:
            return "class scores (TorchScript without embed())"
        last = self._last_linear()
        return "input of the last Linear layer" if last is not None else "class scores (no Linear layer)"

    def _last_linear(self) -> nn.Module | None:
        if self.scripted:
            return None
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        return linears[-1] if linears else None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding of images (N, C, H, W) -> float32 (N, D): see ``embedding_layer``."""
        dtype = self.dtype
        if images.is_floating_point() and images.dtype != dtype:
            images = images.to(dtype)
        own = getattr(self.model, "embed", None)
        if self.embedding_layer is None and callable(own):
            feats = own(images)
            return feats.reshape(feats.shape[0], -1).float()
        layer = self._embedding_module()
        take_input = False
        if layer is None:
            layer = self._last_linear()
            take_input = True
        if layer is None:  # TorchScript, or a head without a Linear layer
            return self(images)
        captured: list[torch.Tensor] = []

        def grab_input(module, args):
            captured.append(args[0])

        def grab_output(module, args, out):
            captured.append(out if isinstance(out, torch.Tensor) else self.scores(out))

        handle = layer.register_forward_pre_hook(grab_input) if take_input else layer.register_forward_hook(grab_output)
        try:
            self.model(images)
        finally:
            handle.remove()
        if not captured:
            raise ModelAdapterError(f"the embedding layer ({self.embedding_source}) was not called in the forward pass")
        feats = captured[-1]
        return feats.reshape(feats.shape[0], -1).float()


def as_model(model: nn.Module, output: OutputSelector = None, embedding_layer: str | None = None) -> ModelAdapter:
    """``model`` wrapped in a :class:`ModelAdapter` (an adapter is returned as it is).

    Parameters
    ----------
    model : torch.nn.Module
        A classifier: ``nn.Module`` or TorchScript; one logit or K >= 2 class scores; a tensor,
        tuple or dict output; any floating dtype and device.
    output, embedding_layer
        See :class:`ModelAdapter`. Given for an adapter, they must match its own.

    Returns
    -------
    ModelAdapter
    """
    if isinstance(model, ModelAdapter):
        if (output is not None and output != model.output) or (
            embedding_layer is not None and embedding_layer != model.embedding_layer
        ):
            return ModelAdapter(
                model.model,
                output=output if output is not None else model.output,
                embedding_layer=embedding_layer or model.embedding_layer,
            )
        return model
    return ModelAdapter(model, output=output, embedding_layer=embedding_layer)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside an adapter (the model itself otherwise)."""
    return model.model if isinstance(model, ModelAdapter) else model


def refuse_scripted(model: nn.Module, method: str, working: list[str]) -> None:
    """One-line refusal of a method that needs module hooks, for a TorchScript model."""
    if isinstance(model, ModelAdapter) and model.scripted or _is_scripted(model):
        raise ModelAdapterError(
            f"method {method!r} needs module hooks, which TorchScript models do not support; "
            f"methods that work on TorchScript: {', '.join(working)} (or load the model as an nn.Module via [model] source)"
        )


# ---------------------------------------------------------------------------------------------
# [model]: the one place that interprets it
# ---------------------------------------------------------------------------------------------
@dataclass
class Classifier:
    """The run's classifier: the adapter, the channels and classes it reads, and where it came from.

    ``source`` is ``None`` for chanstat's reference classifier (written to ``model.pt``), else the
    ``[model] checkpoint`` / ``source`` it was loaded from.
    """

    module: ModelAdapter
    channels: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    source: str | None = None


class ModelSourceError(ValueError):
    """A ``[model] source`` that cannot be imported, called, or does not give a torch.nn.Module."""


#: Top-level modules whose callables a config may never name: calling them runs code that is not
#: a model (``os:system``, ``subprocess:run``, ``builtins:eval`` ...).
_REFUSED_ROOTS = frozenset(sys.stdlib_module_names) | {"builtins", "__main__"}


def check_source(source: str) -> tuple[str, str]:
    """``"module:callable"`` split and checked *before* anything is imported or called.

    Callables from the standard library and builtins are refused: a config names a model
    factory, and a config that could name ``os:system`` would run a command.
    """
    module_name, _, attr = source.partition(":")
    if not module_name or not attr:
        raise ModelSourceError(
            f"model source {source!r} must look like 'package.module:callable' or a TorchScript file"
        )
    root = module_name.split(".")[0]
    if root in _REFUSED_ROOTS:
        raise ModelSourceError(
            f"model source {source!r}: callables of the standard library or builtins are refused "
            "(a config names a model factory, e.g. 'mymodels:resnet18')"
        )
    return module_name, attr


def build_from_import(source: str, kwargs: dict | None, folder: Path | None) -> nn.Module:
    """Import ``module:callable`` (``folder`` first on the search path) and call it with ``kwargs``."""
    module_name, attr = check_source(source)
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
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelSourceError(f"model source {source!r}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelSourceError(f"model source {source!r}: {attr!r} ({type(factory).__name__}) is not callable")
    try:
        model = factory(**(kwargs or {}))
    except TypeError as exc:
        raise ModelSourceError(
            f"model source {source!r} could not be called with kwargs {kwargs or {}}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model source {source!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's text advises weights_only=False, which would run code
        raise ModelSourceError(
            f"{what} {path}: not a PyTorch weights file chanstat can read safely ({type(exc).__name__}); "
            "save a state dict with torch.save(model.state_dict(), path)"
        ) from None


def load_user_model(
    source: str,
    weights: str | Path | None = None,
    kwargs: dict | None = None,
    device=None,
    search_path: str | Path | None = None,
) -> nn.Module:
    """A user's classifier module from ``source`` (``"module:callable"`` or a TorchScript file).

    Parameters
    ----------
    source : ``"package.module:callable"`` (called with ``kwargs``; then ``weights``, a state
        dict file, is loaded) or the path of a TorchScript file.
    weights : state-dict file for an import-path model.
    kwargs : keyword arguments of the callable.
    device : where the model goes (default CPU).
    search_path : folder searched first for ``package.module`` and relative paths (the config's folder).

    Returns
    -------
    torch.nn.Module in eval mode on ``device``.
    """
    folder = Path(search_path) if search_path is not None else None

    def local(path: str | Path) -> Path:
        path = Path(path).expanduser()
        return folder / path if (folder is not None and not path.is_absolute() and (folder / path).exists()) else path

    if ":" in source and not local(source).exists():
        model = build_from_import(source, kwargs, folder)
        if weights is not None:
            weights = local(weights)
            if not weights.is_file():
                raise FileNotFoundError(f"[model] weights: file not found: {weights}")
            state = _torch_load(weights, "[model] weights")
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0][:200]
                raise ModelSourceError(
                    f"[model] weights {weights} do not fit the model built by {source!r}: {first}"
                ) from None
    else:
        path = local(source)
        if not path.is_file():
            raise FileNotFoundError(f"[model] source: model file not found: {path}")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ModelSourceError(f"[model] source {path}: not a TorchScript file ({first})") from None
    return model.to(device or "cpu").eval()


def output_selector(value: Any) -> OutputSelector:
    """``[model] output`` from a config: an int index or a dict key (None: the default)."""
    if value is None or isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise ModelSourceError(f"[model] output must be an index or a dict key; got {value!r}")


def load_model(
    section: Mapping[str, Any], config_dir: str | Path | None = None, device=None, run_model: str | Path | None = None
) -> Classifier:
    """The classifier a ``[model]`` section names -- the one function that interprets ``[model]``.

    Parameters
    ----------
    section : the validated ``[model]`` section (keys ``checkpoint``, ``source``, ``weights``,
        ``kwargs``, ``output``, ``embedding_layer``).
    config_dir : folder relative paths start from (the config's folder).
    device : where the model goes.
    run_model : a run directory's ``model.pt`` (chanstat's trained classifier), used when the
        section names no model of the user's.

    Returns
    -------
    Classifier
        Its ``module`` is a :class:`ModelAdapter` in eval mode; ``channels`` and ``classes``
        are those stored with a chanstat checkpoint (empty for a user's module until the
        model stage fills them from the data).
    """
    from chanstat.models.checkpoint import load_checkpoint

    folder = Path(config_dir) if config_dir is not None else Path.cwd()

    def resolve(value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (folder / p).resolve()

    output = output_selector(section.get("output"))
    layer = section.get("embedding_layer")
    if section.get("checkpoint"):
        loaded = load_checkpoint(resolve(section["checkpoint"]), device=device)
        return Classifier(
            as_model(loaded.model.eval(), output=output, embedding_layer=layer),
            list(loaded.channels),
            list(loaded.classes),
            source=str(section["checkpoint"]),
        )
    if section.get("source"):
        source = str(section["source"])
        local = resolve(source)
        module = load_user_model(
            str(local) if local.exists() else source,
            weights=resolve(section["weights"]) if section.get("weights") else None,
            kwargs=section.get("kwargs"),
            device=device,
            search_path=folder,
        )
        return Classifier(as_model(module, output=output, embedding_layer=layer), [], [], source=source)
    if run_model is not None and Path(run_model).is_file():
        loaded = load_checkpoint(run_model, device=device)
        return Classifier(
            as_model(loaded.model.eval(), output=output, embedding_layer=layer),
            list(loaded.channels),
            list(loaded.classes),
        )
    raise ModelSourceError("[model] names no model (checkpoint or source) and the run holds no model.pt")
