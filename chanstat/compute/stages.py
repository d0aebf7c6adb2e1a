"""Sharded pipeline stages: ``run_sharded(ctx, "attribution")`` instead of the stage's ``run(ctx)``.

How it works, for a stage whose work is independent per image (attribution, DAC, metrics):

1. The client plans shards (:func:`~chanstat.compute.plan.plan_shards`: fixed index ranges or
   whole wells/plates) and fingerprints the computation (config, model weights, data shape).
2. Each shard is a small task (:class:`StageShardTask`): on a worker it reads its images
   from ``dataset.zarr`` / ``meta.parquet`` and the earlier stages' per-image outputs (e.g.
   the rows of ``attributions.zarr``), loads the model once per worker, and runs the stage's
   own ``run(ctx)`` on that subset with a staging folder as its run directory. So the
   sharded path runs exactly the stage's code; nothing is re-implemented here.
3. A finished shard is committed atomically (a folder rename, see
   :mod:`chanstat.compute.manifest`); a re-run skips committed shards.
4. When every shard is committed, the client merges them into the run directory:
   Parquet tables are concatenated with ``sample`` mapped back to the data set's rows and
   sorted into the stage's own row order; Zarr arrays are written region by region (rows
   of the shard) into one store per file, with their attributes; arrays whose attributes
   list the ``samples`` they hold are concatenated in sample order. ``ctx.artifacts`` is
   filled as the stage itself would have, and the shard folder is deleted (unless
   ``keep_shards``).

Requirements on a stage for this to be exact: per-image results depend only on that image
(maps normalised per sample, randomness seeded per image, as DESIGN.md asks), and tables
that are per image have a ``sample`` column. Selections over the whole data set (DAC's
``max_samples``) are made once on the client (:attr:`ShardableStage.select`).
"""
from __future__ import annotations

import copy
import importlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from chanstat.compute.manifest import RECORD_FILE, ShardStore
from chanstat.compute.plan import Shard, fingerprint, plan_shards
from chanstat.compute.runner import ComputeConfig, open_client, run_shards
from chanstat.compute.worker import ModelSource, read_artifact, read_dataset, sampled_digest, worker_device

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "_artifacts"
ARTIFACTS_INDEX = "_artifacts.json"
#: Config sections that never change what a sharded stage computes (left out of the fingerprint).
NEUTRAL_SECTIONS = ("compute", "report", "quick")


@dataclass(frozen=True)
class ShardableStage:
    """How one pipeline stage runs sharded.

    Attributes
    ----------
    name : the stage's name (``[name]`` config section).
    module : module holding the stage's ``run(ctx)``.
    inputs : earlier outputs the stage reads from ``ctx.artifacts``; each shard gets its rows
        from ``<input>.zarr`` / ``<input>.parquet`` in the run directory.
    table_order : table file stem -> columns giving the stage's row order (string columns in
        order of first appearance, numbers ascending; ties keep each shard's own order).
        Tables not listed are ordered by ``sample``.
    select : ``select(ctx) -> indices | None``: the images the stage works on when that is a
        choice over the whole data set (None: all images).
    config_overrides : ``overrides(section) -> section`` for the per-shard config (e.g. drop
        a whole-data-set option that :attr:`select` already applied).
    summarise : ``summarise(info, tables) -> info``: recompute provenance values that are
        aggregates over images from the merged tables.
    outputs : file names (``"faithfulness.parquet"``) to merge from the shards; default all.
    driver : ``driver(ctx, shard_and_merge) -> info`` for stages that are only partly per
        image: it calls ``shard_and_merge(selected, overrides)`` for the per-image part and
        does the rest on the client (see the metrics stage below).
    """

    name: str
    module: str
    inputs: tuple[str, ...] = ()
    table_order: dict[str, tuple[str, ...]] = field(default_factory=dict)
    select: Callable[[Any], np.ndarray | None] | None = None
    config_overrides: Callable[[dict], dict] | None = None
    summarise: Callable[[dict, dict[str, pd.DataFrame]], dict] | None = None
    outputs: tuple[str, ...] | None = None
    driver: Callable[..., dict] | None = None


#: name -> ShardableStage. :func:`register_shardable` adds more.
SHARDABLE: dict[str, ShardableStage] = {}


