"""Scaling past one process: Dask workers, resumed runs, per-cell tables larger than memory.

Prints, in one run, ratios against references measured in the same run (never absolute
speed claims: the machine may be shared, ``os.getloadavg()`` is recorded before and after
every part):

1. **Throughput, 1 vs 2 local workers** -- the attribution stage (``d_ig``) on the synthetic
   set, run through ``chanstat.compute.run_parts`` with the pipeline's own per-shard task
   (``chanstat.context.PartTask``) on a ``LocalCluster`` of 1 and then 2 single-threaded worker
   processes. The cluster is started, and every worker has loaded the model and run one image,
   before timing, so shards are not dominated by start-up (the start-up is reported apart).
   Ratio = images/s with 2 / with 1. Every shard records its wall and CPU seconds inside the
   task; from them the ratio is split exactly into
   ``2 x (CPU per image, 1 / 2 workers) x (core share, 2 / 1) x (busy share, 2 / 1)``:
   the extra work sharding causes, the cores the workers obtained on the machine, and the
   worker time spent outside shards (dispatch, the tail where one worker waits for the other,
   the client reading and merging the shards' outputs).
2. **Worker killed mid-way** -- the same 2-worker run; when half the shards are committed one
   worker process is killed (SIGKILL). Dask's nanny restarts it and reschedules its task.
   Reported: wall time against the undisturbed 2-worker run of part 1, which shards ran more
   than once (target: only the shard in flight on the killed worker), and whether the maps
   equal part 1's.
3. **Whole run killed, then resumed** -- a separate process runs the stage the way a user does
   (``chanstat.pipeline.run_stage`` with a ``[compute]`` section, its own local cluster); it is
   killed with its workers when half the shards are committed, and the stage is run again.
   Reported: shards the resumed run computed (target: exactly the uncommitted ones) and whether
   the maps equal part 1's.
1b. **Plain Dask shards, 1 vs 2 workers** (``--dask-shards``, only this part) -- D-IG on 64
   random 5 x 64 x 64 images in 8 shards, each shard's wall and CPU seconds measured inside
   the task. Uses only ``distributed`` and ``chanstat.attribution`` (no ``chanstat.compute``):
   a reference for parts 1-3's sharding overhead.
4. **Peak memory of streamed well aggregation** -- a per-cell Parquet table of 1,000,000 cells
   x 1,000 float32 features (768 wells) is generated in row groups into a temporary folder;
   ``aggregate_wells_streaming`` runs in a child process whose resident memory is sampled
   with psutil every 20 ms (and read from ``getrusage`` at its end). Target: peak RSS < 2 GB.

    python analyses/benchmarks/scale.py            # full size (tens of minutes on a busy 2-core machine)
    python analyses/benchmarks/scale.py --quick    # small sizes, a few minutes
    python analyses/benchmarks/scale.py --skip-aggregation --json out.json
    python analyses/benchmarks/scale.py --throughput-only --skip-aggregation   # part 1 only
    python analyses/benchmarks/scale.py --dask-shards           # part 1b only (a few minutes)

Local Dask workers are started with *spawn*: this script's work runs under
``if __name__ == "__main__":``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
STAGE_REF = "chanstat.attribution.stage:STAGE"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; compare with ``os.cpu_count()``)."""
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# a run directory to shard
# ---------------------------------------------------------------------------------------------
def make_config(quick: bool) -> dict:
    synthetic = {"n_plates": 2, "wells_per_class": 2, "sites_per_well": 8, "size": 48} if quick else {
        "n_plates": 2, "wells_per_class": 4, "sites_per_well": 12, "size": 64}
    return {
        "run": {"seed": 0, "device": "cpu"},
        "data": {"source": "synthetic", "synthetic": synthetic},
        "attribution": {"methods": ["d_ig"], "batch_size": 8, "options": {"d_ig": {"n_steps": 16 if quick else 32}}},
    }


def build_run_dir(root: Path, config: dict):
    """Data stage + an (untrained) reference model: all a sharded attribution stage needs.

    Returns the run context of ``root / "base"`` (copied for every part).
    """
    import torch

    from chanstat import pipeline
    from chanstat.context import Classifier
    from chanstat.models import VGGClassifier

    ctx = pipeline.context(copy.deepcopy(config), root / "base")
    pipeline.run_stage("data", ctx)
    torch.manual_seed(0)
    model = VGGClassifier(len(ctx.dataset.channels), len(ctx.dataset.classes)).eval()
    ctx.run.write("model", Classifier(model, list(ctx.dataset.channels), list(ctx.dataset.classes)))
    return ctx


def fresh_copy(base: Path, name: str) -> Path:
    target = base.parent / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target


