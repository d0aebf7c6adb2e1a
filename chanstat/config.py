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
import os
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
    seed: int = Field(default=0, ge=0, description="Seed of every random choice (training, subsets, noise maps).")
    device: str = Field(default="auto", description='"auto" (CUDA when available), "cpu", "cuda" or "cuda:N".')
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads torch may use.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        if value == "mps":
            return value
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N"; got {value!r}')


class ComputeConfig(Section):
    """``[compute]``: run the per-image parts of stages in shards (on Dask unless ``"sync"``).

    The one declaration of the section: the pipeline validates it here and
    :mod:`chanstat.compute` runs with it. ``stages`` must name stages that have a per-image
    part (checked against the stages by :func:`check_rules`).

    Attributes
    ----------
    scheduler : ``"sync"``, ``"local"`` or a scheduler address (``"tcp://10.0.0.5:8786"``).
    n_workers : workers of a local cluster; default one per CUDA device, else one per CPU core.
    threads_per_worker : threads per local worker (torch threads in process workers).
    processes : local workers as processes (True) or threads of this process (False).
    memory_limit : per local worker (``"4GB"``, ``"auto"``); Dask restarts a worker above it.
    shard_by : ``"index"`` (fixed ranges), ``"well"`` or ``"plate"`` (whole groups).
    shard_size : images per shard (most images per shard for wells / plates).
    retries : extra attempts for a failing shard before it is reported.
    stages : the pipeline stages whose per-image part runs sharded.
    keep_shards : keep ``shards/<stage>/`` after merging (default: delete it).
    device : device of the workers; default the run's device (``"auto"``: CUDA if present).
    dashboard : print the link of the local cluster's Dask dashboard (served on a free port).
    """

    scheduler: str = Field(
        "local", min_length=1, description='"sync" (this process), "local" (a LocalCluster) or a scheduler address.'
    )
    n_workers: int | None = Field(
        None, ge=1, description="Workers of a local cluster (default: one per GPU, else per core)."
    )
    threads_per_worker: int = Field(1, ge=1, description="Threads per local worker.")
    processes: bool = Field(True, description="Local workers as processes (true) or threads (false).")
    memory_limit: str | int | None = Field("auto", description="Memory limit per local worker.")
    shard_by: Literal["index", "well", "plate"] = Field(
        "index", description="Shards of fixed size, or whole wells / plates."
    )
    shard_size: int = Field(64, ge=1, description="Images per shard (most images per shard for wells/plates).")
    retries: int = Field(2, ge=0, description="Extra attempts for a failing shard.")
    stages: list[str] = Field(
        default_factory=lambda: ["attribution", "dac", "metrics"],
        min_length=1,
        description="Stages whose per-image part runs sharded.",
    )
    keep_shards: bool = Field(False, description="Keep shards/<stage>/ after merging.")
    device: str | None = Field(None, description="Device of the workers (default: the run's).")
    dashboard: bool = Field(False, description="Print the local cluster's dashboard link.")

    @field_validator("stages", mode="before")
    @classmethod
    def _one_stage(cls, value):
        return [value] if isinstance(value, str) else value

    @classmethod
    def from_section(cls, section: Mapping | None) -> "ComputeConfig":
        """The validated section; a bad key or value is a one-line :class:`ConfigError`."""
        try:
            return cls.model_validate(dict(section or {}))
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, cls, "config", prefix=("compute",))) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


#: The former name of :class:`ComputeConfig`.
ComputeSection = ComputeConfig


