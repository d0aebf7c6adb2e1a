"""What the answer, test and Shapley sections share about the statistics tables: the role of each
test, the companion row of a test (its plate x channel heterogeneity test), warnings, the
pseudo-replicate label, and the rule that descriptive rows (``mixedlm``) never show a p-value."""

from __future__ import annotations

import pandas as pd

from chanstat.report.display import format_value, note
from chanstat.report.sections.base import POOLED, is_true
from chanstat.report.text import Markdown, md
from chanstat.rundir import RunDirectory

NO_CHANNEL = "none"
ALPHA = 0.05
#: role of a test's rows when the table has no ``role`` column (as :mod:`chanstat.stats` assigns them)
ROLES = {
    "dominance": "primary",
    "dominance_pair": "component",
    "plate_x_channel": "heterogeneity",
    "mixedlm": "descriptive",
}
#: tests whose rows are estimates only: their p-value columns are never shown
DESCRIPTIVE_TESTS = ("mixedlm",)
P_COLUMNS = ("p_value", "p_adj", "q_value")
PSEUDO_LABEL = "pseudo-replicates"


def names_channel(value) -> bool:
    """Whether a ``dominant_channel`` value names a channel (not ``"none"``, empty or missing)."""
    return isinstance(value, str) and value.strip() != "" and value.strip().lower() != NO_CHANNEL


def roles(tests: pd.DataFrame) -> pd.Series:
    """The role of every row: the ``role`` column, else the test's usual role ("secondary" for the rest)."""
    default = tests["test"].astype(str).map(lambda t: ROLES.get(t, "secondary"))
    if "role" not in tests:
        return default
    role = tests["role"].astype(object)
    return role.where(role.notna() & (role.astype(str).str.strip() != ""), default).astype(str)


def descriptive(tests: pd.DataFrame) -> pd.Series:
    """Rows that carry estimates only (role "descriptive" or a descriptive test)."""
    return (roles(tests) == "descriptive") | tests["test"].astype(str).isin(DESCRIPTIVE_TESTS)


def without_descriptive_p(tests: pd.DataFrame) -> pd.DataFrame:
    """``tests`` with the p-value columns blanked on descriptive rows (a Wald p of a mixed model
    with few wells is not calibrated: it is never shown, whatever the table holds)."""
    out = tests.copy()
    mask = descriptive(out).to_numpy()
    for col in P_COLUMNS:
        if col in out and mask.any():
            out[col] = out[col].astype(float)
            out.loc[mask, col] = float("nan")
    return out


def label_pseudo(df: pd.DataFrame) -> pd.DataFrame:
    """Write "(pseudo-replicates)" after the unit on every row whose ``pseudo_replicates`` is true
    and drop the flag column (the label says it where the unit is read)."""
    if "pseudo_replicates" not in df:
        return df
    flag = is_true(df["pseudo_replicates"])
    out = df.drop(columns="pseudo_replicates")
    if flag.any() and "unit" in out:
        out = out.assign(unit=[f"{u} ({PSEUDO_LABEL})" if f else u for u, f in zip(out["unit"].astype(object), flag)])
    elif flag.any():
        out = out.assign(units=[PSEUDO_LABEL if f else "" for f in flag])
    return out


def any_pseudo(*tables: pd.DataFrame | None) -> bool:
    return any(t is not None and "pseudo_replicates" in t and is_true(t["pseudo_replicates"]).any() for t in tables)


def pseudo_replicates(run: RunDirectory) -> str | None:
    """What the run says about pseudo-replicate units (plain text), or None when its units are independent.

    Read from the data stage's provenance record (``pseudo_replicates``) or the ``pseudo_replicates``
    column of ``channel_tests``, ``channel_share_ci`` or ``shapley_tests``.
    """
    record = ((run.provenance.get("stages") or {}).get("data") or {}).get("pseudo_replicates")
    if not record:
        record = any_pseudo(
            *(run.table(n) for n in ("channel_tests", "channel_share_ci", "shapley_tests") if run.has(n))
        )
    if not record:
        return None
    if isinstance(record, dict):
        return "; ".join(f"{k}: {format_value(v)}" for k, v in record.items())
    return "" if record is True else format_value(record)


def pseudo_replicate_note(run: RunDirectory) -> None:
    """A warning when the units of replication are spatial blocks of one field, not wells."""
    detail = pseudo_replicates(run)
    if detail is None:
        return
    note(
        md(
            "**Pseudo-replicates.** The units these tests and intervals resample are spatial blocks of one "
            "field of view, not independent wells or plates{}. They describe variation within this field; they do "
            "not say the result would repeat in another well, plate or experiment.",
            md(" ({})", detail) if detail else Markdown(""),
        ),
        kind="info",
    )


def companion(tests: pd.DataFrame, row: pd.Series, test: str) -> pd.Series | None:
    """The ``test`` row of the same method and transition as ``row`` (None when absent)."""
    same = tests["test"].astype(str) == test
    for key in ("method", "transition"):
        if key in tests and key in row.index:
            same &= tests[key].astype(str) == str(row[key])
    hit = tests[same]
    return hit.iloc[0] if len(hit) else None


def warnings_of(df: pd.DataFrame) -> list[str]:
    """The distinct non-empty ``warning`` texts of a table, in order."""
    if "warning" not in df:
        return []
    values = df["warning"].dropna().astype(str).str.strip()
    return list(dict.fromkeys(v for v in values if v))


def show_warnings(df: pd.DataFrame, where: str) -> None:
    """Every distinct ``warning`` of ``df`` as a note (plain text, escaped)."""
    for text in warnings_of(df):
        note(md("**Warning ({}):** {}", where, text), kind="info")


def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows pooled over transitions (``transition == "all"``) when the table has a transition column."""
    if "transition" in df:
        return df[df["transition"].astype(str) == POOLED]
    return df
