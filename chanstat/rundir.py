"""``RunDirectory``: the one reader and writer of a run directory's files.

The pipeline, :mod:`chanstat.compute` and the report all go through it. Writes are atomic
(temporary file or folder, then rename) and tables are validated against
:mod:`chanstat.schema` on the way in and on the way out. A user who worked through the Python
API saves results with :meth:`RunDirectory.save` and renders the report with
``chanstat.render(path)``. This module never imports torch (only :meth:`RunDirectory.dataset`
and :meth:`RunDirectory.write_dataset` do, when called).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tomllib
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from chanstat.io import read_group_attrs, write_arrays, write_json, write_table
from chanstat.rundir_save import read_rows
from chanstat.schema import ArraySpec, FileSpec, TableSpec, entry
from chanstat.stage import Arrays

MARKER = ".chanstat-run"
LOCK_FILE = ".chanstat-run.lock"
#: Folders and files a run writes besides its schema entries (cleared with the run, never a user's file).
RUN_EXTRAS = ("shards", "generator_checkpoints", LOCK_FILE, LOCK_FILE + ".owner", MARKER)


class RunDirectoryBusy(RuntimeError):
    """Another run holds the run directory's lock."""


class NotARunDirectory(ValueError):
    """A folder that chanstat did not make is never written into, replaced or cleared."""


@dataclass(frozen=True)
class Codec:
    """How an entry that is not a table or a group of arrays is written and read.

    The package that owns the value registers it (:func:`register_codec`): the data set
    (``chanstat.data.imageset``), the classifier (``chanstat.context``), so this module
    imports neither ``chanstat.data`` nor ``chanstat.models``.
    """

    write: Callable[["RunDirectory", Any], None]
    read: Callable[["RunDirectory", Any], Any] | None = None


CODECS: dict[str, Codec] = {}


def register_codec(name: str, write: Callable, read: Callable | None = None) -> None:
    """Register the writer (and reader) of schema entry ``name`` (e.g. ``"dataset"``, ``"model"``)."""
    CODECS[entry(name).name] = Codec(write, read)


