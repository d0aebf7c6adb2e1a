"""Nearest-neighbour counterfactuals in the classifier's embedding (a weak baseline)."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chanstat.counterfactual.base import CounterfactualProvider
from chanstat.models.adapter import as_model
from chanstat.tensors import class_probabilities, model_dtype

SPACES = ("embed", "logits", "pixels")
METRICS = ("euclidean", "cosine")

#: Below this share of neighbours the classifier assigns to the target class, a warning says so.
LOW_FLIP_RATE = 0.5
#: Below this ratio of distinct neighbours to images, a warning says the neighbours repeat.
LOW_DISTINCT_SHARE = 0.5


@torch.no_grad()
def embed_images(
    model, images: torch.Tensor, space: str = "embed", device="cpu", batch_size: int = 128, progress: bool = False
) -> torch.Tensor:
    """Feature vectors of ``images`` (N, C, H, W) -> (N, D) float32 on the CPU.

    ``space``: ``"embed"`` -- the model's embedding (:meth:`ModelAdapter.embed
    <chanstat.models.adapter.ModelAdapter.embed>`: its own ``embed()``, a named layer, or the
    input of its last Linear layer); ``"logits"`` -- its class scores; ``"pixels"`` -- the
    flattened image (no model).
    """
    if space not in SPACES:
        raise ValueError(f"unknown embedding space {space!r}; use one of {list(SPACES)}")
    if space == "pixels":
        return images.reshape(images.shape[0], -1).float()
    if model is None:
        raise ValueError(f"embedding space {space!r} needs a model")
    model = as_model(model)
    fn = model.embed if space == "embed" else model
    device, dtype = torch.device(device), model_dtype(model)
    out = []
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc="embed", disable=not progress, leave=False):
        feats = fn(images[start : start + batch_size].to(device, dtype))
        out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def predicted_classes(model, images: torch.Tensor, device="cpu", batch_size: int = 128) -> torch.Tensor:
    """The classifier's class for every image, (N,) int64 on the CPU (a 1-logit model is a sigmoid)."""
    model = as_model(model)
    device, dtype = torch.device(device), model_dtype(model)
    out = [
        class_probabilities(model(images[s : s + batch_size].to(device, dtype))).argmax(dim=1).cpu()
        for s in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out)


class NearestCounterfactuals(CounterfactualProvider):
    """For each image, the nearest image of the target class in the classifier's embedding.

    A *weak baseline*: the counterfactual is a different cell (not aligned pixel by pixel with
    the real one), so ``|x - x'|`` mixes the class difference with everything else that differs
    between two cells (position, shape, cell count). DAC on such pairs measures how well
    pasting real pixels into another cell restores the decision -- expect lower, noisier scores
    and a weaker channel contrast than with aligned counterfactuals.

    A warning is issued when fewer than :data:`LOW_FLIP_RATE` of the neighbours are classified
    as the target class, or when the neighbours repeat (fewer distinct neighbours than
    :data:`LOW_DISTINCT_SHARE` times the number of images); ``info`` records ``flip_rate``,
    ``n_distinct_neighbours`` and ``max_neighbour_reuse`` either way.

    Parameters
    ----------
    space : ``"embed"`` (``model.embed``), ``"logits"``, or ``"pixels"``.
    metric : ``"euclidean"`` or ``"cosine"``.
    match : metadata columns a neighbour must share with the image (e.g. ``["Metadata_Plate"]``
        to stay within the plate); every group must contain images of the target class.
    require_predicted : (default True) only target-class images that the classifier also
        assigns to the target class are candidates; a group without any falls back to all its
        target-class images, with a warning. False: every target-class image is a candidate
        (misclassified ones too, which do not flip the decision).
    """

    name = "nearest"
    needs_model = True
    description = "nearest image of the target class in the classifier's embedding (unaligned; weak baseline)"

    def __init__(
        self,
        model=None,
        *,
        space: str = "embed",
        metric: str = "euclidean",
        match: Sequence[str] = (),
        require_predicted: bool = True,
        **common,
    ):
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
        predicted = predicted_classes(self.model, dataset.images, self.device, self.batch_size)
        groups = (
            dataset.meta[self.match].astype(str).agg("|".join, axis=1).to_numpy()
            if self.match
            else np.zeros(len(dataset), dtype=object)
        )
        neighbour = np.full(len(dataset), -1, dtype=np.int64)
        distance = np.full(len(dataset), np.nan)
        fallbacks = []
        for group in pd.unique(groups):
            in_group = torch.as_tensor(groups == group)
            for k in torch.unique(targets[in_group]).tolist():
                queries = torch.nonzero(in_group & (targets == k)).flatten()
                pool = in_group & (labels == k)
                if self.require_predicted:
                    if bool((pool & (predicted == k)).any()):
                        pool = pool & (predicted == k)
                    elif bool(pool.any()):
                        fallbacks.append(f"{dataset.classes[k]!r}" + (f" in {group!r}" if self.match else ""))
                candidates = torch.nonzero(pool).flatten()
                if candidates.numel() == 0:
                    where = f" in group {group!r} of {self.match}" if self.match else ""
                    raise ValueError(
                        f"no image of target class {dataset.classes[k]!r}{where} to serve as a nearest neighbour"
                    )
                d = torch.cdist(feats[queries], feats[candidates])
                best = d.argmin(dim=1)
                neighbour[queries.numpy()] = candidates[best].numpy()
                distance[queries.numpy()] = d[torch.arange(queries.numel()), best].double().numpy()
        info = self._check_neighbours(neighbour, predicted, targets, fallbacks)
        counterfactuals = dataset.images[torch.as_tensor(neighbour)]
        extra = pd.DataFrame({"neighbour": neighbour, "embedding_distance": distance})
        return counterfactuals, targets, extra, {"space": self.space, "metric": self.metric, **info}

    def _check_neighbours(
        self, neighbour: np.ndarray, predicted: torch.Tensor, targets: torch.Tensor, fallbacks: list[str]
    ) -> dict:
        """Flip rate and reuse of the chosen neighbours; warnings when they make weak counterfactuals."""
        n = len(neighbour)
        flip_rate = float((predicted[torch.as_tensor(neighbour)] == targets).float().mean())
        _, reuse = np.unique(neighbour, return_counts=True)
        info = {
            "flip_rate": flip_rate,
            "n_distinct_neighbours": int(reuse.size),
            "max_neighbour_reuse": int(reuse.max()),
        }
        if fallbacks:
            warnings.warn(
                f"nearest: the classifier assigns no target-class image of {', '.join(fallbacks)} to that class; "
                "misclassified neighbours were used there",
                UserWarning,
                stacklevel=3,
            )
        if flip_rate < LOW_FLIP_RATE:
            warnings.warn(
                f"nearest: only {flip_rate:.0%} of the {n} neighbours are classified as their target class "
                "(a weak counterfactual set; keep require_predicted=True or check the classifier)",
                UserWarning,
                stacklevel=3,
            )
        if reuse.size < LOW_DISTINCT_SHARE * n:
            warnings.warn(
                f"nearest: {n} images share {reuse.size} distinct neighbours (one serves {int(reuse.max())}); "
                "the counterfactuals repeat, so their statistics count the same images many times",
                UserWarning,
                stacklevel=3,
            )
        return info