def check_kwargs(options: Mapping[str, Any], func: Callable, where: str, exclude: tuple[str, ...] = ()) -> dict:
    """``options`` if every key is a keyword of ``func`` (else :class:`ConfigError` with a suggestion)."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in exclude]
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"[{where}] has no key {key!r}{_suggest(key, allowed)}; valid keys: {', '.join(sorted(allowed))}"
            )
    return dict(options)


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def root_model(stages) -> type[BaseModel]:
    """The pydantic model of a whole config: ``[run]``, ``[compute]`` and one section per stage."""
    fields: dict[str, Any] = {
        "run": (RunSection, RunSection()),
        "compute": (ComputeConfig | None, None),
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


def format_errors(exc: ValidationError, model: type[BaseModel], source: str, prefix: tuple[str, ...] = ()) -> str:
    """One line per problem: ``config.toml: [dac] step: unknown key (did you mean 'steps'?)``."""
    lines = []
    for err in exc.errors():
        loc = [*prefix, *(p for p in err["loc"] if isinstance(p, str))]
        loc = [p for p in loc if not p[:1].isupper() and "[" not in p and not p.startswith("function-")]
        if err["type"] == "extra_forbidden":
            key = loc[-1]
            parent = loc[:-1]
            allowed = _allowed_at(model, parent[len(prefix) :])
            where = f"[{'.'.join(parent)}] " if parent else ""
            what = "section" if not parent else "key"
            lines.append(
                f"{where}unknown {what} {'[' + key + ']' if not parent else repr(key)}{_suggest(key, allowed)}"
            )
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
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; give the path of a TOML file (e.g. {path / 'config.toml'})")
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
    merged: dict = copy.deepcopy(dict(raw))
    quick_part = merged.pop("quick", {})
    if not isinstance(quick_part, Mapping):
        raise ConfigError(f"{source}: [quick] must be a table")
    if quick:
        merged = deep_merge(merged, quick_part)
    model = root_model(stages)
    try:
        validated = model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, model, source)) from None
    return validated.model_dump(exclude_none=False, exclude_unset=False, exclude={k for k, v in validated if v is None})


#: Largest integer a config value may hold (a bigger one is a typo, and overflows torch and numpy).
MAX_INT = 2**31 - 1


def data_names(config: Mapping) -> tuple[list[str] | None, list[str] | None]:
    """Channel and class names of the run's images as far as the config says (None: known only from the data)."""
    data = config.get("data") or {}
    channels = data.get("channels")
    classes = None
    if data.get("source", "synthetic") == "synthetic":
        synthetic = data.get("synthetic") or {}
        channels = channels or (list(synthetic["channels"]) if synthetic.get("channels") else None)
        classes = list(synthetic["classes"]) if synthetic.get("classes") else None
    return (list(channels) if channels else None), classes


def _walk(node: Any, where: tuple[str, ...]):
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, (*where, str(key)))
    elif isinstance(node, (list, tuple)):
        yield where, node
        for value in node:
            yield from _walk(value, where)
    else:
        yield where, node


def _key(where: tuple[str, ...]) -> str:
    return f"[{'.'.join(where[:-1])}] {where[-1]}" if len(where) > 1 else f"[{where[0]}]"


def check_values(config: Mapping) -> list[str]:
    """Numbers finite and not absurdly large, lists not empty, anywhere in the config."""
    import math

    problems = []
    for where, value in _walk(config, ()):
        if not where:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{_key(where)}: {value!r} is not a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            problems.append(f"{_key(where)}: {value} is too large (at most {MAX_INT})")
        elif isinstance(value, (list, tuple)) and not value:
            problems.append(f"{_key(where)}: the list is empty; give at least one value or leave the key out")
    return list(dict.fromkeys(problems))


def _rule_stats(config: Mapping) -> list[str]:
    stats = config.get("stats")
    if not isinstance(stats, Mapping) or not stats.get("enabled", True):
        return []
    out = []
    tests = list(stats.get("tests") or [])
    if stats.get("primary") and tests and stats["primary"] not in tests:
        out.append(
            f"[stats] primary: {stats['primary']!r} is not among tests {tests}; add it to tests or choose one of them"
        )
    if "n_boot" in stats and int(stats["n_boot"]) < 1:
        out.append(f"[stats] n_boot: {stats['n_boot']} bootstrap draws give no interval; use at least 1 (e.g. 2000)")
    return out


