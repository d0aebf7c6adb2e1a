"""Device choice, seeding and version capture shared by the torch stages."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

TRACKED_PACKAGES = (
    "chanstat",
    "torch",
    "captum",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "zarr",
    "statsmodels",
    "pingouin",
    "scikit-image",
    "tifffile",
    "imagecodecs",
    "cp-measure",
    "matplotlib",
    "jupytext",
    "nbconvert",
    "typst",
    "dask",
    "distributed",
    "duckdb",
)


def resolve_device(spec: str | None = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} was asked for but CUDA is not available")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def device_description(device) -> dict:
    import torch

    info = {
        "device": str(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def available_cores(idle_only: bool = True, sample_seconds: float = 0.1) -> int:
    """CPU cores this process may use: its affinity mask (else all cores), less the cores other
    processes keep busy when ``idle_only``; at least 1.

    On a shared machine more torch threads than idle cores is much slower than fewer: every
    parallel region waits for its slowest thread, and a descheduled thread stalls them all
    (measured here: a small generator step 20-40x slower with 2 threads than with 1 at a load
    of 8 on 2 cores).

    Busy cores are the smaller of the 1-minute load average and the cores others used during a
    ``sample_seconds`` sample of ``/proc/stat`` less this process's own CPU time: the load average
    also counts this process, so after a busy stage (training a classifier) it alone would leave
    a 2-core laptop one thread.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = max(1, os.cpu_count() or 1)
    if idle_only:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
        others = _sample_others_busy(sample_seconds)
        if others is not None:
            busy = min(busy, others)
        cores = max(1, min(cores, int(cores - busy + 0.5)))
    return cores


def _cpu_counters() -> tuple[float, float] | None:
    """(busy, total) clock ticks of all cores since boot, from ``/proc/stat``; None without it."""
    try:
        with open("/proc/stat") as handle:
            values = [float(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(values) < 5:
        return None
    total = sum(values)
    return total - values[3] - values[4], total  # idle and iowait are not busy


def others_busy_cores(
    before: tuple[float, float], after: tuple[float, float], own_cpu_seconds: float, seconds: float, n_cpu: int
) -> float:
    """Cores other processes kept busy between two ``/proc/stat`` readings.

    Parameters
    ----------
    before, after : (busy, total) clock ticks of all cores (:func:`_cpu_counters`).
    own_cpu_seconds : this process's CPU time (user + system) between the readings, in seconds.
    seconds : wall time between the readings, in seconds.
    n_cpu : cores counted in ``/proc/stat``.
    """
    ticks = after[1] - before[1]
    if ticks <= 0 or seconds <= 0:
        return 0.0
    busy = (after[0] - before[0]) / ticks * n_cpu
    return max(0.0, busy - own_cpu_seconds / seconds)


def _sample_others_busy(seconds: float) -> float | None:
    if seconds <= 0:
        return None
    import time

    start, own_start, wall_start = _cpu_counters(), sum(os.times()[:2]), time.monotonic()
    if start is None:
        return None
    time.sleep(seconds)
    end, own_end, wall_end = _cpu_counters(), sum(os.times()[:2]), time.monotonic()
    if end is None:
        return None
    return others_busy_cores(start, end, own_end - own_start, wall_end - wall_start, os.cpu_count() or 1)


def use_available_cores(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default: the idle cores, :func:`available_cores`);
    returns the count.

    torch's own default counts the machine's cores, which overcommits a process limited to
    fewer by its affinity mask (containers, ``taskset``, batch schedulers) or sharing them.
    """
    import torch

    count = int(threads) if threads else available_cores()
    if count < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    torch.set_num_threads(count)
    return count
