"""The provider interface, its result type, and the quality table every provider reports.

A *counterfactual provider* turns an :class:`~chanstat.data.ImageSet` (and, for some providers,
a trained classifier) into one counterfactual image per real image: the same cell as it would
look in a target class. All providers share one call::

    provider = PROVIDERS["optimise"](model, l1=0.05, device="cuda")
    result = provider.generate(dataset, target_rule="auto")
    result.counterfactuals      # (N, C, H, W) float32
    result.quality              # tidy: sample x channel
    result.summary              # one row per channel

and every result carries the same quality table, so counterfactuals from any source can be
compared (classifier flip rate, distance to the real image per channel).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, cast

import numpy as np
import pandas as pd
import torch

from chanstat.counterfactual.targets import choose_targets

QUALITY_COLUMNS = (
    "sample",
    "channel",
    "mean_abs_diff",
    "change_share",
    "label",
    "counterfactual_target",
    "target_class",
    "predicted_label",
    "p_target",
    "p_target_real",
    "flipped",
    "success",
    "provider",
)
"""Columns of :attr:`CounterfactualResult.quality` (one row per sample and channel).

- ``sample`` -- index of the real image in the data set.
- ``channel`` -- channel name.
- ``mean_abs_diff`` -- mean over pixels of ``|x - x'|`` in that channel (data units).
- ``change_share`` -- that channel's share of the sample's total ``|x - x'|`` (sums to 1 over
  channels; NaN when ``x' == x``): where the provider put the change.
