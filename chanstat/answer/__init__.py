"""The answer: one verdict per transition from every piece of evidence, and per-image explanations (no torch).

- :mod:`chanstat.answer.evidence` -- the pieces (attribution confidence set, single-channel DAC,
  Shapley, other methods, CellProfiler) and the counterfactuals' quality, read from tables;
- :mod:`chanstat.answer.rules` -- :data:`RULES`, the one declaration of how they are weighed;
- :mod:`chanstat.answer.tables` -- gather and weigh a run (``verdict``, ``verdict_evidence``);
- :mod:`chanstat.answer.explanations` -- QuAC-style per-image explanations (:func:`explanations`);
- :mod:`chanstat.answer.page` -- the offline page of every image's best explanation;
- :mod:`chanstat.answer.stage` -- the pipeline stage ``answer``.
"""

from chanstat.answer.evidence import CounterfactualQuality, Piece
from chanstat.answer.explanations import explanations, gallery_picks
from chanstat.answer.rules import GRADES, RULES, Case, Rule, Thresholds, Verdict, weigh
from chanstat.answer.tables import gather, verdict_rows, weigh_run

__all__ = [
    "GRADES",
    "RULES",
    "Case",
    "CounterfactualQuality",
    "Piece",
    "Rule",
    "Thresholds",
    "Verdict",
    "explanations",
    "gallery_picks",
    "gather",
    "verdict_rows",
    "weigh",
    "weigh_run",
]