#: Arrays of ``dataset.zarr`` with one row per image, besides ``objects_<name>`` label images.
DATASET_ARRAYS = (
    "images",
    "labels",
    "counterfactuals",
    "counterfactual_target",
    "signal_masks",
    "oracle_counterfactuals",
    "oracle_counterfactual_labels",
)
_GROUP_ATTRS_NOT_META = ("channels", "classes", "counterfactual_provider")


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder chanstat made (it holds the run marker)."""
    return (Path(path) / MARKER).is_file()


class RunDirectory:
    """The files of one run directory.

    Parameters
    ----------
    path : folder of the run.
    create : make the folder (and its run marker) if it does not exist. Without ``create`` a
        missing folder is an error.

    Reads are cached per instance; writes go through the schema.
    """

    def __init__(self, path: str | os.PathLike, create: bool = False):
        self.path = Path(path).resolve()
        if create:
            if self.path.exists() and not self.path.is_dir():
                raise NotADirectoryError(f"run directory {self.path} is a file, not a folder")
            if self.path.is_dir() and any(self.path.iterdir()) and not is_run_directory(self.path):
                raise NotARunDirectory(
                    f"{self.path} is not empty and is not a chanstat run directory (no {MARKER}); "
                    "refusing to write into it"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            if not is_run_directory(self.path):
                (self.path / MARKER).write_text("chanstat run directory\n")
        elif not self.path.is_dir():
            raise FileNotFoundError(f"run directory not found: {self.path}")
        elif not is_run_directory(self.path) and any(self.path.iterdir()):  # an empty folder holds nothing to lose
            raise NotARunDirectory(f"{self.path} is not a chanstat run directory (no {MARKER})")
        self._tables: dict[str, pd.DataFrame] = {}

    # ---- safety: paths, lock, clearing, checksums ----------------------------------------
    def inside(self, name: str) -> Path:
        """Path of file ``name`` in the run directory; a name that leaves the run is refused."""
        text = str(name)
        target = (self.path / text).resolve()
        if not text or Path(text).is_absolute() or target.parent != self.path:
            raise ValueError(f"file name {text!r} leaves the run directory {self.path}; give a plain file name")
        return target

    @contextlib.contextmanager
    def lock(self) -> Iterator["RunDirectory"]:
        """Hold the run directory's lock (filelock) while a run writes it; the owner file names the holder."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK_FILE))
        owner = self.path / (LOCK_FILE + ".owner")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = owner.read_text().strip() if owner.exists() else "another chanstat run"
            raise RunDirectoryBusy(
                f"run directory {self.path} is in use by {holder}; wait for it or use another --out"
            ) from None
        try:
            owner.write_text(
                f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(timezone.utc).isoformat()}"
            )
            yield self
        finally:
            owner.unlink(missing_ok=True)
            lock.release()

    def run_files(self) -> list[Path]:
        """What chanstat wrote here: schema entries, shards, checkpoints, temporary files (never a user's file)."""
        from chanstat.schema import BY_FILE

        out = []
        for child in self.path.iterdir():
            name = child.name
            if name in (MARKER, LOCK_FILE, LOCK_FILE + ".owner"):
                continue
            if name in BY_FILE or name in RUN_EXTRAS or (name.startswith(".") and name.endswith((".tmp", ".old"))):
                out.append(child)
        return out

    def user_files(self) -> list[Path]:
        """Files and folders here that chanstat did not write (kept by every clear and replace)."""
        ours = set(self.run_files()) | {self.path / n for n in (MARKER, LOCK_FILE, LOCK_FILE + ".owner")}
        return [c for c in self.path.iterdir() if c not in ours]

    def clear(self) -> None:
        """Delete what chanstat wrote (the marker, the lock and every user's file stay)."""
        for child in self.run_files():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self._tables.clear()
        self.__dict__.pop("config", None)

    def checksum(self, name: str) -> str | None:
        """SHA-256 (16 hex digits) of entry ``name``'s bytes (every file of a folder); None when absent."""
        path = self.file(name)
        if not path.exists():
            return None
        h = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            with f.open("rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
        return h.hexdigest()[:16]

    def checksums(self, names) -> dict[str, str]:
        """{name: checksum} of the entries among ``names`` that exist."""
        return {n: c for n in names if (c := self.checksum(n)) is not None}

    def damaged(self, recorded: Mapping[str, str]) -> list[str]:
        """File names of the entries whose checksum differs from ``recorded`` (or that are gone)."""
        return [entry(n).file for n, c in recorded.items() if self.checksum(n) != c]

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # ---- presence ------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Path of entry ``name`` (a schema name such as ``"dac_scores"`` or its file name)."""
        return self.path / entry(name).file

    def has(self, name: str) -> bool:
        """Whether entry ``name`` exists and is not empty."""
        p = self.file(name)
        if p.is_dir():
            return any(p.iterdir())
        return p.is_file() and p.stat().st_size > 0

    def missing(self, *names: str) -> list[str]:
        """The file names of the entries among ``names`` that are absent, in the order given."""
        return [entry(n).file for n in names if not self.has(n)]

    # ---- tables --------------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """Table ``name`` (a copy), validated against the schema."""
        spec = entry(name)
        if not isinstance(spec, TableSpec):
            raise TypeError(f"{spec.file} is not a table")
        if spec.name not in self._tables:
            if not self.has(spec.name):
                raise FileNotFoundError(f"{spec.file} is missing from {self.path}")
            self._tables[spec.name] = spec.validate(pd.read_parquet(self.file(spec.name)), str(self.file(spec.name)))
        return self._tables[spec.name].copy()

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        """Validate ``table`` against entry ``name`` and write it atomically as Parquet."""
        spec = entry(name)
        if not isinstance(spec, TableSpec):
            raise TypeError(f"{spec.file} is not a table")
        spec.validate(table)
        path = write_table(table, self.file(spec.name))
        self._tables.pop(spec.name, None)
        return path

    # ---- arrays --------------------------------------------------------------------------
    def _group(self, name: str):
        import zarr

        if not self.has(name):
            raise FileNotFoundError(f"{entry(name).file} is missing from {self.path}")
        return zarr.open_group(str(self.file(name)), mode="r")

    def array_names(self, name: str) -> list[str]:
        """Array names of group ``name`` (in the writer's order when it recorded one)."""
        group = self._group(name)
        keys = sorted(group.array_keys())
        order = group.attrs.get("order")
        if isinstance(order, list) and sorted(order) == keys:
            return [str(k) for k in order]
        return keys

    def array(self, name: str, key: str, samples: Any = None) -> np.ndarray:
        """Array ``key`` of group ``name``; ``samples`` selects rows along the first axis."""
        arr = self._group(name)[key]
        if samples is None:
            return np.asarray(arr[...])
        return read_rows(arr, samples)

    def array_shape(self, name: str, key: str) -> tuple[int, ...]:
        return tuple(self._group(name)[key].shape)

    def array_attrs(self, name: str, key: str) -> dict:
        return dict(self._group(name)[key].attrs)

    def group_attrs(self, name: str) -> dict:
        return dict(self._group(name).attrs)

    def arrays(self, name: str, rows: Any = None) -> Arrays:
        """Group ``name`` as :class:`~chanstat.stage.Arrays` (``rows``: only those images)."""
        keys = self.array_names(name)
        attrs = {k: self.array_attrs(name, k) for k in keys}
        group_attrs = {k: v for k, v in self.group_attrs(name).items() if k not in ("order", "samples")}
        samples = self.group_attrs(name).get("samples")
        return Arrays(
            {k: self.array(name, k, rows) for k in keys},
            attrs=attrs,
            group_attrs=group_attrs,
            samples=None if samples is None else np.asarray(samples, dtype=np.int64),
        )

    def write_arrays(self, name: str, value: Arrays, replace: bool = True) -> Path:
        """Write a group of arrays atomically (a temporary folder, then renamed into place).

        With ``replace=False`` the arrays are added to an existing group.
        """
        spec = entry(name)
        if not isinstance(spec, (ArraySpec, FileSpec)):
            raise TypeError(f"{spec.file} is not a group of arrays")
        target = self.file(spec.name)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        kept: list[str] = []
        if not replace and target.exists():
            shutil.copytree(target, tmp)
            before = read_group_attrs(tmp)
            kept = [k for k in before.get("order", []) if k not in value.arrays]
        group_attrs = {**value.group_attrs, "order": kept + list(value.arrays)}
        if value.samples is not None:
            group_attrs["samples"] = [int(i) for i in value.samples]
        write_arrays(tmp, value.arrays, attrs=value.attrs, group_attrs=group_attrs, mode="a" if kept else "w")
        _swap_in(tmp, target)
        return target

    # ---- the data set --------------------------------------------------------------------
    def n_images(self) -> int:
        return int(self._group("dataset")["images"].shape[0])

    def dataset(self, rows: Any = None):
        """The run's images as an :class:`~chanstat.data.ImageSet` (``rows``: only those images)."""
        codec = CODECS.get("dataset")
        if codec is None or codec.read is None:
            raise TypeError("no reader registered for dataset.zarr; import chanstat.data first")
        return codec.read(self, rows)

    def dataset_parts(self, rows: Any = None) -> dict:
        """The data set's arrays, metadata and names (``rows``: only those images), for its codec."""
        group = self._group("dataset")
        n = int(group["images"].shape[0])
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        attrs = dict(group.attrs)
        present = set(group.array_keys())
        arrays = {k: read_rows(group[k], rows) for k in DATASET_ARRAYS[:5] if k in present}
        objects = {k[len("objects_") :]: read_rows(group[k], rows) for k in sorted(present) if k.startswith("objects_")}
        meta = self.table("meta")
        if len(meta) != n:
            raise ValueError(f"{self.file('meta')} has {len(meta)} rows but {self.file('dataset')} holds {n} images")
        meta = meta.drop(columns=["sample"]).iloc[rows].reset_index(drop=True)
        meta.attrs.update({k: v for k, v in attrs.items() if k not in _GROUP_ATTRS_NOT_META and k != "order"})
        return dict(
            images=arrays["images"],
            channels=list(attrs["channels"]),
            labels=arrays["labels"],
            classes=list(attrs["classes"]),
            meta=meta,
            counterfactuals=arrays.get("counterfactuals"),
            counterfactual_target=arrays.get("counterfactual_target"),
            signal_masks=arrays.get("signal_masks"),
            objects=objects or None,
        )

    def write_dataset(
        self, dataset, extra: Mapping[str, np.ndarray] | None = None, group_attrs: Mapping | None = None
    ) -> None:
        """Write an ImageSet as ``dataset.zarr`` + ``meta.parquet`` (``extra``: more per-image arrays)."""
        arrays = {"images": dataset.images.numpy(), "labels": dataset.labels.numpy()}
        for key in ("counterfactuals", "counterfactual_target", "signal_masks"):
            value = getattr(dataset, key)
            if value is not None:
                arrays[key] = value.numpy()
        for key, labels in (dataset.objects or {}).items():
            arrays[f"objects_{key}"] = np.asarray(labels)
        arrays.update(extra or {})
        attrs = {
            "channels": list(dataset.channels),
            "classes": list(dataset.classes),
            **dict(dataset.meta.attrs),
            **dict(group_attrs or {}),
        }
        self.write_arrays("dataset", Arrays(arrays, group_attrs=attrs))
        meta = dataset.meta.copy()
        meta.insert(0, "sample", np.arange(len(dataset)))
        self.write_table("meta", meta)

    # ---- json, config, provenance --------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        return write_json(obj, self.file(name))

    def write_config(self, config: Mapping) -> Path:
        import tomli_w

        path = self.file("config")
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as fh:
            tomli_w.dump(_drop_none(config), fh)
        os.replace(tmp, path)
        self.__dict__.pop("config", None)
        return path

    @property
    def provenance(self) -> dict:
        """``provenance.json`` ({} when absent); read afresh each time (the pipeline rewrites it)."""
        p = self.file("provenance")
        return json.loads(p.read_text()) if p.is_file() else {}

    @cached_property
    def config(self) -> dict:
        """``config.toml`` as a dict ({} when absent)."""
        p = self.file("config")
        if not p.is_file():
            return {}
        with p.open("rb") as fh:
            return tomllib.load(fh)

    def config_text(self) -> str:
        p = self.file("config")
        return p.read_text() if p.is_file() else ""

    # ---- facts the report needs ----------------------------------------------------------
    @cached_property
    def channels(self) -> list[str]:
        """Channel names, from the data set, else the attributions, else channel_mass."""
        for store in ("dataset", "attributions"):
            if self.has(store):
                chans = self.group_attrs(store).get("channels")
                if chans:
                    return [str(c) for c in chans]
        if self.has("channel_mass"):
            return [str(c) for c in pd.unique(self.table("channel_mass")["channel"])]
        return []

    @cached_property
    def method_order(self) -> list[str]:
        """Attribution methods in the order the run computed them."""
        return self.array_names("attributions") if self.has("attributions") else []

    @cached_property
    def classes(self) -> list[str]:
        if self.has("dataset"):
            classes = self.group_attrs("dataset").get("classes")
            if classes:
                return [str(c) for c in classes]
        if self.has("meta"):
            meta = self.table("meta")
            if "Metadata_Class" in meta:
                return sorted(str(c) for c in pd.unique(meta["Metadata_Class"]))
        return []

    @cached_property
    def transitions(self) -> pd.DataFrame:
        """One row per image: ``sample``, ``label``, ``counterfactual_label``, ``transition``
        (``"<real class> → <counterfactual class>"``). Empty without labels."""
        cols = ["sample", "label", "counterfactual_label", "transition"]
        if not self.has("dataset") or "labels" not in self.array_names("dataset"):
            return pd.DataFrame(columns=cols)
        labels = self.array("dataset", "labels").astype(np.int64)
        names = self.array_names("dataset")
        cf = (
            self.array("dataset", "counterfactual_target").astype(np.int64)
            if "counterfactual_target" in names
            else np.full_like(labels, -1)
        )
        classes = self.classes

        def name(i: int) -> str:
            return classes[i] if 0 <= i < len(classes) else str(i)

        return pd.DataFrame(
            {
                "sample": np.arange(labels.size),
                "label": [name(i) for i in labels],
                "counterfactual_label": [name(i) if i >= 0 else "" for i in cf],
                "transition": [f"{name(a)} → {name(b)}" if b >= 0 else name(a) for a, b in zip(labels, cf)],
            }
        )

    # ---- generic read / write by schema entry --------------------------------------------
    def write(self, name: str, value: Any) -> None:
        """Write ``value`` as entry ``name``: a DataFrame, :class:`Arrays`, an ImageSet or a model."""
        spec = entry(name)
        if isinstance(spec, TableSpec):
            self.write_table(spec.name, value)
        elif isinstance(spec, ArraySpec):
            if isinstance(value, Mapping):
                value = Arrays(dict(value))
            self.write_arrays(spec.name, value)
        elif spec.name in CODECS:
            CODECS[spec.name].write(self, value)
        elif spec.name == "dataset":
            self.write_dataset(value)
        elif callable(getattr(value, "save", None)) and spec.file.endswith(".pt"):
            value.save(self.file(spec.name))  # a network that saves itself (the generator)
        else:
            raise TypeError(f"{spec.file} is written by the pipeline itself, not through write()")

    def read(self, name: str, rows: Any = None) -> Any:
        """Entry ``name`` as a stage receives it (tables, :class:`Arrays`, the ImageSet)."""
        spec = entry(name)
        if isinstance(spec, TableSpec):
            table = self.table(spec.name)
            return table if rows is None else table[table["sample"].isin(np.asarray(rows))].reset_index(drop=True)
        if isinstance(spec, ArraySpec):
            return self.arrays(spec.name, rows)
        if spec.name == "dataset":
            return self.dataset(rows)
        if spec.name in CODECS and (reader := CODECS[spec.name].read) is not None:
            return reader(self, rows)
        raise TypeError(f"{spec.file} is not read through read()")

    def save(self, **results: Any) -> "RunDirectory":
        """Save results of a Python analysis as they are, so ``chanstat.render(path)`` can report on them.

        Keywords are schema entries (see :func:`chanstat.schema.describe`) or a verb's result::

            run = cs.RunDirectory("runs/mine", create=True)
            run.save(dataset=data, attributions={"d_ig": maps}, dac=result, channel_shapley=shapley,
                     compartment_mass={"d_ig": compartments}, counterfactuals=cf_result,
                     channel_mass=mass, channel_tests=tests)

        ``attributions`` takes {method: maps}; ``dac``, ``channel_shapley``,
        ``compartment_mass`` and ``counterfactuals`` take the verb's result (or {method:
        result}) and write every table it holds (:mod:`chanstat.rundir_save`); ``config`` a
        dict; everything else the entry's own type (DataFrame for tables).
        """
        from chanstat.rundir_save import save

        return save(self, **results)


def _drop_none(obj: Any) -> Any:
    """TOML has no null: leave unset (None) keys out."""
    if isinstance(obj, Mapping):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_drop_none(v) for v in obj if v is not None]
    return obj


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace folder ``target`` by ``tmp`` (readers see the old or the new folder, never half of one)."""
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
