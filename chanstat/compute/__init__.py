"""Sharded, resumable execution of the image stages on Dask (a laptop, a GPU server, a cluster).

>>> from chanstat.compute import run_sharded
>>> info = run_sharded(ctx, "attribution")   # instead of chanstat.attribution.stage.run(ctx)

The ``[compute]`` config section (see :class:`ComputeConfig` and ``analyses/sharded.toml``)
chooses the scheduler (``"sync"``, ``"local"`` or a scheduler address), the workers and how
the images are cut into shards (fixed index ranges or whole wells/plates). Every shard is
committed atomically; a re-run skips committed shards (:mod:`chanstat.compute.manifest`);
shards that keep failing are retried, then reported by :class:`ShardsFailed`.

Lower level: :func:`run_shards` runs any picklable ``task(shard, out_dir)`` over a plan of
:class:`Shard` objects with the same commit/resume/retry rules.
"""
from chanstat.compute.manifest import ShardStore
from chanstat.compute.plan import SHARD_BY, Shard, check_plan, fingerprint, plan_group_shards, plan_index_shards, plan_shards
from chanstat.compute.runner import (
    COMPUTE_DEFAULTS,
    ComputeConfig,
    ShardReport,
    ShardsFailed,
    default_n_workers,
    execute_shard,
    open_client,
    run_shards,
)
from chanstat.compute.stages import (
    SHARDABLE,
    ShardableStage,
    StageShardTask,
    merge_arrays,
    merge_shards,
    merge_tables,
    register_shardable,
    run_sharded,
)
from chanstat.compute.context import load_context, sharded_stage_names
from chanstat.compute.worker import ModelSource, read_artifact, read_dataset, worker_device

__all__ = [
    "run_sharded", "run_shards", "ComputeConfig", "COMPUTE_DEFAULTS", "ShardReport", "ShardsFailed", "open_client",
    "default_n_workers", "execute_shard", "Shard", "SHARD_BY", "plan_shards", "plan_index_shards", "plan_group_shards",
    "check_plan", "fingerprint", "ShardStore", "SHARDABLE", "ShardableStage", "StageShardTask", "register_shardable",
    "merge_shards", "merge_tables", "merge_arrays", "ModelSource", "WorkerSetup", "read_dataset", "read_artifact",
    "worker_device", "load_context", "sharded_stage_names",
]


def __getattr__(name: str):
    if name == "WorkerSetup":  # imports distributed: only when asked for
        from chanstat.compute.dask_setup import WorkerSetup

        return WorkerSetup
    raise AttributeError(f"module 'chanstat.compute' has no attribute {name!r}")
