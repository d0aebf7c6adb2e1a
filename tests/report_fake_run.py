"""A small, self-consistent fake run directory built from the run-directory schema (numpy/pandas only).

Every table is made by :func:`schema_frame`: the planted columns a test checks, and every other
column the schema declares (optional ones included) filled by kind. Tables the fake does not
plant are generated from their schema entry alone, so the fake holds every table of
:data:`chanstat.schema.SCHEMA`; everything is written through :class:`chanstat.rundir.RunDirectory`
(which validates it). Numbers are planted so the Mito channel carries the difference.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from chanstat.rundir import RunDirectory
from chanstat.schema import SCHEMA, TableSpec, table_spec
from chanstat.stage import Arrays


@dataclass
class Names:
    """The names a fake run uses (tests swap in hostile ones)."""

    channels: list[str] = field(default_factory=lambda: ["DNA", "ER", "RNA", "AGP", "Mito"])
    classes: list[str] = field(default_factory=lambda: ["control", "treated"])
    methods: list[str] = field(default_factory=lambda: ["d_ig", "residual", "d_gradcam"])
    families: list[str] = field(default_factory=lambda: ["integrated gradients", "baseline", "cam"])
    compartments: list[str] = field(default_factory=lambda: ["Cells", "Nuclei", "Cytoplasm"])
    feature: str = "Cells_Intensity_Feature{i}_{channel}"
    wells: list[str] = field(default_factory=lambda: [f"W{i:02d}" for i in range(6)])
    plates: list[str] = field(default_factory=lambda: ["P1", "P2"])
    run_name: str = "fake"
    #: extra keys of the data stage's provenance record (e.g. ``pseudo_replicates``)
    data_record: dict = field(default_factory=dict)

    @property
    def signal(self) -> str:
        """The channel that carries the planted difference (the last one)."""
        return self.channels[-1]


STRATEGIES = ["aggregate", "joint", "per_channel"]
_DTYPES = {"int": "int64", "float": "float64", "number": "float64", "bool": "bool"}


def _filler(kind: str, n: int, rng: np.random.Generator, column: str, names: Names) -> list | np.ndarray:
    vocab = {"channel": names.channels, "channel_a": names.channels, "channel_b": names.channels[1:] + names.channels[:1],
             "method": names.methods, "family": names.families, "compartment": names.compartments,
             "strategy": STRATEGIES, "class_name": names.classes, "source": ["attribution", "shapley"]}
    if kind == "int":
        return np.arange(n, dtype=np.int64)
    if kind in ("float", "number"):
        return rng.random(n)
    if kind == "bool":
        return np.zeros(n, bool)
    if kind == "list":
        return [list(names.channels[:1]) for _ in range(n)]
    pool = vocab.get(column, [f"{column}_{k}" for k in range(3)])
    return [pool[k % len(pool)] for k in range(n)]


def schema_frame(name: str, rows, names: Names, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """Table ``name`` from ``rows`` (records or a DataFrame) with every declared column: columns
    the rows lack are filled by kind; each column is cast to its declared kind."""
    spec = table_spec(name)
    rng = rng or np.random.default_rng(0)
    df = pd.DataFrame(rows).reset_index(drop=True)
    for col in spec.columns:
        if col.name not in df:
            df[col.name] = _filler(col.kind, len(df), rng, col.name, names)
        elif col.kind in _DTYPES:
            df[col.name] = df[col.name].astype(_DTYPES[col.kind])
        elif col.kind == "str":
            df[col.name] = df[col.name].astype(object)
    return spec.validate(df)


def generic_frame(name: str, names: Names, n: int = 6, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """A table of ``n`` rows made from the schema entry alone."""
    spec = table_spec(name)
    frame = schema_frame(name, pd.DataFrame(index=range(n)), names, rng)
    if not spec.columns:  # a table of extras only (e.g. cp_features)
        frame["value"] = np.arange(n, dtype=float)
    return frame


def make_fake_run(out: Path, names: Names | None = None, tables: tuple[str, ...] | None = None, n: int = 12,
                  size: int = 24, seed: int = 0) -> Path:
    """Write a fake run directory into ``out`` (tables, config and provenance through
    ``RunDirectory(out, create=True).save(...)``, arrays through ``write_arrays``).

    ``tables``: the schema entries to write (default: every table and group of arrays, plus
    config and provenance); entries not listed stay absent, as when their stage did not run.
    """
    names = names or Names()
    rng = np.random.default_rng(seed)
    run = RunDirectory(out, create=True)
    want = set(tables) if tables is not None else set(SCHEMA)
    chans, methods, classes = names.channels, names.methods, names.classes
    C, H, W = len(chans), size, size
    sig = C - 1
    labels = np.arange(n) % 2
    cf_labels = 1 - labels
    images = rng.gamma(2.0, 0.2, size=(n, C, H, W)).astype(np.float32)
    cfs = images.copy()
    signal = np.zeros((n, C, H, W), bool)
    signal[:, sig, H // 4: H // 2, W // 4: W // 2] = True
    cfs[signal] += 0.8
    planted: dict = {}  # everything but arrays, saved at the end through RunDirectory.save

    def put(name: str, rows) -> None:
        if name in want:
            planted[name] = schema_frame(name, rows, names, rng)

    if "config" in want:
        planted["config"] = {"run": {"name": names.run_name, "seed": 0}, "data": {"source": "synthetic", "channels": chans}}
    if "provenance" in want:
        planted["provenance"] = {
            "chanstat_run": names.run_name, "started": "2025-01-01T00:00:00+00:00",
            "finished": "2025-01-01T00:01:00+00:00", "quick": True, "seed": 0,
            "device": {"device": "cpu", "platform": "test", "cpu_count": 2},
            "versions": {"numpy": np.__version__, "pandas": pd.__version__, "python": "3.11"},
            "git_commit": None, "total_wall_s": 60.0,
            "stages": {"data": {"status": "done", "wall_s": 1.5, "n_images": n, **names.data_record},
                       "model": {"status": "done", "wall_s": 20.25, "val_accuracy": 0.9375}},
        }
    if "dataset" in want:
        run.write_arrays("dataset", Arrays(
            {"images": images, "counterfactuals": cfs, "signal_masks": signal, "labels": labels.astype(np.int64),
             "counterfactual_target": cf_labels.astype(np.int64)},
            group_attrs={"channels": chans, "classes": classes}))
    put("meta", {"sample": np.arange(n), "Metadata_Plate": [names.plates[i % 2] for i in range(n)],
                 "Metadata_Well": [names.wells[i // 2 % len(names.wells)] for i in range(n)],
                 "Metadata_Class": [classes[k] for k in labels]})
    put("data_summary", [{"class_name": k, "channel": ch, "n_images": n // 2, "n_wells": 3,
                          "mean_intensity": 0.4 + 0.1 * c, "sd_intensity": 0.2} for k in classes for c, ch in enumerate(chans)])
    e = np.arange(1, 6)
    put("training_history", {"epoch": e, "train_loss": 0.7 / e, "train_accuracy": 1 - 0.4 / e,
                             "val_loss": 0.8 / e, "val_accuracy": 1 - 0.5 / e})
    put("counterfactual_quality", [
        {"sample": s, "channel": ch, "mean_abs_diff": 0.5 if c == sig else 0.01, "change_share": 0.9 if c == sig else 0.025,
         "label": int(labels[s]), "counterfactual_target": int(cf_labels[s]), "target_class": classes[cf_labels[s]],
         "predicted_label": int(cf_labels[s]), "p_target": 0.9, "p_target_real": 0.1, "flipped": True, "success": True,
         "provider": "oracle", "n_candidates": 3 + s, "candidate": f"c{s % 4}"}
        for s in range(n) for c, ch in enumerate(chans)])
    put("counterfactual_summary", {"provider": "oracle", "channel": chans, "n_samples": n,
                                   "mean_abs_diff": [0.5 if c == sig else 0.01 for c in range(C)],
                                   "change_share": [0.9 if c == sig else 0.025 for c in range(C)], "flip_rate": 0.95,
                                   "success_rate": 0.95, "mean_candidates": 8.5})
    if "attributions" in want:
        diff = cfs - images
        d_ig = (diff * rng.normal(1.0, 0.3, size=diff.shape) - 0.05 * rng.random(diff.shape)).astype(np.float32)
        maps = {methods[0]: d_ig, methods[1]: np.abs(diff), methods[2]: np.abs(diff).mean(axis=1, keepdims=True)}
        attrs = {m: {"channels": chans if a.shape[1] > 1 else ["all"], "method": m, "family": f, "signed": k == 0,
                     "resolves_channels": a.shape[1] > 1}
                 for k, ((m, a), f) in enumerate(zip(maps.items(), names.families))}
        run.write_arrays("attributions", Arrays(maps, attrs=attrs, group_attrs={"channels": chans}))
    curves, scores = [], []
    steps = np.arange(21)
    size_ = steps / steps[-1]
    for s in range(n):
        for mi, m in enumerate(methods):
            for strategy in STRATEGIES + ["single_channel"]:
                for ch in (chans if strategy == "single_channel" else ["all"]):
                    strong = ch in ("all", names.signal)
                    k = 2.0 + mi + (4.0 if strong else 0.0) + rng.normal(0, 0.3)
                    score = (1 - (1 - size_) ** k) * (0.9 if strong else 0.2)
                    curves.append(pd.DataFrame({"sample": s, "method": m, "strategy": strategy, "channel": ch,
                                                "step": steps, "threshold": 1 - size_, "mask_size": size_,
                                                "score": score, "prediction": 1}))
                    scores.append({"sample": s, "method": m, "strategy": strategy, "channel": ch,
                                   "dac": float(np.trapezoid(score, size_))})
    put("dac_curves", pd.concat(curves, ignore_index=True))
    put("dac_scores", scores)
    if "dac_masks" in want:
        masks = (np.abs(cfs - images) > 0.4).astype(np.float32)[:2]
        run.write_arrays("dac_masks", Arrays(
            {f"{methods[0]}.joint": masks, f"{methods[2]}.aggregate": masks.max(axis=1, keepdims=True)},
            attrs={f"{methods[0]}.joint": {"channels": chans, "samples": [0, 1], "method": methods[0], "strategy": "joint"},
                   f"{methods[2]}.aggregate": {"channels": ["all"], "samples": [0, 1], "method": methods[2],
                                               "strategy": "aggregate"}},
            group_attrs={"channels": chans, "settings": {"closing": 10, "sigma": 2.0}}))
    put("dac_sweep", [{"method": m, "closing": c, "sigma": sg, "sample": s, "strategy": "aggregate", "channel": "all",
                       "dac": 0.5 + 0.01 * c - 0.02 * sg + 0.1 * i + 0.01 * s}
                      for i, m in enumerate(methods[:2]) for c in (0, 5, 10) for sg in (0.0, 2.0) for s in range(3)])
    put("localisation", [{"method": m, "channel": ch, "channel_resolved": mi != 2, "n_images": n,
                          "pxap": 100 * rng.random(), "dice": rng.random(), "miou": rng.random(),
                          "deletion_auc": rng.random()}
                         for mi, m in enumerate(methods) for ch in chans])
    frac = np.linspace(0, 1, 11)
    put("faithfulness_curves", [{"sample": s, "method": m, "metric": metric, "channel": "all", "channel_resolved": True,
                                 "fraction": f, "score": (1 - f) ** (2 + i) if metric == "deletion" else 1 - (1 - f) ** (2 + i)}
                                for s in range(4) for i, m in enumerate(methods) for metric in ("deletion", "insertion")
                                for f in frac])
    mass = []
    for s in range(n):
        for m in methods:
            raw = rng.random(C) + np.eye(C)[sig] * 2
            mass += [{"sample": s, "method": m, "channel": ch, "mass": raw[c], "share": raw[c] / raw.sum(),
                      "Metadata_Plate": names.plates[s % 2]} for c, ch in enumerate(chans)]
    put("channel_mass", mass)
    put("channel_tests", channel_test_rows(names, n))
    put("channel_share_ci", [{"method": m, "transition": "all", "channel": ch, "mean": 0.2 + (0.25 if c == sig else -0.06),
                              "ci_low": 0.15 + (0.25 if c == sig else -0.06), "ci_high": 0.25 + (0.25 if c == sig else -0.06),
                              "interval": "boot_t", "simultaneous_ci_low": 0.1 + (0.25 if c == sig else -0.06),
                              "simultaneous_ci_high": 0.3 + (0.25 if c == sig else -0.06),
                              "rank": 1 if c == sig else c + 2, "dominant": c == sig and m == methods[0],
                              "unit": "well", "n_units": 6, "n_samples": n, "pseudo_replicates": False,
                              "warning": PLATE_WARNING}
                             for m in methods[:2] for c, ch in enumerate(chans)])
    pairs = list(itertools.combinations(chans, 2))
    put("map_similarity", [{"method": m, "channel_a": a, "channel_b": b, "mean": 0.1 + 0.2 * k + 0.05 * i, "sd": 0.1,
                            "median": 0.1, "n": n, "n_undefined": 0}
                           for k, m in enumerate(methods[:2]) for i, (a, b) in enumerate(pairs)])
    put("strategy_comparison", [{"comparison": "strategy", "method": m, "strategy": f"{a} vs {b}", "channel": "all",
                                 "a": a, "b": b, "mean_a": 0.6, "mean_b": 0.5, "estimate": 0.1, "ci_low": 0.02,
                                 "ci_high": 0.18, "statistic": 2.5, "p_value": 0.04, "p_adj": 0.08, "p_adj_method": "holm",
                                 "effect_size": 0.9, "effect_size_name": "dz", "unit": "well", "n_units": 6}
                                for m in methods for a, b in itertools.combinations(STRATEGIES, 2)])
    put("shapley_tests", shapley_test_rows(names, n))
    put("best_channel", best_channel_rows(names))
    put("channel_shapley", [{"sample": s, "channel": ch, "shapley": (0.5 if c == sig else 0.02) + 0.01 * s}
                            for s in range(n) for c, ch in enumerate(chans)])
    put("channel_shapley_total", [{"sample": s, "p_real": 0.9, "p_counterfactual": 0.9 - (0.58 + 0.05 * s),
                                   "total": 0.58 + 0.05 * s} for s in range(n)])
    put("channel_shapley_interactions", [{"sample": s, "channel_a": a, "channel_b": b, "interaction": 0.01 * (i - 3)}
                                         for s in range(3) for i, (a, b) in enumerate(pairs)])
    put("compartment_mass", [{"sample": s, "method": m, "compartment": comp, "channel": ch, "mass": 1.0,
                              "share": (0.2 if c == sig and comp == names.compartments[0] else 0.8 / (3 * C - 1))}
                             for s in range(4) for m in methods[:2] for comp in names.compartments
                             for c, ch in enumerate(chans)])
    feats = []
    for i in range(120):
        ch = chans[i % C]
        p = 10 ** -rng.uniform(0, 6 if ch == names.signal else 1.5)
        feats.append({"feature": names.feature.format(i=i, channel=ch), "compartment": names.compartments[i % 3],
                      "category": "Intensity", "channels": [ch] if i % 17 else [ch, chans[0]], "status": "tested",
                      "n_case": 6, "n_control": 6, "statistic": rng.normal(), "p_value": p, "q_value": min(1.0, p * 10),
                      "effect_size": rng.normal(0, 1), "ci_low": -1.0, "ci_high": 1.0, "significant": p * 10 < 0.05})
    feats.append({"feature": "Cells_AreaShape_Constant", "compartment": "Cells", "category": "AreaShape", "channels": [],
                  "status": "constant", "n_case": 6, "n_control": 6, "statistic": np.nan, "p_value": np.nan,
                  "q_value": np.nan, "effect_size": np.nan, "ci_low": np.nan, "ci_high": np.nan, "significant": False})
    put("cp_differential", [{**f, "multiplicity_scope": "bh over 120 tested features"} for f in feats])
    n_sig = [1, 0, 2, 1, 15][:C - 1] + [15]
    put("channel_enrichment", {
        "channel": chans, "n_features": [24] * C, "n_significant": n_sig, "fraction_significant": [k / 24 for k in n_sig],
        "n_up": n_sig, "n_down": [0] * C, "odds_ratio": [0.3, 0.1, 0.5, 0.3][:C - 1] + [12.5],
        "mean_abs_effect": [0.4] * (C - 1) + [1.6], "median_abs_effect": [0.3] * (C - 1) + [1.4],
        # the competitive test: only the signal channel is enriched (planted p_adj 0.00398 < 0.05)
        "statistic": [-0.05] * (C - 1) + [0.21], "score_inside": [0.45] * (C - 1) + [0.7],
        "score_outside": [0.5] * (C - 1) + [0.49], "p_value": [0.6] * (C - 1) + [0.000796],
        "p_adj": [1.0] * (C - 1) + [0.00398], "p_adj_method": "holm",
        "multiplicity_scope": f"holm over {C} channels of this contrast", "statistic_name": "competitive_rank",
        "n_perm": 1999, "n_units": 12, "n_features_competitive": [23] * C})
    put("compartment_channel", [{"compartment": comp, "channel": ch, "n_features": 8, "n_significant": 6 if c == sig else 1}
                                for comp in names.compartments for c, ch in enumerate(chans)])
    put("concordance", [{"method": m, "statistic": stat, "estimate": 0.9 - 0.3 * i, "p_value": 0.01 * (i + 1),
                         "ci_low": 0.5 - 0.3 * i, "ci_high": 1.0, "n_boot": 1000, "resampled": "both",
                         "min_p_value": 1 / 120, "critical_estimate": 0.8, "grain": "channel",
                         "note": CONCORDANCE_NOTE.format(stat=stat)}
                        for i, m in enumerate(methods[:2]) for stat in ("kendall_tau", "spearman_rho")])
    put("concordance_ranks", [{"method": m, "channel": ch, "attribution_rank": float(r if i == 0 else (r % C) + 1),
                               "feature_rank": float(r)}
                              for i, m in enumerate(methods[:2]) for r, ch in enumerate(chans[::-1], 1)])
    for name, spec in SCHEMA.items():  # every other table, from its schema entry alone
        if name in want and isinstance(spec, TableSpec) and name not in planted and name not in (
                "verdict", "verdict_evidence"):
            planted[name] = generic_frame(name, names, rng=rng)
    run.save(**planted)
    if "verdict" in want:  # as the answer stage writes it, from the planted evidence
        from chanstat.answer import weigh_run

        verdict, evidence = weigh_run(run, n_boot=200)
        run.save(verdict=verdict, **({"verdict_evidence": evidence} if "verdict_evidence" in want else {}))
    return run.path


#: the warning test_channels writes when wells are the unit and there are too few plates for plate units
PLATE_WARNING = ("unit=well with 2 plates (fewer than 6, the minimum for plate units): plate x channel effects are not "
                 "averaged out, so p-values and intervals describe these 2 plates only (see the plate_x_channel test)")
CONCORDANCE_NOTE = "with 5 ranks the smallest attainable p is 0.00833; p < 0.05 needs {stat} >= 0.8"
#: planted p-values of the primary dominance test: the first method names the signal channel, the second none
DOMINANCE_P = (0.0123, 0.41)
PLATE_P = (0.33, 0.0271)
#: planted p-values of best_channel: the primary method's named channel, the exploratory one's leader, Shapley
BEST_P = (0.0123, 0.41, 0.00456)


def best_channel_rows(names: Names, scope: str = "these plates") -> list[dict]:
    """``best_channel`` as :func:`chanstat.stats.best_channel` writes it (pooled rows): the first
    method (primary) names the signal channel, the second (exploratory) leaves the set "signal or
    first channel", the channel Shapley values name the signal channel; wells of 2 plates."""
    chans, sig = names.channels, names.signal
    one_field = scope == "one field"
    plans = [(names.methods[0], "primary", "share", [sig], 0.48, BEST_P[0], PLATE_P[0]),
             (names.methods[1], "exploratory", "share", [sig, chans[0]], 0.35, BEST_P[1], PLATE_P[1]),
             ("shapley", "exploratory", "shapley", [sig], 0.5, BEST_P[2], np.nan)]
    rows = []
    for method, role, quantity, members, top, p, plate_p in plans:
        estimates = {ch: (top if ch == members[0] else top - 0.05 if ch in members else 0.1) for ch in chans}
        for ch in chans:
            rival = max(v for c, v in estimates.items() if c != ch)
            rows.append({"method": method, "role": role, "transition": "all", "quantity": quantity, "channel": ch,
                         "estimate": estimates[ch], "gap": estimates[ch] - rival,
                         "gap_ci_low": estimates[ch] - rival - 0.1, "gap_ci_high": max(estimates[ch] - rival + 0.1, 0),
                         "in_set": ch in members, "named_channel": members[0] if len(members) == 1 else "",
                         "set_label": " or ".join(members), "unit": "block" if one_field else "well", "n_units": 6,
                         "scope": scope, "alpha": 0.05,
                         "p_value": np.nan if one_field else (p if ch == members[0] else 1.0),
                         "p_adj": np.nan if one_field else (p if ch == members[0] else 1.0),
                         "note": "", "log_ratio_gap": 0.5, "log_ratio_ci_low": 0.1, "log_ratio_ci_high": 0.9,
                         "test_scale": "log-ratio", "variance": "channel_df", "error": "naming", "df": 6.7,
                         "plate_x_channel_p": np.nan if one_field else plate_p, "n_plates": 0 if one_field else 2})
    return rows


