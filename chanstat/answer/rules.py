"""The rules that turn evidence into a verdict, declared in one place (:data:`RULES`).

A :class:`Rule` looks at a :class:`Case` (the evidence of one transition) and either applies,
returning ``(grade, reason)``, or not (``None``). Three kinds:

- ``grade`` rules are tried in order; the first that applies sets the grade;
- ``cap`` rules all apply: each caps the grade (a poor counterfactual set cannot give "strong");
- ``note`` rules add a reason without changing the grade.

Grades, from most to least: strong, supported, weak, conflicting, none. README.md lists every
rule; ``tests/test_answer.py`` has a constructed case for each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from chanstat.answer.evidence import NONE, CounterfactualQuality, Piece

GRADES = ("none", "conflicting", "weak", "supported", "strong")
#: The pieces that can name a channel on their own (the others support or qualify them).
CORE = ("attribution", "dac", "shapley")
LABELS = {"attribution": "attribution", "dac": "single-channel DAC", "shapley": "Shapley"}


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Limits the rules use (the ``[answer]`` config section sets them)."""

    alpha: float = 0.05
    min_flip_rate: float = 0.8
    min_distinct_share: float = 0.5
    max_reuse_share: float = 0.1
    spread_factor: float = 1.25
    min_realism: float = 0.5


#: The thresholds of an ``[answer]`` section left at its defaults.
DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class Case:
    """The evidence of one transition."""

    transition: str
    channels: list[str]
    pieces: dict[str, Piece] = field(default_factory=dict)  # attribution, dac, shapley, methods, cellprofiler
    quality: CounterfactualQuality = field(default_factory=CounterfactualQuality)

    def core(self) -> dict[str, Piece]:
        """The present pieces of :data:`CORE`, in that order."""
        return {k: self.pieces[k] for k in CORE if self.pieces.get(k) is not None}

    @property
    def claimed(self) -> str | None:
        """The channel under judgement: the primary attribution's named channel, else the one most pieces name."""
        att = self.pieces.get("attribution")
        if att is not None and att.named and att.says != NONE:
            return att.named
        named = [p.named for p in self.core().values() if p.named and p.says != NONE]
        if not named:
            return None
        values, counts = np.unique(named, return_counts=True)
        return str(values[np.argmax(counts)]) if counts.max() > 1 or len(values) == 1 else None


@dataclass(frozen=True)
class Rule:
    """One rule: ``check(case, thresholds) -> (grade, reason) | None``."""

    name: str
    kind: str  # "grade", "cap" or "note"
    doc: str
    check: Callable[[Case, Thresholds], tuple[str, str] | None]


def _says(case: Case) -> str:
    return "; ".join(
        f"{LABELS[k]} names {p.says}" + (f" ({p.detail})" if p.detail else "") for k, p in case.core().items()
    )


def _naming(case: Case, channel: str) -> list[str]:
    return [k for k, p in case.core().items() if p.named == channel and p.says != NONE]


# ---- grade rules (the first that applies) ------------------------------------------------------
def _no_evidence(case: Case, t: Thresholds):
    if not case.core():
        return "none", "The run holds no attribution test, single-channel DAC or Shapley values to weigh."


def _nothing_named(case: Case, t: Thresholds):
    if all(p.says == NONE for p in case.core().values()):
        return "none", f"No piece of evidence names a channel: {_says(case)}."


def _disagree(case: Case, t: Thresholds):
    core = case.core()
    named = {p.named for p in core.values() if p.named and p.says != NONE}
    claimed = case.claimed
    excluded = [k for k, p in core.items() if p.says != NONE and claimed is not None and claimed not in p.channels]
    if len(named) > 1 or excluded:
        return "conflicting", f"The pieces disagree: {_says(case)}."


def _all_agree(case: Case, t: Thresholds):
    claimed = case.claimed
    if claimed and len(_naming(case, claimed)) == len(CORE):
        return "strong", f"Attribution, single-channel DAC and Shapley all name {claimed}: {_says(case)}."


def _two_agree(case: Case, t: Thresholds):
    claimed = case.claimed
    naming = _naming(case, claimed) if claimed else []
    if len(naming) >= 2:
        rest = [k for k in CORE if k not in naming]
        tail = "; ".join(
            f"{LABELS[k]} {'is absent' if case.pieces.get(k) is None else 'names ' + case.pieces[k].says}" for k in rest
        )
        text = f"{' and '.join(LABELS[k] for k in naming)} name {claimed}" + (f"; {tail}" if tail else "")
        return "supported", text[:1].upper() + text[1:] + f" ({_says(case)})."


def _one_names(case: Case, t: Thresholds):
    claimed = case.claimed
    if claimed and _naming(case, claimed):
        return "weak", f"Only {LABELS[_naming(case, claimed)[0]]} names {claimed}: {_says(case)}."


