"""Run a stage's per-image function in shards and merge what the shards wrote.

:func:`run_parts` is all the pipeline needs from this package: it plans shards over the
selected image rows (fixed index ranges or whole wells/plates), runs ``task(rows, out_dir)``
for every shard not yet committed (here or on Dask, with retries), and reads every shard's
outputs back with ``read(out_dir)``. Merging them is the stage contract's
(:func:`chanstat.stage.merge_parts`), not this package's: compute knows nothing about what
a stage computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from chanstat.compute.manifest import ShardStore
from chanstat.compute.plan import Shard, fingerprint, plan_shards
from chanstat.compute.runner import ComputeConfig, open_client, run_shards


@dataclass
class RowsTask:
    """Adapts ``task(rows, out_dir)`` to the shard runner's ``task(shard, out_dir)`` (picklable)."""

    task: Any

    def __call__(self, shard: Shard, out_dir: Path) -> dict | None:
        return self.task(shard.index_array, out_dir)


def plan_rows(rows: np.ndarray, config: ComputeConfig, meta: pd.DataFrame | None = None) -> list[Shard]:
    """Shards over data-set ``rows`` (sorted ints): index ranges of ``rows`` or whole wells/plates."""
    rows = np.asarray(rows, dtype=np.int64)
    local_meta = meta.iloc[rows].reset_index(drop=True) if meta is not None else None
    local = plan_shards(len(rows), config.shard_size, config.shard_by, meta=local_meta)
    return [Shard(s.shard_id, tuple(int(i) for i in rows[s.index_array]), s.label) for s in local]


def run_parts(
    task: Callable[[np.ndarray, Path], dict | None],
    rows: np.ndarray,
    config: ComputeConfig,
    store_dir: str | Path,
    key: str,
    read: Callable[[Path], dict],
    meta: pd.DataFrame | None = None,
    client: Any = None,
    only: list[str] | None = None,
    progress: bool = False,
    label: str = "",
) -> tuple[list[dict], dict]:
    """Compute ``task`` on shards of ``rows`` and return every shard's outputs, in row order.

    Parameters
    ----------
    task : picklable ``task(rows, out_dir)`` that writes one shard's outputs into ``out_dir``.
    rows : the data-set rows to cover (sorted).
    config : the ``[compute]`` settings.
    store_dir : folder of this computation's shards (committed shards survive a crash).
    key : fingerprint of what is computed; shards committed under another key are discarded.
    read : ``read(out_dir) -> outputs`` of a committed shard.
    meta : per-image metadata (for ``shard_by = "well" | "plate"``).
    client : an existing ``distributed.Client`` (default: opened from ``config``).
    only : compute only these shard ids and return no outputs (partial runs, tests).

    Returns
    -------
    (outputs, summary) : the shards' outputs in row order (empty with ``only``), and what
        was computed, skipped and how long it took (for provenance).
    """
    t0 = time.perf_counter()
    shards = plan_rows(rows, config, meta)
    full_key = fingerprint(key, [s.to_dict() for s in shards])
    store = ShardStore(store_dir)
    wrapped = RowsTask(task)
    if client is not None:
        report = run_shards(
            wrapped,
            shards,
            store,
            full_key,
            client=client,
            retries=config.retries,
            only=only,
            stage=label,
            progress=progress,
        )
    else:
        with open_client(config, device=config.device) as opened:
            report = run_shards(
                wrapped,
                shards,
                store,
                full_key,
                client=opened,
                retries=config.retries,
                only=only,
                stage=label,
                progress=progress,
            )
    summary = {**report.summary(), "shard_by": config.shard_by, "shard_size": config.shard_size}
    if only is not None:
        return [], {**summary, "merged": False}
    t_read = time.perf_counter()
    outputs = [read(store.part_dir(s.shard_id)) for s in shards]
    summary["read_s"] = round(time.perf_counter() - t_read, 3)
    summary["total_s"] = round(time.perf_counter() - t0, 3)
    if not config.keep_shards:
        store.remove()
    return outputs, summary
