"""The Dask worker plugin that prepares chanstat workers (imported only when Dask is used)."""

from __future__ import annotations

import hashlib

from distributed.diagnostics.plugin import WorkerPlugin

from chanstat.compute.worker import _WORKER_DEVICES


class WorkerSetup(WorkerPlugin):
    """Dask worker plugin: torch threads and the worker's device.

    Parameters
    ----------
    torch_threads : ``torch.set_num_threads`` in process workers (None: leave as is; threads
        of the client's own process must not change the process-wide setting).
    device : device for this worker's tasks (None/``"auto"``: CUDA when available).
    gpu_by_worker_name : on CUDA machines give worker ``k`` (LocalCluster names workers
        0, 1, ...; a restarted worker keeps its name) the device ``cuda:(k mod n_gpus)``.
    """

    idempotent = True

    def __init__(self, torch_threads: int | None = None, device: str | None = None, gpu_by_worker_name: bool = True):
        self.torch_threads = torch_threads
        self.device = device
        self.gpu_by_worker_name = gpu_by_worker_name

    def setup(self, worker) -> None:
        import torch

        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        device = self.device
        if device in (None, "auto", "cuda") and torch.cuda.is_available():
            n_gpus = torch.cuda.device_count()
            if self.gpu_by_worker_name and n_gpus > 1:
                try:
                    rank = int(worker.name)
                except (TypeError, ValueError):
                    rank = int(hashlib.sha256(str(worker.name).encode()).hexdigest(), 16)
                device = f"cuda:{rank % n_gpus}"
            else:
                device = "cuda"
        if device not in (None, "auto"):
            _WORKER_DEVICES[worker.address] = str(device)

    def teardown(self, worker) -> None:
        address = getattr(worker, "address", None)
        if address is not None:
            _WORKER_DEVICES.pop(address, None)
