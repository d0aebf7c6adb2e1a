"""The stage contract: what a pipeline stage declares, and how per-image outputs are merged.

A stage is a :class:`Stage` value in its subpackage's ``stage.py`` (``STAGE = Stage(...)``). It
declares

- ``config``: the pydantic model of its ``[name]`` config section (validated before any stage runs);
- ``reads`` / ``writes``: run-directory entries (names of :data:`chanstat.schema.SCHEMA`);
- ``per_image(ctx, part) -> outputs`` (optional): work that depends on each image alone. The
  pipeline calls it once on every selected image, or :mod:`chanstat.compute` calls it on
  shards of them; the stage cannot tell the difference;
- ``whole_set(ctx, outputs) -> (outputs, info)`` (optional): work over the whole set (tests,
  pooled metrics, training), never sharded. It receives the merged per-image outputs and
  returns everything the stage writes plus the provenance ``info``.

The pipeline reads inputs from the run directory, calls the two functions, writes the outputs
through :class:`chanstat.rundir.RunDirectory` (which validates them against the schema) and
records provenance. This module never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from chanstat.schema import SCHEMA, ArraySpec, TableSpec


@dataclass
class Arrays:
    """A group of named arrays (one Zarr group in the run directory).

    Attributes
    ----------
    arrays : name -> ndarray whose first axis is the image axis.
    attrs : name -> JSON-serialisable attributes of that array.
    group_attrs : attributes of the whole group.
    samples : the data-set rows the arrays' first axis holds, when not every image
        (e.g. DAC masks of a balanced subset); ``None`` means one row per image, in order.
    """

    arrays: dict[str, np.ndarray]
    attrs: dict[str, dict] = field(default_factory=dict)
    group_attrs: dict[str, Any] = field(default_factory=dict)
    samples: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.samples is not None:
            self.samples = np.asarray(self.samples, dtype=np.int64)
            for name, arr in self.arrays.items():
                if arr.shape[0] != len(self.samples):
                    raise ValueError(f"array {name!r} has {arr.shape[0]} rows but samples lists {len(self.samples)}")


@dataclass
class Part:
    """The images one ``per_image`` call works on.

    Attributes
    ----------
    rows : int64 array
        Data-set rows of these images (sorted). Per-image tables must give ``sample`` as
        these row numbers (``part.rows[local_index]``).
    dataset : ImageSet
        Those images only, in the order of ``rows``.
    inputs : dict
        Upstream per-image results for these rows, by schema name (e.g. ``"attributions"``
        -> {method: ndarray (len(rows), C|1, H, W)}).
    """

    rows: np.ndarray
    dataset: Any
    inputs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


Outputs = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage (see the module docstring).

    Attributes
    ----------
    name : the stage's name and config section.
    config : pydantic model class of the ``[name]`` section.
    reads : run-directory entries the stage needs.
    writes : run-directory entries it may write (every output must be listed).
    per_image : ``per_image(ctx, part) -> outputs``, or None.
    whole_set : ``whole_set(ctx, outputs) -> (outputs, info)``, or None (then the merged
        per-image outputs are the stage's outputs and its info is empty).
    select : ``select(ctx) -> rows | None``: the images ``per_image`` covers when that is a
        choice over the whole set (None: every image).
    part_inputs : entries of ``reads`` that hold one row per image and are sliced into
        :attr:`Part.inputs`.
    always : runs whether or not its section is present (data, model).
    sections : config sections the stage reads (default: its own); its fingerprint follows
        every one of them, so a change in any re-runs it on ``--resume``.
    reads_all : the stage reads every entry written before it (the report); it re-runs
        whenever any earlier stage re-ran.
    """

    name: str
    config: type
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    per_image: Callable[[Any, Part], Outputs] | None = None
    whole_set: Callable[[Any, Outputs], tuple[Outputs, dict]] | None = None
    select: Callable[[Any], np.ndarray | None] | None = None
    part_inputs: tuple[str, ...] = ()
    always: bool = False
    sections: tuple[str, ...] = ()
    reads_all: bool = False

    def __post_init__(self) -> None:
        if not self.sections:
            object.__setattr__(self, "sections", (self.name,))
        elif self.name not in self.sections:
            object.__setattr__(self, "sections", (self.name, *self.sections))
        unknown = [n for n in (*self.reads, *self.writes) if n not in SCHEMA]
        if unknown:
            raise ValueError(
                f"stage {self.name!r} names entries {unknown} that chanstat.schema.SCHEMA does not declare"
            )
        if self.per_image is None and self.whole_set is None:
            raise ValueError(f"stage {self.name!r} needs a per_image or a whole_set function")

    def check_outputs(self, outputs: Mapping[str, Any]) -> None:
        extra = [n for n in outputs if n not in self.writes]
        if extra:
            raise ValueError(f"stage {self.name!r} produced {extra}, which it does not declare in writes={self.writes}")


