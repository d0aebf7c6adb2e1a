"""The in-memory image container every stage passes along."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from chanstat.rundir import register_codec
from chanstat.tensors import as_images, as_target

REQUIRED_META = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


@dataclass
class ImageSet:
    """Images with their channel names, labels and per-image metadata.

    Parameters
    ----------
    images : torch.Tensor, shape (N, C, H, W), float32
        Intensities, usually scaled to [0, 1] per plate and channel (see
        :mod:`chanstat.data.scaling`; ``meta.attrs["scaling"]`` records how).
    channels : sequence of str, length C
        Stain names, unique (e.g. ``["DNA", "ER", "RNA", "AGP", "Mito"]``).
    labels : torch.Tensor, shape (N,), int64
        Class index of every image.
    classes : sequence of str
        Class names; ``labels`` index into it.
    meta : pandas.DataFrame, N rows
        CellProfiler-style metadata; must hold ``Metadata_Plate``, ``Metadata_Well``,
        ``Metadata_Site``. A ``Metadata_Class`` column (class name) is added if missing.
    counterfactuals : torch.Tensor, shape (N, C, H, W), optional
        The same cells as they would look in ``counterfactual_target``' class.
    counterfactual_target : torch.Tensor, shape (N,), optional
        Class of every counterfactual (required with ``counterfactuals``).
    signal_masks : torch.Tensor, shape (N, C, H, W), bool, optional
        Where the class difference was planted (ground truth for localisation).
    objects : dict of str to numpy.ndarray, shape (N, H, W), int32, optional
        Label images of segmented objects (``"nuclei"``, ``"cells"``); 0 is background.
    """

    images: torch.Tensor
    channels: Sequence[str]
    labels: torch.Tensor
    classes: Sequence[str]
    meta: pd.DataFrame
    counterfactuals: torch.Tensor | None = None
    counterfactual_target: torch.Tensor | None = None
    signal_masks: torch.Tensor | None = None
    objects: dict[str, np.ndarray] | None = field(default=None)

    def __post_init__(self) -> None:
        self.images = as_images(self.images, "images", allow_empty=True)
        n, c, h, w = self.images.shape
        self.channels = [str(ch) for ch in self.channels]
        if len(self.channels) != c:
            raise ValueError(
                f"images have {c} channels but {len(self.channels)} channel names were given: {self.channels}"
            )
        dupes = sorted({ch for ch in self.channels if self.channels.count(ch) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique; repeated: {dupes}")
        self.classes = [str(k) for k in self.classes]
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and unique; got {self.classes}")
        self.labels = as_target(self.labels, n, "labels", n_classes=len(self.classes))
        if not isinstance(self.meta, pd.DataFrame):
            raise TypeError("meta must be a pandas DataFrame")
        if len(self.meta) != n:
            raise ValueError(f"meta has {len(self.meta)} rows but there are {n} images")
        missing = [col for col in REQUIRED_META if col not in self.meta.columns]
        if missing:
            raise ValueError(f"meta is missing required columns {missing}")
        self.meta = self.meta.reset_index(drop=True).copy()
        names = [self.classes[i] for i in self.labels.tolist()]
        if "Metadata_Class" not in self.meta.columns:
            self.meta["Metadata_Class"] = names
        else:
            given = self.meta["Metadata_Class"].astype(str).tolist()
            wrong = [i for i, (a, b) in enumerate(zip(given, names)) if a != b]
            if wrong:  # the labels are the truth every verb uses: the column follows them, and says so
                import warnings

                i = wrong[0]
                warnings.warn(
                    f"meta column Metadata_Class contradicted labels in {len(wrong)} image(s) (first: image "
                    f"{i} had {given[i]!r}, label {names[i]!r}); it now holds the labels' class names",
                    UserWarning,
                    stacklevel=3,
                )
                self.meta["Metadata_Class"] = names
        if self.counterfactuals is not None:
            self.counterfactuals = as_images(self.counterfactuals, "counterfactuals", allow_empty=True)
            if self.counterfactuals.shape != self.images.shape:
                raise ValueError(
                    "counterfactuals must match images in shape: "
                    f"{tuple(self.counterfactuals.shape)} vs {tuple(self.images.shape)}"
                )
            if self.counterfactual_target is None:
                raise ValueError("counterfactual_target are required with counterfactuals")
            self.counterfactual_target = as_target(
                self.counterfactual_target, n, "counterfactual_target", n_classes=len(self.classes)
            )
        elif self.counterfactual_target is not None:
            self.counterfactual_target = as_target(
                self.counterfactual_target, n, "counterfactual_target", n_classes=len(self.classes)
            )
        if self.signal_masks is not None:
            m = torch.as_tensor(
                np.asarray(self.signal_masks) if not isinstance(self.signal_masks, torch.Tensor) else self.signal_masks
            )
            if m.shape != self.images.shape:
                raise ValueError(
                    f"signal_masks must match images in shape: {tuple(m.shape)} vs {tuple(self.images.shape)}"
                )
            self.signal_masks = m.to(torch.bool)
        if self.objects is not None:
            for name, lab in self.objects.items():
                lab = np.asarray(lab)
                if lab.shape != (n, h, w):
                    raise ValueError(f"objects[{name!r}] must have shape {(n, h, w)}; got {lab.shape}")
                self.objects[name] = lab.astype(np.int32, copy=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.images.shape)  # type: ignore[return-value]

    def channel_index(self, names: str | Sequence[str]) -> list[int]:
        """Indices of the named channels; raises naming the unknown ones."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [nm for nm in names if nm not in self.channels]
        if unknown:
            raise KeyError(f"unknown channel names {unknown}; this set has {list(self.channels)}")
        return [self.channels.index(nm) for nm in names]

    def subset(self, index) -> "ImageSet":
        """A new ImageSet holding the images at ``index`` (ints or a boolean mask)."""
        idx = torch.as_tensor(np.asarray(index))
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx, as_tuple=False).flatten()
        idx = idx.to(torch.int64)
        take = lambda t: None if t is None else t[idx]  # noqa: E731
        return ImageSet(
            images=self.images[idx],
            channels=list(self.channels),
            labels=self.labels[idx],
            classes=list(self.classes),
            meta=self.meta.iloc[idx.numpy()].reset_index(drop=True),
            counterfactuals=take(self.counterfactuals),
            counterfactual_target=take(self.counterfactual_target),
            signal_masks=take(self.signal_masks),
            objects=None if self.objects is None else {k: v[idx.numpy()] for k, v in self.objects.items()},
        )

    def select_channels(self, names: Sequence[str]) -> "ImageSet":
        """A new ImageSet with only the named channels, in the given order."""
        ci = self.channel_index(names)
        pick = lambda t: None if t is None else t[:, ci]  # noqa: E731
        return ImageSet(
            images=self.images[:, ci],
            channels=[self.channels[i] for i in ci],
            labels=self.labels,
            classes=list(self.classes),
            meta=self.meta,
            counterfactuals=pick(self.counterfactuals),
            counterfactual_target=self.counterfactual_target,
            signal_masks=pick(self.signal_masks),
            objects=self.objects,
        )

    def summary(self) -> pd.DataFrame:
        """Tidy per-class, per-channel intensity summary (mean, sd, n_images, n_wells)."""
        rows = []
        arr = self.images.numpy()
        for k, cls in enumerate(self.classes):
            sel = (self.labels == k).numpy()
            n_wells = int(self.meta.loc[sel, ["Metadata_Plate", "Metadata_Well"]].drop_duplicates().shape[0])
            for ci, ch in enumerate(self.channels):
                vals = arr[sel, ci]
                rows.append(
                    dict(
                        class_name=cls,
                        channel=ch,
                        n_images=int(sel.sum()),
                        n_wells=n_wells,
                        mean_intensity=float(vals.mean()) if vals.size else float("nan"),
                        sd_intensity=float(vals.std()) if vals.size else float("nan"),
                    )
                )
        return pd.DataFrame(rows)


def _read_dataset(run, rows=None) -> ImageSet:
    """The run directory's ``dataset.zarr`` + ``meta.parquet`` as an ImageSet (its codec's reader)."""
    return ImageSet(**run.dataset_parts(rows))


def _write_dataset(run, dataset) -> None:
    run.write_dataset(dataset)


register_codec("dataset", write=_write_dataset, read=_read_dataset)