def channel_test_rows(names: Names, n: int) -> list[dict]:
    """``channel_tests`` as :func:`chanstat.stats.test_channels` writes it, for the first two methods
    (the third is channel-agnostic): dominance (primary) with its components, the plate x channel
    heterogeneity test, secondary omnibus and pairwise tests, and mixed-model estimates (no p-value)."""
    chans, sig = names.channels, names.signal
    rows = []
    for k, method in enumerate(names.methods[:2]):
        named = k == 0
        base = {"method": method, "transition": "all", "unit": "well", "n_units": 6, "n_samples": n, "n_plates": 2,
                "pseudo_replicates": False, "p_adj_method": "holm", "warning": PLATE_WARNING, "note": "",
                "channel_a": None, "channel_b": None, "df1": np.nan, "df2": np.nan, "effect_size": np.nan,
                "effect_size_name": "", "estimate": np.nan, "q_value": np.nan, "primary": False,
                "dominant_channel": sig if named else "none", "dominant_share": 0.48 if named else np.nan,
                "dominant_ci_low": 0.41234 if named else np.nan, "dominant_ci_high": 0.55678 if named else np.nan,
                "multiplicity_scope": "holm over 2 groups (method) of this test", "contrast": "channel"}
        candidate = sig if named else chans[0]
        rival = chans[0] if named else chans[1]
        p = DOMINANCE_P[k]
        rows.append({**base, "test": "dominance", "role": "primary", "channel_a": candidate, "channel_b": rival,
                     "statistic": 3.3 if named else 0.8, "df1": 5.0, "p_value": p, "p_adj": min(1.0, 2 * p),
                     "effect_size": 1.1, "effect_size_name": "min_cohen_dz", "estimate": 0.2, "primary": True,
                     "note": "intersection-union test of every pairwise comparison"})
        for j, other in enumerate(c for c in chans if c != candidate):
            rows.append({**base, "test": "dominance_pair", "role": "component", "contrast": f"{candidate} > {other}",
                         "channel_a": candidate, "channel_b": other, "statistic": 3.3 + j, "df1": 5.0,
                         "p_value": p / (j + 1), "p_adj": p / (j + 1),
                         "multiplicity_scope": "none (intersection-union component)"})
        rows.append({**base, "test": "plate_x_channel", "role": "heterogeneity", "statistic": 0.21, "df1": 1.0,
                     "p_value": PLATE_P[k], "p_adj": PLATE_P[k],
                     "note": "permutation test of equal composition across plates"})
        rows.append({**base, "test": "friedman_f", "role": "secondary", "statistic": 5.4321, "df1": 4.0, "df2": 20.0,
                     "p_value": 0.000123456 if named else 0.0345, "p_adj": 0.000246912 if named else 0.069,
                     "effect_size": 0.8765, "effect_size_name": "kendall_w"})
        rows.append({**base, "test": "hotelling", "role": "secondary", "statistic": 2.0, "df1": 4.0, "df2": 2.0,
                     "p_value": 0.26, "p_adj": 0.52, "effect_size": 1.4,
                     "effect_size_name": "aitchison_distance_from_uniform"})
        for other in chans[:2]:
            rows.append({**base, "test": "wilcoxon", "role": "secondary", "contrast": f"{sig} - {other}",
                         "channel_a": sig, "channel_b": other, "statistic": 21.0, "p_value": 0.03125, "p_adj": 0.3125,
                         "effect_size": 1.0, "effect_size_name": "rank_biserial",
                         "multiplicity_scope": "holm over 10 channel pairs within the group"})
        rows.append({**base, "test": "mixedlm", "role": "descriptive", "unit": "image (well random)", "statistic": 17.0,
                     "df1": 4.0, "p_value": np.nan, "p_adj": np.nan, "effect_size": 1.43,
                     "effect_size_name": "aitchison_distance_from_uniform",
                     "note": "estimates only: the Wald chi-square is anti-conservative with few wells; no p-value"})
    transition = f"{names.classes[0]} → {names.classes[1]}"
    rows.append({**rows[0], "transition": transition, "primary": False, "p_value": 0.0456, "n_units": 3})
    return rows