def attribution_task(run_dir: Path, config: dict):
    """The per-shard task the pipeline builds for the attribution stage, and its store key."""
    from chanstat.compute import ModelSource
    from chanstat.context import PartTask

    model = ModelSource.from_checkpoint(run_dir / "model.pt")
    task = PartTask(stage=STAGE_REF, run_dir=str(run_dir), config=config, config_dir=str(run_dir), seed=0,
                    quick=False, device="cpu", model=model)
    return task, "scale-benchmark-" + model.digest


@dataclass
class TimedTask:
    """Wraps a ``task(rows, out_dir)``: adds its wall-clock start/end, CPU seconds and pid to the
    shard's record (``info`` of ``_shard.json``). Process CPU of a single-threaded worker is the
    shard's CPU plus the little the worker's event loop used meanwhile."""

    task: Any

    def __call__(self, rows, out_dir):
        start, cpu0, thread0 = time.time(), time.process_time(), time.thread_time()
        info = self.task(rows, out_dir) or {}
        return {**info, "start": start, "end": time.time(), "cpu_s": time.process_time() - cpu0,
                "thread_cpu_s": time.thread_time() - thread0, "pid": os.getpid()}


def read_with_record(out_dir: Path) -> dict:
    """A committed shard's outputs and its record (wall time, worker, attempt, timing info)."""
    from chanstat.context import PartTask
    from chanstat.io import read_json

    return {"outputs": PartTask.read(out_dir), "record": read_json(Path(out_dir) / "_shard.json")}


def local_client(n_workers: int):
    """A LocalCluster of ``n_workers`` single-threaded processes, set up like ``open_client`` does."""
    from distributed import Client, LocalCluster

    from chanstat.compute import WorkerSetup

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           host="127.0.0.1")
    client = Client(cluster)
    client.register_plugin(WorkerSetup(torch_threads=1, device="cpu"), name="chanstat-worker-setup")
    client.run(_warm_up)
    return cluster, client


def _warm_up() -> None:
    import chanstat.attribution  # noqa: F401 - imports (torch, captum) before timing
    import chanstat.attribution.stage  # noqa: F401


def warm_workers(client, task, scratch: Path) -> float:
    """Every worker loads the model (kept per worker thread) and attributes one image; seconds taken."""
    t0 = time.perf_counter()
    futures = []
    for k, address in enumerate(sorted(client.scheduler_info()["workers"])):
        out = scratch / f"warm-{k}"
        out.mkdir(parents=True, exist_ok=True)
        futures.append(client.submit(task, np.array([0]), out, workers=[address], allow_other_workers=False, pure=False))
    client.gather(futures)
    return time.perf_counter() - t0


def compute_settings(shard_size: int, **extra):
    from chanstat.compute import ComputeConfig

    return ComputeConfig(scheduler="local", shard_by="index", shard_size=shard_size, retries=2, **extra)


def merged_maps(parts: list[dict]) -> dict:
    from chanstat.stage import merge_parts

    return merge_parts([p["outputs"] for p in parts])["attributions"].arrays


# ---------------------------------------------------------------------------------------------
# 1. throughput, with CPU seconds per shard and worker idle time
# ---------------------------------------------------------------------------------------------
def shard_accounting(records: list[dict], n_workers: int, wall: float, t_start: float) -> dict:
    """Split ``n_workers x wall`` into time inside shards and idle time, from the shard records."""
    walls = np.array([r["wall_s"] for r in records])
    cpus = np.array([r["info"]["cpu_s"] for r in records])
    by_worker: dict[int, list[dict]] = {}
    for r in records:
        by_worker.setdefault(r["info"]["pid"], []).append(r)
    per_worker = {}
    for pid, rs in by_worker.items():
        rs = sorted(rs, key=lambda r: r["info"]["start"])
        busy = sum(r["wall_s"] for r in rs)
        gaps = sum(max(0.0, b["info"]["start"] - a["info"]["end"]) for a, b in zip(rs, rs[1:]))
        per_worker[str(pid)] = {
            "shards": len(rs), "busy_s": round(busy, 2),
            "before_first_s": round(rs[0]["info"]["start"] - t_start, 2),  # dispatch of the first shard
            "between_shards_s": round(gaps, 2),
            "after_last_s": round(t_start + wall - rs[-1]["info"]["end"], 2),  # tail + reading/merging
        }
    busy = float(walls.sum())
    return {
        "shard_wall_s_mean": round(float(walls.mean()), 3),
        "shard_cpu_s_mean": round(float(cpus.mean()), 3),
        "shard_cpu_s_total": round(float(cpus.sum()), 2),
        "core_share": round(float(cpus.sum()) / busy, 3),  # share of a core a busy worker got
        "busy_share": round(busy / (n_workers * wall), 3),  # worker time spent inside shards
        "idle_worker_s": round(n_workers * wall - busy, 2),
        "workers_seen": len(by_worker),
        "per_worker": per_worker,
    }


