"""Sharded, resumable execution of the per-image part of stages (a laptop, a GPU server, a cluster).

The pipeline calls :func:`run_parts` for a stage whose name is in ``[compute] stages``:
it plans shards over the images (fixed index ranges or whole wells/plates), runs the stage's
per-image task on each (in this process or on Dask workers), commits every shard atomically
(a re-run skips committed shards, :mod:`chanstat.compute.manifest`), retries failing shards
and reports those that kept failing (:class:`ShardsFailed`). It returns each shard's outputs;
merging them is the stage contract's job (:func:`chanstat.stage.merge_parts`).

This package imports neither :mod:`chanstat.pipeline` nor any stage module.
"""

from chanstat.compute.manifest import ShardStore
from chanstat.compute.parts import RowsTask, plan_rows, run_parts
from chanstat.compute.plan import (
    SHARD_BY,
    Shard,
    check_plan,
    fingerprint,
    plan_group_shards,
    plan_index_shards,
    plan_shards,
)
from chanstat.compute.runner import (
    ComputeConfig,
    ShardReport,
    ShardsFailed,
    default_n_workers,
    execute_shard,
    open_client,
    run_shards,
)
from chanstat.compute.worker import ModelSource, worker_device

__all__ = [
    "run_parts",
    "plan_rows",
    "RowsTask",
    "run_shards",
    "ComputeConfig",
    "ShardReport",
    "ShardsFailed",
    "open_client",
    "default_n_workers",
    "execute_shard",
    "Shard",
    "SHARD_BY",
    "plan_shards",
    "plan_index_shards",
    "plan_group_shards",
    "check_plan",
    "fingerprint",
    "ShardStore",
    "ModelSource",
    "WorkerSetup",
    "worker_device",
]


def __getattr__(name: str):
    if name == "WorkerSetup":  # imports distributed: only when asked for
        from chanstat.compute.dask_setup import WorkerSetup

        return WorkerSetup
    raise AttributeError(f"module 'chanstat.compute' has no attribute {name!r}")
