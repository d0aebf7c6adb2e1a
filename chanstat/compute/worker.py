"""What runs on a worker: its device, the model loaded once, and slices of the run directory.

Workers never receive images or models through the scheduler. They read their shard's
images from the run directory (``dataset.zarr`` + ``meta.parquet``, written by the data
stage) and load the model from ``model.pt`` (or the user's model named in ``[model]``) the
first time a task needs it; the loaded model is kept for the worker's later tasks.

The model cache is per worker *thread* (``threading.local``): with one thread per worker
(the default) that is once per worker process, and threads of one process never share a
model, whose hooks (DeepLift, guided backprop) are not thread-safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: worker address -> device string, filled by :class:`~chanstat.compute.dask_setup.WorkerSetup`.
_WORKER_DEVICES: dict[str, str] = {}
_LOCAL = threading.local()


def worker_device(default: str | None = "auto"):
    """The torch device for a task here: the one :class:`WorkerSetup` gave this worker, else ``default``."""
    from chanstat.runtime import resolve_device

    spec = default
    if "distributed" in sys.modules:  # without Dask loaded this cannot be a Dask worker
        from distributed import get_worker

        try:
            spec = _WORKER_DEVICES.get(get_worker().address, default)
        except ValueError:  # not inside a Dask worker ("sync" scheduler)
            pass
    return resolve_device(spec)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes, or of every file under a folder."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


def checkpoint_digest(path: str | os.PathLike) -> str:
    """Digest of a chanstat checkpoint's *content* (architecture, weights, channels, classes).

    Not of the file's bytes: ``torch.save`` writes a random serialization id, so the same
    model saved twice (a resumed run re-running the model stage) gives different files.
    """
    import torch

    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for key in sorted(k for k in blob if k != "state_dict"):
        h.update(f"{key}={json.dumps(blob[key], sort_keys=True, default=str)}".encode())
    for name, tensor in sorted(blob.get("state_dict", {}).items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    """Where workers load the classifier from (small and picklable; the model is not sent).

    Exactly one of ``checkpoint`` (a chanstat ``model.pt``) or ``source`` (``"pkg.mod:Class"``
    or a TorchScript file, as in ``[model] source``) is set. ``digest`` identifies the
    weights: it is part of the shard fingerprint and of the cache key.
    """

    checkpoint: str | None = None
    source: str | None = None
    weights: str | None = None
    kwargs_json: str = "{}"
    digest: str = ""

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.source is None):
            raise ValueError("ModelSource needs exactly one of checkpoint= or source=")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "ModelSource":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model checkpoint not found: {path}")
        return cls(checkpoint=str(path.resolve()), digest=checkpoint_digest(path))

    @classmethod
    def from_user(cls, source: str, weights: str | os.PathLike | None = None, kwargs: dict | None = None) -> "ModelSource":
        parts = [p for p in (source if Path(source).exists() else None, weights) if p]
        digest = hashlib.sha256("".join(file_digest(p) for p in parts).encode() + source.encode()).hexdigest()[:16]
        return cls(source=str(source), weights=str(weights) if weights else None,
                   kwargs_json=json.dumps(kwargs or {}, sort_keys=True), digest=digest)

    def load(self, device) -> Any:
        """The model in eval mode on ``device``; loaded once per worker thread and kept."""
        cache = getattr(_LOCAL, "models", None)
        if cache is None:
            cache = _LOCAL.models = {}
        key = (self, str(device))
        if key not in cache:
            cache.clear()  # one model per thread: a new run's model replaces the old one
            cache[key] = self._load(device)
            counts = getattr(_LOCAL, "load_count", 0)
            _LOCAL.load_count = counts + 1
        return cache[key]

    def _load(self, device):
        from chanstat.models.checkpoint import load_checkpoint, load_user_model

        if self.checkpoint is not None:
            return load_checkpoint(self.checkpoint, device=device).model
        return load_user_model(self.source, weights=self.weights, kwargs=json.loads(self.kwargs_json), device=device)


def model_loads_here() -> int:
    """How many times this thread loaded a model (for tests of the once-per-worker cache)."""
    return int(getattr(_LOCAL, "load_count", 0))


# ---------------------------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------------------------
DATASET_FILE = "dataset.zarr"
META_FILE = "meta.parquet"
_DATASET_ARRAYS = ("images", "labels", "counterfactuals", "counterfactual_labels", "signal_masks")
_GROUP_ATTRS_NOT_META = ("channels", "classes", "counterfactual_provider")


def read_rows(array, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` (sorted, int) of a Zarr array: one region read when contiguous."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and indices[-1] - indices[0] + 1 == indices.size and (np.diff(indices) == 1).all():
        return np.asarray(array[int(indices[0]) : int(indices[-1]) + 1])
    return np.asarray(array.get_orthogonal_selection((indices,) + (slice(None),) * (array.ndim - 1)))


def read_dataset(run_dir: str | os.PathLike, indices: np.ndarray):
    """The images ``indices`` of a run directory as an :class:`~chanstat.data.ImageSet`.

    Reads ``dataset.zarr`` (images, labels, counterfactuals, signal masks, ``objects_*``) and
    ``meta.parquet`` (row i = image i) as the data and counterfactual stages wrote them;
    equal to ``ctx.dataset.subset(indices)`` of the run that wrote them.
    """
    import zarr

    from chanstat.data import ImageSet

    run_dir = Path(run_dir)
    path = run_dir / DATASET_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: sharded stages read the images the data stage wrote there")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    present = set(group.array_keys())
    arrays = {name: read_rows(group[name], indices) for name in _DATASET_ARRAYS if name in present}
    objects = {name[len("objects_"):]: read_rows(group[name], indices) for name in sorted(present) if name.startswith("objects_")}
    import pandas as pd

    meta = pd.read_parquet(run_dir / META_FILE)
    if len(meta) != group["images"].shape[0]:
        raise ValueError(f"{run_dir / META_FILE} has {len(meta)} rows but {path} holds {group['images'].shape[0]} images")
    meta = meta.drop(columns=["sample"], errors="ignore").iloc[np.asarray(indices)].reset_index(drop=True)
    meta.attrs.update({k: v for k, v in attrs.items() if k not in _GROUP_ATTRS_NOT_META})
    return ImageSet(
        images=arrays["images"],
        channels=list(attrs["channels"]),
        labels=arrays["labels"],
        classes=list(attrs["classes"]),
        meta=meta,
        counterfactuals=arrays.get("counterfactuals"),
        counterfactual_labels=arrays.get("counterfactual_labels"),
        signal_masks=arrays.get("signal_masks"),
        objects=objects or None,
    )


def sampled_digest(path: str | os.PathLike, names: Sequence[str] | None = None, n_rows: int = 32) -> str | None:
    """A cheap fingerprint of a Zarr group's content: shapes, dtypes and ``n_rows`` evenly spaced rows.

    Used to notice that an input of a sharded stage changed between an interrupted run and its
    re-run (other counterfactuals, other maps) without reading the whole store. None if absent.
    """
    import zarr

    path = Path(path)
    if not path.exists():
        return None
    group = zarr.open_group(str(path), mode="r")
    h = hashlib.sha256()
    for name in sorted(group.array_keys()) if names is None else [n for n in names if n in group]:
        arr = group[name]
        h.update(f"{name}:{arr.shape}:{arr.dtype}".encode())
        if arr.ndim and arr.shape[0]:
            rows = np.unique(np.linspace(0, arr.shape[0] - 1, min(n_rows, arr.shape[0])).round().astype(np.int64))
            h.update(np.ascontiguousarray(read_rows(arr, rows)).tobytes())
    return h.hexdigest()[:16]


def read_artifact(run_dir: str | os.PathLike, name: str, indices: np.ndarray) -> Any:
    """The rows ``indices`` of an earlier stage's output, as the stage left it in ``ctx.artifacts``.

    ``<name>.zarr`` -> {array name: rows}; ``<name>.parquet`` -> the rows whose ``sample``
    is in ``indices``, with ``sample`` renumbered 0..n-1 in the order of ``indices``.
    Returns None when the run directory has neither.
    """
    import pandas as pd
    import zarr

    run_dir = Path(run_dir)
    indices = np.asarray(indices, dtype=np.int64)
    if (run_dir / f"{name}.zarr").exists():
        group = zarr.open_group(str(run_dir / f"{name}.zarr"), mode="r")
        keys = sorted(group.array_keys())
        written = group.attrs.get("methods")  # the attribution stage's own order of methods
        if isinstance(written, list) and sorted(written) == keys:
            keys = list(written)
        return {key: read_rows(group[key], indices) for key in keys}
    if (run_dir / f"{name}.parquet").exists():
        table = pd.read_parquet(run_dir / f"{name}.parquet", filters=[("sample", "in", indices.tolist())])
        local = pd.Series(np.arange(indices.size), index=indices)
        table["sample"] = local.loc[table["sample"].to_numpy()].to_numpy()
        return table.reset_index(drop=True)
    return None
