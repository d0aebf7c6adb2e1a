"""Run a whole analysis from a TOML config into a run directory.

The stages (:data:`STAGE_REFS`, in order) follow the contract of :mod:`chanstat.stage`. For
each enabled stage the pipeline

1. fingerprints the stage's config and its upstream stages (a resumed run re-runs a stage
   whose fingerprint changed, and so everything downstream of it);
2. calls its ``per_image`` function on the selected images, here or through
   :mod:`chanstat.compute` when ``[compute]`` shards it;
3. calls its ``whole_set`` function with the merged per-image outputs;
4. writes every output through :class:`~chanstat.rundir.RunDirectory` (validated against
   :mod:`chanstat.schema`) and the stage's status, fingerprint, info and wall time into
   ``provenance.json``, rewritten after every stage so an interrupted run keeps its record.

The whole config is validated (:func:`chanstat.config.validate_config`) and the checks that
could only fail late (device, report formats, input paths) run before any stage; the run
directory is locked for the duration, and ``force`` only ever replaces a chanstat run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from chanstat.config import ConfigError, check_rules, read_config, validate_config
from chanstat.context import PartTask, RunContext, model_spec, run_part_here
from chanstat.rundir import MARKER, RunDirectory, RunDirectoryBusy, is_run_directory
from chanstat.runtime import device_description, git_commit, package_versions, resolve_device, seed_everything
from chanstat.stage import Stage, load_stage, merge_parts

#: The stages in the order they run.
STAGE_REFS: tuple[str, ...] = (
    "chanstat.data.stage:STAGE",
    "chanstat.models.stage:STAGE",
    "chanstat.counterfactual.stage:STAGE",
    "chanstat.attribution.stage:STAGE",
    "chanstat.dacscore.stage:STAGE",
    "chanstat.decompose.stage:STAGE",
    "chanstat.metrics.stage:STAGE",
    "chanstat.stats.stage:STAGE",
    "chanstat.cellprofiler.stage:STAGE",
    "chanstat.answer.stage:STAGE",
    "chanstat.report.stage:STAGE",
)


def stages() -> list[Stage]:
    return [load_stage(ref) for ref in STAGE_REFS]


def __getattr__(name: str):
    if name == "Classifier":
        from chanstat.models.adapter import Classifier

        return Classifier
    raise AttributeError(f"module 'chanstat.pipeline' has no attribute {name!r}")


def load_config(config: str | Path | Mapping, quick: bool = False) -> tuple[dict, Path]:
    """The validated config (defaults filled in) and the folder its relative paths start from."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        raw, source, folder = read_config(path), str(path), path.resolve().parent
    else:
        raw, source, folder = dict(config), "config", Path.cwd()
    cfg = validate_config(raw, stages(), quick=quick, source=source)
    check_rules(cfg, stages(), source=source)
    return cfg, folder


def enabled(stage: Stage, config: dict) -> bool:
    section = config.get(stage.name)
    return stage.always or (isinstance(section, dict) and section.get("enabled", True))


def preflight(config: dict, config_dir: Path, only: list[str] | None) -> Any:
    """Checks that would otherwise fail late: ``--only`` names, device, each stage's own checks."""
    names = [s.name for s in stages()]
    if only is not None:
        if not only:
            raise ConfigError(f"--only: name at least one stage; stages are {', '.join(names)}")
        unknown = [n for n in only if n not in names]
        if unknown:
            import difflib

            hints = [
                f"{n!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(n, names, 1)) else "")
                for n in unknown
            ]
            raise ConfigError(f"--only: unknown stages {', '.join(hints)}; stages are {', '.join(names)}")
        off = [s.name for s in stages() if s.name in only and not enabled(s, config)]
        if off:
            raise ConfigError(f"--only: stages {off} are off in the config (add their section or set enabled = true)")
    _check_model_source(config, config_dir)
    device = resolve_device(config["run"]["device"])
    for stage in stages():
        check = getattr(stage.config, "preflight", None)
        if enabled(stage, config) and check is not None:
            check(config.get(stage.name) or {}, config_dir)
    return device


