"""The run-directory schema: every file a run writes, its columns and dtypes, and its stage.

One place for these facts. Stages write through :class:`chanstat.rundir.RunDirectory`, which
validates every table against its :class:`TableSpec` here; the report reads columns by the
names declared here (never by guessing); the tests check every table of a demo run against
it and build their fake run directories from it. This module never imports torch.

Column kinds: ``int``, ``float``, ``number`` (int or float), ``str``, ``bool``, ``list``
(a list per row, e.g. the channels of a correlation feature). Optional columns may be
absent; ``extra`` names a prefix (or ``"*"``) of columns a table may carry beyond its own
(metadata, one column per channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

KINDS = ("int", "float", "number", "str", "bool", "list")


class SchemaError(ValueError):
    """A table does not match its schema entry (the message names the table and the columns)."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    optional: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}; use one of {KINDS}")


@dataclass(frozen=True)
class Entry:
    """One file (or folder) of a run directory."""

    name: str
    file: str
    stage: str
    doc: str


@dataclass(frozen=True)
class TableSpec(Entry):
    columns: tuple[Column, ...] = ()
    order: tuple[str, ...] = ("sample",)
    extra: tuple[str, ...] = ()

    @property
    def per_image(self) -> bool:
        return any(c.name == "sample" for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.file} declares no column {name!r}; its columns are {[c.name for c in self.columns]}")

    def validate(self, table: pd.DataFrame, where: str | None = None) -> pd.DataFrame:
        """``table`` if it matches this entry, else :class:`SchemaError` naming every problem."""
        where = where or self.file
        problems = []
        for col in self.columns:
            if col.name not in table.columns:
                if not col.optional:
                    problems.append(f"missing column {col.name!r}")
                continue
            if not _kind_ok(table[col.name], col.kind):
                problems.append(f"column {col.name!r} should be {col.kind}, is {table[col.name].dtype}")
        known = {c.name for c in self.columns}
        extra = [
            c for c in table.columns if c not in known and not any(p == "*" or str(c).startswith(p) for p in self.extra)
        ]
        if extra:
            problems.append(f"undeclared columns {extra[:8]}{' ...' if len(extra) > 8 else ''}")
        if problems:
            raise SchemaError(f"{where}: " + "; ".join(problems))
        return table

    def empty(self) -> pd.DataFrame:
        """A table with no rows and every required column, in the declared kinds."""
        dtypes = {
            "int": "int64",
            "float": "float64",
            "number": "float64",
            "str": "object",
            "bool": "bool",
            "list": "object",
        }
        return pd.DataFrame({c.name: pd.Series(dtype=dtypes[c.kind]) for c in self.columns if not c.optional})


@dataclass(frozen=True)
class ArraySpec(Entry):
    """A Zarr group of arrays whose first axis is the image axis."""

    arrays: str = ""
    attrs: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class FileSpec(Entry):
    """Any other file: config, provenance, checkpoints, the data set, the report."""


def _kind_ok(series: pd.Series, kind: str) -> bool:
    dtype = series.dtype
    if len(series) == 0 and pd.api.types.is_object_dtype(
        dtype
    ):  # an empty column has no values to be of the wrong kind
        return True
    if kind == "int":
        return pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind == "float":
        return pd.api.types.is_float_dtype(dtype) or (len(series) == 0 and pd.api.types.is_object_dtype(dtype))
    if kind == "number":
        return (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)) or (
            len(series) == 0 and pd.api.types.is_object_dtype(dtype)
        )
    if kind == "bool":
        return pd.api.types.is_bool_dtype(dtype) or (len(series) == 0 and pd.api.types.is_object_dtype(dtype))
    if kind == "str":
        if pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
            values = series.dropna()
            return all(isinstance(v, str) for v in values.head(50))
        return False
    if kind == "list":
        return pd.api.types.is_object_dtype(dtype) and all(
            isinstance(v, (list, tuple, np.ndarray)) for v in series.dropna().head(50)
        )
    return False


