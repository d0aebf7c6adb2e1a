"""Attribution mass per sample and channel."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from chanstat.vocabulary import mass_transform

REQUIRED_META = ("Metadata_Plate", "Metadata_Well", "Metadata_Class")
COUNTERFACTUAL_CLASS = "Metadata_Counterfactual_Class"
DEFAULT_METHOD = "attribution"
#: columns channel_mass writes itself: a metadata column of the same name would overwrite them
RESERVED = ("method", "channel", "mass", "share", "transition")


def _check_channels(channels: Sequence[str], n_channels: int) -> list[str]:
    names = [str(c) for c in channels]
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names given for {n_channels} channels in the attributions")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique; got {names}")
    return names


def _check_meta(meta: pd.DataFrame, n: int) -> pd.DataFrame:
    if not isinstance(meta, pd.DataFrame):
        raise TypeError(f"meta must be a pandas DataFrame; got {type(meta).__name__}")
    missing = [c for c in REQUIRED_META if c not in meta.columns]
    if missing:
        raise KeyError(f"meta lacks the metadata column(s) {missing} (has {list(meta.columns)})")
    if len(meta) != n:
        raise ValueError(f"meta has {len(meta)} rows but the attributions hold {n} samples")
    clash = [c for c in RESERVED if c in meta.columns]
    if clash:
        raise ValueError(
            f"meta has column(s) {clash}, which channel_mass writes itself; rename them (e.g. to "
            f"Metadata_{clash[0].capitalize()}) so they cannot overwrite its output"
        )
    if "sample" in meta.columns and meta["sample"].duplicated().any():
        raise ValueError(
            f"meta column 'sample' (the sample id) repeats {meta['sample'][meta['sample'].duplicated()].iloc[0]!r}; ids must be unique"
        )
    return meta.reset_index(drop=True)


def _mass_one(
    attributions: np.ndarray, channels: Sequence[str], meta: pd.DataFrame, transform: str, method: str
) -> pd.DataFrame:
    a = np.asarray(attributions)
    if a.ndim != 4:
        raise ValueError(f"attributions for {method!r} must have shape (N, C, H, W); got {a.shape}")
    n, c = a.shape[:2]
    if c == 1:
        raise ValueError(
            f"attributions for {method!r} have one channel (N, 1, H, W): a channel-agnostic map has no channel mass"
        )
    names = _check_channels(channels, c)
    meta = _check_meta(meta, n)
    if not np.isfinite(a).all():
        raise ValueError(f"attributions for {method!r} hold {int((~np.isfinite(a)).sum())} NaN/inf values")
    part = mass_transform(transform)(a)
    mass = part.sum(axis=(2, 3), dtype=np.float64)  # (N, C)
    total = mass.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, mass / total, np.nan)
    n_empty = int((total[:, 0] <= 0).sum())
    if n_empty:
        warnings.warn(
            f"{n_empty} of {n} samples of {method!r} have zero total attribution mass"
            f"{'' if transform == 'absolute' else f' ({transform})'}; their share is NaN",
            stacklevel=3,
        )
    sample_ids = meta["sample"].to_numpy() if "sample" in meta.columns else np.arange(n)
    table = pd.DataFrame(
        {
            "sample": np.repeat(sample_ids, c),
            "method": method,
            "channel": np.tile(np.asarray(names, dtype=object), n),
            "mass": mass.ravel(),
            "share": share.ravel(),
        }
    )
    table["channel"] = table["channel"].astype("string")
    extra = meta.drop(columns=["sample"], errors="ignore")
    extra = extra.loc[np.repeat(np.arange(n), c)].reset_index(drop=True)
    table = pd.concat([table, extra], axis=1)
    if COUNTERFACTUAL_CLASS in meta.columns:
        real = meta["Metadata_Class"].astype("string").to_numpy()
        counter = meta[COUNTERFACTUAL_CLASS].astype("string").to_numpy()
        transition = pd.array([f"{r} → {t}" for r, t in zip(real, counter)], dtype="string")
        table["transition"] = np.repeat(np.asarray(transition, dtype=object), c)
        table["transition"] = table["transition"].astype("string")
    else:
        table["transition"] = pd.array([pd.NA] * len(table), dtype="string")
    return table


def channel_mass(
    maps: np.ndarray | Mapping[str, np.ndarray],
    channels: Sequence[str],
    meta: pd.DataFrame,
    *,
    transform: str = "absolute",
    method: str | None = None,
) -> pd.DataFrame:
    """Attribution mass of every sample and channel, and its share of the sample's total.

    Parameters
    ----------
    maps : ndarray (N, C, H, W), or dict method -> ndarray (N, C, H, W)
        Channel-resolved attribution maps (any sign). Channel-agnostic maps (N, 1, H, W) are
        rejected: they carry no channel information.
    channels : sequence of str, length C
        Channel names in the order of axis 1.
    meta : DataFrame, N rows (row i describes sample i)
        Must hold ``Metadata_Plate``, ``Metadata_Well`` and ``Metadata_Class``; may hold
        ``Metadata_Counterfactual_Class`` (class of the counterfactual the map was computed
        against) and a ``sample`` column (unique sample id; default 0..N-1). All its columns
        are carried into the output. Columns named ``method``, ``channel``, ``mass``,
        ``share`` or ``transition`` are an error (they would overwrite the output).
    transform : ``"absolute"`` (default: ``|a|``), ``"positive"`` (``max(a, 0)``) or
        ``"signed"`` (see :data:`chanstat.vocabulary.MASS_TRANSFORMS`).
    method : str, optional
        Value of the ``method`` column for an array input (default ``"attribution"``). Must be
        left out for a dict input, whose keys name the methods.

    Returns
    -------
    DataFrame, one row per (method, sample, channel), in sample-then-channel order:

    ``sample``
        sample id.
    ``method``
        attribution method.
    ``channel``
        channel name.
    ``mass``
        sum over pixels of ``|a|`` (or of ``max(a, 0)``), float64.
    ``share``
        ``mass / sum over channels of mass`` (sums to 1 per sample; NaN, with a warning, when
        the sample's total mass is 0).
    metadata columns
        every column of ``meta`` (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Class``, ...).
    ``transition``
        ``"<Metadata_Class> → <Metadata_Counterfactual_Class>"``, e.g. ``"control → treated"``;
        missing (``<NA>``) when ``meta`` has no counterfactual class.
    """
    if isinstance(maps, Mapping):
        if method is not None:
            raise ValueError("pass `method` only with a single array; a dict's keys name the methods")
        if not maps:
            raise ValueError("no attribution maps given (empty dict)")
        tables = [_mass_one(a, channels, meta, transform, str(name)) for name, a in maps.items()]
        return pd.concat(tables, ignore_index=True)
    return _mass_one(maps, channels, meta, transform, DEFAULT_METHOD if method is None else str(method))