def _no_effect(case: Case, t: Thresholds):
    core = case.core()
    effects = [core[k] for k in ("dac", "shapley") if k in core]
    if effects and all(p.says == NONE for p in effects) and not any(p.named for p in core.values() if p.says != NONE):
        return "none", (
            "No channel carries the decision: single-channel DAC and Shapley name none, and no piece names "
            f"a single channel ({_says(case)})."
        )


def _set_only(case: Case, t: Thresholds):
    return "weak", f"No piece names a single channel, only sets of possibly-best channels: {_says(case)}."


# ---- caps: poor counterfactuals, narrow scope, disagreeing methods --------------------------------
def _low_flip(case: Case, t: Thresholds):
    q = case.quality
    if np.isfinite(q.flip_rate) and q.flip_rate < t.min_flip_rate:
        return "weak", (
            f"Only {q.flip_rate:.0%} of the counterfactuals flip the classifier (below "
            f"{t.min_flip_rate:.0%}): the evidence compares images the classifier still calls their own class."
        )


def _repeated(case: Case, t: Thresholds):
    q = case.quality
    if q.n_distinct is None or not q.n_samples:
        return None
    reuse = q.max_reuse or 0
    if q.n_distinct < t.min_distinct_share * q.n_samples or reuse > max(1.0, t.max_reuse_share * q.n_samples):
        return "weak", (
            f"The counterfactuals repeat: {q.n_distinct} distinct for {q.n_samples} images"
            + (f", one used {reuse} times" if reuse > 1 else "")
            + "; their statistics count the same images many times."
        )


def _change_elsewhere(case: Case, t: Thresholds):
    q, claimed = case.quality, case.claimed
    if not claimed or claimed not in q.change_share or len(q.change_share) < 2:
        return None
    even = 1.0 / len(q.change_share)
    share = q.change_share[claimed]
    if share < even:
        return "weak", (
            f"The counterfactuals change {claimed} less than an even split (share {share:.2f} < {even:.2f}): "
            f"the classifier's use of {claimed} is not what they changed."
        )


def _change_spread(case: Case, t: Thresholds):
    q = case.quality
    if len(q.change_share) < 2:
        return None
    top = max(q.change_share.values())
    if top < t.spread_factor / len(q.change_share):
        return (
            "supported",
            f"The counterfactuals spread their change evenly over the channels (largest share {top:.2f}).",
        )


def _unrealistic(case: Case, t: Thresholds):
    q = case.quality
    if np.isfinite(q.realism) and q.realism < t.min_realism:
        return "supported", f"The counterfactuals look unrealistic (realism {q.realism:.2f} < {t.min_realism:.2f})."


def _one_field(case: Case, t: Thresholds):
    att = case.pieces.get("attribution")
    if att is not None and att.scope == "one field":
        return (
            "supported",
            "The attribution interval's units are pseudo-replicates of one field: it speaks for this field only.",
        )


def _methods_disagree(case: Case, t: Thresholds):
    m, claimed = case.pieces.get("methods"), case.claimed
    if m is None or not claimed:
        return None
    other = {k: v for k, v in m.others.items() if v not in (NONE, claimed)}
    if other:
        same = sum(v == claimed for v in m.others.values())
        return "supported", (
            "Other attribution methods name other channels: "
            + ", ".join(f"{k} names {v}" for k, v in other.items())
            + f" ({same} of {len(m.others)} name {claimed})."
        )


# ---- notes ---------------------------------------------------------------------------------------
def _methods_agree(case: Case, t: Thresholds):
    m, claimed = case.pieces.get("methods"), case.claimed
    if m is None or not claimed:
        return None
    same = sum(v == claimed for v in m.others.values())
    if same and all(v in (NONE, claimed) for v in m.others.values()):
        return "", f"{same} of {len(m.others)} other attribution methods name {claimed}; none names another channel."


def _cellprofiler(case: Case, t: Thresholds):
    cp, claimed = case.pieces.get("cellprofiler"), case.claimed
    if cp is None:
        return None
    if cp.says == NONE:
        return "", "No single channel's CellProfiler features are enriched (competitive test)."
    if claimed and claimed in cp.channels:
        return "", f"CellProfiler features of {claimed} differ more than the others' ({cp.detail}), in agreement."
    return "", f"CellProfiler features point to {cp.says} ({cp.detail})" + (f", not {claimed}." if claimed else ".")


def _cell_link(case: Case, t: Thresholds):
    link, claimed = case.pieces.get("link"), case.claimed
    if link is None or not claimed:
        return None
    n = link.others.get(claimed, 0)
    if n:
        return "", (
            f"Per cell, {n} CellProfiler feature(s) predict where the classifier looks in {claimed} "
            f"(q < {t.alpha:g}; {link.detail})."
        )
    return "", f"Per cell, no CellProfiler feature predicts where the classifier looks in {claimed} ({link.detail})."


