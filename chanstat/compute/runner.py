"""Run shard tasks on a Dask cluster (or in this process), skipping finished shards.

A *shard task* is any picklable callable ``task(shard, out_dir) -> dict | None`` that computes
one :class:`~chanstat.compute.plan.Shard` and writes its outputs into ``out_dir`` (a fresh
staging folder). :func:`run_shards` sends every unfinished shard to a worker, commits each
result atomically (:class:`~chanstat.compute.manifest.ShardStore`), retries failures, and
reports the shards that still failed instead of dropping them.

Schedulers (``[compute] scheduler``):

``"sync"``
    No Dask: shards run one after another in this process (debugging, tiny data).
``"local"``
    A ``distributed.LocalCluster`` on this machine: ``n_workers`` workers (default: one per
    CUDA device, else one per CPU core), ``threads_per_worker`` threads each.
``"tcp://host:port"`` (any other string)
    An existing Dask scheduler. Its workers must see the run directory at the same path
    (a shared file system); start one worker per GPU (``CUDA_VISIBLE_DEVICES``) on GPU nodes.

Local process workers are started with ``multiprocessing``'s *spawn*: a Python script that
runs a sharded pipeline must do so under ``if __name__ == "__main__":`` (the ``chanstat``
command does), or each worker would re-run the script.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from chanstat.compute.manifest import ShardStore
from chanstat.compute.plan import Shard
from chanstat.config import ComputeConfig


@dataclass
class ShardReport:
    """What one call of :func:`run_shards` did.

    Attributes
    ----------
    n_shards : shards in the plan.
    skipped : ids committed by an earlier run (not recomputed).
    computed : ids computed and committed by this run.
    failed : id -> ``"ExceptionType: message"`` of shards that failed after all retries.
    not_run : ids left out by ``only=`` (neither done nor attempted).
    wall_s : wall time of this call.
    records : id -> the shard's record (wall time, worker, attempt, info) for computed shards.
    """

    stage: str
    n_shards: int
    skipped: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    scheduler: str = "sync"
    n_workers: int = 1
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed and not self.not_run

    def summary(self) -> dict[str, Any]:
        """The report without per-shard records (for provenance.json)."""
        shard_wall = [r.get("wall_s", 0.0) for r in self.records.values()]
        return {
            "n_shards": self.n_shards,
            "n_computed": len(self.computed),
            "n_skipped": len(self.skipped),
            "failed": dict(self.failed),
            "n_not_run": len(self.not_run),
            "scheduler": self.scheduler,
            "n_workers": self.n_workers,
            "wall_s": round(self.wall_s, 3),
            "shard_wall_s_total": round(sum(shard_wall), 3),
            "attempts": {sid: r.get("attempt", 1) for sid, r in self.records.items() if r.get("attempt", 1) > 1},
        }


class ShardsFailed(RuntimeError):
    """Some shards failed after all retries; the others are committed (a re-run resumes)."""

    def __init__(self, report: ShardReport):
        self.report = report
        listed = "; ".join(f"{sid}: {err}" for sid, err in list(report.failed.items())[:5])
        more = f" (and {len(report.failed) - 5} more)" if len(report.failed) > 5 else ""
        super().__init__(
            f"{len(report.failed)} of {report.n_shards} shards of {report.stage or 'the computation'} failed "
            f"after retries: {listed}{more}. {len(report.computed) + len(report.skipped)} shards are committed; "
            "re-running recomputes only the missing ones."
        )


# ---------------------------------------------------------------------------------------------
# cluster
# ---------------------------------------------------------------------------------------------
def default_n_workers() -> int:
    """One worker per CUDA device when there are any, else one per CPU core."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return int(torch.cuda.device_count())
    return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(config: ComputeConfig, device: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``config.scheduler`` (None for ``"sync"``), closed afterwards.

    Workers get :class:`~chanstat.compute.worker.WorkerSetup`: torch threads set to
    ``threads_per_worker`` in process workers, and on a local cluster with CUDA devices worker
    ``k`` uses ``cuda:k`` (one worker per GPU).
    """
    if config.scheduler == "sync":
        yield None
        return
    from distributed import Client, LocalCluster

    from chanstat.compute.dask_setup import WorkerSetup

    if config.scheduler == "local":
        n_workers = config.n_workers or default_n_workers()
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=config.processes,
            memory_limit=config.memory_limit,
            dashboard_address=":0",  # a free port: never collide with other clusters on the machine
            **({"host": "127.0.0.1"} if config.processes else {}),  # thread workers talk in-process
        )
        client = Client(cluster)
        setup = WorkerSetup(
            torch_threads=config.threads_per_worker if config.processes else None,
            device=device,
            gpu_by_worker_name=True,
        )
    else:
        cluster = None
        client = Client(config.scheduler, timeout="30s")
        setup = WorkerSetup(torch_threads=None, device=device, gpu_by_worker_name=False)
    try:
        client.register_plugin(setup, name="chanstat-worker-setup")
        if config.dashboard:
            print(f"[chanstat] Dask dashboard: {client.dashboard_link}", flush=True)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def n_workers_of(client: Any) -> int:
    """Workers connected to ``client``'s scheduler (1 for in-process runs)."""
    return 1 if client is None else len(client.nthreads())


# ---------------------------------------------------------------------------------------------
# running shards
# ---------------------------------------------------------------------------------------------
def execute_shard(task: Callable[[Shard, Path], dict | None], shard: Shard, store_root: str) -> dict[str, Any]:
    """Compute one shard into a staging folder and commit it (runs on a worker).

    Returns the shard's record: ``wall_s``, ``worker`` (host:pid:thread), ``attempt``, ``info``
    (what the task returned).
    """
    store = ShardStore(store_root)
    attempt = _attempt_number(store, shard)
    staging = store.new_staging_dir(shard)
    t0 = time.perf_counter()
    try:
        info = task(shard, staging) or {}
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = {
        "wall_s": round(time.perf_counter() - t0, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}",
        "attempt": attempt,
        "info": info,
    }
    return store.commit(shard, staging, record)


def _attempt_number(store: ShardStore, shard: Shard) -> int:
    """1 + the number of earlier attempts of this shard in this computation (counted by marker files)."""
    marks = store.root / "attempts"
    marks.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        try:
            fd = os.open(marks / f"{shard.shard_id}.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return k
        except FileExistsError:
            k += 1


def run_shards(
    task: Callable[[Shard, Path], dict | None],
    shards: Sequence[Shard],
    store: ShardStore | str | os.PathLike,
    fingerprint: str,
    client: Any = None,
    retries: int = 2,
    only: Sequence[str] | None = None,
    stage: str = "",
    progress: bool = False,
    raise_on_failure: bool = True,
) -> ShardReport:
    """Compute every shard not yet committed; commit each one atomically.

    Parameters
    ----------
    task : picklable callable ``task(shard, out_dir) -> dict | None`` writing its outputs
        into ``out_dir``. A top-level function or an instance of a top-level class.
    shards : the plan (see :func:`~chanstat.compute.plan.plan_shards`); ids must be unique.
    store : the computation's folder (:class:`~chanstat.compute.manifest.ShardStore`).
    fingerprint : identifies what is computed (config, model, data); a different one than
        the stored plan's discards earlier parts.
    client : a ``distributed.Client``; None runs the shards here, one after another.
    retries : extra attempts per failing shard (on a cluster, Dask also re-runs the tasks of
        a worker that died, up to its ``allowed-failures``).
    only : compute only these shard ids (the rest count as ``not_run``); for partial runs.
    stage : name for messages and the manifest.
    progress : progress bar over shards.
    raise_on_failure : raise :class:`ShardsFailed` after all shards ran if any failed.

    Returns
    -------
    ShardReport
    """
    t0 = time.perf_counter()
    store = store if isinstance(store, ShardStore) else ShardStore(store)
    shards = list(shards)
    if not shards:
        raise ValueError("no shards to run")
    if len({s.shard_id for s in shards}) != len(shards):
        raise ValueError("shard ids must be unique")
    done = store.prepare(shards, fingerprint)
    wanted = None if only is None else set(only)
    if wanted is not None:
        unknown = sorted(wanted - {s.shard_id for s in shards})
        if unknown:
            raise ValueError(f"only= names shards not in the plan: {unknown[:10]}")
    todo = [s for s in shards if s.shard_id not in done and (wanted is None or s.shard_id in wanted)]
    report = ShardReport(
        stage=stage,
        n_shards=len(shards),
        skipped=sorted(done),
        not_run=sorted(
            s.shard_id for s in shards if s.shard_id not in done and wanted is not None and s.shard_id not in wanted
        ),
        scheduler="sync" if client is None else "dask",
        n_workers=n_workers_of(client),
    )
    bar = tqdm(total=len(todo), desc=f"shards {stage}".strip(), disable=not progress, leave=False)
    try:
        if client is None:
            _run_here(task, todo, store, retries, report, bar)
        else:
            _run_on_cluster(task, todo, store, retries, client, report, bar, stage)
    finally:
        bar.close()
        report.wall_s = time.perf_counter() - t0
        store.clear_staging()
        store.write_manifest(report.summary())
    if report.failed and raise_on_failure:
        raise ShardsFailed(report)
    return report


def _run_here(task, todo, store, retries, report, bar) -> None:
    for shard in todo:
        for attempt in range(retries + 1):
            try:
                record = execute_shard(task, shard, str(store.root))
            except Exception as exc:  # noqa: BLE001 - reported per shard after the retries
                if attempt == retries:
                    report.failed[shard.shard_id] = f"{type(exc).__name__}: {exc}"
            else:
                report.computed.append(shard.shard_id)
                report.records[shard.shard_id] = record
                break
        bar.update(1)


def _run_on_cluster(task, todo, store, retries, client, report, bar, stage) -> None:
    from distributed import as_completed

    if not todo:
        return
    task_future = client.scatter(task, broadcast=True, hash=False) if _is_large(task) else task
    futures = {}
    for shard in todo:
        future = client.submit(
            execute_shard,
            task_future,
            shard,
            str(store.root),
            key=f"chanstat-{stage or 'shard'}-{shard.shard_id}-{os.path.basename(str(store.root))}-{time.time_ns()}",
            retries=retries,
            pure=False,
        )
        futures[future.key] = (future, shard)
    try:
        for future in as_completed([f for f, _ in futures.values()]):
            shard = futures[future.key][1]
            if future.status == "finished":
                report.computed.append(shard.shard_id)
                report.records[shard.shard_id] = future.result()
            else:
                exc = future.exception()
                report.failed[shard.shard_id] = f"{type(exc).__name__}: {exc}"
            future.release()
            bar.update(1)
    except BaseException:
        for future, _ in futures.values():
            future.cancel()
        raise
    report.computed.sort()


def _is_large(task: Any) -> bool:
    """Tasks carrying more than ~1 MB of state are scattered once instead of sent per shard."""
    import pickle

    try:
        return len(pickle.dumps(task)) > 1_000_000
    except Exception:  # noqa: BLE001 - let Dask report unpicklable tasks with its own message
        return False