def _columns(spec: str) -> tuple[Column, ...]:
    """``"sample:int method:str note:str?"`` -> columns (``?`` marks an optional column)."""
    out = []
    for token in spec.split():
        name, _, kind = token.partition(":")
        optional = kind.endswith("?")
        out.append(Column(name, kind.rstrip("?"), optional))
    return tuple(out)


def _table(
    name: str, stage: str, columns: str, doc: str, order=("sample",), extra=(), file: str | None = None
) -> TableSpec:
    return TableSpec(name, file or f"{name}.parquet", stage, doc, _columns(columns), tuple(order), tuple(extra))


_TEST_COLUMNS = (
    "method:str transition:str test:str contrast:str channel_a:str? channel_b:str? statistic:float df1:float? "
    "df2:float? p_value:float p_adj:float? p_adj_method:str? q_value:float? effect_size:float? "
    "effect_size_name:str? estimate:float? unit:str n_units:int n_samples:int primary:bool dominant_channel:str "
    "dominant_share:float? dominant_ci_low:float? dominant_ci_high:float? note:str? pseudo_replicates:bool? "
    "role:str? multiplicity_scope:str? n_plates:int? warning:str? quantity:str? dominant_value:float?"
)

_ENTRIES: list[Entry] = [
    FileSpec("config", "config.toml", "run", "The validated config the run used (defaults filled in)."),
    FileSpec(
        "provenance",
        "provenance.json",
        "run",
        "Versions, seed, device, git commit, per-stage status, fingerprint and wall time.",
    ),
    FileSpec(
        "marker",
        ".chanstat-run",
        "run",
        "Marks the folder as a chanstat run directory (only such folders are ever replaced).",
    ),
    FileSpec(
        "dataset",
        "dataset.zarr",
        "data",
        "Images, labels, counterfactuals, signal masks and object labels of every image (ImageSet).",
    ),
    _table(
        "meta",
        "data",
        "sample:int",
        "Per-image metadata (Metadata_* columns), one row per image.",
        extra=("Metadata_", "*"),
    ),
    _table(
        "data_summary",
        "data",
        "class_name:str channel:str n_images:int n_wells:int mean_intensity:float sd_intensity:float",
        "Intensity per class and channel.",
        order=(),
    ),
    FileSpec(
        "model",
        "model.pt",
        "model",
        "The reference classifier's checkpoint (architecture, weights, channels, classes).",
    ),
    _table(
        "training_history",
        "model",
        "epoch:int train_loss:float train_accuracy:float val_loss:float val_accuracy:float",
        "Loss and accuracy per epoch.",
        order=("epoch",),
    ),
    _table(
        "counterfactual_quality",
        "counterfactual",
        "sample:int channel:str mean_abs_diff:float change_share:float label:int counterfactual_target:int target_class:str "
        "predicted_label:int p_target:float p_target_real:float flipped:bool success:bool provider:str "
        "n_candidates:int? candidate:str? n_accepted:int? candidate_index:int? candidate_change:float? "
        "candidate_p_target:float? neighbour:int? embedding_distance:float? n_steps:int? converged:bool? "
        "final_loss:float? already_target:bool?",
        "Per image and channel: how much the counterfactual changed and whether it flips the classifier "
        "(+ provider-specific columns: nearest's neighbour, optimise's steps).",
        order=("sample", "channel"),
    ),
    _table(
        "counterfactual_summary",
        "counterfactual",
        "provider:str channel:str n_samples:int mean_abs_diff:float change_share:float flip_rate:float success_rate:float "
        "mean_candidates:float?",
        "Per channel: mean change, change share, flip rate.",
        order=(),
    ),
    ArraySpec(
        "oracle_counterfactuals",
        "oracle_counterfactuals.zarr",
        "counterfactual",
        "The data set's own counterfactuals, kept when another provider replaced them.",
        arrays="counterfactuals, counterfactual_target",
    ),
    FileSpec("generator", "generator.pt", "counterfactual", "The trained conversion network (provider 'generator')."),
    _table(
        "generator_log",
        "counterfactual",
        "step:int",
        "Training losses of the conversion network per logged step.",
        order=("step",),
        extra=("*",),
    ),
    ArraySpec(
        "attributions",
        "attributions.zarr",
        "attribution",
        "One array per method, (N, C, H, W) or (N, 1, H, W) for channel-agnostic methods.",
        arrays="<method>",
        attrs=("channels", "method", "family", "signed", "resolves_channels", "explains"),
    ),
    _table(
        "dac_curves",
        "dac",
        "sample:int method:str strategy:str channel:str step:int threshold:float mask_size:float score:float "
        "prediction:int evaluated:bool?",
        "Every DAC curve point (channel 'all' for whole-image strategies).",
        order=("method", "strategy", "sample"),
    ),
    _table(
        "dac_scores",
        "dac",
        "sample:int method:str strategy:str channel:str dac:float",
        "DAC per pair, method, strategy (and channel for single_channel).",
        order=("method", "strategy", "sample"),
    ),
    ArraySpec(
        "dac_masks",
        "dac_masks.zarr",
        "dac",
        "Optimal masks per pair, one array per '<method>.<strategy>'.",
        arrays="<method>.<strategy>",
        attrs=("method", "strategy", "kind", "samples", "channels"),
    ),
    _table(
        "dac_sweep",
        "dac",
        "method:str closing:int sigma:float sample:int strategy:str channel:str dac:float",
        "DAC over a grid of closing sizes and blur widths.",
        order=("method", "closing", "sigma", "strategy", "sample"),
    ),
    _table("dac_dropped", "dac", "sample:int", "Pairs left out of DAC and why.", extra=("*",)),
    _table(
        "localisation",
        "metrics",
        "method:str channel:str channel_resolved:bool n_images:int n_val:int n_test:int foreground_fraction:float "
        "pxap:float dice:float dice_threshold:float miou:float miou_threshold:float pointing_game:float "
        "relevance_mass:float relevance_rank:float deletion_auc:float? insertion_auc:float? road_morf_auc:float? "
        "road_lerf_auc:float?",
        "Localisation of every method against the signal masks, per channel and 'all'.",
        order=(),
    ),
    _table(
        "faithfulness",
        "metrics",
        "sample:int method:str metric:str channel:str channel_resolved:bool auc:float score_original:float score_final:float",
        "Deletion / insertion (/ ROAD) area per image.",
        order=("method", "metric", "sample"),
    ),
    _table(
        "faithfulness_curves",
        "metrics",
        "sample:int method:str metric:str channel:str channel_resolved:bool fraction:float score:float",
        "Deletion / insertion curves.",
        order=("method", "metric", "sample"),
    ),
    _table(
        "randomisation",
        "metrics",
        "sample:int method:str layer_index:int layer:str channel:str channel_resolved:bool spearman:float",
        "Cascading parameter randomisation: similarity of the map to the original.",
        order=("method", "sample"),
    ),
    _table(
        "channel_mass",
        "stats",
        "sample:int method:str channel:str mass:float share:float transition:str?",
        "Attribution mass and share per image, method and channel (+ the image's metadata).",
        order=("method", "sample"),
        extra=("Metadata_",),
    ),
    _table(
        "channel_tests", "stats", _TEST_COLUMNS, "Channel tests per method (and transition).", order=(), extra=("*",)
    ),
    _table(
        "channel_share_ci",
        "stats",
        "method:str transition:str channel:str mean:float ci_low:float ci_high:float unit:str n_units:int n_samples:int "
        "interval:str? simultaneous_ci_low:float? simultaneous_ci_high:float? rank:int? dominant:bool? "
        "pseudo_replicates:bool? warning:str?",
        "Mean unit-level share per channel with its interval.",
        order=(),
        extra=("*",),
    ),
    _table(
        "map_similarity",
        "stats",
        "method:str channel_a:str channel_b:str mean:float sd:float median:float n:int n_undefined:int",
        "Correlation between channels' maps.",
        order=(),
    ),
    _table(
        "strategy_comparison",
        "stats",
        "comparison:str method:str strategy:str channel:str a:str b:str mean_a:float mean_b:float estimate:float "
        "ci_low:float ci_high:float statistic:float p_value:float p_adj:float p_adj_method:str effect_size:float "
        "effect_size_name:str unit:str n_units:int note:str?",
        "DAC compared between strategies and methods at the unit level.",
        order=(),
        extra=("*",),
    ),
    _table(
        "shapley_tests",
        "stats",
        "source:str channel:str estimate:float? ci_low:float? ci_high:float? method:str? transition:str? test:str? "
        "role:str? mean:float? sd:float? simultaneous_ci_low:float? simultaneous_ci_high:float? statistic:float? "
        "df:float? p_value:float? p_adj:float? p_adj_method:str? multiplicity_scope:str? alternative:str? unit:str? "
        "n_units:int? n_samples:int? pseudo_replicates:bool? dominant_channel:str? dominant_share:float? dominant_value:float? quantity:str? "
        "dominant_ci_low:float? dominant_ci_high:float? warning:str? note:str?",
        "Channel Shapley values tested against zero and for dominance.",
        order=(),
        extra=("*",),
    ),
    _table(
        "best_channel",
        "stats",
        "method:str role:str transition:str quantity:str channel:str estimate:float gap:float gap_ci_low:float "
        "gap_ci_high:float in_set:bool named_channel:str set_label:str unit:str n_units:int scope:str alpha:float "
        "p_value:float p_adj:float note:str",
        "Confidence set for the best channel (multiple comparisons with the best) per method, transition, channel.",
        order=(),
        extra=("*",),
    ),
    _table(
        "cp_features",
        "cellprofiler",
        "",
        "Well-level CellProfiler features measured on the images (cp-measure).",
        order=(),
        extra=("*",),
    ),
    _table(
        "cp_differential",
        "cellprofiler",
        "feature:str compartment:str category:str measurement:str? channels:list status:str n_case:int n_control:int "
        "statistic:float p_value:float q_value:float effect_size:float ci_low:float ci_high:float significant:bool "
        "case:str? control:str? level:str? multiplicity_scope:str?",
        "Every CellProfiler feature tested case vs control at the well level.",
        order=(),
        extra=("*",),
    ),
    _table(
        "channel_enrichment",
        "cellprofiler",
        "channel:str n_features:int n_significant:int odds_ratio:float? fraction_significant:float? n_up:int? "
        "n_down:int? mean_abs_effect:float? median_abs_effect:float? statistic:float? score_inside:float? "
        "score_outside:float? p_value:float? p_adj:float? p_adj_method:str? multiplicity_scope:str? "
        "statistic_name:str? n_perm:number? n_units:number? n_features_competitive:number?",
        "Which channel's features differ more than the others'.",
        order=(),
        extra=("*",),
    ),
    _table(
        "compartment_channel",
        "cellprofiler",
        "compartment:str channel:str n_features:int n_significant:int",
        "Differential features per compartment and channel.",
        order=(),
        extra=("*",),
    ),
    _table(
        "concordance",
        "cellprofiler",
        "method:str statistic:str estimate:float p_value:float ci_low:float? ci_high:float? n_boot:int? "
        "resampled:str? min_p_value:float? critical_estimate:float? grain:str? note:str?",
        "Agreement of attribution and CellProfiler channel rankings.",
        order=(),
        extra=("*",),
    ),
    _table(
        "concordance_ranks",
        "cellprofiler",
        "method:str channel:str attribution_rank:float? feature_rank:float?",
        "Channel ranks on both sides of the concordance.",
        order=(),
        extra=("*",),
    ),
    _table(
        "channel_shapley",
        "decompose",
        "sample:int channel:str shapley:float",
        "Exact channel Shapley values per image (coalition value p(target | hybrid)).",
        order=("sample",),
        extra=("*",),
    ),
    _table(
        "channel_shapley_total",
        "decompose",
        "sample:int p_real:float p_counterfactual:float total:float",
        "What the Shapley values of an image add up to.",
        extra=("*",),
    ),
    _table(
        "channel_shapley_interactions",
        "decompose",
        "sample:int channel_a:str channel_b:str interaction:float",
        "Pairwise Shapley interaction indices.",
        extra=("*",),
    ),
    _table(
        "compartment_mass",
        "decompose",
        "sample:int method:str compartment:str channel:str mass:float share:float",
        "Attribution mass per image, compartment and channel.",
        order=("method", "sample"),
        extra=("*",),
    ),
    _table(
        "object_mass",
        "decompose",
        "sample:int method:str object:int compartment:str channel:str mass:float",
        "Attribution mass per cell (object), compartment and channel; joins CellProfiler per-object tables.",
        order=("method", "sample"),
        extra=("*",),
    ),
    _table(
        "activity",
        "cellprofiler",
        "perturbation:str n_replicates:int n_controls:int mean_average_precision:float p_value:float p_adj:float "
        "p_adj_method:str active:bool",
        "Phenotypic activity: mAP of each perturbation's replicates against the controls "
        "(chanstat.cellprofiler.activity on a profile table; saved with RunDirectory.save(activity=...)).",
        order=(),
        extra=("*",),
    ),
    _table(
        "feature_link",
        "cellprofiler",
        "feature:str compartment:str channel:str",
        "Which per-cell CellProfiler features predict where the classifier looks (tested over wells).",
        order=(),
        extra=("*",),
    ),
    _table(
        "verdict",
        "answer",
        "transition:str grade:str channel:str set_label:str sentence:str reasons:list rules:list attribution:str "
        "dac:str shapley:str cellprofiler:str primary_method:str p_value:float provider:str flip_rate:float "
        "change_share:float proximity:float n_distinct:int realism:float quality:str",
        "The verdict per transition: the named channel (or set), the evidence grade (strong / supported / weak / "
        "conflicting / none), its reasons and the rules that fired, what each piece says, the counterfactuals' quality.",
        order=(),
    ),
    _table(
        "verdict_evidence",
        "answer",
        "transition:str piece:str channel:str estimate:float ci_low:float ci_high:float in_set:bool method:str",
        "Per transition, piece of evidence (attribution, dac, shapley) and channel: the estimate the verdict weighed.",
        order=(),
    ),
    FileSpec(
        "explanations_html",
        "explanations.html",
        "report",
        "Offline page of every image's best explanation (real, counterfactual, mask, hybrid), sorted by DAC.",
    ),
    FileSpec("report_html", "report.html", "report", "The rendered report (HTML)."),
    FileSpec("report_pdf", "report.pdf", "report", "The rendered report (PDF)."),
]

