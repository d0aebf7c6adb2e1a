"""The JUMP folder layout: ``load_data_csv``, ``images`` and ``illum``, read as one LoadData table.

JUMP (cpg0016) keeps, per batch and plate::

    <root>/.../load_data_csv/<batch>/<plate>/load_data.csv[.gz]
    <root>/.../images/<batch>/images/<plate>.../<image files>
    <root>/.../illum/<batch>/<plate>/<plate>_Illum<Ch>.npy

The LoadData tables name the images by their original location (often a remote one).
:func:`read_jump` finds each plate's table, points every ``PathName_*`` at the local copy of
the image it names (found by file name under the ``images`` folders), adds
``FileName_Illum<Ch>`` / ``PathName_Illum<Ch>`` for the plate's illumination functions, and
reads the result with :func:`chanstat.data.read_loaddata` (so illumination correction,
per-plate scaling and objects work as there).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd

from chanstat.data.imageset import ImageSet

ILLUM_NPY = re.compile(r"^(?P<plate>.+)_Illum(?P<channel>[A-Za-z0-9]+)\.npy$")
LOAD_DATA_NAMES = ("load_data.csv", "load_data.csv.gz", "load_data_with_illum.csv", "load_data_with_illum.csv.gz")


def _dirs_named(root: Path, name: str) -> list[Path]:
    found = [root] if root.name == name else []
    for folder, subdirs, _ in os.walk(root):
        if name in subdirs:
            found.append(Path(folder) / name)
    return sorted(found)


def jump_plates(root: str | Path) -> dict[str, Path]:
    """Plate -> its LoadData table under every ``load_data_csv`` folder of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"JUMP folder not found: {root}")
    plates: dict[str, Path] = {}
    for top in _dirs_named(root, "load_data_csv"):
        for folder, _, files in os.walk(top):
            for name in LOAD_DATA_NAMES:  # plain load_data first; the illum columns are added here
                if name in files:
                    plates.setdefault(Path(folder).name, Path(folder) / name)
                    break
    if not plates:
        raise ValueError(f"{root}: no load_data_csv/<batch>/<plate>/load_data.csv found")
    return plates


def illum_files(root: str | Path, plate: str) -> dict[str, Path]:
    """Channel token -> ``<plate>_Illum<Ch>.npy`` under the ``illum`` folders of ``root``."""
    out: dict[str, Path] = {}
    for top in _dirs_named(Path(root), "illum"):
        for folder, _, files in os.walk(top):
            for name in files:
                m = ILLUM_NPY.match(name)
                if m and m.group("plate") == plate:
                    out.setdefault(m.group("channel"), Path(folder) / name)
    return out


def _image_index(root: Path, plate: str) -> dict[str, Path]:
    """File name -> folder for every file under ``images`` folders whose path names the plate."""
    index: dict[str, Path] = {}
    for top in _dirs_named(root, "images"):
        for folder, _, files in os.walk(top):
            if plate in str(Path(folder).relative_to(top)):
                for name in files:
                    index.setdefault(name, Path(folder))
    return index


def resolve_plate(root: str | Path, plate: str, table_path: Path) -> pd.DataFrame:
    """The plate's LoadData table with local, absolute image and illumination paths."""
    from chanstat.cellprofiler.readers import read_csv_table
    from chanstat.data.illumination import illum_columns

    root = Path(root)
    table = read_csv_table(table_path)
    if "Metadata_Plate" not in table.columns:
        table["Metadata_Plate"] = plate
    index = None
    for file_col in [c for c in table.columns if str(c).startswith(("FileName_", "Image_FileName_"))]:
        if ILLUM_NPY.match(str(table[file_col].iloc[0])) or "Illum" in str(file_col):
            continue
        path_col = str(file_col).replace("FileName_", "PathName_", 1)
        if path_col not in table.columns:
            continue
        folders = []
        for file, folder in zip(table[file_col].astype(str), table[path_col].astype(str)):
            local = Path(folder) if Path(folder).is_absolute() else table_path.parent / folder
            if (local / file).is_file():
                folders.append(str(local.resolve()))
                continue
            index = _image_index(root, plate) if index is None else index
            if file not in index:
                raise FileNotFoundError(
                    f"{table_path}: image {file!r} ({file_col}) is under no images/ folder of {root}"
                )
            folders.append(str(index[file].resolve()))
        table[path_col] = folders
    found = illum_files(root, plate)
    present = illum_columns(table.columns)
    for token, path in found.items():
        if token not in present:
            table[f"FileName_Illum{token}"] = path.name
            table[f"PathName_Illum{token}"] = str(path.parent.resolve())
    for token, (file_col, path_col) in present.items():  # named in the table: make them local too
        if token in found:
            table[file_col], table[path_col] = found[token].name, str(found[token].parent.resolve())
    return table


def read_jump(
    root: str | Path, plates: Sequence[str] | None = None, platemap: str | Path | None = None, **options
) -> ImageSet:
    """Read plates of a JUMP folder layout as one ImageSet.

    Parameters
    ----------
    root : folder holding ``load_data_csv``, ``images`` and (optionally) ``illum`` (at any depth).
    plates : plate names to read (the folders under ``load_data_csv/<batch>/``); default all.
    platemap : CSV of per-well metadata (``Metadata_Well``, optionally ``Metadata_Plate``, and e.g.
        ``Metadata_Treatment`` for ``label_column``) joined onto every field (JUMP's LoadData tables
        carry no treatments).
    **options : :func:`chanstat.data.read_loaddata` options (``channels``, ``channel_map``,
        ``label_column``, ``scaling``, ``illum``, ...). ``illum = "auto"`` (the default) divides
        by ``illum/<plate>/<plate>_Illum<Ch>.npy`` where present.

    Returns
    -------
    ImageSet; ``meta.attrs["illumination"]`` lists the functions applied.
    """
    from chanstat.data.readers import read_loaddata

    found = jump_plates(root)
    wanted = list(found) if plates is None else [str(p) for p in plates]
    unknown = [p for p in wanted if p not in found]
    if unknown:
        raise ValueError(f"{root}: no load_data_csv for plates {unknown}; it has {sorted(found)}")
    from chanstat.data.ome import join_platemap

    tables = [resolve_plate(root, plate, found[plate]) for plate in wanted]
    table = join_platemap(pd.concat(tables, ignore_index=True), platemap)
    with tempfile.TemporaryDirectory(prefix="chanstat-jump-") as tmp:
        csv = Path(tmp) / "load_data.csv"
        table.to_csv(csv, index=False)
        return read_loaddata(csv, **options)