RULES: tuple[Rule, ...] = (
    Rule(
        "no_evidence",
        "grade",
        "No attribution test, single-channel DAC or Shapley value in the run: none.",
        _no_evidence,
    ),
    Rule("nothing_named", "grade", "Every piece names no channel (or a set of all of them): none.", _nothing_named),
    Rule(
        "pieces_disagree",
        "grade",
        "Two pieces name different channels, or a piece's set leaves out the named "
        "channel: conflicting, naming which piece says what.",
        _disagree,
    ),
    Rule(
        "all_agree",
        "grade",
        "Attribution (primary method's confidence set), single-channel DAC and Shapley all "
        "name the same one channel: strong.",
        _all_agree,
    ),
    Rule(
        "two_agree",
        "grade",
        "Two of the three name the channel and the third allows it, names none or is absent: supported.",
        _two_agree,
    ),
    Rule("one_names", "grade", "One piece names the channel, the others allow it or name none: weak.", _one_names),
    Rule(
        "no_effect",
        "grade",
        "No piece names a single channel and single-channel DAC and Shapley (those present) "
        "name none: none, whatever sets the attribution leaves open.",
        _no_effect,
    ),
    Rule("set_only", "grade", "Only sets of possibly-best channels: weak, the set named.", _set_only),
    Rule(
        "low_flip_rate", "cap", "Fewer counterfactuals than min_flip_rate flip the classifier: at most weak.", _low_flip
    ),
    Rule(
        "repeated_counterfactuals",
        "cap",
        "Distinct counterfactual sources below min_distinct_share of the images, "
        "or one reused for more than max_reuse_share of them (nearest): at most weak.",
        _repeated,
    ),
    Rule(
        "change_elsewhere",
        "cap",
        "The counterfactuals change the named channel less than an even split: at most weak.",
        _change_elsewhere,
    ),
    Rule(
        "change_spread",
        "cap",
        "The counterfactuals' largest change share is below spread_factor / C (change "
        "spread evenly): at most supported.",
        _change_spread,
    ),
    Rule("unrealistic", "cap", "Realism (where recorded) below min_realism: at most supported.", _unrealistic),
    Rule(
        "one_field",
        "cap",
        "The primary interval's scope is one field (pseudo-replicates): at most supported.",
        _one_field,
    ),
    Rule(
        "methods_disagree",
        "cap",
        "Another attribution method names another channel: at most supported.",
        _methods_disagree,
    ),
    Rule("methods_agree", "note", "The other attribution methods name the same channel or none.", _methods_agree),
    Rule(
        "cellprofiler",
        "note",
        "What CellProfiler's competitive enrichment test names, and whether it agrees.",
        _cellprofiler,
    ),
    Rule(
        "cell_link",
        "note",
        "How many per-cell CellProfiler features predict where the classifier looks in the "
        "named channel (feature_link, q < alpha).",
        _cell_link,
    ),
)


@dataclass
class Verdict:
    """The verdict of one transition."""

    transition: str
    grade: str
    channel: str  # the named channel, "" when none
    set_label: str  # "Mito or ER" for a set, the channel itself, or "none"
    reasons: list[str]
    rules: list[str]

    @property
    def sentence(self) -> str:
        where = f" ({self.transition})" if self.transition and self.transition != "all" else ""
        if self.grade == "none":
            return f"No channel carries the difference{where}: no evidence names one."
        if self.grade == "conflicting":
            return f"The evidence conflicts{where}: " + self.reasons[0].split(": ", 1)[-1].rstrip(".") + "."
        subject = self.channel or self.set_label
        verb = "carries" if self.channel else "carry"
        return f"{subject} {verb} the difference{where}: {self.grade} evidence."


def weigh(case: Case, thresholds: Thresholds = DEFAULT_THRESHOLDS, rules: tuple[Rule, ...] = RULES) -> Verdict:
    """Apply ``rules`` to ``case``: the first grade rule that applies, every cap, every note."""
    grade, reasons, fired = "none", [], []
    for rule in rules:
        if rule.kind != "grade":
            continue
        hit = rule.check(case, thresholds)
        if hit:
            grade, reason = hit
            reasons.append(reason)
            fired.append(rule.name)
            break
    for rule in rules:
        if rule.kind == "grade":
            continue
        hit = rule.check(case, thresholds)
        if not hit:
            continue
        cap, reason = hit
        if rule.kind == "cap" and GRADES.index(cap) < GRADES.index(grade) and grade not in ("none", "conflicting"):
            grade = cap
        reasons.append(reason)
        fired.append(rule.name)
    claimed = case.claimed if grade not in ("none", "conflicting") else None
    channel = claimed if claimed and fired[0] != "set_only" else ""
    if channel:
        set_label = channel
    elif grade == "weak":
        sets = [set(p.channels) for p in case.core().values() if p.says != NONE]
        common = set.intersection(*sets) if sets else set()
        order = [c for c in case.channels if c in (common or (sets[0] if sets else set()))]
        set_label = " or ".join(order) or NONE
    else:
        set_label = NONE
    return Verdict(case.transition, grade, channel, set_label, reasons, fired)
