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

import chanstat.data.imageset  # noqa: F401  (registers the data set's codec with the run directory)
from chanstat.rundir import RunDirectory, register_codec
from chanstat.stage import Part, load_stage, slice_inputs


def _write_classifier(run: RunDirectory, classifier) -> None:
    """``model.pt`` for chanstat's reference classifier; a user's model is recorded in provenance instead."""
    from chanstat.models.adapter import unwrap
    from chanstat.models.checkpoint import save_checkpoint
    from chanstat.models.vgg import VGGClassifier

    if isinstance(unwrap(classifier.module), VGGClassifier):
        save_checkpoint(run.file("model"), unwrap(classifier.module), classifier.channels, classifier.classes)


register_codec("model", write=_write_classifier)


def __getattr__(name: str):
    if name == "Classifier":  # the model adapter's (imports torch: only when asked for)
        from chanstat.models.adapter import Classifier

        return Classifier
    raise AttributeError(f"module 'chanstat.context' has no attribute {name!r}")


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
    def classifier(self):
        if "model" not in self.results:
            self.results["model"] = load_classifier(self)
        return self.results["model"]

    @property
    def model(self):
        return self.classifier.module


def model_spec(ctx: RunContext) -> dict:
    """What rebuilds the run's classifier anywhere (a worker, a resumed run): plain, picklable values.

    ``section`` is the validated ``[model]`` section, ``run_model`` the run's ``model.pt`` when
    chanstat trained the model, ``channels`` / ``classes`` the names the model reads (from the
    checkpoint, else from the run's data set).
    """
    section = {k: v for k, v in ctx.section("model").items()}
    run_model = str(ctx.run.file("model")) if ctx.run.has("model") else None
    if run_model is not None:
        section = {k: v for k, v in section.items() if k not in ("checkpoint", "source", "weights", "kwargs")}
    elif not (section.get("checkpoint") or section.get("source")):
        raise RuntimeError(f"no model in {ctx.run.path}: the model stage must run first")
    channels: list[str] = []
    classes: list[str] = []
    if "model" in ctx.results:
        channels, classes = list(ctx.results["model"].channels), list(ctx.results["model"].classes)
    elif ctx.run.has("dataset"):
        attrs = ctx.run.group_attrs("dataset")
        channels, classes = list(attrs.get("channels") or []), list(attrs.get("classes") or [])
    return {
        "section": section,
        "config_dir": str(ctx.config_dir),
        "run_model": run_model,
        "channels": channels,
        "classes": classes,
    }


def build_classifier(spec: dict, device) -> Any:
    """The classifier ``spec`` (:func:`model_spec`) names, through the one ``[model]`` interpreter.

    Channel and class names come from the spec when the model does not carry its own, so a
    worker's classifier is the pipeline's.
    """
    from chanstat.models.adapter import load_model

    classifier = load_model(spec["section"], spec["config_dir"], device=device, run_model=spec["run_model"])
    if not classifier.channels:
        classifier.channels = list(spec["channels"])
    if not classifier.classes:
        classifier.classes = list(spec["classes"])
    return classifier


def load_classifier(ctx: RunContext) -> Any:
    """The run's classifier: ``model.pt`` of the run directory, else the ``[model]`` source."""
    return build_classifier(model_spec(ctx), ctx.device)


def user_classifier(ctx, section: dict) -> Any:
    """The classifier named by ``[model] checkpoint`` or ``source`` (the config's folder importable)."""
    from chanstat.models.adapter import load_model

    return load_model(section, ctx.config_dir, device=ctx.device)


@dataclass
class PartTask:
    """Run one stage's ``per_image`` on a shard of images in a worker (small and picklable).

    The worker reads the shard's images and per-image inputs from the run directory, loads
    the model once per worker (through ``model``, a :class:`chanstat.compute.ModelSource`)
    and writes the outputs into the shard's staging folder through a :class:`RunDirectory`.
    ``model`` is a :class:`chanstat.compute.ModelSource` whose ``load(device)`` gives the very
    classifier the pipeline holds (same adapter, channels and classes).
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
        ctx = RunContext(
            config=self.config,
            run=run,
            seed=self.seed,
            device=device,
            quick=self.quick,
            progress=False,
            config_dir=Path(self.config_dir),
        )
        if self.model is not None:
            ctx.results["model"] = self.model.load(device)
        rows = np.asarray(rows, dtype=np.int64)
        inputs = {name: run.read(name, rows) for name in stage.part_inputs if run.has(name)}
        part = Part(rows=rows, dataset=run.dataset(rows), inputs=inputs)
        seed_everything(self.seed)
        assert stage.per_image is not None  # only stages with a per_image part run in shards (pipeline._per_image)
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