def register_shardable(spec: ShardableStage, replace: bool = False) -> ShardableStage:
    if spec.name in SHARDABLE and not replace:
        raise ValueError(f"stage {spec.name!r} is already registered as shardable; pass replace=True")
    SHARDABLE[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------------------------
# the task a worker runs
# ---------------------------------------------------------------------------------------------
@dataclass
class StageShardTask:
    """Run stage ``stage`` on one shard's images, writing into the shard's staging folder.

    Small and picklable: paths and config only; images and the model are read on the worker.
    """

    stage: str
    module: str
    run_dir: str
    config: dict
    config_dir: str
    seed: int
    quick: bool
    device: str
    model: ModelSource | None
    inputs: tuple[str, ...] = ()

    def __call__(self, shard: Shard, out_dir: Path) -> dict:
        from chanstat.pipeline import RunContext
        from chanstat.runtime import seed_everything

        indices = shard.index_array
        device = worker_device(self.device)
        model = self.model.load(device) if self.model is not None else None
        dataset = read_dataset(self.run_dir, indices)
        artifacts = {}
        for name in self.inputs:
            value = read_artifact(self.run_dir, name, indices)
            if value is not None:
                artifacts[name] = value
        given = dict(artifacts)
        ctx = RunContext(
            config=copy.deepcopy(self.config), out=Path(out_dir), quick=self.quick, seed=self.seed, device=device,
            dataset=dataset, model=model, artifacts=artifacts, config_dir=Path(self.config_dir), progress=False,
        )
        seed_everything(self.seed)
        info = importlib.import_module(self.module).run(ctx) or {}
        produced = {k: v for k, v in ctx.artifacts.items() if given.get(k) is not v}
        _persist_artifacts(produced, Path(out_dir), len(indices))
        return _jsonable(info)


def _persist_artifacts(artifacts: dict[str, Any], out_dir: Path, n: int) -> None:
    """Note which artifacts the stage set; save those without an output file of their own."""
    from chanstat.io import write_arrays, write_json, write_table

    index: dict[str, dict] = {}
    for key, value in artifacts.items():
        order = {"keys": [str(k) for k in value]} if isinstance(value, dict) else {}  # e.g. methods in run order
        if (out_dir / f"{key}.parquet").exists():
            index[key] = {"kind": "table", "file": f"{key}.parquet"}
        elif (out_dir / f"{key}.zarr").exists():
            index[key] = {"kind": "arrays", "file": f"{key}.zarr", **order}
        elif isinstance(value, pd.DataFrame) and "sample" in value.columns:
            write_table(value, out_dir / ARTIFACTS_DIR / f"{key}.parquet")
            index[key] = {"kind": "table", "file": f"{ARTIFACTS_DIR}/{key}.parquet"}
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) and v.shape[:1] == (n,) for v in value.values()):
            write_arrays(out_dir / ARTIFACTS_DIR / f"{key}.zarr", value, mode="w")
            index[key] = {"kind": "arrays", "file": f"{ARTIFACTS_DIR}/{key}.zarr", **order}
        else:
            index[key] = {"kind": "unmerged", "type": type(value).__name__}
    write_json(index, out_dir / ARTIFACTS_INDEX)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ---------------------------------------------------------------------------------------------
# the client side
# ---------------------------------------------------------------------------------------------
def model_source_for(ctx) -> ModelSource | None:
    """Where workers load ``ctx.model`` from: ``model.pt`` in the run directory, else ``[model]``."""
    if (Path(ctx.out) / "model.pt").exists():
        return ModelSource.from_checkpoint(Path(ctx.out) / "model.pt")
    section = ctx.section("model")
    if "checkpoint" in section:
        return ModelSource.from_checkpoint(ctx.resolve_path(section["checkpoint"]))
    if "source" in section:
        source = section["source"]
        source = str(ctx.resolve_path(source)) if Path(ctx.resolve_path(source)).exists() else source
        weights = ctx.resolve_path(section["weights"]) if section.get("weights") else None
        return ModelSource.from_user(source, weights=weights, kwargs=section.get("kwargs"))
    if ctx.model is None:
        return None
    raise FileNotFoundError(
        f"sharded stages load the model on the workers, but {Path(ctx.out) / 'model.pt'} does not exist and "
        "[model] names no checkpoint or source"
    )


