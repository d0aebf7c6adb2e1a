"""Scaling fields read one at a time: the same numbers as :func:`chanstat.data.scaling.scale_images`,
without holding every raw field in memory.

:func:`scale_images` takes a list of raw fields; a reader of an OME-Zarr plate would need the
whole selection in memory twice (raw and scaled). :func:`scale_lazily` takes a function that
reads field ``i`` instead: per plate it first reads the pixels the pooled percentiles use (the
same regular grid :func:`~chanstat.data.scaling.pooled_limits` takes), then reads, scales and
stores one field at a time into the output array. Peak memory is the output plus one plate's
percentile sample (at most :data:`~chanstat.data.scaling.POOLED_PIXELS` pixels per channel).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from chanstat.data.scaling import (
    POOLED_PIXELS,
    SCALINGS,
    apply_limits,
    check_percentiles,
    rescale_percentiles,
)


def scale_lazily(
    read: Callable[[int], np.ndarray],
    shape: tuple[int, int, int],
    plates: Sequence[Any],
    channels: Sequence[str],
    scaling: str = "plate",
    percentiles: Sequence[float] = (1.0, 99.5),
    control: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict]:
    """Scale fields read one by one; returns ``(images, record)`` as :func:`scale_images` does.

    Parameters
    ----------
    read : ``read(i)`` -> raw field ``i`` as (C, H, W) (any numeric dtype), ``shape`` each.
    shape : (C, H, W) of every field.
    plates : N plate names (the fields of one plate share their limits).
    channels, scaling, percentiles, control : as in :func:`chanstat.data.scaling.scale_images`.
    """
    from tqdm.auto import tqdm

    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {list(SCALINGS)}; got {scaling!r}")
    low, high = check_percentiles(percentiles)
    plate_names = np.asarray([str(p) for p in plates], dtype=object)
    n = len(plate_names)
    out = np.empty((n, *shape), dtype=np.float32)
    record: dict = {"method": scaling, "percentiles": [low, high], "control": control is not None}
    bar = tqdm(total=n, desc="reading fields", disable=not progress)

    def field(i: int) -> np.ndarray:
        raw = np.asarray(read(i), dtype=np.float32)
        if raw.shape != tuple(shape):
            raise ValueError(f"field {i} has shape {raw.shape}; the others are {tuple(shape)}")
        return raw

    if scaling in ("none", "image"):
        for i in range(n):
            out[i] = field(i) if scaling == "none" else rescale_percentiles(field(i), low, high)
            bar.update()
        bar.close()
        return out, record
    control = None if control is None else np.asarray(control, dtype=bool)
    limits: dict = {}
    for plate in dict.fromkeys(plate_names):
        members = np.flatnonzero(plate_names == plate)
        reference = members if control is None else members[control[members]]
        if reference.size == 0:
            raise ValueError(f"plate {plate!r} has no control images to compute its scaling from")
        step = max(1, math.ceil(math.sqrt(reference.size * shape[1] * shape[2] / POOLED_PIXELS)))
        kept: dict[int, np.ndarray] = {}
        samples = []
        for ref in reference:
            raw = field(int(ref))
            samples.append(raw[:, ::step, ::step])
            if step == 1:  # every pixel counts: the sample is the field, keep it for the second pass
                kept[int(ref)] = raw
        lo = np.empty(shape[0])
        hi = np.empty(shape[0])
        for c in range(shape[0]):
            lo[c], hi[c] = np.percentile(np.concatenate([s[c].ravel() for s in samples]), [low, high])
        del samples
        for member in members:
            raw = kept.pop(int(member)) if int(member) in kept else field(int(member))
            out[member] = apply_limits(raw, lo, hi)
            bar.update()
        limits[str(plate)] = {str(ch): [float(a), float(b)] for ch, a, b in zip(channels, lo, hi)}
    bar.close()
    record["limits"] = limits
    return out, record