def machine_cpu() -> dict:
    """Machine-wide CPU seconds so far from ``/proc/stat`` (all cores): busy, idle and stolen by the hypervisor."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy_s": (user + nice + system + irq + softirq) / tick, "idle_s": (idle + iowait) / tick, "steal_s": steal / tick}


def timed_run(client, task, key: str, run_dir: Path, store_name: str, shard_size: int, n_workers: int) -> tuple[dict, dict]:
    """One timed ``run_parts`` of the attribution stage on a warm cluster: (accounting, maps)."""
    import psutil

    from chanstat.compute import run_parts

    procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
    load_before, machine0 = load_average(), machine_cpu()
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    own0 = time.process_time()
    t_start, t0 = time.time(), time.perf_counter()
    parts, summary = run_parts(TimedTask(task), np.arange(len_dataset(run_dir)), compute_settings(shard_size),
                               run_dir / "shards" / store_name, key=key, read=read_with_record, client=client,
                               label="attribution")
    wall = time.perf_counter() - t0
    worker_cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0
    client_cpu = time.process_time() - own0
    machine1 = machine_cpu()
    records = [p["record"] for p in parts]
    out = {
        "n_images": sum(r["shard"]["n_images"] for r in records), "n_shards": summary["n_shards"],
        "wall_s": round(wall, 3), "shard_phase_s": summary["wall_s"], "read_s": summary["read_s"],
        # CPU of the whole worker processes (Dask's own threads included) and of this client process
        "worker_process_cpu_s": round(worker_cpu, 2), "client_cpu_s": round(client_cpu, 2),
        "load_average_before": load_before, "load_average_after": load_average(),
        **shard_accounting(records, n_workers, wall, t_start),
    }
    if machine0 and machine1:  # what everything else on the machine used meanwhile
        busy = machine1["busy_s"] - machine0["busy_s"]
        out["machine_busy_s"] = round(busy, 2)
        out["machine_capacity_s"] = round((os.cpu_count() or 1) * wall, 2)
        out["other_processes_cpu_s"] = round(busy - worker_cpu - client_cpu, 2)
        out["steal_s"] = round(machine1["steal_s"] - machine0["steal_s"], 2)
    return out, merged_maps(parts)


def pooled(runs: list[dict], n_workers: int) -> dict:
    """Sums over repeated runs with the same number of workers (shares from the sums)."""
    total = {k: round(sum(r[k] for r in runs), 3) for k in ("wall_s", "n_images", "shard_cpu_s_total", "idle_worker_s",
                                                          "read_s", "worker_process_cpu_s", "client_cpu_s")}
    for k in ("other_processes_cpu_s", "steal_s", "machine_capacity_s"):
        if all(k in r for r in runs):
            total[k] = round(sum(r[k] for r in runs), 2)
    busy = sum(r["shard_wall_s_mean"] * r["n_shards"] for r in runs)
    n_shards = sum(r["n_shards"] for r in runs)
    return {
        **total, "runs": len(runs), "wall_s_per_run": round(total["wall_s"] / len(runs), 3), "images_per_s": round(total["n_images"] / total["wall_s"], 3),
        "shard_wall_s_mean": round(busy / n_shards, 3), "shard_cpu_s_mean": round(total["shard_cpu_s_total"] / n_shards, 3),
        "core_share": round(total["shard_cpu_s_total"] / busy, 3), "busy_share": round(busy / (n_workers * total["wall_s"]), 3),
    }


def bench_throughput(base: Path, config: dict, shard_size: int, repeats: int = 2, workers=(1, 2)) -> dict:
    """1 vs 2 workers, ``repeats`` runs each on clusters started and warmed up once, in the order
    1,2,2,1,1,2,... so that a drift of the machine's load hits both about equally."""
    results: dict = {"shard_size": shard_size, "repeats": repeats}
    setups = {}
    try:
        for n in workers:
            run_dir = fresh_copy(base, f"throughput-{n}")
            task, key = attribution_task(run_dir, config)
            t0 = time.perf_counter()
            cluster, client = local_client(n)
            cluster_s = time.perf_counter() - t0
            setups[n] = (run_dir, task, key, cluster, client)
            results[f"start_up_{n}"] = {"cluster_start_s": round(cluster_s, 2),
                                        "warm_up_s": round(warm_workers(client, task, run_dir / "warm-up"), 2)}
        runs: dict = {n: [] for n in workers}
        for rep in range(repeats):
            for n in (workers if rep % 2 == 0 else tuple(reversed(workers))):
                run_dir, task, key, _, client = setups[n]
                run, maps = timed_run(client, task, key, run_dir, f"attribution-{rep}", shard_size, n)
                runs[n].append(run)
                results[f"maps_{n}"] = maps
    finally:
        for _run_dir, _task, _key, cluster, client in setups.values():
            client.close()
            cluster.close()
    for n in workers:
        results[n] = {**pooled(runs[n], n), **results[f"start_up_{n}"], "n_shards": runs[n][0]["n_shards"]}
        results[f"runs_{n}"] = runs[n]
    one, two = results[1], results[2]
    results["ratio_2_vs_1"] = round(two["images_per_s"] / one["images_per_s"], 3)
    results["ratio_per_pair"] = [round(b["n_images"] / b["wall_s"] / (a["n_images"] / a["wall_s"]), 3)
                                 for a, b in zip(runs[1], runs[2])]
    # exact split of the ratio: 2 x (CPU per image) x (core share) x (busy share), 2 workers against 1
    results["factors"] = {
        "workers": 2,
        "cpu_per_image_1_over_2": round(one["shard_cpu_s_total"] / two["shard_cpu_s_total"], 3),
        "core_share_2_over_1": round(two["core_share"] / one["core_share"], 3),
        "busy_share_2_over_1": round(two["busy_share"] / one["busy_share"], 3),
    }
    # what 2 workers would give with a whole core each and no idle time: CPU seconds alone
    results["whole_core_ratio"] = round(2 * one["shard_cpu_s_total"] / two["shard_cpu_s_total"], 3)
    results["same_maps"] = all(np.array_equal(results["maps_1"][k], results["maps_2"][k]) for k in results["maps_1"])
    return results


