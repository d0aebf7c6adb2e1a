"""Scaling past one process: Dask workers, resumed runs, per-cell tables larger than memory.

Prints, in one run:

1. **Throughput, 1 vs 2 local workers** -- the attribution stage (``d_ig``) on the synthetic
   set, sharded on a ``LocalCluster`` of 1 and then 2 single-threaded worker processes (the
   cluster is started and warmed up before timing). Ratio = images/s with 2 / with 1. Also
   the CPU time the workers got (psutil): on a shared machine the cores actually obtained,
   not the code, bound the ratio; images per worker-CPU-second shows the sharding overhead.
2. **Worker killed mid-way** -- the same 2-worker run; when half the shards are committed one
   worker process is killed (SIGKILL). Dask's nanny restarts it and reschedules its task.
   Reported: time lost against the undisturbed run, and which shards ran more than once
   (target: only the shard that was in flight on the killed worker).
3. **Whole run killed, then resumed** -- a separate process runs the sharded stage; it is
   killed (with its workers) when half the shards are committed, and the stage is run again.
   Reported: shards the resumed run computed (target: exactly the uncommitted ones) and the time
   lost = killed run + resumed run - undisturbed run.
1b. **Plain Dask shards, 1 vs 2 workers** (``--dask-shards``, only this part) -- D-IG on 64
   random 5 x 64 x 64 images in 8 shards, each shard's wall and CPU seconds measured inside
   the task: the ratio, the share of a core each worker got, the idle worker time between
   shards, and the ratio a whole core per worker would give. Uses only ``distributed`` and
   ``chanstat.attribution`` (parts 1-3 use ``chanstat.compute`` and follow its API).
4. **Peak memory of streamed well aggregation** -- a per-cell Parquet table of 1,000,000 cells
   x 1,000 float32 features (768 wells) is generated in row groups into a temporary folder;
   ``aggregate_wells_streaming`` runs in a child process whose resident memory is sampled
   with psutil every 20 ms (and read from ``getrusage`` at its end). Target: peak RSS < 2 GB.

    python analyses/benchmarks/scale.py            # full size (about 10 minutes on 2 cores)
    python analyses/benchmarks/scale.py --quick    # small sizes, about a minute
    python analyses/benchmarks/scale.py --skip-aggregation --json out.json
    python analyses/benchmarks/scale.py --dask-shards           # part 1b only (a few minutes)

Timings depend on the machine and its load; the ratio and the recomputed shards are the
numbers to compare.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


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


def build_run_dir(root: Path, config: dict) -> Path:
    """Data stage + an (untrained) reference model: all a sharded attribution stage needs."""
    import torch

    from chanstat.data import stage as data_stage
    from chanstat.models import VGGClassifier, save_checkpoint
    from chanstat.pipeline import RunContext

    out = root / "base"
    out.mkdir(parents=True)
    ctx = RunContext(config=copy.deepcopy(config), out=out, seed=0, device=torch.device("cpu"), progress=False)
    data_stage.run(ctx)
    torch.manual_seed(0)
    model = VGGClassifier(len(ctx.dataset.channels), len(ctx.dataset.classes)).eval()
    save_checkpoint(out / "model.pt", model, ctx.dataset.channels, ctx.dataset.classes)
    (out / "config.json").write_text(json.dumps(config))
    return out


def fresh_copy(base: Path, name: str) -> Path:
    target = base.parent / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target


def local_client(n_workers: int):
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


def compute_config(shard_size: int) -> dict:
    return {"scheduler": "local", "shard_by": "index", "shard_size": shard_size, "retries": 2}


# ---------------------------------------------------------------------------------------------
# 1. throughput
# ---------------------------------------------------------------------------------------------
def bench_throughput(base: Path, config: dict, shard_size: int, workers=(1, 2)) -> dict:
    import psutil

    from chanstat.compute import load_context, run_sharded

    results = {}
    for n in workers:
        cluster, client = local_client(n)
        try:
            ctx = load_context(fresh_copy(base, f"throughput-{n}"), config=copy.deepcopy(config), device="cpu")
            workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
            cpu0 = sum(sum(w.cpu_times()[:2]) for w in workers)
            t0 = time.perf_counter()
            info = run_sharded(ctx, "attribution", config=compute_config(shard_size), client=client)
            wall = time.perf_counter() - t0
            cpu = sum(sum(w.cpu_times()[:2]) for w in workers) - cpu0
        finally:
            client.close()
            cluster.close()
        n_images = len(ctx.dataset)
        results[n] = {"wall_s": round(wall, 2), "images_per_s": round(n_images / wall, 2),
                      "n_images": n_images, "n_shards": info["compute"]["n_shards"],
                      # CPU the workers got: on a shared machine this, not the code, caps the ratio
                      "worker_cpu_s": round(cpu, 1), "cores_used": round(cpu / wall, 2),
                      "images_per_cpu_s": round(n_images / cpu, 2) if cpu > 0 else None}
    results["ratio_2_vs_1"] = round(results[2]["images_per_s"] / results[1]["images_per_s"], 2)
    return results


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
# 2. a worker killed mid-way
# ---------------------------------------------------------------------------------------------
def bench_worker_kill(base: Path, config: dict, shard_size: int, undisturbed_s: float) -> dict:
    from chanstat.compute import ShardStore, load_context, run_sharded

    run_dir = fresh_copy(base, "worker-kill")
    ctx = load_context(run_dir, config=copy.deepcopy(config), device="cpu")
    n_shards = -(-len(ctx.dataset) // shard_size)
    store = ShardStore(run_dir / "shards" / "attribution")
    cluster, client = local_client(2)
    killed = {}

    def killer():
        while len(store.committed()) < n_shards // 2:
            time.sleep(0.05)
        pids = client.run(os.getpid)
        address, pid = sorted(pids.items())[0]
        killed.update(address=address, pid=pid, committed_at_kill=len(store.committed()), at_s=time.perf_counter() - t0)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    try:
        t0 = time.perf_counter()
        thread.start()
        info = run_sharded(ctx, "attribution", config=compute_config(shard_size), client=client)
        wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    from chanstat.io import read_arrays

    reference = read_arrays(base.parent / "throughput-2" / "attributions.zarr", ["d_ig"])[0]["d_ig"]
    same = bool(np.array_equal(ctx.artifacts["attributions"]["d_ig"], reference))
    return {
        "wall_s": round(wall, 2),
        "undisturbed_wall_s": round(undisturbed_s, 2),
        "time_lost_s": round(wall - undisturbed_s, 2),
        "n_shards": n_shards,
        "killed": killed,
        "shards_run_more_than_once": info["compute"]["attempts"],
        # on a shared machine the wall-clock difference is noisy; the bound that does not
        # depend on load: the re-run shards times the mean shard compute time
        "mean_shard_s": round(info["compute"]["shard_wall_s_total"] / max(1, info["compute"]["n_computed"]), 2),
        "result_identical": same,
    }


# ---------------------------------------------------------------------------------------------
# 3. the whole run killed, then resumed
# ---------------------------------------------------------------------------------------------
CHILD_RUN = textwrap.dedent(
    """
    import json, sys, time
    from chanstat.compute import load_context, run_sharded
    sys.path.insert(0, {bench_dir!r})
    from scale import local_client, compute_config
    config = json.loads(open({config!r}).read())
    ctx = load_context({run_dir!r}, config=config, device="cpu")
    cluster, client = local_client(2)
    print("READY", flush=True)
    run_sharded(ctx, "attribution", config=compute_config({shard_size}), client=client)
    print("FINISHED", flush=True)
    """
)


def bench_resume(base: Path, config: dict, shard_size: int, undisturbed_s: float) -> dict:
    import psutil

    from chanstat.compute import ShardStore, load_context, run_sharded

    run_dir = fresh_copy(base, "resume")
    n_images = len(load_context(run_dir, config=copy.deepcopy(config), device="cpu").dataset)
    n_shards = -(-n_images // shard_size)
    store = ShardStore(run_dir / "shards" / "attribution")
    code = CHILD_RUN.format(bench_dir=str(Path(__file__).resolve().parent), config=str(base / "config.json"),
                            run_dir=str(run_dir), shard_size=shard_size)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith("READY"):
        child.kill()
        raise RuntimeError(f"benchmark child did not start: {line!r}")
    t0 = time.perf_counter()
    while len(store.committed()) < n_shards // 2 and child.poll() is None:
        time.sleep(0.05)
    tree = [child.pid] + [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
    for pid in tree:  # the child and the worker processes it started
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child.wait()
    killed_after = time.perf_counter() - t0
    committed = store.committed()
    staging_left = len(list(store.staging.glob("*"))) if store.staging.exists() else 0

    cluster, client = local_client(2)
    try:
        ctx = load_context(run_dir, config=copy.deepcopy(config), device="cpu")
        t1 = time.perf_counter()
        info = run_sharded(ctx, "attribution", config=compute_config(shard_size), client=client)
        resume_s = time.perf_counter() - t1
    finally:
        client.close()
        cluster.close()
    missing = n_shards - len(committed)
    return {
        "n_shards": n_shards,
        "committed_when_killed": len(committed),
        "staging_folders_left_by_kill": staging_left,
        "killed_after_s": round(killed_after, 2),
        "resumed_computed": info["compute"]["n_computed"],
        "resumed_skipped": info["compute"]["n_skipped"],
        "recomputed_beyond_missing": info["compute"]["n_computed"] - missing,
        "resume_wall_s": round(resume_s, 2),
        "mean_shard_s": round(info["compute"]["shard_wall_s_total"] / max(1, info["compute"]["n_computed"]), 2),
        "undisturbed_wall_s": round(undisturbed_s, 2),
        "time_lost_s": round(killed_after + resume_s - undisturbed_s, 2),
    }


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
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--cells", type=int, default=None, help="cells in the generated table (default 1,000,000)")
    parser.add_argument("--features", type=int, default=None, help="features in the generated table (default 1,000)")
    parser.add_argument("--memory-limit", default="512MB", help="aggregate_wells_streaming memory_limit")
    parser.add_argument("--shard-size", type=int, default=None, help="images per shard (default 16; quick 4)")
    parser.add_argument("--skip-workers", action="store_true", help="skip parts 1-3 (Dask)")
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
    results: dict = {"quick": args.quick, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    if args.dask_shards:
        shard_size = args.shard_size or (4 if args.quick else 8)
        shards = bench_dask_shards(args.images if not args.quick else 16, shard_size, 32 if args.quick else 64,
                                   8 if args.quick else 32)
        results["dask_shards"] = shards
        one, two = shards[1], shards[2]
        print(f"[1b] d_ig, {shards['n_images']} images of {shards['size']}x{shards['size']}, {shards['n_shards']} shards "
              f"(load average before: {results['load_average'][0]:.1f} on {os.cpu_count()} cores): "
              f"1 worker {one['images_per_s']} img/s, 2 workers {two['images_per_s']} img/s, ratio "
              f"{shards['ratio_2_vs_1']}; per shard {one['shard_wall_s_mean']} s wall / {one['shard_cpu_s_mean']} s CPU "
              f"(1 worker) vs {two['shard_wall_s_mean']} s / {two['shard_cpu_s_mean']} s (2 workers); core share "
              f"{one['core_share']} vs {two['core_share']}; idle worker-seconds {one['idle_s']} vs {two['idle_s']}; "
              f"same maps: {shards['same_maps']}; ratio with a whole core per worker (from CPU seconds): "
              f"{shards['whole_core_ratio']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return results
    if not args.skip_workers:
        config = make_config(args.quick)
        shard_size = args.shard_size or (4 if args.quick else 16)
        with tempfile.TemporaryDirectory(prefix="chanstat-scale-") as tmp:
            base = build_run_dir(Path(tmp), config)
            throughput = bench_throughput(base, config, shard_size)
            results["throughput"] = throughput
            print(f"[1] d_ig attribution, {throughput[1]['n_images']} images, {throughput[1]['n_shards']} shards: "
                  f"1 worker {throughput[1]['images_per_s']} img/s ({throughput[1]['wall_s']} s), "
                  f"2 workers {throughput[2]['images_per_s']} img/s ({throughput[2]['wall_s']} s); "
                  f"ratio {throughput['ratio_2_vs_1']} (cores the workers got: {throughput[1]['cores_used']} vs "
                  f"{throughput[2]['cores_used']}; img per worker-CPU-second {throughput[1]['images_per_cpu_s']} vs "
                  f"{throughput[2]['images_per_cpu_s']})", flush=True)
            kill = bench_worker_kill(base, config, shard_size, throughput[2]["wall_s"])
            results["worker_killed"] = kill
            print(f"[2] worker killed after {kill['killed'].get('committed_at_kill')} of {kill['n_shards']} shards: "
                  f"wall {kill['wall_s']} s vs {kill['undisturbed_wall_s']} s undisturbed (lost {kill['time_lost_s']} s); "
                  f"shards run more than once: {kill['shards_run_more_than_once'] or 'none'} "
                  f"(mean shard {kill['mean_shard_s']} s); "
                  f"result identical: {kill['result_identical']}", flush=True)
            resume = bench_resume(base, config, shard_size, throughput[2]["wall_s"])
            results["run_killed_and_resumed"] = resume
            print(f"[3] run killed after {resume['committed_when_killed']} of {resume['n_shards']} shards "
                  f"({resume['killed_after_s']} s); resumed run computed {resume['resumed_computed']} "
                  f"(skipped {resume['resumed_skipped']}, recomputed beyond the missing: "
                  f"{resume['recomputed_beyond_missing']}) in {resume['resume_wall_s']} s (mean shard "
                  f"{resume['mean_shard_s']} s); "
                  f"time lost {resume['time_lost_s']} s", flush=True)
    if not args.skip_aggregation:
        n_cells = args.cells or (50_000 if args.quick else 1_000_000)
        n_features = args.features or (200 if args.quick else 1_000)
        agg = bench_aggregation(n_cells, n_features, args.memory_limit, row_group=25_000 if args.quick else 50_000,
                                check=args.quick, compare_read=args.compare_read)
        results["aggregation"] = agg
        print(f"[4] streamed well medians of {agg['n_cells']:,} cells x {agg['n_features']:,} features "
              f"({agg['parquet_gb']} GB Parquet, {agg['wells']} wells): {agg['aggregate_s']} s, peak RSS "
              f"{agg['peak_rss_gb_psutil']} GB (psutil) / {agg['peak_rss_gb_getrusage']} GB (getrusage), "
              f"target < {agg['target_gb']} GB" + ("; equals in-memory" if agg.get("equals_in_memory") else ""),
              flush=True)
        if "read_aggregate_well_s" in agg:
            print(f"    read(path, aggregate='well') on the same table: {agg['read_aggregate_well_s']} s, "
                  f"peak RSS {agg['read_aggregate_well_peak_rss_gb']} GB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
