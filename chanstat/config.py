"""Config validation: the whole TOML config is checked against the stages' declared schemas
before any stage runs.

Each stage declares the pydantic model of its section next to its code (``STAGE.config`` in
``chanstat/<stage>/stage.py``); :func:`validate_config` joins them with the run-wide sections
(``[run]``, ``[compute]``) into one model. Unknown sections and keys are errors with the
closest valid name; types and ranges are checked; the result is the config with every default
filled in, which the run directory keeps as ``config.toml``.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import tomllib
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator


class ConfigError(ValueError):
    """The config does not match the schema; the message names the file and every key at fault."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors; ``enabled = false`` switches a stage off."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    enabled: bool = True


class Options(BaseModel):
    """A table of keyword arguments for a library function (checked by :func:`check_kwargs`)."""

    model_config = ConfigDict(extra="allow")


class RunSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    seed: int = Field(0, ge=0, description="Seed of every random choice (training, subsets, noise maps).")
    device: str = Field("auto", description='"auto" (CUDA when available), "cpu", "cuda" or "cuda:N".')
    torch_threads: int | None = Field(None, ge=1, description="CPU threads torch may use.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        if value == "mps":
            return value
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N"; got {value!r}')


class ComputeSection(Section):
    """``[compute]``: run the per-image parts of stages in shards on Dask."""

    scheduler: str = Field("local", description='"sync" (this process), "local" (a LocalCluster) or a scheduler address.')
    n_workers: int | None = Field(None, ge=1, description="Workers of a local cluster (default: one per GPU, else per core).")
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True
    memory_limit: str | int | None = "auto"
    shard_by: Literal["index", "well", "plate"] = "index"
    shard_size: int = Field(64, ge=1, description="Images per shard (most images per shard for wells/plates).")
    retries: int = Field(2, ge=0)
    stages: list[str] = Field(default_factory=lambda: ["attribution", "dac", "metrics"])
    keep_shards: bool = False
    device: str | None = None
    dashboard: bool = False


def check_kwargs(options: Mapping[str, Any], func: Callable, where: str, exclude: tuple[str, ...] = ()) -> dict:
    """``options`` if every key is a keyword of ``func`` (else :class:`ConfigError` with a suggestion)."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in exclude]
    for key in options:
        if key not in allowed:
            raise ConfigError(f"[{where}] has no key {key!r}{_suggest(key, allowed)}; valid keys: {', '.join(sorted(allowed))}")
    return dict(options)


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def root_model(stages) -> type[BaseModel]:
    """The pydantic model of a whole config: ``[run]``, ``[compute]`` and one section per stage."""
    fields: dict[str, Any] = {
        "run": (RunSection, RunSection()),
        "compute": (ComputeSection | None, None),
    }
    for stage in stages:
        default = stage.config() if stage.always else None
        fields[stage.name] = (stage.config | None, default) if not stage.always else (stage.config, default)
    return create_model("ChanstatConfig", __config__=ConfigDict(extra="forbid"), **fields)


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int) and not str(p).startswith(("function-", "union["))]
    parts = [p for p in parts if p not in ("Options", "dict[str,any]") and not p[:1].isupper()]
    return ".".join(parts)


def _allowed_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    node: Any = model
    for part in loc:
        field = getattr(node, "model_fields", {}).get(part)
        if field is None:
            return []
        node = _model_of(field.annotation)
        if node is None:
            return []
    return list(getattr(node, "model_fields", {}))


def _model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def format_errors(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: ``config.toml: [dac] step: unknown key (did you mean 'steps'?)``."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if isinstance(p, str)]
        loc = [p for p in loc if not p[:1].isupper() and "[" not in p and not p.startswith("function-")]
        if err["type"] == "extra_forbidden":
            key = loc[-1]
            parent = loc[:-1]
            allowed = _allowed_at(model, parent)
            where = f"[{'.'.join(parent)}] " if parent else ""
            what = "section" if not parent else "key"
            lines.append(f"{where}unknown {what} {'[' + key + ']' if not parent else repr(key)}{_suggest(key, allowed)}")
        else:
            section, key = loc[:-1], loc[-1] if loc else ""
            where = f"[{'.'.join(section)}] {key}" if section else (f"[{key}]" if key else "config")
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return f"{source}: " + "; ".join(dict.fromkeys(lines))


def deep_merge(base: Mapping, override: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config(path: str | Path) -> dict:
    """A TOML file as a dict, with a one-line error naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (TOML) file") from None


def validate_config(raw: Mapping, stages, quick: bool = False, source: str = "config") -> dict:
    """Merge ``[quick]`` when asked, validate against the stages' schemas, fill defaults.

    Returns the validated config as a plain dict (absent optional sections stay absent).
    Raises :class:`ConfigError` with every problem on one line.
    """
    raw = copy.deepcopy(dict(raw))
    quick_part = raw.pop("quick", {})
    if not isinstance(quick_part, Mapping):
        raise ConfigError(f"{source}: [quick] must be a table")
    if quick:
        raw = deep_merge(raw, quick_part)
    model = root_model(stages)
    try:
        validated = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, model, source)) from None
    return validated.model_dump(exclude_none=False, exclude_unset=False, exclude={k for k, v in validated if v is None})