def load_stage(ref: str) -> Stage:
    """The :class:`Stage` at ``"package.module:NAME"`` (how workers find a stage by name)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr or "STAGE")


# ---------------------------------------------------------------------------------------------
# merging the outputs of several parts (shards) into one
# ---------------------------------------------------------------------------------------------
def merge_parts(parts: list[Outputs]) -> Outputs:
    """Merge per-image outputs of parts given in row order.

    Tables are concatenated and put in the row order their schema declares (string columns
    by first appearance, numbers ascending, stable); :class:`Arrays` are concatenated along
    the image axis. A single part is returned as it is, so the unsharded path and a one-shard
    run give identical results.
    """
    parts = [p for p in parts if p]
    if not parts:
        return {}
    if len(parts) == 1:
        return dict(parts[0])
    names: list[str] = []
    for p in parts:
        names += [n for n in p if n not in names]
    merged: Outputs = {}
    for name in names:
        values = [p[name] for p in parts if name in p]
        spec = SCHEMA[name]
        if isinstance(spec, TableSpec):
            merged[name] = order_rows(pd.concat(values, ignore_index=True), spec.order)
        elif isinstance(spec, ArraySpec):
            merged[name] = _merge_arrays(name, values)
        else:
            raise TypeError(f"{name!r} ({type(spec).__name__}) is not a per-image output and cannot be merged")
    return merged


def order_rows(table: pd.DataFrame, order: tuple[str, ...]) -> pd.DataFrame:
    """Stable sort by ``order``: string columns by first appearance, others ascending."""
    keys = [c for c in order if c in table.columns]
    if not keys or not len(table):
        return table.reset_index(drop=True)
    ranks = {}
    for c in keys:
        col = table[c]
        numeric = pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype)
        ranks[c] = col.to_numpy() if numeric else pd.factorize(col, sort=False)[0]
    position = pd.DataFrame(ranks).sort_values(keys, kind="stable").index.to_numpy()
    return table.iloc[position].reset_index(drop=True)


def _merge_arrays(name: str, values: list[Arrays]) -> Arrays:
    first = values[0]
    keys = list(first.arrays)
    for v in values[1:]:
        keys += [k for k in v.arrays if k not in keys]
    missing = [k for k in keys if any(k not in v.arrays for v in values)]
    if missing:
        raise ValueError(f"{name}: arrays {missing} are missing from some parts")
    arrays = {k: np.concatenate([v.arrays[k] for v in values], axis=0) for k in keys}
    with_samples = [v.samples is not None for v in values]
    if any(with_samples) and not all(with_samples):
        raise ValueError(f"{name}: some parts list their samples and some do not")
    samples = np.concatenate([v.samples for v in values]) if all(with_samples) else None
    attrs = {k: next(v.attrs[k] for v in values if k in v.attrs) for k in keys if any(k in v.attrs for v in values)}
    return Arrays(arrays, attrs=attrs, group_attrs=dict(first.group_attrs), samples=samples)


def slice_inputs(inputs: Mapping[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """Rows of per-image inputs (Arrays, dicts of arrays, tables with ``sample``)."""
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, Arrays):
            out[name] = Arrays(
                {k: a[rows] for k, a in value.arrays.items()}, dict(value.attrs), dict(value.group_attrs)
            )
        elif isinstance(value, pd.DataFrame):
            out[name] = value[value["sample"].isin(rows)].reset_index(drop=True)
        else:
            raise TypeError(f"per-image input {name!r} of type {type(value).__name__} cannot be sliced by rows")
    return out


def balanced_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted rows of at most ``n`` images, classes taking turns (seeded); every row when ``n`` is None.

    How stages choose a class-balanced subset of images (DAC pairs, faithfulness images,
    randomisation checks), so the same ``n`` and seed always pick the same images.
    """
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if n < 1:
        raise ValueError(f"a subset needs at least one image; got n={n}")
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n:
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return np.sort(np.asarray(chosen, dtype=np.int64))
