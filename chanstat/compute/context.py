"""Helpers around the pipeline: rebuild a run's context from its directory, decide routing."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np


def sharded_stage_names(config: dict) -> list[str]:
    """Stages the pipeline should route through :func:`~chanstat.compute.run_sharded`.

    Empty unless the config has an enabled ``[compute]`` section; then its ``stages`` list
    (default attribution, dac, metrics).
    """
    section = config.get("compute")
    if not isinstance(section, dict) or not section.get("enabled", True):
        return []
    from chanstat.compute.runner import ComputeConfig

    return list(ComputeConfig.from_section(section).stages)


def load_context(run_dir: str | Path, config: dict | None = None, device: str | None = None, progress: bool = False):
    """A :class:`~chanstat.pipeline.RunContext` for an existing run directory.

    Rebuilds ``dataset`` from ``dataset.zarr`` + ``meta.parquet`` and ``model`` from
    ``model.pt``, so a later stage can run (sharded or not) without re-running the data and
    model stages. ``config`` defaults to the run's ``config.toml``.

    Parameters
    ----------
    run_dir : a run directory written by ``chanstat run`` (at least the data and model stages).
    config : config dict to use instead of ``run_dir/config.toml``.
    device : torch device for the model (default the config's ``[run] device``, ``"auto"``).
    """
    from chanstat.compute.worker import read_dataset
    from chanstat.pipeline import RunContext
    from chanstat.runtime import resolve_device

    run_dir = Path(run_dir)
    if config is None:
        path = run_dir / "config.toml"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; pass config=")
        config = tomllib.loads(path.read_text())
    device = resolve_device(device or config.get("run", {}).get("device", "auto"))
    import zarr

    n = zarr.open_group(str(run_dir / "dataset.zarr"), mode="r")["images"].shape[0]
    dataset = read_dataset(run_dir, np.arange(n))
    model = None
    if (run_dir / "model.pt").exists():
        from chanstat.models.checkpoint import load_checkpoint

        model = load_checkpoint(run_dir / "model.pt", device=device).model
    return RunContext(
        config=config, out=run_dir, seed=int(config.get("run", {}).get("seed", 0)), device=device,
        dataset=dataset, model=model, progress=progress,
    )
