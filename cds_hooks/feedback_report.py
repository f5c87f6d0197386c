"""Feedback analytics: how clinicians answered the cards we issued.

Both feedback stores reduce what they hold to the same two inputs (issued cards counted by kind, and
one `FeedbackFact` per stored feedback row) and call `build_report`, so the numbers mean the same thing
whichever store produced them.

Counting rules:
- A card may receive feedback several times (CDS Hooks 2.0 §Feedback). Each card is counted once, by its
  *final* outcome: the outcome of its latest feedback by `outcomeTimestamp` (on a tie, `overridden`
  wins, so a report never overstates acceptance).
- Rates are per issued card: ``acceptance rate = cards finally accepted / cards issued``. A card without
  feedback was ignored (or never shown), which the spec says produces no feedback, so
  ``1 - acceptance - override`` is the ignored share. Rates are undefined (None) when nothing of that
  kind was issued, e.g. the kind ``unknown`` for feedback on card uuids we never issued.
- Override reasons are counted over cards whose final outcome is `overridden`; a card overridden
  without a coded reason is counted under `NO_CODED_REASON`. Most frequent first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "KIND_ORDER",
    "NO_CODED_REASON",
    "FeedbackFact",
    "FeedbackReport",
    "KindRow",
    "ReasonRow",
    "build_report",
    "render_report",
]

# Most urgent first; "unknown" is feedback on a card uuid that no issued-card record matches.
KIND_ORDER = ("critical", "warning", "info", "unknown")
NO_CODED_REASON = "(no coded reason)"


@dataclass(frozen=True)
class FeedbackFact:
    """One stored feedback row, reduced to what the report needs."""

    service_id: str
    card_uuid: str
    kind: str
    outcome: str
    outcome_timestamp: datetime
    reason_system: str | None
    reason_code: str | None


@dataclass(frozen=True)
class KindRow:
    kind: str
    issued: int
    feedback: int  # feedback rows received, repeats included
    accepted: int  # cards whose final outcome is accepted
    overridden: int  # cards whose final outcome is overridden
    acceptance_rate: float | None
    override_rate: float | None


@dataclass(frozen=True)
class ReasonRow:
    reason: str  # "system|code", or NO_CODED_REASON
    count: int
    share: float


@dataclass(frozen=True)
class FeedbackReport:
    by_kind: tuple[KindRow, ...]
    by_reason: tuple[ReasonRow, ...]


def _kind_key(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind), kind) if kind in KIND_ORDER else (len(KIND_ORDER), kind)


def _final_outcomes(facts: Iterable[FeedbackFact]) -> dict[tuple[str, str], FeedbackFact]:
    final: dict[tuple[str, str], FeedbackFact] = {}
    for fact in facts:
        key = (fact.service_id, fact.card_uuid)
        current = final.get(key)
        if current is None or (fact.outcome_timestamp, fact.outcome == "overridden") > (
            current.outcome_timestamp,
            current.outcome == "overridden",
        ):
            final[key] = fact
    return final


def _rate(count: int, issued: int) -> float | None:
    return count / issued if issued else None


def build_report(issued_by_kind: Mapping[str, int], facts: Iterable[FeedbackFact]) -> FeedbackReport:
    """Aggregate issued-card counts and feedback rows into a report (rules in the module docstring)."""
    facts = list(facts)
    rows_by_kind: dict[str, int] = {}
    for fact in facts:
        rows_by_kind[fact.kind] = rows_by_kind.get(fact.kind, 0) + 1
    final = _final_outcomes(facts).values()

    kinds = sorted({k for k, n in issued_by_kind.items() if n} | set(rows_by_kind), key=_kind_key)
    by_kind = []
    for kind in kinds:
        issued = issued_by_kind.get(kind, 0)
        accepted = sum(1 for f in final if f.kind == kind and f.outcome == "accepted")
        overridden = sum(1 for f in final if f.kind == kind and f.outcome == "overridden")
        by_kind.append(
            KindRow(
                kind=kind,
                issued=issued,
                feedback=rows_by_kind.get(kind, 0),
                accepted=accepted,
                overridden=overridden,
                acceptance_rate=_rate(accepted, issued),
                override_rate=_rate(overridden, issued),
            )
        )

    reasons: dict[str, int] = {}
    for fact in final:
        if fact.outcome != "overridden":
            continue
        if fact.reason_system is not None and fact.reason_code is not None:
            reason = f"{fact.reason_system}|{fact.reason_code}"
        else:
            reason = NO_CODED_REASON
        reasons[reason] = reasons.get(reason, 0) + 1
    total = sum(reasons.values())
    by_reason = tuple(
        ReasonRow(reason=reason, count=count, share=count / total)
        for reason, count in sorted(
            reasons.items(), key=lambda item: (-item[1], item[0] == NO_CODED_REASON, item[0])
        )
    )
    return FeedbackReport(by_kind=tuple(by_kind), by_reason=by_reason)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    # The first column is text (left-aligned); the others are numbers (right-aligned).
    lines = []
    for cells in [header, *rows]:
        first, *rest = cells
        parts = [first.ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(rest, widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
    return lines


def render_report(report: FeedbackReport) -> str:
    """A plain-text table, for `mscc-alert feedback-report`."""
    if not report.by_kind:
        return "No cards issued and no feedback recorded.\n"
    lines = ["Cards by kind (each card counted once, by its latest feedback; rates per issued card)"]
    lines += _table(
        ("kind", "issued", "feedback", "accepted", "overridden", "acceptance", "override"),
        [
            (
                row.kind,
                str(row.issued),
                str(row.feedback),
                str(row.accepted),
                str(row.overridden),
                _percent(row.acceptance_rate),
                _percent(row.override_rate),
            )
            for row in report.by_kind
        ],
    )
    lines += ["", "Override reasons (cards whose latest feedback is overridden)"]
    if report.by_reason:
        lines += _table(
            ("reason (system|code)", "count", "share"),
            [(row.reason, str(row.count), _percent(row.share)) for row in report.by_reason],
        )
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"