def plan_for(ctx, config: ComputeConfig, selected: np.ndarray | None = None) -> list[Shard]:
    """The shard plan of ``ctx.dataset`` (or of the ``selected`` images only)."""
    meta = ctx.dataset.meta
    n = len(ctx.dataset)
    if selected is None:
        return plan_shards(n, config.shard_size, config.shard_by, meta=meta)
    selected = np.asarray(selected, dtype=np.int64)
    local = plan_shards(len(selected), config.shard_size, config.shard_by, meta=meta.iloc[selected].reset_index(drop=True))
    return [Shard(s.shard_id, tuple(int(i) for i in selected[s.index_array]), s.label) for s in local]


def run_sharded(
    ctx,
    stage_name: str,
    config: ComputeConfig | dict | None = None,
    client: Any = None,
    only: list[str] | None = None,
) -> dict:
    """Run pipeline stage ``stage_name`` in shards and leave the run directory as its ``run(ctx)`` would.

    Parameters
    ----------
    ctx : chanstat.pipeline.RunContext
        With ``dataset`` set and ``dataset.zarr`` / ``meta.parquet`` (and ``model.pt``) in
        ``ctx.out`` (the data and model stages write them).
    stage_name : a key of :data:`SHARDABLE` (``"attribution"``, ``"dac"``, ``"metrics"``).
    config : the ``[compute]`` settings (default: ``ctx.section("compute")``).
    client : an existing ``distributed.Client`` to use instead of opening one from ``config``.
    only : compute only these shard ids and stop before merging (partial runs, tests).

    Returns
    -------
    dict
        What the stage's ``run`` returns (merged over shards), plus ``"compute"``: shards
        planned / computed / skipped, scheduler, workers, wall time.

    Raises
    ------
    ShardsFailed
        Some shards failed after all retries; committed shards stay, a re-run resumes.
    """
    if stage_name not in SHARDABLE:
        raise ValueError(f"stage {stage_name!r} cannot run sharded; shardable stages: {sorted(SHARDABLE)}")
    spec = SHARDABLE[stage_name]
    if not isinstance(config, ComputeConfig):
        config = ComputeConfig.from_section(config if config is not None else ctx.section("compute"))
    if ctx.dataset is None:
        raise RuntimeError(f"sharded {stage_name} needs the data stage's dataset (ctx.dataset is None)")
    _check_run_dir(Path(ctx.out), ctx.dataset)

    def shard_and_merge(selected=None, overrides=None) -> dict:
        return _shard_and_merge(ctx, spec, config, client, only, selected, overrides)

    if spec.driver is not None:
        return spec.driver(ctx, shard_and_merge)
    selected = spec.select(ctx) if spec.select is not None else None
    return shard_and_merge(selected, spec.config_overrides)


def _shard_and_merge(ctx, spec: ShardableStage, config: ComputeConfig, client, only, selected, overrides) -> dict:
    """Plan, run (or resume) and merge the shards of ``spec``; the stage's info plus ``"compute"``."""
    stage_name = spec.name
    out = Path(ctx.out)
    t0 = time.perf_counter()
    shards = plan_for(ctx, config, selected)
    task_config = copy.deepcopy(ctx.config)
    if overrides is not None:
        task_config[stage_name] = overrides(dict(task_config.get(stage_name, {})))
    model = model_source_for(ctx)
    device = config.device or str(ctx.device)
    task = StageShardTask(
        stage=stage_name, module=spec.module, run_dir=str(out.resolve()), config=task_config,
        config_dir=str(getattr(ctx, "config_dir", Path.cwd())), seed=int(ctx.seed), quick=bool(ctx.quick),
        device=device, model=model, inputs=tuple(spec.inputs),
    )
    inputs = {name: sampled_digest(out / f"{name}.zarr") for name in ("dataset", *spec.inputs)}
    key = fingerprint(
        stage_name,
        {k: v for k, v in task_config.items() if k not in NEUTRAL_SECTIONS},
        int(ctx.seed), bool(ctx.quick), list(ctx.dataset.shape), model.digest if model else None, inputs,
        [s.to_dict() for s in shards],
    )
    store = ShardStore(out / "shards" / stage_name)
    if client is not None:
        report = run_shards(task, shards, store, key, client=client, retries=config.retries, only=only,
                            stage=stage_name, progress=ctx.progress)
    else:
        with open_client(config, device=config.device or _explicit_run_device(ctx)) as opened:
            report = run_shards(task, shards, store, key, client=opened, retries=config.retries, only=only,
                                stage=stage_name, progress=ctx.progress)
    summary = {**report.summary(), "shard_by": config.shard_by, "shard_size": config.shard_size}
    if only is not None:
        return {"compute": summary, "merged": False}
    merged = merge_shards(store, shards, out, spec, n_images=len(ctx.dataset))
    ctx.artifacts.update(merged.artifacts)
    info = merge_infos([store.record(s.shard_id)["info"] for s in shards], [len(s) for s in shards])
    if spec.summarise is not None:
        info = spec.summarise(info, merged.tables)
    info = _stage_rates(stage_name, info, store, shards)
    summary["merge_s"] = round(merged.wall_s, 3)
    summary["total_s"] = round(time.perf_counter() - t0, 3)
    if merged.unmerged:
        summary["unmerged"] = merged.unmerged
    if not config.keep_shards:
        store.remove()
    return {**info, "compute": summary, "_tables": merged.tables} if spec.driver is not None else {**info, "compute": summary}


