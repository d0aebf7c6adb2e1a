"""Illumination correction: divide every raw image by its plate's illumination function.

CellProfiler pipelines of JUMP and LINCS compute one illumination function per plate and
channel (CorrectIlluminationCalculate) and divide each raw image by it
(CorrectIlluminationApply, "Divide"). LoadData tables name these functions in
``FileName_Illum<Ch>`` / ``PathName_Illum<Ch>`` columns; the JUMP folder layout keeps them as
``illum/<plate>/<plate>_Illum<Ch>.npy``. chanstat applies them to the raw intensities, before
plate-level scaling, so that a classifier and its attribution do not see vignetting that
CellProfiler removed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import pandas as pd

#: ``illum`` choices: apply the functions the metadata names (``"auto"``) or skip them (``"off"``).
IllumMode = Literal["auto", "off"]
ILLUM_MODES = ("auto", "off")
ILLUM_FILE = re.compile(r"^(?:Image_)?FileName_Illum(?P<channel>[A-Za-z0-9]+)$")


def illum_columns(columns) -> dict[str, tuple[str, str]]:
    """Channel token -> (file column, path column) of every ``FileName_Illum<Ch>`` column.

    A file column without its ``PathName_Illum<Ch>`` partner is ignored (the path cannot be
    known).
    """
    out: dict[str, tuple[str, str]] = {}
    cols = set(columns)
    for col in columns:
        m = ILLUM_FILE.match(str(col))
        if m:
            path_col = str(col).replace("FileName_", "PathName_", 1)
            if path_col in cols:
                out[m.group("channel")] = (str(col), path_col)
    return out


def load_illum(path: str | Path) -> np.ndarray:
    """One illumination function as a float32 (H, W) array.

    Reads ``.npy`` (JUMP, pycytominer), ``.tif``/``.tiff`` and CellProfiler ``.mat`` files
    (the single 2-D array they hold).

    Raises
    ------
    FileNotFoundError
        The file is missing.
    ValueError
        Another file type, not one 2-D plane, or values that are not finite and positive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"illumination function not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
    elif suffix == ".mat":
        from scipy.io import loadmat

        arrays = [v for k, v in loadmat(path).items() if not k.startswith("__") and np.ndim(v) == 2]
        if len(arrays) != 1:
            raise ValueError(f"{path}: expected one 2-D array in the .mat file, found {len(arrays)}")
        array = arrays[0]
    else:
        raise ValueError(f"{path}: unknown illumination file type {suffix!r}; use .npy, .tif or .mat")
    array = np.squeeze(np.asarray(array, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"{path}: an illumination function must be one 2-D plane; got shape {array.shape}")
    if not np.isfinite(array).all() or (array <= 0).any():
        raise ValueError(f"{path}: illumination function has non-finite or non-positive values")
    return array


def correct(image: np.ndarray, functions: list[np.ndarray | None] | np.ndarray) -> np.ndarray:
    """``image / function`` per channel (CellProfiler's CorrectIlluminationApply, "Divide").

    Parameters
    ----------
    image : array (C, H, W), raw intensities.
    functions : C illumination functions (H, W); ``None`` leaves that channel as it is.

    Returns
    -------
    float32 array (C, H, W).
    """
    out = np.asarray(image, dtype=np.float32).copy()
    if len(functions) != out.shape[0]:
        raise ValueError(f"got {len(functions)} illumination functions for {out.shape[0]} channels")
    for c, fn in enumerate(functions):
        if fn is None:
            continue
        fn = np.asarray(fn, dtype=np.float32)
        if fn.shape != out.shape[1:]:
            raise ValueError(f"illumination function of channel {c} has shape {fn.shape}; the image is {out.shape[1:]}")
        out[c] /= fn
    return out


class Illumination:
    """The illumination functions a LoadData table names, loaded once per file.

    Parameters
    ----------
    table : the LoadData table.
    folder : folder that relative ``PathName_Illum*`` values are relative to (the CSV's).
    tokens : channel name -> LoadData channel token, for the channels read.
    mode : ``"auto"`` applies every function the table names; ``"off"`` none.
    source : the table's file (for messages).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        folder: Path,
        tokens: Mapping[str, str],
        mode: IllumMode = "auto",
        source: str | Path = "LoadData",
    ):
        if mode not in ILLUM_MODES:
            raise ValueError(f"illum must be one of {list(ILLUM_MODES)}; got {mode!r}")
        self.mode, self.folder, self.source = mode, Path(folder), str(source)
        self.tokens = dict(tokens)
        found = illum_columns(table.columns) if mode == "auto" else {}
        self.columns = {name: found[token] for name, token in self.tokens.items() if token in found}
        self._cache: dict[Path, np.ndarray] = {}
        self._used: dict[str, list[str]] = {name: [] for name in self.columns}

    @property
    def active(self) -> bool:
        return bool(self.columns)

    def path(self, row: pd.Series, name: str) -> Path:
        file_col, path_col = self.columns[name]
        file, folder = row[file_col], row[path_col]
        if pd.isna(file) or pd.isna(folder):
            raise ValueError(
                f"{self.source}: empty {file_col} or {path_col} in a row of well {row.get('Metadata_Well')!r}"
            )
        folder = Path(str(folder))
        return (folder if folder.is_absolute() else self.folder / folder) / str(file)

    def apply(self, row: pd.Series, image: np.ndarray) -> np.ndarray:
        """The (C, H, W) raw ``image`` of one LoadData ``row`` (channels in ``tokens`` order), corrected."""
        if not self.active:
            return np.asarray(image, dtype=np.float32)
        functions: list[np.ndarray | None] = []
        for name in self.tokens:
            if name not in self.columns:
                functions.append(None)
                continue
            path = self.path(row, name)
            if path not in self._cache:
                self._cache[path] = load_illum(path)
                self._used[name].append(str(path))
            functions.append(self._cache[path])
        try:
            return correct(image, functions)
        except ValueError as exc:
            raise ValueError(f"{self.source}: {exc}") from None

    def record(self) -> dict:
        """What was applied, JSON-serialisable (kept in ``meta.attrs["illumination"]`` -> provenance)."""
        return {
            "mode": self.mode,
            "method": "divide",
            "applied": self.active,
            "channels": {name: files for name, files in self._used.items()},
            "uncorrected": [name for name in self.tokens if name not in self.columns],
        }


def summary(record: Mapping) -> str:
    """One line for a record of :meth:`Illumination.record`: ``"divided: DNA, ER; uncorrected: AGP"``."""
    if record.get("mode") == "off":
        return "off"
    done = [name for name, files in (record.get("channels") or {}).items() if files]
    left = list(record.get("uncorrected") or [])
    if not done:
        return "none named"
    return f"divided: {', '.join(done)}" + (f"; uncorrected: {', '.join(left)}" if left else "")
