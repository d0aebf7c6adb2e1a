"""Pipeline stage ``model``: train the reference classifier, or load the user's."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from chanstat.config import ConfigError, Section
from chanstat.stage import Stage


class ModelConfig(Section):
    """``[model]``: train the VGG-style reference classifier, or load yours (``checkpoint`` / ``source``)."""

    checkpoint: str | None = Field(None, description="A chanstat model.pt to use instead of training.")
    source: str | None = Field(
        None, description='Your model: "module:callable" (the config\'s folder is importable) or a TorchScript file.'
    )
    weights: str | None = Field(None, description="State-dict file loaded into the model built by `source`.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the `source` callable.")
    output: int | str | None = Field(
        None,
        description="Where the class scores are when the model returns a tuple "
        "(an index) or a dict (a key); default the tensor, the first tuple item, or "
        "the key logits/scores/output/out.",
    )
    embedding_layer: str | None = Field(
        None,
        description="Dotted name of the layer whose output embeds images for "
        "`nearest` counterfactuals; default the model's embed(), else the input of "
        "its last Linear layer.",
    )
    widths: list[int] = Field(
        default_factory=lambda: [16, 32, 64], min_length=1, description="Channels of the conv blocks."
    )
    convs_per_block: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_norm: bool = False
    epochs: int = Field(30, ge=1, description="Training epochs (at most).")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(1e-4, ge=0)
    val_fraction: float = Field(0.25, gt=0, lt=1, description="Share of wells held out for validation.")
    patience: int = Field(6, ge=1, description="Epochs without a better validation loss before stopping.")
    min_epochs: int = Field(10, ge=1)
    augment: bool = True

    @model_validator(mode="after")
    def _one_model(self):
        if self.checkpoint and self.source:
            raise ValueError("give either checkpoint or source, not both")
        if self.weights and not self.source:
            raise ValueError("weights needs a source (the model to load them into)")
        return self

    @staticmethod
    def preflight(section: dict, config_dir) -> None:
        from pathlib import Path

        for key in ("checkpoint", "weights"):
            if section.get(key):
                path = Path(section[key]).expanduser()
                path = path if path.is_absolute() else Path(config_dir) / path
                if not path.is_file():
                    raise ConfigError(f"[model] {key}: file not found: {path}")


ARCH_OPTIONS = ("widths", "convs_per_block", "dropout", "batch_norm")
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "val_fraction", "patience", "min_epochs", "augment")


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    from chanstat.models.adapter import Classifier, as_model, load_model
    from chanstat.models.training import evaluate, train
    from chanstat.models.vgg import VGGClassifier

    cfg = ctx.section("model")
    data = ctx.dataset
    if cfg.get("checkpoint") or cfg.get("source"):
        classifier = load_model(cfg, ctx.config_dir, device=ctx.device)
        n_in = classifier.module.expected_channels()
        if n_in is not None and n_in != len(data.channels):
            raise ValueError(
                f"[model] the model expects {n_in} channels but the data has {len(data.channels)}: {data.channels}"
            )
        _, accuracy = evaluate(classifier.module, data.images, data.labels)
        classifier.channels, classifier.classes = list(data.channels), list(data.classes)
        return {"model": classifier}, {
            "trained": False,
            "accuracy_all_images": accuracy,
            "model_source": classifier.source,
        }
    module = VGGClassifier(len(data.channels), len(data.classes), **{k: cfg[k] for k in ARCH_OPTIONS})
    result = train(
        module, data, seed=ctx.seed, device=ctx.device, progress=ctx.progress, **{k: cfg[k] for k in TRAIN_OPTIONS}
    )
    info = {
        "trained": True,
        "val_accuracy": result.val_accuracy,
        "best_epoch": result.best_epoch,
        "n_train": len(result.train_index),
        "n_val": len(result.val_index),
    }
    classifier = Classifier(as_model(module.to(ctx.device).eval()), list(data.channels), list(data.classes))
    return {"model": classifier, "training_history": result.history}, info


STAGE = Stage(
    name="model",
    config=ModelConfig,
    reads=("dataset",),
    writes=("model", "training_history"),
    whole_set=whole_set,
    always=True,
)