def _rule_compute(config: Mapping, stages) -> list[str]:
    compute = config.get("compute")
    if not isinstance(compute, Mapping) or not compute.get("enabled", True):
        return []
    shardable = [s.name for s in stages if s.per_image is not None]
    wrong = [n for n in compute.get("stages", []) if n not in shardable]
    if not wrong:
        return []
    hints = [f"{n!r}{_suggest(n, shardable)}" for n in wrong]
    return [
        f"[compute] stages: {', '.join(hints)} cannot run sharded; stages with a per-image part are {', '.join(shardable)}"
    ]


def _rule_memory(config: Mapping) -> list[str]:
    """What the data set would take in memory, before anything is allocated."""
    data = config.get("data") or {}
    if data.get("source", "synthetic") != "synthetic":
        return []
    syn = data.get("synthetic") or {}
    try:
        n = (
            int(syn.get("n_plates", 2))
            * int(syn.get("wells_per_class", 4))
            * len(syn.get("classes") or (0, 0))
            * int(syn.get("sites_per_well", 4))
        )
        c = len(syn.get("channels") or range(5))
        size = int(syn.get("size", 64))
    except (TypeError, ValueError):
        return []
    need = n * c * size * size * 4 * 4  # images, counterfactuals, signal masks, a working copy (float32)
    have = available_memory()
    out = []
    if have and need > have:
        out.append(
            f"[data.synthetic] {n} images of {c} x {size} x {size} need about {need / 2**30:.1f} GiB; "
            f"this machine has {have / 2**30:.1f} GiB available (lower size, sites_per_well or wells_per_class)"
        )
    for section in ("stats", "cellprofiler"):
        draws = (config.get(section) or {}).get("n_boot") if isinstance(config.get(section), Mapping) else None
        boot = int(draws or 0) * max(n, 1) * c * 8  # one bootstrap array: draws x units x channels (float64)
        if have and boot > have:
            out.append(
                f"[{section}] n_boot: {draws} draws need about {boot / 2**30:.1f} GiB; "
                f"this machine has {have / 2**30:.1f} GiB available"
            )
    return out


def available_memory() -> int | None:
    """Bytes of memory available to this process (None when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None


def check_rules(config: Mapping, stages, source: str = "config") -> None:
    """Rules across keys and sections, checked on the validated config before any stage runs.

    Values (finite numbers, non-empty lists), ``[stats] primary`` among ``tests``, ``[compute]
    stages`` that can run sharded, the memory the data set needs, and each stage's own
    ``check_config(config)`` (a static method of its config model). Raises
    :class:`ConfigError` naming every key at fault on one line.
    """
    problems = check_values(config) + _rule_stats(config) + _rule_compute(config, stages) + _rule_memory(config)
    for stage in stages:
        rule = getattr(stage.config, "check_config", None)
        section = config.get(stage.name)
        if rule is not None and isinstance(section, Mapping) and (stage.always or section.get("enabled", True)):
            problems += list(rule(config) or [])
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(dict.fromkeys(problems)))


def schema_markdown(stages) -> str:
    """The config schema as Markdown (for the README; generated, so it cannot drift)."""
    lines: list[str] = []
    sections: list[tuple[str, type[BaseModel]]] = [("run", RunSection), ("compute", _compute_model())]
    sections += [(s.name, s.config) for s in stages]
    for name, model in sections:
        _section_markdown(name, model, lines)
    return "\n".join(lines).rstrip()


def _compute_model() -> type[BaseModel]:
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
        lines.append(
            f"| `{key}` | {_type_name(field.annotation)} | {shown} | {field.description or ''} |".replace("|`", "| `")
        )
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


def kwargs_model(
    func: Callable, name: str, exclude: tuple[str, ...] = (), doc: str | None = None, **fields: Any
) -> type[BaseModel]:
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