def _check_model_source(config: dict, config_dir: Path) -> None:
    """A ``[model] source`` callable is checked before anything runs (a config runs code)."""
    source = (config.get("model") or {}).get("source")
    if not source or (Path(config_dir) / Path(source).expanduser()).exists() or ":" not in source:
        return
    from chanstat.models.adapter import check_source

    try:
        check_source(source)
    except ValueError as exc:
        raise ConfigError(f"[model] source: {exc}") from None


def fingerprint(stage: Stage, config: dict, upstream: Mapping[str, str]) -> str:
    """Digest of what a stage's outputs depend on: the sections it declares, the seed, its upstream stages."""
    sections = {}
    for name in stage.sections:
        value = config.get(name)
        sections[name] = {k: v for k, v in value.items() if k != "enabled"} if isinstance(value, dict) else value
    payload = {
        "stage": stage.name,
        "sections": sections,
        "seed": config["run"]["seed"],
        "upstream": dict(sorted(upstream.items())),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prepare_out(out: Path, force: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_run_directory(out):
        raise ConfigError(
            f"--out {out} is not empty and is not a chanstat run directory (no {MARKER}); "
            "refusing to write into or replace it"
        )
    if resume:
        return
    if not force:
        raise ConfigError(f"run directory {out} already exists; pass --force to replace it or --resume to continue it")


def _swap_in_run(new: RunDirectory, old: RunDirectory) -> None:
    """Put the finished run ``new`` in the place of ``old``; the user's files of ``old`` move over."""
    for child in old.user_files():
        target = new.path / child.name
        if not target.exists():
            os.rename(child, target)
    place = old.path
    retired = place.with_name(f".{place.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(place, retired)
    os.rename(new.path, place)
    shutil.rmtree(retired, ignore_errors=True)


def run(
    config: str | Path | Mapping,
    out: str | Path,
    quick: bool = False,
    force: bool = False,
    only: list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every enabled stage of ``config`` into the run directory ``out``.

    Parameters
    ----------
    config : path of a TOML file, or an already loaded dict.
    out : run directory; it must not exist, be empty, or be a chanstat run directory that
        ``force`` replaces or ``resume`` continues.
    quick : merge the config's ``[quick]`` table (a small version for tests).
    force : replace an existing chanstat run directory (never any other folder).
    only : run only these stages (plus those they need that have not run).
    resume : keep the run directory; stages whose fingerprint matches their record are
        skipped, sharded stages skip committed shards.
    """
    cfg, config_dir = load_config(config, quick=quick)
    device = preflight(cfg, config_dir, only)
    out = Path(out)
    _prepare_out(out, force=force, resume=resume)
    replace = force and not resume and out.is_dir() and any(out.iterdir())
    if not replace:
        rundir = RunDirectory(out, create=True)
        with rundir.lock():
            return _run_stages(cfg, rundir, config_dir, device, quick, only, progress, resume, log)
    # --force: the new run is written beside the old one and swapped in only once it finished
    old = RunDirectory(out)
    with old.lock():
        staging = out.resolve().with_name(f".{out.resolve().name}.{uuid.uuid4().hex[:8]}.new")
        new = RunDirectory(staging, create=True)
        try:
            with new.lock():
                _run_stages(cfg, new, config_dir, device, quick, only, progress, False, log)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_in_run(new, old)
    return out.resolve()


def _run_stages(cfg, rundir: RunDirectory, config_dir, device, quick, only, progress, resume, log) -> Path:
    seed = int(cfg["run"]["seed"])
    seed_everything(seed)
    import torch

    if cfg["run"].get("torch_threads"):
        torch.set_num_threads(int(cfg["run"]["torch_threads"]))
    else:  # never more threads than idle cores: an overcommitted core slows small kernels many times over
        from chanstat.runtime import available_cores

        torch.set_num_threads(max(1, min(torch.get_num_threads(), available_cores())))
    previous = rundir.provenance if resume else {}
    rundir.write_config(cfg)
    ctx = RunContext(
        config=cfg,
        run=rundir,
        seed=seed,
        device=device,
        quick=quick,
        progress=progress,
        config_dir=config_dir,
        resume=resume,
    )
    provenance: dict[str, Any] = {
        "chanstat_run": cfg["run"]["name"],
        "started": datetime.now(timezone.utc).isoformat(),
        "quick": quick,
        "seed": seed,
        "device": device_description(device),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "stages": {},
    }
    rundir.write_json("provenance", provenance)
    fingerprints: dict[str, str] = {}
    writers: dict[str, str] = {}
    rerun: set[str] = set()  # stages executed by this call: what reads their outputs runs again
    t_run = time.perf_counter()
    for stage in stages():
        read_from = set(writers.values()) if stage.reads_all else {writers[n] for n in stage.reads if n in writers}
        upstream = {w: fingerprints[w] for w in read_from}
        if not enabled(stage, cfg):
            continue
        fp = fingerprint(stage, cfg, upstream)
        before = previous.get("stages", {}).get(stage.name, {})
        done_before = before.get("status") == "done" and before.get("fingerprint") == fp
        wanted = stage.always or not only or stage.name in only
        damaged = _damaged(rundir, before) if resume and done_before else []
        if resume and done_before and not damaged and not (read_from & rerun):
            provenance["stages"][stage.name] = {**before, "status": "done", "resumed": True}
            log(f"[chanstat] stage {stage.name}: unchanged since the last run, kept")
        elif not wanted and not damaged:
            continue
        else:
            if damaged:
                log(
                    f"[chanstat] stage {stage.name}: {', '.join(damaged)} changed or missing since the last run; running it again"
                )
            provenance["stages"][stage.name] = record = _execute(stage, ctx, fp, provenance, log)
            rerun.add(stage.name)
            for other, earlier in provenance["stages"].items():  # an entry rewritten here (the data set)
                sums = earlier.get("checksums") if other != stage.name else None
                for name in set(sums or ()) & set(record["checksums"]):
                    assert sums is not None  # the loop is empty when sums is None
                    sums[name] = record["checksums"][name]
        fingerprints[stage.name] = fp
        for name in stage.writes:
            writers[name] = stage.name
        provenance["total_wall_s"] = round(time.perf_counter() - t_run, 3)
        rundir.write_json("provenance", provenance)
    provenance["finished"] = datetime.now(timezone.utc).isoformat()
    rundir.write_json("provenance", provenance)
    return rundir.path


def _execute(stage: Stage, ctx: RunContext, fp: str, provenance: dict, log) -> dict:
    log(f"[chanstat] stage {stage.name} ...")
    t0 = time.perf_counter()
    provenance["stages"][stage.name] = {"status": "running", "fingerprint": fp}
    ctx.run.write_json("provenance", provenance)
    seed_everything(ctx.seed)
    try:
        outputs, compute_info = _per_image(stage, ctx, fp)
        info: dict = {}
        if stage.whole_set is not None:
            outputs, info = stage.whole_set(ctx, outputs)
        stage.check_outputs(outputs)
        for name, value in outputs.items():
            ctx.run.write(name, value)
            ctx.results[name] = value
    except BaseException as exc:
        record: dict[str, Any] = {
            "status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            "fingerprint": None,
            "error": f"{type(exc).__name__}: {exc}",
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        provenance["stages"][stage.name] = record
        ctx.run.write_json("provenance", provenance)
        raise
    wall = time.perf_counter() - t0
    log(f"[chanstat] stage {stage.name} done in {wall:.1f} s")
    record = {
        "status": "done",
        "fingerprint": fp,
        "wall_s": round(wall, 3),
        "outputs": sorted(outputs),
        **(info or {}),
        "checksums": ctx.run.checksums(sorted(outputs) + [n for n in stage.writes if n not in outputs]),
    }
    if compute_info:
        record["compute"] = compute_info
    return record


def _damaged(rundir: RunDirectory, record: Mapping) -> list[str]:
    """Outputs of a finished stage that are missing or differ from the checksums it recorded."""
    sums = record.get("checksums")
    if sums is None:  # a record without checksums cannot be trusted
        return [rundir.file(n).name for n in record.get("outputs", [])] or ["(no checksums recorded)"]
    return rundir.damaged(sums) + [rundir.file(n).name for n in record.get("outputs", []) if n not in sums]


def _per_image(stage: Stage, ctx: RunContext, fp: str) -> tuple[dict, dict | None]:
    if stage.per_image is None:
        return {}, None
    rows = stage.select(ctx) if stage.select is not None else None
    if rows is not None and len(rows) == 0:
        return {}, None
    compute = ctx.config.get("compute")
    if compute and compute.get("enabled", True) and stage.name in compute["stages"]:
        return _sharded(stage, ctx, fp, rows, compute)
    return run_part_here(ctx, stage, rows), None


def _sharded(stage: Stage, ctx: RunContext, fp: str, rows, compute: dict) -> tuple[dict, dict]:
    import numpy as np

    from chanstat.compute import ComputeConfig, ModelSource, run_parts

    settings = ComputeConfig.from_section(compute)
    model = ModelSource.from_spec(model_spec(ctx)) if stage.name != "model" else None
    task = PartTask(
        stage=next(ref for ref in STAGE_REFS if load_stage(ref) is stage),
        run_dir=str(ctx.run.path),
        config=ctx.config,
        config_dir=str(ctx.config_dir),
        seed=ctx.seed,
        quick=ctx.quick,
        device=settings.device or _explicit_device(ctx),
        model=model,
    )
    rows = np.arange(len(ctx.dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    parts, summary = run_parts(
        task,
        rows,
        settings,
        store_dir=ctx.run.path / "shards" / stage.name,
        key=fp + (model.digest if model else ""),
        meta=ctx.dataset.meta,
        read=PartTask.read,
        progress=ctx.progress,
        label=stage.name,
    )
    return merge_parts(parts), summary


def _explicit_device(ctx: RunContext) -> str:
    spec = ctx.config["run"]["device"]
    return "auto" if spec in (None, "auto") else str(spec)


def context(
    config: str | Path | Mapping,
    out: str | Path,
    *,
    dataset=None,
    model=None,
    quick: bool = False,
    progress: bool = False,
) -> RunContext:
    """A run context for running single stages from Python (notebooks, tests).

    ``config`` is validated like a run's; ``dataset`` (an ImageSet) and ``model`` (a
    ``torch.nn.Module``) stand in for the data and model stages and are written to ``out``.
    """
    cfg, config_dir = load_config(config, quick=quick)
    rundir = RunDirectory(out, create=True)
    rundir.write_config(cfg)
    ctx = RunContext(
        config=cfg,
        run=rundir,
        seed=int(cfg["run"]["seed"]),
        device=resolve_device(cfg["run"]["device"]),
        quick=quick,
        progress=progress,
        config_dir=config_dir,
    )
    if dataset is not None:
        rundir.write("dataset", dataset)
        ctx.results["dataset"] = dataset
    if model is not None:
        from chanstat.models.adapter import Classifier, as_model

        ctx.results["model"] = Classifier(
            as_model(model.to(ctx.device).eval()),
            list(getattr(dataset, "channels", [])),
            list(getattr(dataset, "classes", [])),
        )
        rundir.write("model", ctx.results["model"])
    return ctx


def run_stage(name: str, ctx: RunContext) -> dict:
    """Run stage ``name`` on ``ctx`` (its outputs go to the run directory and ``ctx.results``); its info."""
    stage = next((s for s in stages() if s.name == name), None)
    if stage is None:
        raise ValueError(f"unknown stage {name!r}; stages are {[s.name for s in stages()]}")
    if ctx.config.get(name) is None:
        ctx.config[name] = stage.config().model_dump()
    provenance = ctx.run.provenance or {"stages": {}}
    provenance.setdefault("stages", {})
    record = _execute(stage, ctx, fingerprint(stage, ctx.config, {}), provenance, log=lambda msg: None)
    provenance["stages"][name] = record
    ctx.run.write_json("provenance", provenance)
    return record


def demo_config_path() -> Path:
    """The shipped demo config (package data; ``analyses/demo.toml`` in a source checkout)."""
    from chanstat.resources import config_path

    return config_path("demo")


__all__ = ["run", "run_stage", "context", "load_config", "stages", "STAGE_REFS", "RunDirectoryBusy", "fingerprint"]
