"""Pipeline stage: train the reference classifier (or load the user's) and save it."""
from __future__ import annotations

from chanstat.io import write_table
from chanstat.models.checkpoint import load_checkpoint, load_user_model, save_checkpoint
from chanstat.models.training import evaluate, train
from chanstat.models.vgg import VGGClassifier, expected_channels

TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "val_fraction", "patience", "min_epochs", "augment")
ARCH_OPTIONS = ("widths", "convs_per_block", "dropout", "batch_norm")


def run(ctx) -> dict:
    cfg = ctx.section("model")
    data = ctx.dataset
    if "checkpoint" in cfg or "source" in cfg:
        if "checkpoint" in cfg:
            model = load_checkpoint(ctx.resolve_path(cfg["checkpoint"]), device=ctx.device).model
        else:
            weights = cfg.get("weights")
            model = load_user_model(
                cfg["source"], weights=ctx.resolve_path(weights) if weights else None, kwargs=cfg.get("kwargs"), device=ctx.device
            )
        n_in = expected_channels(model)
        if n_in is not None and n_in != len(data.channels):
            raise ValueError(f"model expects {n_in} channels but the data has {len(data.channels)}: {data.channels}")
        loss, acc = evaluate(model, data.images, data.labels)
        info = {"trained": False, "accuracy_all_images": acc}
    else:
        model = VGGClassifier(len(data.channels), len(data.classes), **{k: cfg[k] for k in ARCH_OPTIONS if k in cfg})
        result = train(
            model,
            data,
            seed=ctx.seed,
            device=ctx.device,
            progress=ctx.progress,
            **{k: cfg[k] for k in TRAIN_OPTIONS if k in cfg},
        )
        write_table(result.history, ctx.out / "training_history.parquet")
        info = {
            "trained": True,
            "val_accuracy": result.val_accuracy,
            "best_epoch": result.best_epoch,
            "n_train": len(result.train_index),
            "n_val": len(result.val_index),
        }
    if isinstance(model, VGGClassifier):
        save_checkpoint(ctx.out / "model.pt", model, data.channels, data.classes)
    else:  # a user's module: the run directory records where it came from instead
        info["model_source"] = str(cfg.get("checkpoint") or cfg.get("source"))
    ctx.model = model.to(ctx.device).eval()
    return info
