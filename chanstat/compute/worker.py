"""What runs on a worker: its device and the model, loaded once.

Workers never receive images or models through the scheduler. They read their shard's
images from the run directory and load the model from ``model.pt`` (or the user's model
named in ``[model]``) the first time a task needs it; the loaded model is kept for the
worker's later tasks.

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
from typing import Any

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
    """Where workers rebuild the classifier from (small and picklable; the model is not sent).

    It holds what :func:`chanstat.context.model_spec` says about the run's model -- the
    validated ``[model]`` section, the config's folder, the run's ``model.pt`` and the channel
    and class names -- as JSON, and rebuilds the classifier through ``builder`` (by default
    :func:`chanstat.context.build_classifier`, the function the pipeline uses), so a worker's
    model is the pipeline's (same adapter, channels and classes). This class never reads
    ``[model]`` itself. ``digest`` identifies the weights: it is part of the shard
    fingerprint and of the cache key.
    """

    spec_json: str
    digest: str = ""
    builder: str = "chanstat.context:build_classifier"

    @classmethod
    def from_spec(cls, spec: dict) -> "ModelSource":
        """A source from a model spec (``section``, ``config_dir``, ``run_model``, ``channels``, ``classes``)."""
        section = spec.get("section") or {}
        folder = Path(spec.get("config_dir") or ".")
        files = [spec.get("run_model")]
        for key in ("checkpoint", "source", "weights"):
            value = section.get(key)
            if value and (folder / Path(value).expanduser()).exists():
                files.append(folder / Path(value).expanduser())
        h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
        for f in files:
            if f:
                h.update((checkpoint_digest(f) if str(f) == str(spec.get("run_model")) else file_digest(f)).encode())
        return cls(spec_json=json.dumps(spec, sort_keys=True, default=str), digest=h.hexdigest()[:16])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, channels=(), classes=()) -> "ModelSource":
        """A source for a chanstat ``model.pt``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model checkpoint not found: {path}")
        return cls.from_spec(
            {
                "section": {},
                "config_dir": str(path.parent),
                "run_model": str(path.resolve()),
                "channels": list(channels),
                "classes": list(classes),
            }
        )

    @property
    def spec(self) -> dict:
        return json.loads(self.spec_json)

    def load(self, device) -> Any:
        """The classifier on ``device``; built once per worker thread and kept."""
        cache = getattr(_LOCAL, "models", None)
        if cache is None:
            cache = _LOCAL.models = {}
        key = (self, str(device))
        if key not in cache:
            cache.clear()  # one model per thread: a new run's model replaces the old one
            cache[key] = self._load(device)
        return cache[key]

    def _load(self, device):
        import importlib

        module, _, attr = self.builder.partition(":")  # a reference, like a stage's: compute imports no stage
        return getattr(importlib.import_module(module), attr)(self.spec, device)
