"""What a stage sees while it runs: the validated config, the run directory and the results so far.

:class:`RunContext` is shared by the pipeline (one process) and by :class:`PartTask`, the
picklable task that runs a stage's ``per_image`` function on a shard of images in a Dask
worker. Both build the context the same way, so a stage cannot tell where it runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chanstat.rundir import RunDirectory
from chanstat.stage import Part, load_stage, slice_inputs


@dataclass
class Classifier:
    """The run's classifier as a stage output: the module and what it was trained on.

    ``source`` says where a user's model came from (``[model] source`` / ``checkpoint``); a
    chanstat reference classifier is written to ``model.pt`` instead.
    """

    module: Any
    channels: list[str]
    classes: list[str]
    source: str | None = None


@dataclass
class RunContext:
    """The run in progress.

    Attributes
    ----------
    config : the validated config (every default filled in).
    run : the run directory.
    seed, device, quick, progress : run-wide settings.
    resume : the run continues an earlier one (stages may pick up their own checkpoints).
    config_dir : folder of the config file (relative paths in the config start there).
    results : outputs of the stages so far, by schema name; :meth:`get` falls back on the
        run directory for anything not in memory (a resumed run, a shard on a worker).
    """

    config: dict
    run: RunDirectory
    seed: int = 0
    device: Any = "cpu"
    quick: bool = False
    progress: bool = True
    config_dir: Path = field(default_factory=Path.cwd)
    results: dict[str, Any] = field(default_factory=dict)
    resume: bool = False

    @property
    def out(self) -> Path:
        return self.run.path

    def section(self, name: str) -> dict:
        """Config section ``name`` (dotted for nested tables), {} when absent."""
        node: Any = self.config
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def resolve_path(self, value: str | Path) -> Path:
        """Paths in a config are relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.config_dir / p).resolve()

    def get(self, name: str, default: Any = None) -> Any:
        """Result ``name`` from memory, else from the run directory, else ``default``."""
        if name in self.results:
            return self.results[name]
        if self.run.has(name):
            value = self.run.read(name)
            self.results[name] = value
            return value
        return default

    @property
    def dataset(self):
        value = self.get("dataset")
        if value is None:
            raise RuntimeError(f"no data set in {self.run.path}: the data stage must run first")
        return value

    @property
    def classifier(self) -> Classifier:
        if "model" not in self.results:
            self.results["model"] = load_classifier(self)
        return self.results["model"]

    @property
    def model(self):
        return self.classifier.module


def load_classifier(ctx: RunContext) -> Classifier:
    """The run's classifier: ``model.pt`` of the run directory, else the ``[model]`` source."""
    from chanstat.models.checkpoint import load_checkpoint

    if ctx.run.has("model"):
        loaded = load_checkpoint(ctx.run.file("model"), device=ctx.device)
        return Classifier(loaded.model.eval(), list(loaded.channels), list(loaded.classes))
    section = ctx.section("model")
    if section.get("checkpoint") or section.get("source"):
        return user_classifier(ctx, section)
    raise RuntimeError(f"no model in {ctx.run.path}: the model stage must run first")


def user_classifier(ctx, section: dict) -> Classifier:
    """The classifier named by ``[model] checkpoint`` or ``source`` (the config's folder importable)."""
    from chanstat.models.checkpoint import load_checkpoint, load_user_model

    if section.get("checkpoint"):
        loaded = load_checkpoint(ctx.resolve_path(section["checkpoint"]), device=ctx.device)
        return Classifier(loaded.model.eval(), list(loaded.channels), list(loaded.classes), source=str(section["checkpoint"]))
    source = section["source"]
    weights = ctx.resolve_path(section["weights"]) if section.get("weights") else None
    local = ctx.resolve_path(source)
    module = load_user_model(str(local) if local.exists() else source, weights=weights, kwargs=section.get("kwargs"),
                             device=ctx.device, search_path=ctx.config_dir)
    return Classifier(module, [], [], source=str(source))


@dataclass
class PartTask:
    """Run one stage's ``per_image`` on a shard of images in a worker (small and picklable).

    The worker reads the shard's images and per-image inputs from the run directory, loads
    the model once per worker (through ``model``, a :class:`chanstat.compute.ModelSource`)
    and writes the outputs into the shard's staging folder through a :class:`RunDirectory`.
    """

    stage: str  # "package.module:NAME" of the Stage
    run_dir: str
    config: dict
    config_dir: str
    seed: int
    quick: bool
    device: str
    model: Any = None

    def __call__(self, rows: np.ndarray, out_dir: Path) -> dict:
        from chanstat.runtime import seed_everything

        stage = load_stage(self.stage)
        run = RunDirectory(self.run_dir)
        from chanstat.compute.worker import worker_device

        device = worker_device(self.device)
        ctx = RunContext(config=self.config, run=run, seed=self.seed, device=device, quick=self.quick,
                         progress=False, config_dir=Path(self.config_dir))
        if self.model is not None:
            ctx.results["model"] = Classifier(self.model.load(device), [], [])
        rows = np.asarray(rows, dtype=np.int64)
        inputs = {name: run.read(name, rows) for name in stage.part_inputs if run.has(name)}
        part = Part(rows=rows, dataset=run.dataset(rows), inputs=inputs)
        seed_everything(self.seed)
        outputs = stage.per_image(ctx, part)
        stage.check_outputs(outputs)
        staging = RunDirectory(out_dir, create=True)
        for name, value in outputs.items():
            staging.write(name, value)
        (Path(out_dir) / "_outputs.json").write_text(json.dumps(sorted(outputs)))
        return {"n_images": int(len(rows))}

    @staticmethod
    def read(out_dir: Path) -> dict:
        """The outputs a finished shard left in ``out_dir``."""
        staging = RunDirectory(out_dir)
        names = json.loads((Path(out_dir) / "_outputs.json").read_text())
        return {name: staging.read(name) for name in names}


def run_part_here(ctx: RunContext, stage, rows: np.ndarray | None) -> dict:
    """``stage.per_image`` on ``rows`` (all images when None) in this process."""
    dataset = ctx.dataset
    n = len(dataset)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    subset = dataset if len(rows) == n and np.array_equal(rows, np.arange(n)) else dataset.subset(rows)
    inputs = {}
    for name in stage.part_inputs:
        value = ctx.get(name)
        if value is None:
            continue
        rows_held = {k: a.shape[0] for k, a in getattr(value, "arrays", {}).items() if a.shape[0] != n}
        if rows_held and getattr(value, "samples", None) is None:
            key, held = next(iter(rows_held.items()))
            raise ValueError(f"{name} {key!r} cover {held} images but the data set has {n}")
        inputs[name] = slice_inputs({name: value}, rows)[name] if subset is not dataset else value
    return stage.per_image(ctx, Part(rows=rows, dataset=subset, inputs=inputs))
