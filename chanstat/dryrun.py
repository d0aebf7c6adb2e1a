"""``chanstat config --check``: a dry run of a config, so what can fail late fails first.

:func:`check` does everything a run does before its first long step, on the real inputs:

1. the sections, their keys and values, and the rules across them (:func:`chanstat.pipeline.load_config`);
2. the device, input files and each stage's own checks (:func:`chanstat.pipeline.preflight`);
3. the data set, built as the data stage builds it;
4. the model, built (or loaded through the one ``[model]`` interpreter) and run forward on one image;
5. the chosen counterfactual provider's requirements, and its quality table on two images
   validated against the run-directory schema (a provider that would train a network is only
   instantiated);
6. columns the statistics will group by.

Every problem is the same one-line error a run would raise (:class:`~chanstat.config.ConfigError`
or the stage's own), so ``chanstat config --check cfg.toml`` and ``chanstat run cfg.toml`` agree.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Mapping, cast

from chanstat.config import ConfigError


def check(
    config: str | Path | Mapping, quick: bool = False, log: Callable[[str], None] = lambda msg: None
) -> list[str]:
    """Dry-run ``config``; returns what was checked, one line each (raises on the first problem)."""
    from chanstat import pipeline
    from chanstat.context import RunContext
    from chanstat.rundir import RunDirectory

    done: list[str] = []

    def ok(line: str) -> None:
        done.append(line)
        log(line)

    cfg, config_dir = pipeline.load_config(config, quick=quick)
    ok("sections, keys, values and cross-section rules")
    device = pipeline.preflight(cfg, config_dir, None)
    ok(f"device {device}, input files, each stage's own checks")
    with tempfile.TemporaryDirectory(prefix="chanstat-check-") as tmp:
        run = RunDirectory(Path(tmp) / "run", create=True)
        ctx = RunContext(
            config=cfg,
            run=run,
            seed=int(cfg["run"]["seed"]),
            device=device,
            quick=quick,
            progress=False,
            config_dir=config_dir,
        )
        data_stage = next(s for s in pipeline.stages() if s.name == "data")
        assert data_stage.whole_set is not None  # the data stage is a whole_set stage
        outputs, _ = data_stage.whole_set(ctx, {})
        dataset = outputs["dataset"]
        ctx.results["dataset"] = dataset
        ok(f"data: {len(dataset)} images, channels {list(dataset.channels)}, classes {list(dataset.classes)}")
        _check_names(cfg, dataset)
        classifier = _model(ctx, cfg, dataset)
        ctx.results["model"] = classifier
        ok(f"model: forward pass on one image gives {len(dataset.classes)} class scores")
        cp = cfg.get("cellprofiler") or {}
        if pipeline.enabled(_stage("cellprofiler"), cfg) and not cp.get("table") and not dataset.objects:
            raise ConfigError(
                "[cellprofiler] has no table and the data set has no objects to measure; "
                "name a CellProfiler table with table = ..."
            )
        if pipeline.enabled(_stage("metrics"), cfg) and dataset.signal_masks is None:
            raise ConfigError(
                "[metrics] localisation needs ground-truth masks (signal_masks), which this data set "
                "lacks; set [metrics] enabled = false or use planted / synthetic data"
            )
        if pipeline.enabled(_stage("counterfactual"), cfg):
            ok(_provider(ctx, cfg, dataset))
    return done


#: Providers that work over the whole data set (pairing files with images, searching neighbours).
WHOLE_SET_PROVIDERS = ("from_files", "nearest")


def _stage(name: str):
    from chanstat import pipeline

    return next(s for s in pipeline.stages() if s.name == name)


def _check_names(cfg: dict, dataset) -> None:
    """Channels and columns the config names exist in the data."""
    channels = list(dataset.channels)
    segment = (cfg.get("decompose") or {}).get("segment") or {}
    if (
        cfg.get("decompose")
        and cfg["decompose"].get("enabled", True)
        and segment.get("enabled", True)
        and not dataset.objects
    ):
        for key in ("nuclei_channel", "cell_channel"):
            if segment.get(key) is not None and segment[key] not in channels:
                raise ConfigError(
                    f"[decompose.segment] {key}: {segment[key]!r} is not a channel of the data ({', '.join(channels)})"
                )
    target = (cfg.get("counterfactual") or {}).get("target_rule", "auto")
    from chanstat.counterfactual.targets import TARGET_RULES

    if cfg.get("counterfactual") and target not in TARGET_RULES and target not in dataset.classes:
        raise ConfigError(
            f"[counterfactual] target_rule: {target!r} is neither a rule ({', '.join(TARGET_RULES)}) "
            f"nor a class of the data ({', '.join(dataset.classes)})"
        )
    stats = cfg.get("stats") or {}
    breakdown = stats.get("breakdown")
    if (
        stats.get("enabled", True)
        and cfg.get("stats")
        and breakdown
        and breakdown != "transition"
        and breakdown not in dataset.meta.columns
    ):
        meta = [c for c in dataset.meta.columns if c.startswith("Metadata_")]
        raise ConfigError(
            f"[stats] breakdown: {breakdown!r} is not a column of the data's metadata "
            f'("transition" or one of {", ".join(meta)})'
        )


def _model(ctx, cfg: dict, dataset):
    """The classifier (loaded, or the architecture to be trained) run forward on one image."""
    import torch

    from chanstat.models.adapter import Classifier, as_model, load_model

    section = cfg["model"]
    if section.get("checkpoint") or section.get("source"):
        classifier = load_model(section, ctx.config_dir, device=ctx.device)
    else:
        from chanstat.models.stage import ARCH_OPTIONS
        from chanstat.models.vgg import VGGClassifier

        module = VGGClassifier(len(dataset.channels), len(dataset.classes), **{k: section[k] for k in ARCH_OPTIONS})
        classifier = Classifier(as_model(module.to(ctx.device).eval()))
    classifier.channels, classifier.classes = list(dataset.channels), list(dataset.classes)
    try:
        with torch.no_grad():
            scores = classifier.module(dataset.images[:1].to(ctx.device))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward pass is a config problem
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"[model] the model fails on one image of the data {tuple(dataset.images.shape[1:])}: {first}"
        ) from None
    if scores.shape[1] != len(dataset.classes):
        raise ConfigError(
            f"[model] the model gives {scores.shape[1]} class scores but the data has "
            f"{len(dataset.classes)} classes ({', '.join(dataset.classes)})"
        )
    return classifier


def _provider(ctx, cfg: dict, dataset) -> str:
    """The chosen provider's requirements, and its quality table on two images against the schema."""
    from chanstat.counterfactual import PROVIDERS
    from chanstat.counterfactual.stage import provider_options
    from chanstat.schema import SCHEMA, TableSpec

    section = cfg["counterfactual"]
    name = section["provider"]
    options = provider_options(ctx, section)
    if name == "oracle" and dataset.counterfactuals is None:
        raise ConfigError(
            "[counterfactual] provider = 'oracle' needs counterfactuals stored with the data; "
            "this data set has none: use another provider"
        )
    trains = name == "generator" and not options.get("generator")
    try:
        provider = PROVIDERS[name](ctx.model, **options)
    except Exception as exc:  # noqa: BLE001 - whatever the provider refuses is a config problem, said in one line
        raise ConfigError(f"[counterfactual.{name}] {_first_line(exc)}") from None
    if trains:
        return f"counterfactual provider {name!r}: options accepted (the network is trained by the run)"
    if name in WHOLE_SET_PROVIDERS:  # they pair or search over the whole set
        subset = dataset
    else:
        labels = dataset.labels.numpy()
        subset = dataset.subset(
            [int(next(i for i, v in enumerate(labels) if v == k)) for k in sorted(set(labels.tolist()))][:2]
        )
    try:
        result = provider.generate(subset, target_rule=section["target_rule"])
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"[counterfactual.{name}] {_first_line(exc)}") from None
    rows = range(len(subset))
    for table in ("counterfactual_quality", "counterfactual_summary"):
        cast(TableSpec, SCHEMA[table]).validate(getattr(result, table.removeprefix("counterfactual_")))
    return f"counterfactual provider {name!r}: {len(rows)} images, quality and summary tables match the schema"


def _first_line(exc: BaseException) -> str:
    """The first line of an error, without torch's advice to unpickle untrusted files."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if "weights_only" in text or "Weights only load failed" in text:
        return "not a readable PyTorch file (torch.load refused it; it may be damaged or not chanstat's)"
    return text