def _explicit_run_device(ctx) -> str | None:
    """The run's ``[run] device`` when set to a device (not ``"auto"``): workers use it too."""
    spec = ctx.section("run").get("device", "auto")
    return None if spec in (None, "auto") else str(spec)


def _check_run_dir(out: Path, dataset) -> None:
    import zarr

    path = out / "dataset.zarr"
    if not path.exists() or not (out / "meta.parquet").exists():
        raise FileNotFoundError(
            f"sharded stages read the images from {path} and {out / 'meta.parquet'} (written by the data stage); not found"
        )
    shape = tuple(zarr.open_group(str(path), mode="r")["images"].shape)
    if shape != tuple(dataset.shape):
        raise ValueError(f"{path} holds images of shape {shape} but the run's data set has shape {tuple(dataset.shape)}")


# ---------------------------------------------------------------------------------------------
# merging committed shards into the run directory
# ---------------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    files: list[str]
    tables: dict[str, pd.DataFrame]
    artifacts: dict[str, Any]
    unmerged: list[str]
    wall_s: float


def merge_shards(store: ShardStore, shards: list[Shard], out: Path, spec: ShardableStage, n_images: int) -> MergeResult:
    """Merge every shard's outputs into ``out`` (see the module docstring); all shards must be committed."""
    t0 = time.perf_counter()
    missing = [s.shard_id for s in shards if not (store.part_dir(s.shard_id) / RECORD_FILE).exists()]
    if missing:
        raise RuntimeError(f"cannot merge {spec.name}: shards {missing[:10]} are not committed")
    parts = [store.part_dir(s.shard_id) for s in shards]
    names: list[str] = []
    for part in parts:
        for entry in sorted(part.iterdir()):
            if entry.name not in names and not entry.name.startswith(("_", ".")):
                if spec.outputs is None or entry.name in spec.outputs:
                    names.append(entry.name)
    tables: dict[str, pd.DataFrame] = {}
    files, unmerged = [], []
    for name in names:
        if name.endswith(".parquet"):
            stem = name[: -len(".parquet")]
            table = merge_tables([p / name for p in parts], shards, spec.table_order.get(stem, ("sample",)))
            from chanstat.io import write_table

            write_table(table, out / name)
            tables[stem] = table
            files.append(name)
        elif name.endswith(".zarr"):
            merge_arrays([p / name for p in parts], shards, out / name, n_images)
            files.append(name)
        else:
            unmerged.append(name)
            log.warning("sharded %s: output %s is neither Parquet nor Zarr; not merged", spec.name, name)
    artifacts = _merge_artifacts(parts, shards, out, tables, spec, n_images)
    return MergeResult(files, tables, artifacts, unmerged, time.perf_counter() - t0)


