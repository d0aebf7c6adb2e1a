"""What the answer, test and Shapley sections share about the statistics tables: the role of each
test, the primary dominance rows with their plate x channel heterogeneity test and warnings, the
pseudo-replicate label, and the rule that descriptive rows (``mixedlm``) never show a p-value."""

from __future__ import annotations

import pandas as pd

from chanstat.report.display import format_value, note
from chanstat.report.sections.base import POOLED, is_true
from chanstat.report.text import Markdown, code, md, p_text
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


def primary_rows(tests: pd.DataFrame) -> pd.DataFrame:
    """The primary test's row per method (pooled over transitions)."""
    return tests[is_true(tests["primary"])]


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


def interval_text(estimate, low, high, what: str, simultaneous: bool) -> Markdown:
    """ "; its share is 0.48 (simultaneous interval 0.41 to 0.56)" (empty without an estimate)."""
    if pd.isna(estimate):
        return Markdown("")
    text = md("; its {} is {}", what, format_value(estimate))
    if pd.notna(low) and pd.notna(high):
        if simultaneous:
            text = text + md(
                " (simultaneous interval {} to {}, valid although the channel was picked from the data)",
                format_value(low),
                format_value(high),
            )
        else:
            text = text + md(" (interval {} to {})", format_value(low), format_value(high))
    return text


def heterogeneity_text(row: pd.Series | None) -> Markdown:
    """The plate x channel heterogeneity test in words (empty when absent)."""
    if row is None:
        return Markdown("")
    if pd.isna(row.get("p_value")):
        detail = row.get("note")
        return md(
            " Plate × channel heterogeneity: not tested{}.",
            md(" ({})", detail) if isinstance(detail, str) and detail.strip() else Markdown(""),
        )
    verdict = "the composition differs between plates" if row["p_value"] < ALPHA else "no evidence that plates differ"
    return md(
        " Plate × channel heterogeneity ({}): {}, {}.", code(row["test"]), p_text(row["p_value"]), Markdown(verdict)
    )


def dominance_line(
    head: Markdown,
    row: pd.Series,
    quantity: str,
    heterogeneity: pd.Series | None,
    test_name: str = "dominance",
    warning: bool = True,
    simultaneous: bool = True,
) -> Markdown:
    """One answer line from a primary dominance row: the channel or "no channel dominates" (never a
    channel name then), its simultaneous interval, the test's p-value, the unit, heterogeneity, and
    the row's ``warning`` (unless ``warning=False``: the caller shows it once for every line);
    ``simultaneous``: whether the row's interval is the simultaneous one of the dominance test."""
    channel = row.get("dominant_channel")
    if names_channel(channel):
        text = head + md("channel **{}** carries the difference", channel)
        text = text + interval_text(
            row.get("dominant_share"),
            row.get("dominant_ci_low"),
            row.get("dominant_ci_high"),
            quantity,
            simultaneous=simultaneous,
        )
    else:
        text = head + md(
            "no channel dominates: no channel's {} exceeds every other channel's with confidence", quantity
        )
    if pd.notna(row.get("p_value")):
        text = text + md(" ({} test, {})", Markdown(test_name), p_text(row["p_value"]))
    if isinstance(row.get("unit"), str):
        pseudo = bool(row.get("pseudo_replicates")) if pd.notna(row.get("pseudo_replicates", None)) else False
        text = text + md("; unit: {}{}", row["unit"], md(" ({})", PSEUDO_LABEL) if pseudo else Markdown(""))
        if pd.notna(row.get("n_units")):
            text = text + md(", {} units", int(row["n_units"]))
    text = text + Markdown(".") + heterogeneity_text(heterogeneity)
    text_of_warning = row.get("warning")
    if warning and isinstance(text_of_warning, str) and text_of_warning.strip():
        text = text + md(" **Warning:** {}", text_of_warning.strip())
    return text


def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows pooled over transitions (``transition == "all"``) when the table has a transition column."""
    if "transition" in df:
        return df[df["transition"].astype(str) == POOLED]
    return df