def schema_markdown(stages) -> str:
    """The config schema as Markdown (for the README; generated, so it cannot drift)."""
    lines: list[str] = []
    sections: list[tuple[str, type[BaseModel]]] = [("run", RunSection), ("compute", _compute_model())]
    sections += [(s.name, s.config) for s in stages]
    for name, model in sections:
        _section_markdown(name, model, lines)
    return "\n".join(lines).rstrip()


def _compute_model() -> type[BaseModel]:
    from chanstat.compute.runner import ComputeConfig

    return ComputeConfig


def _section_markdown(name: str, model: type[BaseModel], lines: list[str]) -> None:
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    doc = doc.split(": ", 1)[1] if doc.startswith("``[") and ": " in doc else doc
    lines += [f"**[{name}]** {doc}".rstrip(), "", "| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for key, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is not None and sub is not Options:
            nested.append((f"{name}.{key}", sub))
            lines.append(f"| `[{name}.{key}]` | table | | see below |")
            continue
        default = field.get_default(call_default_factory=True)
        shown = "—" if default is None or default is ... else f"`{default!r}`"
        lines.append(f"| `{key}` | {_type_name(field.annotation)} | {shown} | {field.description or ''} |".replace("|`", "| `"))
    lines.append("")
    for sub_name, sub in nested:
        _section_markdown(sub_name, sub, lines)


def _type_name(annotation) -> str:
    import typing

    if typing.get_origin(annotation) is Literal:
        return " or ".join(f"`{a!r}`" for a in typing.get_args(annotation))
    args = typing.get_args(annotation)
    if args and type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " (optional)"
    text = getattr(annotation, "__name__", None) if not args else None
    return (text or str(annotation)).replace("typing.", "").replace("|", "or")


def kwargs_model(func: Callable, name: str, exclude: tuple[str, ...] = (), doc: str | None = None,
                 **fields: Any) -> type[BaseModel]:
    """A config-section model whose keys are ``func``'s keyword arguments (types from its hints).

    So a table of options for a library function (``[data.synthetic]`` for
    :func:`chanstat.data.synthetic`) is checked, keys and types, before anything runs, and
    cannot drift from the function. ``exclude`` leaves out arguments the stage sets itself (the
    data it passes, seeds, progress);
    ``fields`` adds keys of the section's own (pydantic field definitions).
    """
    import typing

    hints = typing.get_type_hints(func)
    defs: dict[str, Any] = {}
    for pname, param in inspect.signature(func).parameters.items():
        if pname in exclude or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        required = param.default is inspect.Parameter.empty
        defs[pname] = (hints.get(pname, Any), ... if required else param.default)
    defs.update(fields)
    model = create_model(name, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **defs)
    model.__doc__ = doc or f"Keyword arguments of {func.__module__}.{func.__qualname__}."
    return model