def shapley_test_rows(names: Names, n: int) -> list[dict]:
    """``shapley_tests`` as the stats stage writes it: every channel's Shapley value against zero,
    then the dominance test on the Shapley values (the signal channel dominates)."""
    chans, sig = names.channels, names.signal
    base = {"source": "shapley", "method": "shapley", "transition": "all", "unit": "well", "n_units": 6,
            "n_samples": n, "pseudo_replicates": False, "warning": PLATE_WARNING, "p_adj_method": "holm"}
    rows = [{**base, "test": "against_zero", "channel": ch, "mean": 0.5 if ch == sig else 0.02, "sd": 0.1,
             "ci_low": 0.4 if ch == sig else -0.03, "ci_high": 0.6 if ch == sig else 0.07,
             "simultaneous_ci_low": 0.35 if ch == sig else -0.05, "simultaneous_ci_high": 0.65 if ch == sig else 0.09,
             "statistic": 9.0 if ch == sig else 0.8, "df": 5.0, "p_value": 0.0003 if ch == sig else 0.46,
             "p_adj": 0.0015 if ch == sig else 1.0, "multiplicity_scope": f"holm over {len(chans)} channels of the group",
             "alternative": "two-sided", "note": ""} for ch in chans]
    rows.append({**base, "test": "dominance", "role": "primary", "channel": sig, "statistic": 6.0, "p_value": 0.00456,
                 "dominant_channel": sig, "dominant_share": 0.5, "dominant_ci_low": 0.31, "dominant_ci_high": 0.69,
                 "note": "intersection-union test"})
    return rows


def schema_tables() -> list[str]:
    return [n for n, s in SCHEMA.items() if isinstance(s, TableSpec)]

