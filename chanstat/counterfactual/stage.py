"""Pipeline stage ``counterfactual``: give every image a counterfactual before attribution and DAC.

Config::

    [counterfactual]
    provider = "oracle"        # oracle | from_files | nearest | optimise | generator
    target_rule = "auto"       # how the counterfactual class is chosen (chanstat.counterfactual.choose_targets)
    [counterfactual.optimise]  # options of the chosen provider, in a table named after it
    l1 = 0.05

One config can hold the options of several providers and switch with ``provider = ...``;
only the chosen provider's table is used. Paths (``path``, ``index``, ``counterfactual_target`` of
``from_files``, ``generator`` of ``generator``) are relative to the config file.

Writes ``counterfactual_quality`` and ``counterfactual_summary``, the data set with the new
counterfactuals (the data set's own ones move to ``oracle_counterfactuals.zarr`` when another
provider replaces them) and, for the ``generator`` provider, the trained network and its log.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from chanstat.config import Section
from chanstat.counterfactual import PROVIDERS, get_provider, with_counterfactuals
from chanstat.stage import Arrays, Stage

PATH_KEYS = ("path", "index", "counterfactual_target", "key_table", "generator", "checkpoint_dir")


class CounterfactualConfig(Section):
    """``[counterfactual]``: where each image's counterfactual comes from."""

    provider: str = Field("oracle", description=f"One of {sorted(PROVIDERS)}.")
    target_rule: str = Field(
        "auto", description="How each image's counterfactual class is chosen (chanstat.counterfactual.choose_targets)."
    )
    oracle: dict[str, Any] = Field(default_factory=dict)
    from_files: dict[str, Any] = Field(default_factory=dict)
    nearest: dict[str, Any] = Field(default_factory=dict)
    optimise: dict[str, Any] = Field(default_factory=dict)
    generator: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        import difflib

        if self.provider not in PROVIDERS:
            close = difflib.get_close_matches(self.provider, list(PROVIDERS), n=1)
            raise ValueError(
                f"unknown provider {self.provider!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                f"providers are {sorted(PROVIDERS)}"
            )
        for name in PROVIDERS:
            options = getattr(self, name, {}) or {}
            allowed = PROVIDERS[name].option_names()
            for key in options:
                if key not in allowed:
                    close = difflib.get_close_matches(key, allowed, n=1)
                    raise ValueError(
                        f"[counterfactual.{name}] has no option {key!r}"
                        f"{f' (did you mean {close[0]!r}?)' if close else ''}; options: {', '.join(allowed)}"
                    )
        return self

    @staticmethod
    def check_config(config: dict) -> list[str]:
        """Rules that need the rest of the config: the target class, each provider's requirements."""
        from chanstat.config import data_names
        from chanstat.counterfactual.targets import TARGET_RULES

        section = config.get("counterfactual") or {}
        out = []
        _, classes = data_names(config)
        target = section.get("target_rule", "auto")
        if target not in TARGET_RULES and (classes is not None and target not in classes):
            out.append(
                f"[counterfactual] target_rule: {target!r} is neither a rule ({', '.join(TARGET_RULES)}) "
                f"nor a class of the data ({', '.join(classes)})"
            )
        provider = section.get("provider", "oracle")
        options = section.get(provider) or {}
        data = config.get("data") or {}
        if provider == "from_files" and not options.get("path"):
            out.append(
                "[counterfactual.from_files] path: provider 'from_files' needs path = a LoadData CSV, "
                "a .npy file or a Zarr group"
            )
        if provider == "oracle" and data.get("source", "synthetic") == "arrays" and not data.get("plant"):
            out.append(
                "[counterfactual] provider = 'oracle' needs counterfactuals stored with the data "
                "(synthetic or planted data); arrays carry none: use another provider"
            )
        if (
            provider == "generator"
            and "mixed_precision" in options
            and options["mixed_precision"] not in (True, False, "auto")
        ):
            out.append(
                f'[counterfactual.generator] mixed_precision: {options["mixed_precision"]!r} is not true, false or "auto"'
            )
        return out

    @staticmethod
    def preflight(section: dict, config_dir) -> None:
        """Input files of the chosen provider exist."""
        from pathlib import Path

        from chanstat.config import ConfigError

        provider = section.get("provider", "oracle")
        for key, value in (section.get(provider) or {}).items():
            if key in PATH_KEYS and key != "checkpoint_dir" and isinstance(value, str):
                path = Path(value).expanduser()
                path = path if path.is_absolute() else Path(config_dir) / path
                if not path.exists():
                    raise ConfigError(f"[counterfactual.{provider}] {key}: file not found: {path}")


def provider_options(ctx, section: dict) -> dict:
    """The chosen provider's options with paths resolved and the run's device, seed, progress."""
    provider = section["provider"]
    options = dict(section.get(provider) or {})
    for key in PATH_KEYS:
        if isinstance(options.get(key), str):
            options[key] = ctx.resolve_path(options[key])
    allowed = PROVIDERS[provider].option_names()
    for key, value in (
        ("device", ctx.device),
        ("progress", ctx.progress),
        ("seed", ctx.seed),
        ("checkpoint_dir", ctx.run.path / "generator_checkpoints"),
        ("resume", ctx.resume),
    ):
        if key in allowed:
            options.setdefault(key, value)
    return options


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    section = ctx.section("counterfactual")
    provider = section["provider"]
    options = provider_options(ctx, section)
    dataset = ctx.dataset
    result = get_provider(provider, ctx.model, **options).generate(dataset, target_rule=section["target_rule"])
    outputs = {
        "counterfactual_quality": result.quality,
        "counterfactual_summary": result.summary,
        "dataset": with_counterfactuals(dataset, result),
    }
    if provider != "oracle" and dataset.counterfactuals is not None and dataset.counterfactual_target is not None:
        outputs["oracle_counterfactuals"] = Arrays(
            {
                "counterfactuals": dataset.counterfactuals.numpy(),
                "counterfactual_target": dataset.counterfactual_target.numpy(),
            },
            group_attrs={"channels": list(dataset.channels), "provider": "oracle"},
        )
    for name, value in (getattr(result, "artifacts", None) or {}).items():
        outputs[name] = value  # e.g. the trained generator and its training log
    return outputs, result.summary_dict()


STAGE = Stage(
    name="counterfactual",
    config=CounterfactualConfig,
    reads=("dataset", "model"),
    writes=(
        "counterfactual_quality",
        "counterfactual_summary",
        "dataset",
        "oracle_counterfactuals",
        "generator",
        "generator_log",
    ),
    whole_set=whole_set,
)
