"""Run a whole analysis from a TOML config into a run directory.

Stages run in a fixed order (data -> model -> ... -> report); a stage runs when its section is
present in the config (and not ``enabled = false``). Each stage is a module with a
``run(ctx: RunContext) -> dict | None`` function; what it returns goes into ``provenance.json``
next to its wall time. Provenance is rewritten after every stage, so an interrupted run keeps
the record of what finished.
"""
from __future__ import annotations

import copy
import importlib
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import tomli_w

from chanstat.io import write_json
from chanstat.runtime import device_description, git_commit, package_versions, resolve_device, seed_everything


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    always: bool = False

    def function(self) -> Callable[["RunContext"], dict | None]:
        return importlib.import_module(self.module).run


STAGES: tuple[Stage, ...] = (
    Stage("data", "chanstat.data.stage", always=True),
    Stage("model", "chanstat.models.stage", always=True),
    Stage("counterfactual", "chanstat.counterfactual.stage"),
    Stage("attribution", "chanstat.attribution.stage"),
    Stage("dac", "chanstat.dac.stage"),
    Stage("metrics", "chanstat.metrics.stage"),
    Stage("stats", "chanstat.stats.stage"),
    Stage("cellprofiler", "chanstat.cellprofiler.stage"),
    Stage("report", "chanstat.report.stage"),
)


@dataclass
class RunContext:
    """What stages share while a run is in progress.

    ``artifacts`` carries in-memory results between stages (the same results are also written
    to files in ``out``): ``"attributions"`` -> {method: ndarray (N, C|1, H, W)},
    ``"dac_scores"`` / ``"channel_tests"`` / ... -> DataFrames.
    """

    config: dict
    out: Path
    quick: bool = False
    seed: int = 0
    device: Any = "cpu"
    dataset: Any = None
    model: Any = None
    artifacts: dict = field(default_factory=dict)
    config_dir: Path = field(default_factory=Path.cwd)
    progress: bool = True

    def section(self, name: str) -> dict:
        """The config section ``name`` (dotted for nested, e.g. ``"data.plant"``), {} if absent."""
        node: Any = self.config
        for part in name.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    def resolve_path(self, value: str | Path) -> Path:
        """Paths in a config are relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else (self.config_dir / p).resolve()


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, quick: bool = False, overrides: dict | None = None) -> dict:
    """Read a TOML config; with ``quick`` its ``[quick]`` table is merged over the rest."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open("rb") as fh:
        config = tomllib.load(fh)
    quick_part = config.pop("quick", {})
    if quick:
        config = deep_merge(config, quick_part)
    if overrides:
        config = deep_merge(config, overrides)
    return config


def stage_enabled(stage: Stage, config: dict) -> bool:
    if stage.always:
        return True
    section = config.get(stage.name)
    return isinstance(section, dict) and section.get("enabled", True)


def run(
    config: str | Path | dict,
    out: str | Path,
    quick: bool = False,
    force: bool = False,
    only: list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every enabled stage of ``config`` and write the run directory ``out``.

    Parameters
    ----------
    config : path of a TOML file, or an already loaded dict.
    out : run directory; must not exist (or be empty) unless ``force``.
    quick : merge the config's ``[quick]`` table (a small version for tests).
    force : replace an existing run directory.
    only : run only these stages (plus data and model, which every later stage needs).
    resume : keep an existing run directory; stages sharded by ``[compute]`` skip the shards
        already committed there (see :mod:`chanstat.compute`).
    """
    out = Path(out)
    if isinstance(config, (str, Path)):
        config_dir = Path(config).resolve().parent
        cfg = load_config(config, quick=quick)
    else:
        config_dir = Path.cwd()
        cfg = deep_merge(config, config.get("quick", {})) if quick else copy.deepcopy(config)
        cfg.pop("quick", None)
    if out.exists() and any(out.iterdir()) and not resume:
        if not force:
            raise FileExistsError(f"run directory {out} already exists and is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    run_section = cfg.get("run", {})
    seed = int(run_section.get("seed", 0))
    device = resolve_device(run_section.get("device", "auto"))
    seed_everything(seed)
    if "torch_threads" in run_section:
        import torch

        torch.set_num_threads(int(run_section["torch_threads"]))

    with (out / "config.toml").open("wb") as fh:
        tomli_w.dump(cfg, fh)
    ctx = RunContext(config=cfg, out=out, quick=quick, seed=seed, device=device, config_dir=config_dir, progress=progress)
    provenance: dict[str, Any] = {
        "chanstat_run": run_section.get("name", "run"),
        "started": datetime.now(timezone.utc).isoformat(),
        "quick": quick,
        "seed": seed,
        "device": device_description(device),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "stages": {},
    }
    write_json(provenance, out / "provenance.json")
    from chanstat.compute import sharded_stage_names

    sharded = set(sharded_stage_names(cfg))
    t_run = time.perf_counter()
    for stage in STAGES:
        if not stage_enabled(stage, cfg) or (only and not stage.always and stage.name not in only):
            continue
        log(f"[chanstat] stage {stage.name} ...")
        t0 = time.perf_counter()
        provenance["stages"][stage.name] = {"status": "running"}
        write_json(provenance, out / "provenance.json")
        seed_everything(seed)
        try:
            if stage.name in sharded:
                from chanstat.compute import run_sharded

                info = run_sharded(ctx, stage.name) or {}
            else:
                info = stage.function()(ctx) or {}
        except BaseException as exc:
            provenance["stages"][stage.name] = {
                "status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "wall_s": round(time.perf_counter() - t0, 3),
            }
            write_json(provenance, out / "provenance.json")
            raise
        wall = time.perf_counter() - t0
        provenance["stages"][stage.name] = {"status": "done", "wall_s": round(wall, 3), **info}
        provenance["total_wall_s"] = round(time.perf_counter() - t_run, 3)
        write_json(provenance, out / "provenance.json")
        log(f"[chanstat] stage {stage.name} done in {wall:.1f} s")
    provenance["finished"] = datetime.now(timezone.utc).isoformat()
    write_json(provenance, out / "provenance.json")
    return out


def demo_config_path() -> Path:
    """The shipped demo config (``analyses/demo.toml`` in a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "analyses" / "demo.toml"
    if here.exists():
        return here
    raise FileNotFoundError("analyses/demo.toml not found; run from a chanstat source checkout")