#: name -> entry, for every file a run directory can hold.
SCHEMA: dict[str, Entry] = {e.name: e for e in _ENTRIES}
#: file name -> entry.
BY_FILE: dict[str, Entry] = {e.file: e for e in _ENTRIES}


def entry(name: str) -> Entry:
    """The schema entry ``name`` (a key of :data:`SCHEMA` or a file name)."""
    if name in SCHEMA:
        return SCHEMA[name]
    if name in BY_FILE:
        return BY_FILE[name]
    import difflib

    close = difflib.get_close_matches(name, list(SCHEMA) + list(BY_FILE), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"the run-directory schema has no entry {name!r}{hint}")


def table_spec(name: str) -> TableSpec:
    spec = entry(name)
    if not isinstance(spec, TableSpec):
        raise TypeError(f"{spec.file} is not a table")
    return spec


def validate(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check ``table`` against the schema entry ``name``; returns it unchanged."""
    return table_spec(name).validate(table)


def describe() -> pd.DataFrame:
    """The schema as a table (file, stage, kind, columns, description) for docs and the report."""
    rows = []
    for e in _ENTRIES:
        kind = type(e).__name__.replace("Spec", "").lower()
        cols = ", ".join(f"{c.name}{'?' if c.optional else ''}" for c in getattr(e, "columns", ()))
        extra = getattr(e, "extra", ())
        if extra:
            cols += (", " if cols else "") + " ".join("+ any" if p == "*" else f"+ {p}*" for p in extra)
        rows.append({"file": e.file, "stage": e.stage, "kind": kind, "columns": cols, "description": e.doc})
    return pd.DataFrame(rows)
