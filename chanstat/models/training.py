"""Training loop with a well-grouped validation split, early stopping and progress."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from chanstat.runtime import seed_everything


@dataclass
class TrainResult:
    history: pd.DataFrame
    """One row per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy."""
    val_accuracy: float
    best_epoch: int
    train_index: np.ndarray
    val_index: np.ndarray


def split_by_group(
    groups: pd.Series, labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices with whole groups (wells) on one side, stratified by class.

    Images of one well share well-level nuisance, so splitting images would leak it into
    validation and flatter the accuracy.
    """
    rng = np.random.default_rng(seed)
    val = []
    keys = groups.to_numpy()
    for label in np.unique(labels):
        group_ids = pd.unique(keys[labels == label])
        n_val = max(1, int(round(val_fraction * len(group_ids)))) if len(group_ids) > 1 else 0
        chosen = set(rng.permutation(group_ids)[:n_val].tolist())
        val.extend(np.flatnonzero((labels == label) & np.isin(keys, list(chosen))).tolist())
    val_idx = np.array(sorted(val), dtype=int)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (cells have no preferred orientation)."""
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2] and torch.rand((), generator=generator) < 0.5:
        x = x.transpose(-1, -2)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (any classifier :func:`~chanstat.models.as_model`
    accepts) on a set."""
    from chanstat.models.adapter import as_model

    adapter = as_model(model)
    device = adapter.device
    adapter.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            xb = images[start : start + batch_size].to(device)
            yb = labels[start : start + batch_size].to(device)
            logits = adapter(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    n = max(1, len(images))
    return loss_sum / n, correct / n


def train(
    model: nn.Module,
    imageset,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.25,
    patience: int = 6,
    min_epochs: int = 10,
    seed: int = 0,
    device=None,
    augment: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on an ImageSet; keeps the weights of the best validation epoch.

    The validation split holds out whole wells (``Metadata_Plate`` + ``Metadata_Well``).
    Early stopping ends training after ``patience`` epochs without a better validation loss,
    but not before ``min_epochs`` (small networks sit on a plateau for a few epochs first).
    The model is left in eval mode on ``device``.
    """
    seed_everything(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    labels_np = imageset.labels.numpy()
    wells = imageset.meta["Metadata_Plate"].astype(str) + "/" + imageset.meta["Metadata_Well"].astype(str)
    train_idx, val_idx = split_by_group(wells, labels_np, val_fraction, seed)
    if len(val_idx) == 0:
        train_idx, val_idx = np.arange(len(labels_np)), np.arange(len(labels_np))
    x_train, y_train = imageset.images[train_idx], imageset.labels[train_idx]
    x_val, y_val = imageset.images[val_idx], imageset.labels[val_idx]
    normalise = getattr(model, "set_input_normalisation", None)
    if callable(normalise):
        normalise(x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    best_state, best_loss, best_epoch, stale = None, float("inf"), 0, 0
    rows = []
    bar = tqdm(range(1, epochs + 1), desc="training", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb = _augment(x_train[idx], gen).to(device)
            yb = y_train[idx].to(device)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        sched.step()
        val_loss, val_acc = evaluate(model, x_val, y_val)
        rows.append(
            dict(
                epoch=epoch,
                train_loss=loss_sum / len(order),
                train_accuracy=correct / len(order),
                val_loss=val_loss,
                val_accuracy=val_acc,
            )
        )
        bar.set_postfix(val_acc=f"{val_acc:.3f}", val_loss=f"{val_loss:.3f}")
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= patience and epoch >= min_epochs:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history = pd.DataFrame(rows)
    best_acc = (
        float(history.loc[history["epoch"] == best_epoch, "val_accuracy"].iloc[0]) if best_epoch else float("nan")
    )
    return TrainResult(
        history=history, val_accuracy=best_acc, best_epoch=best_epoch, train_index=train_idx, val_index=val_idx
    )