def merge_tables(paths: list[Path], shards: list[Shard], order: tuple[str, ...] = ("sample",)) -> pd.DataFrame:
    """Concatenate per-shard tables, map ``sample`` to data set rows, sort into ``order``.

    ``paths[k]`` belongs to ``shards[k]``; missing files contribute no rows (a shard whose
    images were all filtered out). String columns of ``order`` sort by first appearance
    (method and strategy keep the stage's own order), others ascending; the sort is
    stable, so rows tied on ``order`` keep the order the stage wrote them in.
    """
    frames = []
    for path, shard in zip(paths, shards):
        if not path.exists():
            continue
        table = pd.read_parquet(path)
        if "sample" in table.columns:
            local = table["sample"].to_numpy()
            if local.size and (local.min() < 0 or local.max() >= len(shard)):
                raise ValueError(f"{path}: sample values {local.min()}..{local.max()} are not rows of shard {shard.shard_id} ({len(shard)} images)")
            table["sample"] = shard.index_array[local].astype(table["sample"].dtype, copy=False)
        frames.append(table)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    keys = [c for c in order if c in table.columns]
    if not keys:
        return table
    sort_frame = {}
    for c in keys:
        col = table[c]
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            sort_frame[c] = col.to_numpy()
        else:
            sort_frame[c] = pd.factorize(col, sort=False)[0]
    ranks = pd.DataFrame(sort_frame)
    position = ranks.sort_values(keys, kind="stable").index.to_numpy()
    return table.iloc[position].reset_index(drop=True)


def merge_arrays(paths: list[Path], shards: list[Shard], target: Path, n_images: int) -> Path:
    """Merge per-shard Zarr groups into one group at ``target``, one region per shard.

    Arrays with a ``samples`` attribute (rows = those samples of the shard) are concatenated
    in ascending data-set sample order and their ``samples`` attribute rewritten; any other
    array must have one row per image of its shard and is written to those rows of an
    ``(n_images, ...)`` array. Written to a temporary folder, then renamed over ``target``.
    """
    import zarr

    present = [(p, s) for p, s in zip(paths, shards) if p.exists()]
    first = zarr.open_group(str(present[0][0]), mode="r")
    tmp = target.with_name(f".{target.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)
    final = zarr.open_group(str(tmp), mode="w")
    final.attrs.update(dict(first.attrs))
    for name in sorted(first.array_keys()):
        ref = first[name]
        attrs = dict(ref.attrs)
        if "samples" in attrs:
            pieces = []
            for path, shard in present:
                group = zarr.open_group(str(path), mode="r")
                if name in group:
                    local = np.asarray(group[name].attrs["samples"], dtype=np.int64)
                    pieces.append((path, shard.index_array[local] if local.size else local))
            samples = np.concatenate([g for _, g in pieces]) if pieces else np.zeros(0, dtype=np.int64)
            order = np.sort(samples)
            rows = len(order)
            arr = final.create_array(name, shape=(rows,) + ref.shape[1:], dtype=ref.dtype,
                                     chunks=_chunks(rows, ref.shape), overwrite=True)
            for path, global_samples in pieces:
                if global_samples.size == 0:
                    continue
                data = np.asarray(zarr.open_group(str(path), mode="r")[name][...])
                where = np.searchsorted(order, global_samples)
                _write_rows(arr, where, data)
            attrs["samples"] = [int(i) for i in order]
        else:
            arr = final.create_array(name, shape=(n_images,) + ref.shape[1:], dtype=ref.dtype,
                                     chunks=_chunks(n_images, ref.shape), overwrite=True)
            for path, shard in present:
                data = zarr.open_group(str(path), mode="r")[name]
                if data.shape[0] != len(shard):
                    raise ValueError(
                        f"{path}/{name} has {data.shape[0]} rows but shard {shard.shard_id} holds {len(shard)} images; "
                        "give it a 'samples' attribute or one row per image"
                    )
                _write_rows(arr, shard.index_array, np.asarray(data[...]))
        arr.attrs.update(attrs)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)
    return target


def _chunks(rows: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (max(1, min(64, rows)),) + tuple(shape[1:])


def _write_rows(arr, rows: np.ndarray, data: np.ndarray) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
        arr[int(rows[0]) : int(rows[-1]) + 1] = data
    else:
        arr.set_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1), data)


