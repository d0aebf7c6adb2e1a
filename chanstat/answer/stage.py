"""Pipeline stage ``answer``: weigh every piece of evidence the run holds into one verdict per transition.

Runs after the CellProfiler stage (the last analysis stage) and before the report, in every run
(an absent ``[answer]`` section means its defaults; ``enabled = false`` skips it). Whole set
only, no torch. Reads whatever of :data:`chanstat.answer.tables.INPUTS` the run holds (and the
counterfactual stage's provenance record), applies :data:`chanstat.answer.rules.RULES` and
writes ``verdict`` and ``verdict_evidence``.
"""

from __future__ import annotations

from pydantic import Field

from chanstat.answer.rules import Thresholds
from chanstat.answer.tables import INPUTS, weigh_run
from chanstat.config import Section
from chanstat.schema import SCHEMA
from chanstat.stage import Stage


class AnswerConfig(Section):
    """``[answer]``: the limits the verdict's rules use."""

    alpha: float = Field(
        0.05, gt=0, lt=1, description="Level of the tests a piece of evidence must pass to name a channel."
    )
    min_flip_rate: float = Field(0.8, ge=0, le=1, description="Below this flip rate the grade is at most weak.")
    min_distinct_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Distinct counterfactual sources per image below "
        "this: at most weak (nearest neighbours repeating).",
    )
    max_reuse_share: float = Field(
        0.1, gt=0, le=1, description="One source serving more than this share of the images: at most weak."
    )
    spread_factor: float = Field(
        1.25, ge=1, description="Largest change share below spread_factor / C: at most supported."
    )
    min_realism: float = Field(0.5, ge=0, le=1, description="Realism (where recorded) below this: at most supported.")
    min_effect: float = Field(
        0.02, ge=0, description="A single-channel DAC or Shapley top mean at most this names no channel."
    )
    n_boot: int = Field(1000, ge=10, description="Bootstrap draws of the DAC and Shapley intervals (over wells).")


def thresholds(section: dict) -> Thresholds:
    """The rules' :class:`~chanstat.answer.rules.Thresholds` from a validated ``[answer]`` section."""
    return Thresholds(**{k: section[k] for k in Thresholds.__dataclass_fields__ if k in section})


def whole_set(ctx, outputs) -> tuple[dict, dict]:
    # the stage always runs (cheap, no torch); an absent section means the defaults
    section = AnswerConfig(**ctx.section("answer")).model_dump()
    if not section["enabled"]:
        return {}, {"skipped": "[answer] enabled = false"}
    verdict, evidence = weigh_run(
        ctx.run, thresholds(section), n_boot=section["n_boot"], min_effect=section["min_effect"], seed=ctx.seed
    )
    info = {f"grade {r.transition}": f"{r.grade}: {r.set_label}" for r in verdict.itertuples()}
    return {"verdict": verdict, "verdict_evidence": evidence}, info


STAGE = Stage(
    name="answer",
    config=AnswerConfig,
    # best_channel is read once the statistics stage declares it in the schema
    reads=tuple(n for n in INPUTS if n in SCHEMA),
    writes=("verdict", "verdict_evidence"),
    whole_set=whole_set,
    always=True,
)