def len_dataset(run_dir: Path) -> int:
    from chanstat.rundir import RunDirectory

    return len(RunDirectory(run_dir).dataset())


# ---------------------------------------------------------------------------------------------
# 2. a worker killed mid-way
# ---------------------------------------------------------------------------------------------
def bench_worker_kill(base: Path, config: dict, shard_size: int, reference: dict) -> dict:
    """``reference``: part 1's results (the undisturbed 2-worker run and its maps)."""
    from chanstat.compute import ShardStore, run_parts

    run_dir = fresh_copy(base, "worker-kill")
    task, key = attribution_task(run_dir, config)
    n_images = len_dataset(run_dir)
    n_shards = -(-n_images // shard_size)
    store = ShardStore(run_dir / "shards" / "attribution")
    cluster, client = local_client(2)
    killed: dict = {}
    t0 = 0.0

    def killer():
        while len(store.committed()) < n_shards // 2:
            time.sleep(0.05)
        address, pid = sorted(client.run(os.getpid).items())[0]
        killed.update(pid=pid, committed_at_kill=len(store.committed()), at_s=round(time.perf_counter() - t0, 2),
                      at_time=time.time())
        os.kill(pid, signal.SIGKILL)

    try:
        warm_workers(client, task, run_dir / "warm-up")
        load_before = load_average()
        thread = threading.Thread(target=killer, daemon=True)
        t_start, t0 = time.time(), time.perf_counter()
        thread.start()
        parts, summary = run_parts(TimedTask(task), np.arange(n_images), compute_settings(shard_size),
                                   store.root, key=key, read=read_with_record, client=client, label="attribution")
        wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    maps = merged_maps(parts)
    undisturbed = reference[2]
    records = [p["record"] for p in parts]
    # the replacement worker: a pid that ran shards only after the kill; its first shard's start
    # minus the kill time is the restart (spawn, imports, model load) Dask's nanny needed
    late = [r["info"]["start"] for r in records if r["info"]["pid"] not in (killed.get("pid"),)
            and all(q["info"]["start"] >= killed.get("at_time", 0) for q in records if q["info"]["pid"] == r["info"]["pid"])]
    accounting = shard_accounting(records, 2, wall, t_start)
    return {
        "n_shards": n_shards, "wall_s": round(wall, 2), "undisturbed_wall_s": undisturbed["wall_s_per_run"],
        "wall_ratio_vs_undisturbed": round(wall / undisturbed["wall_s_per_run"], 3),
        # the loss in units of the same run's mean shard: load-independent enough to compare
        "time_lost_in_shards": round((wall - undisturbed["wall_s_per_run"]) / undisturbed["shard_wall_s_mean"], 2),
        "killed": killed, "shards_run_more_than_once": summary["attempts"],
        "restart_s": round(min(late) - killed["at_time"], 2) if late and "at_time" in killed else None,
        # against part 1's 2-worker runs: did the shards cost more CPU, or did the workers get less of a core?
        "shard_cpu_s_mean": accounting["shard_cpu_s_mean"], "undisturbed_shard_cpu_s_mean": undisturbed["shard_cpu_s_mean"],
        "core_share": accounting["core_share"], "undisturbed_core_share": undisturbed["core_share"],
        "busy_share": accounting["busy_share"],
        "result_identical": all(np.array_equal(maps[k], reference["maps_2"][k]) for k in reference["maps_2"]),
        "load_average_before": load_before, "load_average_after": load_average(),
    }


# ---------------------------------------------------------------------------------------------
# 3. the whole run killed, then resumed (the pipeline's own path: run_stage + [compute])
# ---------------------------------------------------------------------------------------------
CHILD_RUN = textwrap.dedent(
    """
    import json
    from chanstat import pipeline

    if __name__ == "__main__":
        ctx = pipeline.context(json.loads(open({config!r}).read()), {run_dir!r})
        print("READY", flush=True)
        pipeline.run_stage("attribution", ctx)
        print("FINISHED", flush=True)
    """
)


def bench_resume(base: Path, config: dict, shard_size: int, reference: dict) -> dict:
    import psutil

    from chanstat import pipeline
    from chanstat.compute import ShardStore
    from chanstat.rundir import RunDirectory

    run_dir = fresh_copy(base, "resume")
    staged = copy.deepcopy(config)
    staged["compute"] = {"scheduler": "local", "n_workers": 2, "threads_per_worker": 1, "shard_size": shard_size,
                         "shard_by": "index", "stages": ["attribution"], "device": "cpu"}
    config_path = run_dir.parent / "resume-config.json"
    config_path.write_text(json.dumps(staged))
    n_shards = -(-len_dataset(run_dir) // shard_size)
    store = ShardStore(run_dir / "shards" / "attribution")
    child = subprocess.Popen([sys.executable, "-c", CHILD_RUN.format(config=str(config_path), run_dir=str(run_dir))],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith("READY"):
        child.kill()
        raise RuntimeError(f"benchmark child did not start: {line!r}")
    t0 = time.perf_counter()
    while len(store.committed()) < n_shards // 2 and child.poll() is None:
        time.sleep(0.05)
    tree = psutil.Process(child.pid).children(recursive=True)
    for proc in [psutil.Process(child.pid), *tree]:  # the child, its nannies and workers at once
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    child.wait()
    killed_after = time.perf_counter() - t0
    committed = store.committed()
    staging_left = len(list(store.staging.glob("*"))) if store.staging.exists() else 0

    load_before = load_average()
    ctx = pipeline.context(copy.deepcopy(staged), run_dir)
    t1 = time.perf_counter()
    info = pipeline.run_stage("attribution", ctx)
    resume_s = time.perf_counter() - t1
    compute = info["compute"]
    maps = RunDirectory(run_dir).arrays("attributions").arrays
    missing = n_shards - len(committed)
    undisturbed = reference[2]
    return {
        "n_shards": n_shards, "committed_when_killed": len(committed), "staging_folders_left_by_kill": staging_left,
        "resumed_computed": compute["n_computed"], "resumed_skipped": compute["n_skipped"],
        "recomputed_beyond_missing": compute["n_computed"] - missing,
        "killed_after_s": round(killed_after, 2), "resume_wall_s": round(resume_s, 2),
        # the resumed run against part 1's undisturbed 2-worker run (+ its cluster start: run_stage starts one)
        "resume_wall_over_undisturbed": round(resume_s / (undisturbed["wall_s_per_run"] + undisturbed["cluster_start_s"]), 3),
        "expected_resume_share": round(missing / n_shards, 3),
        "result_identical": all(np.array_equal(maps[k], reference["maps_2"][k]) for k in reference["maps_2"]),
        "load_average_before": load_before, "load_average_after": load_average(),
    }


# ---------------------------------------------------------------------------------------------
# 1b. throughput of plain Dask shards, with the CPU each shard got (public APIs only)
# ---------------------------------------------------------------------------------------------
def _attribution_shard(seed: int, start: int, stop: int, n_images: int, size: int, n_steps: int) -> dict:
    """One shard of D-IG maps on a seeded model and seeded images; its wall and CPU seconds."""
    import torch

    from chanstat.attribution import attribute
    from chanstat.models import VGGClassifier

    torch.set_num_threads(1)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    model = VGGClassifier(5, 2).eval()
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_images, 5, size, size, generator=g)[start:stop]
    counterfactuals = torch.rand(n_images, 5, size, size, generator=g)[start:stop]
    setup_s = time.perf_counter() - wall0
    maps = attribute(model, images, 0, "d_ig", counterfactuals=counterfactuals, counterfactual_target=1, n_steps=n_steps)
    return {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "setup_s": setup_s,
            "checksum": float(maps.double().sum())}


def bench_dask_shards(n_images: int, shard_size: int, size: int, n_steps: int, workers=(1, 2)) -> dict:
    """1 vs 2 single-threaded worker processes on the same shards (cluster started and warmed
    up before timing). Per shard: wall and CPU seconds inside the task, so the ratio can be
    split into the cores the workers got (CPU / wall per shard) and the idle time between
    shards (workers x wall - sum of shard walls)."""
    from distributed import Client, LocalCluster

    shards = [(start, min(start + shard_size, n_images)) for start in range(0, n_images, shard_size)]
    out: dict = {"n_images": n_images, "shard_size": shard_size, "n_shards": len(shards), "size": size,
                 "n_steps": n_steps}
    for n in workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            client.run(_warm_up)
            client.gather(client.map(_attribution_shard, [0] * n, [0] * n, [1] * n, [n_images] * n, [size] * n,
                                     [2] * n, pure=False))  # warm-up: imports, allocator, oneDNN kernels
            t0 = time.perf_counter()
            futures = [client.submit(_attribution_shard, 0, a, b, n_images, size, n_steps, pure=False) for a, b in shards]
            reports = client.gather(futures)
            wall = time.perf_counter() - t0
        shard_wall = sum(r["wall_s"] for r in reports)
        shard_cpu = sum(r["cpu_s"] for r in reports)
        out[n] = {
            "wall_s": round(wall, 2), "images_per_s": round(n_images / wall, 3),
            "shard_wall_s_mean": round(shard_wall / len(reports), 3), "shard_cpu_s_mean": round(shard_cpu / len(reports), 3),
            # share of a core each busy worker got (1.0 on an idle machine)
            "core_share": round(shard_cpu / shard_wall, 3),
            # worker time not spent inside a shard: scheduling, transfers, waiting for the last shard
            "idle_s": round(n * wall - shard_wall, 2),
            "checksum": round(sum(r["checksum"] for r in reports), 3),
        }
    out["ratio_2_vs_1"] = round(out[2]["images_per_s"] / out[1]["images_per_s"], 3)
    # the ratio if every worker had a whole core: shards in sequence x CPU seconds per shard
    rounds_two = -(-len(shards) // 2)
    out["whole_core_ratio"] = round(len(shards) * out[1]["shard_cpu_s_mean"] / (rounds_two * out[2]["shard_cpu_s_mean"]), 3)
    out["same_maps"] = out[1]["checksum"] == out[2]["checksum"]
    return out


# ---------------------------------------------------------------------------------------------
# 4. streamed aggregation of a large per-cell table
# ---------------------------------------------------------------------------------------------
def generate_cells(path: Path, n_cells: int, n_features: int, row_group: int, seed: int = 0) -> dict:
    """A per-cell Parquet table written one row group at a time (never whole in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    wells = np.array([f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)])  # 384
    plates = np.array(["BR00000001", "BR00000002"])
    compartments = ("Cells", "Cytoplasm", "Nuclei")
    stains = ("DNA", "ER", "RNA", "AGP", "Mito")
    names = [f"{compartments[j % 3]}_Intensity_Feature{j:04d}_{stains[j % 5]}" for j in range(n_features)]
    writer = None
    t0 = time.perf_counter()
    try:
        for start in range(0, n_cells, row_group):
            m = min(row_group, n_cells - start)
            well = rng.integers(0, len(wells), m)
            plate = rng.integers(0, len(plates), m)
            columns = {
                "Metadata_Plate": pa.array(plates[plate]),
                "Metadata_Well": pa.array(wells[well]),
                "Metadata_Site": pa.array(rng.integers(1, 10, m)),
                "Metadata_Treatment": pa.array(np.where(well % 2 == 0, "DMSO", "compound")),
            }
            values = rng.standard_normal((m, n_features), dtype=np.float32)
            for j, name in enumerate(names):
                columns[name] = pa.array(values[:, j])
            table = pa.table(columns)
            if writer is None:  # dictionary pages for the metadata only (random floats do not repeat)
                writer = pq.ParquetWriter(path, table.schema, use_dictionary=[n for n in columns if n.startswith("Metadata_")])
            writer.write_table(table, row_group_size=row_group)
            del values, table, columns
    finally:
        if writer is not None:
            writer.close()
    return {"path": str(path), "bytes": path.stat().st_size, "generate_s": round(time.perf_counter() - t0, 1)}


CHILD_AGGREGATE = textwrap.dedent(
    """
    import json, resource, time
    from chanstat.cellprofiler.streaming import aggregate_wells_streaming
    t0 = time.perf_counter()
    wells = aggregate_wells_streaming({path!r}, memory_limit={limit!r})
    print(json.dumps({{"wall_s": time.perf_counter() - t0, "rows": len(wells), "columns": wells.shape[1],
                       "cells": int(wells["Metadata_n_objects"].sum()),
                       "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
    """
)


CHILD_READ = textwrap.dedent(
    """
    import json, resource, time
    from chanstat.cellprofiler import read
    t0 = time.perf_counter()
    wells = read({path!r}, aggregate="well")
    print(json.dumps({{"wall_s": time.perf_counter() - t0, "rows": len(wells),
                       "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
    """
)


def peak_rss_of(code: str, interval: float = 0.02) -> tuple[dict, int]:
    """Run ``code`` in a child Python; (its JSON output, peak RSS sampled by psutil)."""
    import psutil

    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(interval)
    out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"aggregation child failed ({child.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), peak


def bench_aggregation(n_cells: int, n_features: int, memory_limit: str, row_group: int, check: bool,
                      compare_read: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="chanstat-scale-") as tmp:
        path = Path(tmp) / "cells.parquet"
        generated = generate_cells(path, n_cells, n_features, row_group)
        result, peak = peak_rss_of(CHILD_AGGREGATE.format(path=str(path), limit=memory_limit))
        out = {
            "n_cells": n_cells,
            "n_features": n_features,
            "parquet_gb": round(generated["bytes"] / 1e9, 2),
            "generate_s": generated["generate_s"],
            "memory_limit": memory_limit,
            "aggregate_s": round(result["wall_s"], 1),
            "wells": result["rows"],
            "peak_rss_gb_psutil": round(peak / 1e9, 3),
            "peak_rss_gb_getrusage": round(result["ru_maxrss_bytes"] / 1e9, 3),
            "target_gb": 2.0,
        }
        if compare_read:  # chanstat.cellprofiler.read(path, aggregate="well"): column chunks read whole
            other, other_peak = peak_rss_of(CHILD_READ.format(path=str(path)))
            out["read_aggregate_well_s"] = round(other["wall_s"], 1)
            out["read_aggregate_well_peak_rss_gb"] = round(max(other_peak, other["ru_maxrss_bytes"]) / 1e9, 3)
        if check:  # small sizes only: the in-memory path must fit
            import pandas as pd

            from chanstat.cellprofiler import aggregate_wells, read
            from chanstat.cellprofiler.streaming import aggregate_wells_streaming

            pd.testing.assert_frame_equal(aggregate_wells_streaming(path, memory_limit=memory_limit),
                                          aggregate_wells(read(path)), check_exact=True)
            out["equals_in_memory"] = True
        return out


# ---------------------------------------------------------------------------------------------
def print_throughput(t: dict, load: list[float]) -> None:
    one, two, f = t[1], t[2], t["factors"]
    print(f"[1] d_ig attribution via run_parts + PartTask, {one['n_images'] // one['runs']} images in {one['n_shards']} "
          f"shards of {t['shard_size']}, {t['repeats']} runs each (load average {load[0]} on {os.cpu_count()} cores): "
          f"2 vs 1 worker throughput ratio {t['ratio_2_vs_1']} (per pair of runs {t['ratio_per_pair']}) = "
          f"{f['workers']} x {f['cpu_per_image_1_over_2']} (CPU per image, 1/2) x {f['core_share_2_over_1']} "
          f"(core share, 2/1) x {f['busy_share_2_over_1']} (busy share, 2/1); same maps: {t['same_maps']}", flush=True)
    for n, r in ((1, one), (2, two)):
        others = (f"; other processes used {round(r['other_processes_cpu_s'] / r['machine_capacity_s'], 2)} of the "
                  f"machine's CPU, steal {r['steal_s']} s") if "other_processes_cpu_s" in r else ""
        print(f"    {n} worker(s): CPU s per shard {r['shard_cpu_s_mean']} (wall {r['shard_wall_s_mean']}), "
              f"core share {r['core_share']}, busy share {r['busy_share']} (idle {r['idle_worker_s']} worker-s, "
              f"client reading shards {r['read_s']} s){others}; start-up kept out of the timing: cluster "
              f"{r['cluster_start_s']} s + warm-up {r['warm_up_s']} s = "
              f"{round((r['cluster_start_s'] + r['warm_up_s']) / r['shard_wall_s_mean'], 2)} mean shards", flush=True)
    print(f"    with a whole core per worker and no idle time (CPU seconds alone): {t['whole_core_ratio']}", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--cells", type=int, default=None, help="cells in the generated table (default 1,000,000)")
    parser.add_argument("--features", type=int, default=None, help="features in the generated table (default 1,000)")
    parser.add_argument("--memory-limit", default="512MB", help="aggregate_wells_streaming memory_limit")
    parser.add_argument("--shard-size", type=int, default=None, help="images per shard (default 16; quick 8)")
    parser.add_argument("--skip-workers", action="store_true", help="skip parts 1-3 (Dask)")
    parser.add_argument("--repeats", type=int, default=2, help="part 1: timed runs per number of workers (default 2)")
    parser.add_argument("--throughput-only", action="store_true", help="of parts 1-3 run part 1 only")
    parser.add_argument("--dask-shards", action="store_true",
                        help="only part 1b: 1 vs 2 Dask workers on plain D-IG shards, with CPU seconds per shard")
    parser.add_argument("--images", type=int, default=64, help="part 1b: images (default 64)")
    parser.add_argument("--skip-aggregation", action="store_true", help="skip part 4")
    parser.add_argument("--compare-read", action="store_true",
                        help="also measure chanstat.cellprofiler.read(path, aggregate='well') on the same table")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    results: dict = {"quick": args.quick, "cpu_count": os.cpu_count(), "load_average_start": load_average()}
    if args.dask_shards:
        shard_size = args.shard_size or (4 if args.quick else 8)
        shards = bench_dask_shards(args.images if not args.quick else 16, shard_size, 32 if args.quick else 64,
                                   8 if args.quick else 32)
        results["dask_shards"] = shards
        one, two = shards[1], shards[2]
        print(f"[1b] d_ig, {shards['n_images']} images of {shards['size']}x{shards['size']}, {shards['n_shards']} shards "
              f"(load average before: {results['load_average_start'][0]} on {os.cpu_count()} cores): "
              f"ratio 2 vs 1 worker {shards['ratio_2_vs_1']}; per shard {one['shard_cpu_s_mean']} CPU s "
              f"(1 worker) vs {two['shard_cpu_s_mean']} CPU s (2 workers); core share "
              f"{one['core_share']} vs {two['core_share']}; idle worker-seconds {one['idle_s']} vs {two['idle_s']}; "
              f"same maps: {shards['same_maps']}; ratio with a whole core per worker (from CPU seconds): "
              f"{shards['whole_core_ratio']}", flush=True)
        results["load_average_end"] = load_average()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return results
    if not args.skip_workers:
        config = make_config(args.quick)
        shard_size = args.shard_size or (8 if args.quick else 16)
        with tempfile.TemporaryDirectory(prefix="chanstat-scale-") as tmp:
            base = build_run_dir(Path(tmp), config).out
            throughput = bench_throughput(base, config, shard_size, repeats=args.repeats)
            results["throughput"] = {str(k): v for k, v in throughput.items() if not str(k).startswith("maps_")}
            print_throughput(throughput, results["load_average_start"])
            if not args.throughput_only:
                kill = bench_worker_kill(base, config, shard_size, throughput)
                results["worker_killed"] = kill
                print(f"[2] worker killed after {kill['killed'].get('committed_at_kill')} of {kill['n_shards']} shards: "
                      f"wall {kill['wall_ratio_vs_undisturbed']} x the undisturbed 2-worker run (lost "
                      f"{kill['time_lost_in_shards']} mean shards; " + (
                          f"replacement worker's first shard {kill['restart_s']} s after the kill" if kill["restart_s"]
                          is not None else "the replacement worker ran no shard: the survivor finished first") +
                      f"; core share {kill['core_share']} vs {kill['undisturbed_core_share']} undisturbed, CPU s per "
                      f"shard {kill['shard_cpu_s_mean']} vs {kill['undisturbed_shard_cpu_s_mean']}, busy share "
                      f"{kill['busy_share']}); shards run more than once: "
                      f"{kill['shards_run_more_than_once'] or 'none'}; result identical: {kill['result_identical']}; "
                      f"load {kill['load_average_before'][0]} -> {kill['load_average_after'][0]}", flush=True)
                resume = bench_resume(base, config, shard_size, throughput)
                results["run_killed_and_resumed"] = resume
                print(f"[3] run_stage killed after {resume['committed_when_killed']} of {resume['n_shards']} shards "
                      f"(staging folders left: {resume['staging_folders_left_by_kill']}); resumed run computed "
                      f"{resume['resumed_computed']}, skipped {resume['resumed_skipped']} (recomputed beyond the "
                      f"missing: {resume['recomputed_beyond_missing']}); resumed wall {resume['resume_wall_over_undisturbed']}"
                      f" x an undisturbed run incl. cluster start (missing share {resume['expected_resume_share']}); "
                      f"result identical: {resume['result_identical']}; load {resume['load_average_before'][0]} -> "
                      f"{resume['load_average_after'][0]}", flush=True)
    if not args.skip_aggregation:
        n_cells = args.cells or (50_000 if args.quick else 1_000_000)
        n_features = args.features or (200 if args.quick else 1_000)
        agg = bench_aggregation(n_cells, n_features, args.memory_limit, row_group=25_000 if args.quick else 50_000,
                                check=args.quick, compare_read=args.compare_read)
        results["aggregation"] = agg
        print(f"[4] streamed well medians of {agg['n_cells']:,} cells x {agg['n_features']:,} features "
              f"({agg['parquet_gb']} GB Parquet, {agg['wells']} wells, memory_limit {agg['memory_limit']}): peak RSS "
              f"{agg['peak_rss_gb_psutil']} GB (psutil) / {agg['peak_rss_gb_getrusage']} GB (getrusage), "
              f"target < {agg['target_gb']} GB" + ("; equals in-memory" if agg.get("equals_in_memory") else ""),
              flush=True)
        if "read_aggregate_well_s" in agg:
            print(f"    read(path, aggregate='well') on the same table: "
                  f"{round(agg['read_aggregate_well_s'] / max(agg['aggregate_s'], 1e-9), 2)} x the streamed time, "
                  f"peak RSS {agg['read_aggregate_well_peak_rss_gb']} GB", flush=True)
    results["load_average_end"] = load_average()
    print(f"load average (1, 5, 15 min): start {results['load_average_start']}, end {results['load_average_end']} "
          f"on {os.cpu_count()} cores", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
