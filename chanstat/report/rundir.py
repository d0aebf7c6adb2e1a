"""Read-only access to a run directory's files, for the report.

The report never imports torch and never re-runs a model: everything it shows comes from the
files the stages wrote (Parquet tables, Zarr arrays, JSON, TOML). ``RunDirectory`` caches what
it reads, so a section can ask for the same table twice without reading it twice.
"""
from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Which stage writes which file the report reads (used for the "stage not run" notes).
FILE_STAGE: dict[str, str] = {
    "config.toml": "run",
    "provenance.json": "run",
    "dataset.zarr": "data",
    "meta.parquet": "data",
    "data_summary.parquet": "data",
    "training_history.parquet": "model",
    "counterfactual_quality.parquet": "counterfactual",
    "counterfactual_summary.parquet": "counterfactual",
    "attributions.zarr": "attribution",
    "dac_curves.parquet": "dac",
    "dac_scores.parquet": "dac",
    "dac_masks.zarr": "dac",
    "dac_sweep.parquet": "dac",
    "localisation.parquet": "metrics",
    "faithfulness_curves.parquet": "metrics",
    "channel_mass.parquet": "stats",
    "channel_tests.parquet": "stats",
    "channel_share_ci.parquet": "stats",
    "map_similarity.parquet": "stats",
    "strategy_comparison.parquet": "stats",
    "cp_differential.parquet": "cellprofiler",
    "channel_enrichment.parquet": "cellprofiler",
    "compartment_channel.parquet": "cellprofiler",
    "concordance.parquet": "cellprofiler",
    "concordance_ranks.parquet": "cellprofiler",
}


class RunDirectory:
    """The files of one run directory, read lazily and cached.

    Parameters
    ----------
    path : run directory written by ``chanstat.pipeline.run`` (or any folder holding some of
        its files; absent files are reported by :meth:`has`, never guessed).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"run directory not found: {self.path}")
        self._tables: dict[str, pd.DataFrame] = {}

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # ---- presence -------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        """Whether file ``name`` (e.g. ``"dac_scores.parquet"``) exists and is not empty."""
        p = self.path / name
        if p.is_dir():
            return any(p.iterdir())
        return p.is_file() and p.stat().st_size > 0

    def missing(self, *names: str) -> list[str]:
        """The subset of ``names`` that is absent, in the order given."""
        return [n for n in names if not self.has(n)]

    # ---- readers --------------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """A Parquet table (a copy, so callers may modify it)."""
        if name not in self._tables:
            if not self.has(name):
                raise FileNotFoundError(f"{name} is missing from {self.path}")
            self._tables[name] = pd.read_parquet(self.path / name)
        return self._tables[name].copy()

    def array_names(self, name: str) -> list[str]:
        """Names of the arrays in the Zarr group ``name``."""
        return sorted(self._group(name).array_keys())

    def array(self, name: str, key: str, samples: Any = None) -> np.ndarray:
        """Array ``key`` of Zarr group ``name``; ``samples`` selects along the first axis."""
        arr = self._group(name)[key]
        if samples is None:
            return np.asarray(arr[...])
        idx = np.asarray(samples, dtype=np.int64)
        if idx.size == 0:
            return np.zeros((0,) + tuple(arr.shape[1:]), dtype=arr.dtype)
        if idx.min() < 0 or idx.max() >= arr.shape[0]:
            raise IndexError(f"{name}/{key} has {arr.shape[0]} rows; asked for rows {idx.tolist()}")
        # read the smallest contiguous block, then pick rows (zarr reads by chunk anyway)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        block = np.asarray(arr[lo:hi])
        return block[idx - lo]

    def array_shape(self, name: str, key: str) -> tuple[int, ...]:
        return tuple(self._group(name)[key].shape)

    def array_attrs(self, name: str, key: str) -> dict:
        return dict(self._group(name)[key].attrs)

    def group_attrs(self, name: str) -> dict:
        return dict(self._group(name).attrs)

    def _group(self, name: str):
        import zarr

        if not self.has(name):
            raise FileNotFoundError(f"{name} is missing from {self.path}")
        return zarr.open_group(str(self.path / name), mode="r")

    @cached_property
    def provenance(self) -> dict:
        """``provenance.json`` as a dict ({} when absent)."""
        import json

        p = self.path / "provenance.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    @cached_property
    def config(self) -> dict:
        """``config.toml`` as a dict ({} when absent)."""
        p = self.path / "config.toml"
        if not p.is_file():
            return {}
        with p.open("rb") as fh:
            return tomllib.load(fh)

    def config_text(self) -> str:
        p = self.path / "config.toml"
        return p.read_text() if p.is_file() else ""

    # ---- dataset facts --------------------------------------------------------------------
    @cached_property
    def channels(self) -> list[str]:
        """Channel names, from the data set, else the attributions, else channel_mass."""
        for store in ("dataset.zarr", "attributions.zarr"):
            if self.has(store):
                attrs = self.group_attrs(store)
                if attrs.get("channels"):
                    return [str(c) for c in attrs["channels"]]
                for key in self.array_names(store):
                    chans = self.array_attrs(store, key).get("channels")
                    if chans:
                        return [str(c) for c in chans]
        if self.has("channel_mass.parquet"):
            df = self.table("channel_mass.parquet")
            if "channel" in df:
                return [str(c) for c in pd.unique(df["channel"])]
        return []

    @cached_property
    def method_order(self) -> list[str]:
        """Attribution methods in the order the run listed them (the attribution store's ``methods``)."""
        if self.has("attributions.zarr"):
            methods = self.group_attrs("attributions.zarr").get("methods")
            if methods:
                return [str(m) for m in methods]
            return self.array_names("attributions.zarr")
        return []

    @cached_property
    def classes(self) -> list[str]:
        if self.has("dataset.zarr"):
            classes = self.group_attrs("dataset.zarr").get("classes")
            if classes:
                return [str(c) for c in classes]
        if self.has("meta.parquet"):
            meta = self.table("meta.parquet")
            if "Metadata_Class" in meta:
                return sorted(str(c) for c in pd.unique(meta["Metadata_Class"]))
        return []

    @cached_property
    def transitions(self) -> pd.DataFrame:
        """One row per image: ``sample``, ``label``, ``counterfactual_label``, ``transition``.

        ``transition`` reads ``"<real class> → <counterfactual class>"``. Empty when the data set
        has no labels.
        """
        cols = ["sample", "label", "counterfactual_label", "transition"]
        if not self.has("dataset.zarr"):
            return pd.DataFrame(columns=cols)
        names = self.array_names("dataset.zarr")
        if "labels" not in names:
            return pd.DataFrame(columns=cols)
        labels = self.array("dataset.zarr", "labels").astype(np.int64)
        if "counterfactual_labels" in names:
            cf = self.array("dataset.zarr", "counterfactual_labels").astype(np.int64)
        else:
            cf = np.full_like(labels, -1)
        classes = self.classes

        def name(i: int) -> str:
            return classes[i] if 0 <= i < len(classes) else str(i)

        return pd.DataFrame({
            "sample": np.arange(labels.size),
            "label": [name(i) for i in labels],
            "counterfactual_label": [name(i) if i >= 0 else "" for i in cf],
            "transition": [f"{name(a)} → {name(b)}" if b >= 0 else name(a) for a, b in zip(labels, cf)],
        })
