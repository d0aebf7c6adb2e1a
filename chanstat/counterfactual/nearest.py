"""Nearest-neighbour counterfactuals in the classifier's embedding (a weak baseline)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chanstat.counterfactual.base import CounterfactualProvider

SPACES = ("embed", "logits", "pixels")
METRICS = ("euclidean", "cosine")


@torch.no_grad()
def embed_images(model, images: torch.Tensor, space: str = "embed", device="cpu", batch_size: int = 128,
                 progress: bool = False) -> torch.Tensor:
    """Feature vectors of ``images`` (N, C, H, W) -> (N, D) float32 on the CPU.

    ``space``: ``"embed"`` -- ``model.embed(x)`` (penultimate features of chanstat's
    classifiers); ``"logits"`` -- ``model(x)``; ``"pixels"`` -- the flattened image (no model).
    """
    if space not in SPACES:
        raise ValueError(f"unknown embedding space {space!r}; use one of {list(SPACES)}")
    if space == "pixels":
        return images.reshape(images.shape[0], -1).float()
    if model is None:
        raise ValueError(f"embedding space {space!r} needs a model")
    if space == "embed" and not callable(getattr(model, "embed", None)):
        raise ValueError(
            f"{type(model).__name__} has no embed() method; use space='logits' or 'pixels' for this model"
        )
    fn = model.embed if space == "embed" else model
    device = torch.device(device)
    out = []
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc="embed", disable=not progress, leave=False):
        feats = fn(images[start : start + batch_size].to(device, torch.float32))
        out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    return torch.cat(out)


class NearestCounterfactuals(CounterfactualProvider):
    """For each image, the nearest image of the target class in the classifier's embedding.

    A *weak baseline*: the counterfactual is a different cell (not aligned pixel by pixel with
    the real one), so ``|x - x'|`` mixes the class difference with everything else that differs
    between two cells (position, shape, cell count). DAC on such pairs measures how well
    pasting real pixels into another cell restores the decision -- expect lower, noisier scores
    and a weaker channel contrast than with aligned counterfactuals.

    Parameters
    ----------
    space : ``"embed"`` (``model.embed``), ``"logits"``, or ``"pixels"``.
    metric : ``"euclidean"`` or ``"cosine"``.
    match : metadata columns a neighbour must share with the image (e.g. ``["Metadata_Plate"]``
        to stay within the plate); every group must contain images of the target class.
    require_predicted : only images the classifier assigns to the target class are candidates
        (falls back to all target-class images when a group has none).
    """

    name = "nearest"
    needs_model = True
    description = "nearest image of the target class in the classifier's embedding (unaligned; weak baseline)"

    def __init__(self, model=None, *, space: str = "embed", metric: str = "euclidean",
                 match: Sequence[str] = (), require_predicted: bool = False, **common):
        super().__init__(model, **common)
        if space not in SPACES:
            raise ValueError(f"unknown embedding space {space!r}; use one of {list(SPACES)}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; use one of {list(METRICS)}")
        self.space = space
        self.metric = metric
        self.match = [match] if isinstance(match, str) else list(match)
        self.require_predicted = bool(require_predicted)

    def _generate(self, dataset, target):
        targets = self.targets(dataset, target)
        unknown = [col for col in self.match if col not in dataset.meta.columns]
        if unknown:
            raise ValueError(f"match columns {unknown} are not in the metadata ({list(dataset.meta.columns)})")
        feats = embed_images(self.model, dataset.images, self.space, self.device, self.batch_size, self.progress)
        if self.metric == "cosine":
            feats = torch.nn.functional.normalize(feats, dim=1)
        labels = dataset.labels
        predicted = None
        if self.require_predicted:
            with torch.no_grad():
                logits = torch.cat([
                    self.model(dataset.images[s : s + self.batch_size].to(self.device)).float().cpu()
                    for s in range(0, len(dataset), self.batch_size)
                ])
            predicted = logits.argmax(dim=1)
        groups = (
            dataset.meta[self.match].astype(str).agg("|".join, axis=1).to_numpy()
            if self.match else np.zeros(len(dataset), dtype=object)
        )
        neighbour = np.full(len(dataset), -1, dtype=np.int64)
        distance = np.full(len(dataset), np.nan)
        for group in pd.unique(groups):
            in_group = torch.as_tensor(groups == group)
            for k in torch.unique(targets[in_group]).tolist():
                queries = torch.nonzero(in_group & (targets == k)).flatten()
                pool = in_group & (labels == k)
                if predicted is not None and bool((pool & (predicted == k)).any()):
                    pool = pool & (predicted == k)
                candidates = torch.nonzero(pool).flatten()
                if candidates.numel() == 0:
                    where = f" in group {group!r} of {self.match}" if self.match else ""
                    raise ValueError(f"no image of target class {dataset.classes[k]!r}{where} to serve as a nearest neighbour")
                d = torch.cdist(feats[queries], feats[candidates])
                best = d.argmin(dim=1)
                neighbour[queries.numpy()] = candidates[best].numpy()
                distance[queries.numpy()] = d[torch.arange(queries.numel()), best].double().numpy()
        counterfactuals = dataset.images[torch.as_tensor(neighbour)]
        extra = pd.DataFrame({"neighbour": neighbour, "embedding_distance": distance})
        return counterfactuals, targets, extra, {"space": self.space, "metric": self.metric}