def _merge_artifacts(parts, shards, out: Path, tables, spec: ShardableStage, n_images: int) -> dict[str, Any]:
    from chanstat.io import read_arrays, read_json

    index: dict[str, dict] = {}
    for part in parts:
        if (part / ARTIFACTS_INDEX).exists():
            for key, entry in read_json(part / ARTIFACTS_INDEX).items():
                index.setdefault(key, entry)
    artifacts: dict[str, Any] = {}
    for key, entry in index.items():
        file = entry.get("file")
        if spec.outputs is not None and file not in spec.outputs:
            continue
        if entry["kind"] == "unmerged" or file is None:
            log.warning("sharded %s: artifact %r (%s) cannot be merged from shards", spec.name, key, entry.get("type"))
            continue
        if file.startswith(ARTIFACTS_DIR):
            if entry["kind"] == "table":
                artifacts[key] = merge_tables([p / file for p in parts], shards, spec.table_order.get(key, ("sample",)))
            else:
                per_part = [read_arrays(p / file)[0] for p in parts]
                merged = {}
                for name in per_part[0]:
                    full = np.zeros((n_images,) + per_part[0][name].shape[1:], dtype=per_part[0][name].dtype)
                    for arrays, shard in zip(per_part, shards):
                        full[shard.index_array] = arrays[name]
                    merged[name] = full
                artifacts[key] = merged
        elif entry["kind"] == "table":
            artifacts[key] = tables[file[: -len(".parquet")]]
        else:
            artifacts[key] = read_arrays(out / file)[0]
        if isinstance(artifacts.get(key), dict) and sorted(entry.get("keys", [])) == sorted(artifacts[key]):
            artifacts[key] = {k: artifacts[key][k] for k in entry["keys"]}  # the stage's own order
    return artifacts


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------
def merge_infos(infos: list[dict], sizes: list[int]) -> dict:
    """Merge the per-shard dicts a stage returned: equal values are kept, integer counts are
    summed, other numbers averaged weighted by shard size, nested dicts merged key by key.
    Values that differ otherwise are left out."""
    if not infos:
        return {}
    out: dict = {}
    keys: list[str] = []
    for info in infos:
        keys += [k for k in info if k not in keys]
    for key in keys:
        present = [(info[key], n) for info, n in zip(infos, sizes) if key in info]
        values = [v for v, _ in present]
        if all(v == values[0] for v in values):
            if not (isinstance(values[0], (int, float)) and not isinstance(values[0], bool) and len(values) > 1 and _is_count(key)):
                out[key] = values[0]
                continue
        if all(isinstance(v, dict) for v in values):
            out[key] = merge_infos(values, [n for _, n in present])
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = int(sum(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            weights = np.asarray([n for _, n in present], dtype=float)
            out[key] = float(np.average(np.asarray(values, dtype=float), weights=weights))
    return out


def _is_count(key: str) -> bool:
    return key.startswith("n_") or key in ("hybrids", "forward_passes")


def _stage_rates(stage: str, info: dict, store: ShardStore, shards: list[Shard]) -> dict:
    """Per-method rates recomputed from shard wall times (images per worker-second)."""
    if "images_per_s" in info or any("images_per_s" in store.record(s.shard_id)["info"] for s in shards):
        rates: dict[str, float] = {}
        seconds: dict[str, float] = {}
        for shard in shards:
            per = store.record(shard.shard_id)["info"].get("images_per_s") or {}
            for method, rate in per.items():
                if rate:
                    seconds[method] = seconds.get(method, 0.0) + len(shard) / float(rate)
        total = sum(len(s) for s in shards)
        rates = {m: round(total / s, 2) for m, s in seconds.items() if s > 0}
        info = {**info, "images_per_s": rates}
    return info


# ---------------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------------
def _dac_select(ctx) -> np.ndarray | None:
    max_samples = ctx.section("dac").get("max_samples")
    if max_samples is None:
        return None
    from chanstat.dac.stage import balanced_subset

    return balanced_subset(ctx.dataset.labels.numpy(), max_samples, ctx.seed)


def _dac_overrides(section: dict) -> dict:
    section.pop("max_samples", None)  # applied once on the client by _dac_select
    return section


def _dac_summarise(info: dict, tables: dict[str, pd.DataFrame]) -> dict:
    scores = tables.get("dac_scores")
    if scores is not None and len(scores):
        try:
            from chanstat.dac.stage import _mean_dac
        except ImportError:
            pass
        else:
            info = {**info, "mean_dac": _mean_dac(scores)}
    sweep = tables.get("dac_sweep")
    if sweep is not None and len(sweep) and isinstance(info.get("sweep"), dict):
        # the same summary as chanstat.dac.stage._run_sweep, from the merged table
        means = sweep.groupby(["method", "strategy", "channel", "closing", "sigma"], sort=False)["dac"].mean()
        info["sweep"] = {
            **info["sweep"],
            "mean_dac": {
                f"{m}/{s}/{c}/closing={cl}/sigma={sg:g}": round(float(v), 6) for (m, s, c, cl, sg), v in means.items()
            },
        }
    return info


register_shardable(ShardableStage("attribution", "chanstat.attribution.stage"))
register_shardable(
    ShardableStage(
        "dac",
        "chanstat.dac.stage",
        inputs=("attributions",),
        table_order={
            "dac_curves": ("method", "strategy", "sample"),
            "dac_scores": ("method", "strategy", "sample"),
            "dac_sweep": ("method", "closing", "sigma", "strategy", "sample"),
            "dac_dropped": ("sample",),
        },
        select=_dac_select,
        config_overrides=_dac_overrides,
        summarise=_dac_summarise,
    )
)
def _metrics_driver(ctx, shard_and_merge) -> dict:
    """Metrics: faithfulness (deletion/insertion/ROAD, per image, the model-heavy part) in
    shards; localisation (PxAP etc. pool pixels over all images) and PixelCAM (a head trained
    on the whole set) on the client, by the stage itself with ``faithfulness_images = 0``.
    Then the faithfulness means are joined to the localisation table as the stage does."""
    import chanstat.metrics.stage as metrics_stage
    from chanstat.io import write_table

    section = ctx.section("metrics")
    n_faith = int(section.get("faithfulness_images", 16))
    reason = None
    pixelcam = section.get("pixelcam")
    if pixelcam is True or (isinstance(pixelcam, dict) and pixelcam.get("enabled", True)):
        reason = "[metrics.pixelcam]: PixelCAM maps come from a head trained on the whole set"
    elif n_faith <= 0 or ctx.model is None:
        reason = "no faithfulness images: nothing per image to shard"
    if reason is not None:
        t0 = time.perf_counter()
        info = metrics_stage.run(ctx) or {}
        return {**info, "compute": {"sharded": False, "reason": reason, "wall_s": round(time.perf_counter() - t0, 3)}}

    selected = metrics_stage.balanced_subset(ctx.dataset.labels.numpy(), n_faith, ctx.seed)

    def per_shard(section: dict) -> dict:
        # every image of a shard is one of the client's selection; localisation in the shards
        # is not used (computed on the client), so it runs with the fewest thresholds; the
        # randomisation check runs once on the client, not once per shard
        return {
            **section,
            "faithfulness_images": 1 << 40,
            "pixelcam": False,
            "thresholds": 2,
            "randomisation": {"enabled": False},
        }

    sharded = shard_and_merge(selected, per_shard)
    if sharded.get("merged") is False:
        return sharded
    tables = sharded.pop("_tables")
    faith = tables.get("faithfulness", pd.DataFrame())
    curves = tables.get("faithfulness_curves", pd.DataFrame())

    local = copy.copy(ctx)
    local.config = copy.deepcopy(ctx.config)
    local.config.setdefault("metrics", {})["faithfulness_images"] = 0
    info = metrics_stage.run(local) or {}
    if not len(faith):  # no faithfulness method had maps: the client run's outputs are the stage's
        return {**info, "compute": sharded["compute"]}
    loc = ctx.artifacts["localisation"]
    # as chanstat.metrics.stage.run joins the faithfulness means
    means = faith.pivot_table(index=["method", "channel"], columns="metric", values="auc", aggfunc="mean")
    means.columns = [f"{c}_auc" for c in means.columns]
    loc = loc.merge(means.reset_index(), on=["method", "channel"], how="left")
    for col in ("method", "channel"):
        loc[col] = loc[col].astype("string")
    out = Path(ctx.out)
    write_table(loc, out / "localisation.parquet")
    write_table(faith, out / "faithfulness.parquet")
    write_table(curves, out / "faithfulness_curves.parquet")
    ctx.artifacts["localisation"] = loc
    ctx.artifacts["faithfulness"] = faith
    shard_faith = sharded.get("faithfulness", {})
    info["faithfulness"] = {
        "methods": shard_faith.get("methods"),
        "n_images": int(len(selected)),
        "wall_s": sharded["compute"].get("shard_wall_s_total"),
    }
    return {**info, "compute": sharded["compute"]}


register_shardable(
    ShardableStage(
        "metrics",
        "chanstat.metrics.stage",
        inputs=("attributions",),
        table_order={
            "faithfulness": ("method", "metric", "sample"),
            "faithfulness_curves": ("method", "metric", "sample"),
        },
        outputs=("faithfulness.parquet", "faithfulness_curves.parquet"),
        driver=_metrics_driver,
    )
)
