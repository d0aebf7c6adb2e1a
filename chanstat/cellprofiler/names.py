"""CellProfiler feature names -> compartment, category, measurement, channels, parameters.

CellProfiler names a per-object measurement ``Compartment_Category_Feature_Channel[_params]``,
but the details vary with the module and the CellProfiler version:

- ``Cells_Intensity_MeanIntensity_DNA`` — one channel after the measurement;
- ``Nuclei_Texture_AngularSecondMoment_ER_3_00_256`` (CellProfiler >= 3: scale, two-digit
  angle, gray levels) and ``Nuclei_Texture_AngularSecondMoment_ER_10_0`` (older: scale, angle);
- ``Cells_Granularity_12_Mito`` — the scale comes *before* the channel;
- ``Cytoplasm_Correlation_Correlation_DNA_Mito`` — two channels; symmetric measurements
  (Pearson ``Correlation``, ``Overlap``) appear in either order depending on the version,
  directional ones (``K``, ``Manders``, ``Costes``, ``RWC``, ``Slope``) keep their order;
- ``Cells_RadialDistribution_FracAtD_RNA_3of4`` — a radial bin after the channel;
- ``Cells_AreaShape_Area`` — no channel;
- channel tokens with ``Orig``/``Corr``/``Illum`` prefixes (``CorrDNA``), ``mito_tubeness``
  (contains an underscore, belongs to Mito), brightfield variants (``Brightfield``, ``BFHigh``,
  ``BFLow`` and the 64-character-truncated ``Brightfild``/``Brightfld``);
- raw per-object CSVs lack the compartment (``Intensity_MeanIntensity_DNA``);
- cp_measure writes channels after a double underscore (``Intensity_MeanIntensity__DNA``,
  ``AngularSecondMoment_3_00_256__DNA``, ``Correlation_Pearson__DNA__Mito``).

:func:`parse_features` turns any list of column names into a tidy table; names it cannot
place get ``"unknown"`` parts instead of raising.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Mapping

import pandas as pd

#: The five Cell Painting stains in their conventional order, then brightfield.
STAINS: tuple[str, ...] = ("DNA", "ER", "RNA", "AGP", "Mito")
BRIGHTFIELD = "Brightfield"
UNKNOWN = "unknown"

#: Measurement categories CellProfiler writes (module prefixes of a feature name).
CATEGORIES: frozenset[str] = frozenset(
    {
        "AreaShape",
        "Intensity",
        "Texture",
        "Granularity",
        "Correlation",
        "RadialDistribution",
        "Location",
        "Neighbors",
        "Children",
        "Parent",
        "Number",
        "ObjectSkeleton",
        "Math",
        "Count",
        "Threshold",
        "ImageQuality",
        "ExecutionTime",
        "ModuleError",
        "FileName",
        "PathName",
        "URL",
        "MD5Digest",
        "Scaling",
        "Height",
        "Width",
        "Metadata",
        "Group",
        "Series",
        "Frame",
        "Channel",
        "ObjectNumber",
        "ImageNumber",
        "TableNumber",
    }
)
#: Categories whose features describe one stain (or, for Correlation, a pair of stains).
CHANNEL_CATEGORIES: frozenset[str] = frozenset(
    {"Intensity", "Texture", "Granularity", "Correlation", "RadialDistribution", "ImageQuality"}
)
#: Object compartments of a standard Cell Painting pipeline (other object names also parse).
OBJECT_COMPARTMENTS: tuple[str, ...] = ("Cells", "Cytoplasm", "Nuclei")

_IMAGE_NAME_CATEGORIES = {"FileName", "PathName", "URL", "MD5Digest", "Scaling", "Height", "Width"}
_IDENTIFIERS = {"ImageNumber", "ObjectNumber", "TableNumber"}
_TEXTURE = {
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
    "Gabor",
}
_AREASHAPE = {
    "Area",
    "BoundingBoxArea",
    "BoundingBoxMinimum",
    "BoundingBoxMaximum",
    "BoundingBoxVolume",
    "Center",
    "Compactness",
    "ConvexArea",
    "Eccentricity",
    "EquivalentDiameter",
    "EulerNumber",
    "Extent",
    "FormFactor",
    "MajorAxisLength",
    "MinorAxisLength",
    "MaxFeretDiameter",
    "MinFeretDiameter",
    "MaximumRadius",
    "MeanRadius",
    "MedianRadius",
    "Orientation",
    "Perimeter",
    "Solidity",
    "Zernike",
    "CentralMoment",
    "NormalizedMoment",
    "HuMoment",
    "SpatialMoment",
    "InertiaTensor",
    "InertiaTensorEigenvalues",
    "Volume",
    "SurfaceArea",
}
#: Symmetric correlation measurements: the channel pair is unordered.
_UNORDERED_CORRELATION = {"Correlation", "Overlap", "Pearson"}

# Built-in stain aliases (lower case, prefixes already stripped) -> canonical channel.
_ALIASES: dict[str, str] = {
    "dna": "DNA",
    "hoechst": "DNA",
    "hoechst33342": "DNA",
    "dapi": "DNA",
    "er": "ER",
    "cona": "ER",
    "concanavalina": "ER",
    "rna": "RNA",
    "syto": "RNA",
    "syto14": "RNA",
    "agp": "AGP",
    "actin": "AGP",
    "phalloidin": "AGP",
    "wga": "AGP",
    "mito": "Mito",
    "mitotracker": "Mito",
    "mito_tubeness": "Mito",
    "mitotubeness": "Mito",
    "brightfield": BRIGHTFIELD,
    "brightfild": BRIGHTFIELD,
    "brightfld": BRIGHTFIELD,
    "brtfld": BRIGHTFIELD,
    "bf": BRIGHTFIELD,
    "bfhigh": BRIGHTFIELD,
    "bflow": BRIGHTFIELD,
    "brightfieldhigh": BRIGHTFIELD,
    "brightfieldlow": BRIGHTFIELD,
}
_PREFIX = re.compile(r"^(Orig|Corr|Illum|Mask)(?=[A-Za-z])")
_INT = re.compile(r"^\d+$")
_BIN = re.compile(r"^(\d+of\d+|Overflow)$")
_PARAM_LIKE = re.compile(r"^\d+[A-Za-z]{0,3}$")  # 20, 2W, 3FA (ImageQuality thresholds)

COLUMNS = (
    "feature",
    "compartment",
    "category",
    "measurement",
    "channels",
    "n_channels",
    "channel_tokens",
    "known_channels",
    "ordered",
    "scale",
    "angle",
    "gray_levels",
    "bin",
    "params",
)


def channel_order_key(channel: str) -> tuple[int, str]:
    """Sort key: the five stains in their usual order, then brightfield, then others A-Z."""
    order = STAINS + (BRIGHTFIELD,)
    return (order.index(channel), "") if channel in order else (len(order), channel)


def _normalise_map(channel_map: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if channel_map is None:
        return ()
    if not isinstance(channel_map, Mapping):
        raise TypeError(f"channel_map must be a mapping of name -> channel; got {type(channel_map).__name__}")
    return tuple((str(k).lower(), str(v)) for k, v in channel_map.items())


def resolve_channel(token: str, channel_map: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """Canonical channel name of one channel token.

    Parameters
    ----------
    token : a channel token as it appears in a feature name (``CorrDNA``, ``mito_tubeness``).
    channel_map : optional user map, matched case-insensitively on the raw token, on the token
        without its ``Orig``/``Corr``/``Illum`` prefix and on the canonical name — so
        ``{"Hoechst": "DNA"}`` renames a stain and ``{"AGP": "Actin"}`` renames a canonical
        channel to the model's name.

    Returns
    -------
    (channel, known) : the canonical name (the stripped token itself when it is not a known
        stain) and whether it was recognised (built-in alias or ``channel_map``).
    """
    return _resolve(token, _normalise_map(channel_map))


@lru_cache(maxsize=65536)
def _resolve(token: str, cmap: tuple[tuple[str, str], ...]) -> tuple[str, bool]:
    user = dict(cmap)
    raw = token.lower()
    if raw in user:
        return user[raw], True
    stripped = _PREFIX.sub("", token)
    if stripped.lower() in user:
        return user[stripped.lower()], True
    canonical = _ALIASES.get(stripped.lower()) or _ALIASES.get(raw)
    if canonical is None:
        return stripped, False
    return user.get(canonical.lower(), canonical), True


def _is_known(tokens: list[str], cmap) -> bool:
    return bool(tokens) and _resolve("_".join(tokens), cmap)[1]


def _blank(feature: str) -> dict:
    return dict(
        feature=feature,
        compartment=UNKNOWN,
        category=UNKNOWN,
        measurement=UNKNOWN,
        channels=[],
        n_channels=0,
        channel_tokens=[],
        known_channels=True,
        ordered=False,
        scale=None,
        angle=None,
        gray_levels=None,
        bin=None,
        params=None,
    )


def _split_pair(tokens: list[str], cmap) -> list[list[str]]:
    """Split the tokens of a channel pair into two channels (names may contain ``_``)."""
    if len(tokens) == 2:
        return [[tokens[0]], [tokens[1]]]
    splits = [(tokens[:i], tokens[i:]) for i in range(1, len(tokens))]
    for left, right in splits:  # both sides recognised stains
        if _is_known(left, cmap) and _is_known(right, cmap):
            return [left, right]
    for left, right in splits:  # one side recognised, the other takes the rest
        if _is_known(left, cmap) or _is_known(right, cmap):
            return [left, right]
    return [tokens] if tokens else []


def _body(category: str, rest: list[str], cmap) -> tuple[str, list[list[str]], dict]:
    """Measurement, channel token groups and parameters of the tokens after the category."""
    params: dict = {}
    if not rest:
        return category, [], params
    if category in _IMAGE_NAME_CATEGORIES:  # FileName_OrigDNA: the rest names the image (channel)
        return category, [rest], params
    if category == "Children":  # Children_Cytoplasm_Count: count of child objects
        return "_".join(rest[-1:]), [], ({"params": "_".join(rest[:-1])} if len(rest) > 1 else {})
    if category == "Number":  # Number_Object_Number
        return "_".join(rest), [], params
    measurement = rest[0]
    tail = rest[1:]
    groups: list[list[str]] = []
    leftover: list[str] = []
    if category == "Intensity":
        groups = [tail] if tail else []
    elif category == "Location":
        if tail and tail[0] in ("X", "Y", "Z"):
            leftover, tail = [tail[0]], tail[1:]
        groups = [tail] if tail else []
    elif category in ("Texture", "RadialDistribution", "ImageQuality"):
        is_param = (
            (lambda t: bool(_INT.match(t) or _BIN.match(t)))
            if category != "ImageQuality"
            else (lambda t: bool(_PARAM_LIKE.match(t)))
        )
        cut = next((i for i, t in enumerate(tail) if is_param(t)), len(tail))
        groups = [tail[:cut]] if cut else []
        leftover = tail[cut:]
        nums = [int(t) for t in leftover if _INT.match(t)]
        if category == "Texture":
            for key, value in zip(("scale", "angle", "gray_levels"), nums):
                params[key] = value
            leftover = [t for t in leftover if not _INT.match(t)]
        elif category == "RadialDistribution":
            bins = [t for t in leftover if _BIN.match(t)]
            if bins:
                params["bin"] = bins[0]
                leftover = [t for t in leftover if t != bins[0]]
        else:  # ImageQuality: LocalFocusScore_DNA_20 (scale), ThresholdOtsu_DNA_2W (params)
            if len(nums) == 1 and len(leftover) == 1:
                params["scale"] = nums[0]
                leftover = []
    elif category == "Granularity":
        # CellProfiler: Granularity_<scale>_<channel>; tolerate the reverse order too.
        if _INT.match(measurement):
            params["scale"], groups = int(measurement), ([tail] if tail else [])
        elif tail and _INT.match(tail[-1]):
            params["scale"], groups = int(tail[-1]), [[measurement] + tail[:-1]]
        else:
            groups = [[measurement] + tail]
        measurement = "Granularity"
    elif category == "Correlation":
        if tail:
            groups = _split_pair(tail, cmap)
    elif category in CATEGORIES:  # AreaShape, Neighbors, Children, Parent, Number, Count, ...
        leftover = tail
    else:
        leftover = tail
    if leftover:
        params["params"] = "_".join(leftover)
    return measurement, [g for g in groups if g], params


@lru_cache(maxsize=65536)
def _parse_one(name: str, cmap: tuple[tuple[str, str], ...], default_compartment: str) -> dict:
    row = _blank(name)
    try:
        return _parse_into(row, name, cmap, default_compartment)
    except Exception:  # a name we cannot place must never stop an analysis
        return _blank(name)


def _parse_into(row: dict, name: str, cmap, default_compartment: str) -> dict:
    if name.startswith("Metadata_") or name in _IDENTIFIERS:
        row.update(
            compartment="Metadata",
            category="Metadata" if name.startswith("Metadata_") else "Identifier",
            measurement=name.removeprefix("Metadata_"),
        )
        return row
    # cp_measure: channels follow a double underscore.
    head, *dunder_channels = name.split("__")
    tokens = [t for t in head.split("_") if t != ""]
    if not tokens:
        return row
    idx = next((i for i, t in enumerate(tokens) if t in CATEGORIES), None)
    if idx is None:
        # Bare cp_measure / raw names: infer the category from the measurement.
        first = tokens[0]
        if first in _TEXTURE:
            idx, tokens = 0, ["Texture"] + tokens
        elif first in _AREASHAPE:
            idx, tokens = 0, ["AreaShape"] + tokens
        elif len(tokens) > 1 and tokens[1] in _AREASHAPE | _TEXTURE:
            idx, tokens = 1, [tokens[0], "AreaShape" if tokens[1] in _AREASHAPE else "Texture"] + tokens[1:]
    if idx is None:
        row["compartment"] = tokens[0] if len(tokens) > 1 else default_compartment
        return row
    compartment = "_".join(tokens[:idx]) or default_compartment
    category = tokens[idx]
    rest = tokens[idx + 1 :]
    if category == "Correlation" and rest and _INT.match(rest[0]) and len(dunder_channels) == 1:
        category, rest = "Texture", ["Correlation"] + rest  # cp_measure texture "Correlation_3_00_256__DNA"
    if category in _IDENTIFIERS:
        row.update(compartment=compartment if idx else "Metadata", category="Identifier", measurement=category)
        return row
    if category == "Metadata":
        row.update(compartment=compartment, category="Metadata", measurement="_".join(rest) or UNKNOWN)
        return row
    if dunder_channels:  # cp_measure: the channels are exactly the "__" parts
        measurement, _, params = _body_params_only(category, rest)
        groups = [[c] for c in dunder_channels if c]
    else:
        measurement, groups, params = _body(category, rest, cmap)
    resolved = [_resolve("_".join(g), cmap) for g in groups]
    if category in _IMAGE_NAME_CATEGORIES and not all(k for _, k in resolved):
        # FileName_CellOutlines: an image that is not a stain
        params = {"params": "_".join("_".join(g) for g in groups)}
        groups, resolved = [], []
    channels = [c for c, _ in resolved]
    ordered = False
    if category == "Correlation" and len(channels) == 2:
        if measurement in _UNORDERED_CORRELATION:
            channels = sorted(channels, key=channel_order_key)
        else:
            ordered = True
    row.update(
        compartment=compartment,
        category=category,
        measurement=measurement,
        channels=channels,
        n_channels=len(channels),
        channel_tokens=["_".join(g) for g in groups],
        known_channels=all(k for _, k in resolved),
        ordered=ordered,
        scale=params.get("scale"),
        angle=params.get("angle"),
        gray_levels=params.get("gray_levels"),
        bin=params.get("bin"),
        params=params.get("params"),
    )
    return row


def _body_params_only(category: str, rest: list[str]) -> tuple[str, list, dict]:
    """Measurement and parameters of a cp_measure name head (its channels follow ``__``)."""
    if not rest:
        return category, [], {}
    if category == "Granularity":
        return "Granularity", [], ({"scale": int(rest[0])} if _INT.match(rest[0]) else {"params": "_".join(rest)})
    measurement, tail = rest[0], rest[1:]
    params: dict = {}
    if category == "Texture":
        nums = [int(t) for t in tail if _INT.match(t)]
        params.update(dict(zip(("scale", "angle", "gray_levels"), nums)))
        other = [t for t in tail if not _INT.match(t)]
        if other:
            params["params"] = "_".join(other)
    elif category == "RadialDistribution":
        bins = [t for t in tail if _BIN.match(t)]
        if bins:
            params["bin"] = bins[0]
        other = [t for t in tail if not _BIN.match(t)]
        if other:
            params["params"] = "_".join(other)
    elif tail:
        params["params"] = "_".join(tail)
    return measurement, [], params


def parse_features(
    names: Iterable[str],
    channel_map: Mapping[str, str] | None = None,
    compartment: str = UNKNOWN,
) -> pd.DataFrame:
    """Parse CellProfiler-style feature names into their parts.

    Parameters
    ----------
    names : column names (any iterable of str; non-feature columns are allowed and come back
        with ``category`` ``"Metadata"``/``"Identifier"``/``"unknown"``).
    channel_map : optional mapping from stain tokens (or canonical channels) to the channel
        names you want, e.g. ``{"Hoechst": "DNA", "AGP": "Actin"}``; case-insensitive.
    compartment : compartment to report for names without one (raw per-object CSV columns).

    Returns
    -------
    pandas.DataFrame
        One row per name, in input order, with columns

        ``feature`` (the name), ``compartment`` (``Cells``, ``Cytoplasm``, ``Nuclei``, ``Image``,
        another object name, ``Metadata`` or ``"unknown"``), ``category`` (``Intensity``,
        ``Texture``, ``Granularity``, ``Correlation``, ``RadialDistribution``, ``AreaShape``, ...,
        ``"Identifier"``, ``"Metadata"`` or ``"unknown"``), ``measurement`` (``MeanIntensity``,
        ``AngularSecondMoment``, ...), ``channels`` (list of 0-2 canonical channel names;
        unordered correlation pairs sorted DNA, ER, RNA, AGP, Mito, Brightfield),
        ``n_channels``, ``channel_tokens`` (the raw tokens), ``known_channels`` (every token is
        a recognised stain, brightfield or ``channel_map`` entry), ``ordered`` (True for
        directional correlation measurements: K, Manders, Costes, RWC, Slope), ``scale``,
        ``angle``, ``gray_levels`` (texture/granularity/image-quality integers, nullable),
        ``bin`` (radial bin such as ``"3of4"``), ``params`` (any remaining tokens as a string:
        a Zernike index ``"9_9"``, a location axis ``"X"``, a neighbour distance ``"Adjacent"``).
    """
    if isinstance(names, str):
        raise TypeError("names must be an iterable of feature names, not a single string")
    cmap = _normalise_map(channel_map)
    rows = [dict(_parse_one(str(n), cmap, compartment)) for n in names]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("scale", "angle", "gray_levels"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    for col in ("bin", "params"):
        df[col] = df[col].astype("string")
    for col in ("n_channels",):
        df[col] = df[col].astype("int64")
    for col in ("known_channels", "ordered"):
        df[col] = df[col].astype(bool)
    # lists are shared with the cache: hand out copies
    df["channels"] = [list(c) for c in df["channels"]]
    df["channel_tokens"] = [list(c) for c in df["channel_tokens"]]
    return df