- ``label`` -- class index of the real image.
- ``counterfactual_target`` / ``target_class`` -- class of the counterfactual.
- ``predicted_label`` -- classifier's argmax on the counterfactual (-1 without a model).
- ``p_target`` -- ``softmax(f(x'))[target]`` (NaN without a model).
- ``p_target_real`` -- ``softmax(f(x))[target]``: how far the real image was from the target.
- ``flipped`` -- the classifier predicts the target class on the counterfactual.
- ``success`` -- ``p_target >= confidence`` (the provider's confidence; 0.5 unless set).
- ``provider`` -- name of the provider.
Provider-specific per-sample columns follow (e.g. ``neighbour`` for ``nearest``, ``n_steps``
for ``optimise``, ``n_candidates``, ``n_accepted``, ``candidate``, ... for ``generator``: see
:data:`chanstat.counterfactual.generator.CANDIDATE_COLUMNS`).
"""

SUMMARY_COLUMNS = ("provider", "channel", "n_samples", "mean_abs_diff", "change_share", "flip_rate", "success_rate")
"""Columns of :attr:`CounterfactualResult.summary` (one row per channel): ``mean_abs_diff`` and
``change_share`` are means of the per-sample values (NaN shares skipped); ``flip_rate`` and
``success_rate`` are fractions of samples (the same on every row, repeated so the table stays
tidy; NaN without a model). Providers that try several candidates per image (``generator``) add
``mean_candidates`` (candidates tried per image)."""


@dataclass
class CounterfactualResult:
    """Counterfactual images with their target classes and quality.

    Attributes
    ----------
    counterfactuals : torch.Tensor, shape (N, C, H, W), float32, on the CPU
    counterfactual_target : torch.Tensor, shape (N,), int64
    quality : pandas.DataFrame
        Tidy table, one row per (sample, channel); columns :data:`QUALITY_COLUMNS` plus
        provider-specific per-sample columns.
    summary : pandas.DataFrame
        One row per channel; columns :data:`SUMMARY_COLUMNS`.
    provider : str
    info : dict
        Provider-specific scalars (e.g. number of optimisation steps), JSON-serialisable.
    artifacts : dict
        What the run directory should keep besides the tables, by schema entry name (the
        ``generator`` provider: ``generator`` -- the trained network, which has ``save(path)``
        -- and ``generator_log``, its training log). Empty for the other providers.
    """

    counterfactuals: torch.Tensor
    counterfactual_target: torch.Tensor
    quality: pd.DataFrame
    summary: pd.DataFrame
    provider: str
    info: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)

    def summary_dict(self) -> dict[str, Any]:
        """Flip rate, success rate and mean distance per channel as plain numbers (for provenance)."""
        first = self.summary.iloc[0] if len(self.summary) else None
        return {
            "provider": self.provider,
            "n_samples": int(self.counterfactual_target.shape[0]),
            "flip_rate": None if first is None else _maybe_float(first["flip_rate"]),
            "success_rate": None if first is None else _maybe_float(first["success_rate"]),
            "mean_abs_diff": {str(r.channel): float(r.mean_abs_diff) for r in self.summary.itertuples()},
            "change_share": {str(r.channel): _maybe_float(r.change_share) for r in self.summary.itertuples()},
            **self.info,
        }


def _maybe_float(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, device="cpu", batch_size: int = 128) -> torch.Tensor:
    """``softmax(model(images))`` in batches, on ``device``; returns (N, K) float32 on the CPU."""
    device = torch.device(device)
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32)
        out.append(torch.softmax(model(batch).float(), dim=1).cpu())
    if not out:
        raise ValueError("no images to classify")
    return torch.cat(out)


def counterfactual_quality(
    images: torch.Tensor,
    counterfactuals: torch.Tensor,
    labels: torch.Tensor,
    counterfactual_target: torch.Tensor,
    channels: Sequence[str],
    classes: Sequence[str],
    model: torch.nn.Module | None = None,
    confidence: float = 0.5,
    provider: str = "unknown",
    extra: pd.DataFrame | None = None,
    device="cpu",
    batch_size: int = 128,
) -> pd.DataFrame:
    """Tidy quality table of counterfactuals: distance per channel and classifier flip.

    Parameters
    ----------
    images, counterfactuals : torch.Tensor, shape (N, C, H, W)
        Real images ``x`` and their counterfactuals ``x'``.
    labels, counterfactual_target : torch.Tensor, shape (N,)
        Classes of ``x`` and of ``x'``.
    channels, classes : names of the C channels and K classes.
    model : classifier returning logits (N, K); without it the classifier columns are missing
        values (``predicted_label`` -1, ``p_target`` NaN, ``flipped``/``success`` False).
    confidence : ``success`` means ``p_target >= confidence``.
    extra : DataFrame with N rows of provider-specific per-sample columns (repeated per channel).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`QUALITY_COLUMNS` (+ ``extra``'s), N * C rows ordered by sample, then channel.
    """
    if images.shape != counterfactuals.shape:
        raise ValueError(f"counterfactuals {tuple(counterfactuals.shape)} do not match images {tuple(images.shape)}")
    n, c = images.shape[:2]
    if len(channels) != c:
        raise ValueError(f"{c} channels in the images but {len(channels)} names: {list(channels)}")
    labels = torch.as_tensor(labels).to(torch.int64).cpu()
    counterfactual_target = torch.as_tensor(counterfactual_target).to(torch.int64).cpu()
    if labels.shape != (n,) or counterfactual_target.shape != (n,):
        raise ValueError(f"labels and counterfactual_target must have shape ({n},)")
    diffs = []
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].float()
        xc = counterfactuals[start : start + batch_size].float()
        diffs.append((x - xc).abs().mean(dim=(2, 3)))
    mean_abs = torch.cat(diffs).numpy() if n else np.zeros((0, c))
    if model is not None and n:
        p_cf = predict_proba(model, counterfactuals, device, batch_size)
        p_real = predict_proba(model, images, device, batch_size)
        rows = torch.arange(n)
        p_target = p_cf[rows, counterfactual_target].numpy().astype(np.float64)
        p_target_real = p_real[rows, counterfactual_target].numpy().astype(np.float64)
        predicted = p_cf.argmax(dim=1).numpy()
        flipped = predicted == counterfactual_target.numpy()
        success = p_target >= confidence
    else:
        p_target = np.full(n, np.nan)
        p_target_real = np.full(n, np.nan)
        predicted = np.full(n, -1)
        flipped = np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
    per_sample = pd.DataFrame(
        {
            "sample": np.arange(n, dtype=np.int64),
            "label": labels.numpy(),
            "counterfactual_target": counterfactual_target.numpy(),
            "target_class": [classes[k] for k in counterfactual_target.tolist()],
            "predicted_label": predicted.astype(np.int64),
            "p_target": p_target,
            "p_target_real": p_target_real,
            "flipped": flipped.astype(bool),
            "success": success.astype(bool),
            "provider": provider,
        }
    )
    if extra is not None:
        if len(extra) != n:
            raise ValueError(f"extra per-sample columns have {len(extra)} rows for {n} samples")
        clash = [col for col in extra.columns if col in per_sample.columns]
        if clash:
            raise ValueError(f"extra columns {clash} clash with the standard quality columns")
        per_sample = pd.concat([per_sample, extra.reset_index(drop=True)], axis=1)
        if "already_target" in per_sample:  # x' == x: nothing was flipped (optimise on an image already in the target)
            mask = per_sample["already_target"].to_numpy(dtype=bool)
            per_sample.loc[mask, ["flipped", "success"]] = False
    total = mean_abs.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, mean_abs / np.where(total > 0, total, 1.0), np.nan)
    per_channel = pd.DataFrame(
        {
            "sample": np.repeat(np.arange(n, dtype=np.int64), c),
            "channel": np.tile(np.asarray(list(channels), dtype=object), n),
            "mean_abs_diff": mean_abs.reshape(-1).astype(np.float64),
            "change_share": share.reshape(-1).astype(np.float64),
        }
    )
    quality = per_channel.merge(per_sample, on="sample", how="left", sort=False)
    ordered = list(QUALITY_COLUMNS) + [col for col in quality.columns if col not in QUALITY_COLUMNS]
    return quality[ordered]


def summarise_quality(quality: pd.DataFrame) -> pd.DataFrame:
    """Per-channel summary of a quality table: columns :data:`SUMMARY_COLUMNS`."""
    missing = [
        col for col in ("sample", "channel", "mean_abs_diff", "flipped", "success", "provider") if col not in quality
    ]
    if missing:
        raise ValueError(f"quality table lacks columns {missing}")
    per_sample = quality.drop_duplicates("sample")
    n = int(per_sample.shape[0])
    has_model = "p_target" in quality and bool(per_sample["p_target"].notna().any())
    flip_rate = float(per_sample["flipped"].mean()) if (n and has_model) else float("nan")
    success_rate = float(per_sample["success"].mean()) if (n and has_model) else float("nan")
    channel_order = list(dict.fromkeys(quality["channel"].tolist()))
    by_channel = quality.groupby("channel", sort=False)["mean_abs_diff"].mean()
    share = (
        quality.groupby("channel", sort=False)["change_share"].mean()
        if "change_share" in quality
        else pd.Series(np.nan, index=by_channel.index)
    )
    summary = pd.DataFrame(
        {
            "provider": [str(quality["provider"].iloc[0]) if len(quality) else ""] * len(channel_order),
            "channel": channel_order,
            "n_samples": [n] * len(channel_order),
            "mean_abs_diff": [float(by_channel[ch]) for ch in channel_order],
            "change_share": [float(share[ch]) for ch in channel_order],
            "flip_rate": [flip_rate] * len(channel_order),
            "success_rate": [success_rate] * len(channel_order),
        }
    )
    if "n_candidates" in quality:  # providers that try several candidates per image (generator)
        summary["mean_candidates"] = float(per_sample["n_candidates"].mean()) if n else float("nan")
    return summary


class CounterfactualProvider(ABC):
    """Base class of every counterfactual source.

    Subclasses set ``name`` and ``needs_model`` and implement :meth:`_generate`; provider
    options are constructor keyword arguments (so a config table maps onto them one to one).

    Parameters
    ----------
    model : classifier (logits out), in eval mode; required when ``needs_model``, otherwise used
        only to fill the classifier columns of the quality table.
    device : where batches are evaluated (``"cpu"``, ``"cuda"``, a torch.device).
    batch_size : images per forward pass.
    confidence : a counterfactual is a *success* when ``p(target) >= confidence``.
    progress : show a progress bar for long loops.
    """

    name: ClassVar[str] = "base"
    needs_model: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        *,
        device="cpu",
        batch_size: int = 64,
        confidence: float = 0.5,
        progress: bool = False,
    ):
        if self.needs_model and model is None:
            raise ValueError(f"counterfactual provider {self.name!r} needs a trained classifier (model=None given)")
        if not 0.0 < float(confidence) <= 1.0:
            raise ValueError(f"confidence must lie in (0, 1]; got {confidence}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        from chanstat.models.adapter import as_model

        self.model = as_model(model).eval() if model is not None else None
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.confidence = float(confidence)
        self.progress = bool(progress)

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options the constructor accepts (besides ``model``)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                for p in inspect.signature(cast(Any, klass).__init__).parameters.values():
                    if p.kind is p.KEYWORD_ONLY and p.name not in names:
                        names.append(p.name)
        return names

    def targets(self, dataset, target_rule: str = "auto") -> torch.Tensor:
        """Counterfactual class per image by rule ``target_rule`` (see :func:`choose_targets`)."""
        probabilities = None
        rule = target_rule
        needs_probs = rule == "most_likely" or (rule == "auto" and len(dataset.classes) > 2) or rule in dataset.classes
        if needs_probs and self.model is not None:
            probabilities = predict_proba(self.model, dataset.images, self.device, self.batch_size)
        return choose_targets(dataset.labels, dataset.classes, rule, probabilities)

    def generate(self, dataset, target_rule: str = "auto") -> CounterfactualResult:
        """Counterfactuals for every image of ``dataset``.

        Parameters
        ----------
        dataset : ImageSet with N images (C, H, W).
        target_rule : how each image's counterfactual class is chosen (see :func:`choose_targets`);
            providers whose source fixes it (``oracle``, ``from_files`` with a target column) ignore it.

        Returns
        -------
        CounterfactualResult
        """
        if len(dataset) == 0:
            raise ValueError("the data set is empty: nothing to make counterfactuals for")
        counterfactuals, counterfactual_target, extra, info = self._generate(dataset, target_rule)
        counterfactuals = torch.as_tensor(counterfactuals).detach().to("cpu", torch.float32)
        counterfactual_target = torch.as_tensor(counterfactual_target).to("cpu", torch.int64)
        if counterfactuals.shape != dataset.images.shape:
            raise ValueError(
                f"provider {self.name!r} returned counterfactuals of shape {tuple(counterfactuals.shape)} "
                f"for images of shape {tuple(dataset.images.shape)}"
            )
        same = counterfactual_target == dataset.labels
        if bool(same.any()):
            raise ValueError(
                f"{int(same.sum())} counterfactual target classes equal the real image's class "
                f"(first samples: {torch.nonzero(same).flatten()[:5].tolist()}); a counterfactual must belong to another class"
            )
        quality = counterfactual_quality(
            dataset.images,
            counterfactuals,
            dataset.labels,
            counterfactual_target,
            dataset.channels,
            dataset.classes,
            model=self.model,
            confidence=self.confidence,
            provider=self.name,
            extra=extra,
            device=self.device,
            batch_size=max(self.batch_size, 1),
        )
        return CounterfactualResult(
            counterfactuals=counterfactuals,
            counterfactual_target=counterfactual_target,
            quality=quality,
            summary=summarise_quality(quality),
            provider=self.name,
            info=info or {},
            artifacts=self.artifacts(),
        )

    def artifacts(self) -> dict[str, Any]:
        """Objects for the run directory from the last :meth:`generate` (see ``CounterfactualResult.artifacts``)."""
        return {}

    @abstractmethod
    def _generate(self, dataset, target: str) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame | None, dict | None]:
        """Return ``(counterfactuals (N,C,H,W), counterfactual_target (N,), extra per-sample columns or None, info)``."""
