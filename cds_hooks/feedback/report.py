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
- By rules version: the same counts for the cards each version of the rules made (cards.version), plus the
  cards it suppressed; ``suppressed share = suppressed / (issued + suppressed)``. Cards issued before the
  version was recorded are under `UNRECORDED`.
- Repeat cards, from the patient pseudonym (cards issued without one, i.e. with no pseudonym secret set, are
  left out and counted). A card is a *repeat* when the same patient had a card of the same tier issued in the
  30 days before it. *Cards per patient per 30 days*: each patient's cards of a tier are grouped into 30-day
  windows, a window opening at the first card not inside an earlier window; the figure is cards / windows
  (1.0 means no patient ever saw that card twice within 30 days).
- Cards per clinician per day, from the clinician pseudonym: the cards of each (clinician, day) with at least one
  card, the day in the site's time zone (MSCC_ALERT_TIME_ZONE; UTC when unset), so that an evening shift is one
  day; mean, median and maximum over those clinician-days.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo

__all__ = [
    "KIND_ORDER",
    "NO_CODED_REASON",
    "UNRECORDED",
    "ClinicianRow",
    "FeedbackFact",
    "FeedbackReport",
    "IssuedFact",
    "KindRow",
    "ReasonRow",
    "RepeatRow",
    "SuppressedFact",
    "TierReasonRow",
    "VersionReasonRow",
    "VersionRow",
    "build_report",
    "reason_label",
    "render_report",
]

# Most urgent first; "unknown" is feedback on a card uuid that no issued-card record matches.
KIND_ORDER = ("critical", "warning", "info", "unknown")
NO_CODED_REASON = "(no coded reason)"
UNRECORDED = "(not recorded)"
REPEAT_DAYS = 30


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
class IssuedFact:
    """One issued card, reduced to what the report needs (pseudonyms, never ids)."""

    service_id: str
    card_uuid: str
    kind: str
    issued_at: datetime
    rules_version: str | None = None
    patient_key: str | None = None
    user_key: str | None = None


@dataclass(frozen=True)
class SuppressedFact:
    kind: str  # the tier (indicator), as everywhere in the report
    rules_version: str | None
    suppressed_at: datetime


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
class TierReasonRow:
    kind: str
    reason: str  # "system|code", or NO_CODED_REASON
    label: str  # what the code means ("" when we do not know the code)
    count: int
    share: float  # of the tier's finally overridden cards


@dataclass(frozen=True)
class VersionReasonRow:
    rules_version: str
    kind: str
    reason: str
    label: str
    count: int
    share: float  # of the overridden cards of this version and tier


@dataclass(frozen=True)
class VersionRow:
    rules_version: str
    kind: str
    issued: int
    accepted: int
    overridden: int
    acceptance_rate: float | None
    override_rate: float | None
    suppressed: int
    suppressed_share: float | None  # suppressed / (issued + suppressed)


@dataclass(frozen=True)
class RepeatRow:
    kind: str
    patients: int
    cards: int
    windows: int
    cards_per_patient_30d: float | None
    repeats: int
    repeat_share: float | None
    without_pseudonym: int  # cards of this tier left out: issued without a patient pseudonym


@dataclass(frozen=True)
class ClinicianRow:
    kind: str  # a tier, or "all"
    clinician_days: int
    cards: int
    mean: float | None
    median: float | None
    maximum: int | None
    without_pseudonym: int
    per_day: tuple[int, ...] = ()  # the cards of each clinician-day, sorted (for the chart)


@dataclass(frozen=True)
class FeedbackReport:
    by_kind: tuple[KindRow, ...]
    by_reason: tuple[ReasonRow, ...]
    by_version: tuple[VersionRow, ...] = ()
    reasons_by_kind: tuple[TierReasonRow, ...] = ()
    reasons_by_version: tuple[VersionReasonRow, ...] = ()
    repeats: tuple[RepeatRow, ...] = ()
    clinicians: tuple[ClinicianRow, ...] = ()
    suppressed_by_kind: Mapping[str, int] = field(default_factory=dict)


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


def _reason_key(fact: FeedbackFact) -> str:
    if fact.reason_system is not None and fact.reason_code is not None:
        return f"{fact.reason_system}|{fact.reason_code}"
    return NO_CODED_REASON


def reason_label(reason: str) -> str:
    """What a reason code means: the display the cards offer (or offered, for a retired code)."""
    from cards.content import OVERRIDE_REASON_SYSTEM, OVERRIDE_REASONS, RETIRED_OVERRIDE_REASONS

    labels = {f"{system}|{code}": display for system, code, display in OVERRIDE_REASONS}
    for code, (display, successor) in RETIRED_OVERRIDE_REASONS.items():
        labels[f"{OVERRIDE_REASON_SYSTEM}|{code}"] = f"{display} (retired code; now {successor})"
    return labels.get(reason, "")


def build_report(
    issued_by_kind: Mapping[str, int],
    facts: Iterable[FeedbackFact],
    issued_cards: Iterable[IssuedFact] = (),
    suppressed: Iterable[SuppressedFact] = (),
    zone: tzinfo | None = None,
) -> FeedbackReport:
    """Aggregate issued cards, feedback rows and suppressed cards into a report (rules in the module docstring).

    `issued_by_kind` counts every issued card by tier; `issued_cards` are the same cards one by one, for the
    sections that need more than a count (by rules version, repeats, clinicians)."""
    facts = list(facts)
    issued_cards = list(issued_cards)
    suppressed = list(suppressed)
    rows_by_kind: dict[str, int] = {}
    for fact in facts:
        rows_by_kind[fact.kind] = rows_by_kind.get(fact.kind, 0) + 1
    final = list(_final_outcomes(facts).values())

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
        if fact.outcome == "overridden":
            reason = _reason_key(fact)
            reasons[reason] = reasons.get(reason, 0) + 1
    total = sum(reasons.values())
    by_reason = tuple(
        ReasonRow(reason=reason, count=count, share=count / total)
        for reason, count in sorted(reasons.items(), key=_reason_order)
    )
    return FeedbackReport(
        by_kind=tuple(by_kind),
        by_reason=by_reason,
        by_version=_by_version(issued_cards, final, suppressed),
        reasons_by_kind=_reasons_by_kind(final),
        reasons_by_version=_reasons_by_version(issued_cards, final),
        repeats=_repeats(issued_cards),
        clinicians=_clinicians(issued_cards, zone or UTC),
        suppressed_by_kind=dict(Counter(s.kind for s in suppressed)),
    )


def _reason_order(item: tuple[str, int]) -> tuple[int, bool, str]:
    return (-item[1], item[0] == NO_CODED_REASON, item[0])


def _reasons_by_kind(final: Sequence[FeedbackFact]) -> tuple[TierReasonRow, ...]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for fact in final:
        if fact.outcome == "overridden":
            counts[fact.kind][_reason_key(fact)] += 1
    rows = []
    for kind in sorted(counts, key=_kind_key):
        total = sum(counts[kind].values())
        rows += [TierReasonRow(kind, reason, reason_label(reason), count, count / total)
                 for reason, count in sorted(counts[kind].items(), key=_reason_order)]
    return tuple(rows)


def _reasons_by_version(issued_cards: Sequence[IssuedFact],
                        final: Sequence[FeedbackFact]) -> tuple[VersionReasonRow, ...]:
    version_of = {(c.service_id, c.card_uuid): c.rules_version or UNRECORDED for c in issued_cards}
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for fact in final:
        version = version_of.get((fact.service_id, fact.card_uuid))
        if fact.outcome == "overridden" and version is not None:
            counts[(version, fact.kind)][_reason_key(fact)] += 1
    rows = []
    for version, kind in sorted(counts, key=lambda vk: (vk[0] == UNRECORDED, vk[0], _kind_key(vk[1]))):
        total = sum(counts[(version, kind)].values())
        rows += [VersionReasonRow(version, kind, reason, reason_label(reason), count, count / total)
                 for reason, count in sorted(counts[(version, kind)].items(), key=_reason_order)]
    return tuple(rows)


def _by_version(issued_cards: Sequence[IssuedFact], final: Sequence[FeedbackFact],
                suppressed: Sequence[SuppressedFact]) -> tuple[VersionRow, ...]:
    version_of = {(c.service_id, c.card_uuid): c.rules_version or UNRECORDED for c in issued_cards}
    issued = Counter((c.rules_version or UNRECORDED, c.kind) for c in issued_cards)
    outcomes = Counter((version_of[(f.service_id, f.card_uuid)], f.kind, f.outcome) for f in final
                       if (f.service_id, f.card_uuid) in version_of)
    hidden = Counter((s.rules_version or UNRECORDED, s.kind) for s in suppressed)
    rows = []
    for version, kind in sorted(set(issued) | set(hidden), key=lambda vk: (vk[0] == UNRECORDED, vk[0],
                                                                        _kind_key(vk[1]))):
        n, accepted, overridden = issued[(version, kind)], outcomes[(version, kind, "accepted")], outcomes[
            (version, kind, "overridden")]
        k = hidden[(version, kind)]
        rows.append(VersionRow(version, kind, n, accepted, overridden, _rate(accepted, n), _rate(overridden, n), k,
                               _rate(k, n + k)))
    return tuple(rows)


def _repeats(issued_cards: Sequence[IssuedFact]) -> tuple[RepeatRow, ...]:
    window = timedelta(days=REPEAT_DAYS)
    by_patient: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    without: Counter[str] = Counter()
    for card in issued_cards:
        if card.patient_key is None:
            without[card.kind] += 1
        else:
            by_patient[card.kind][card.patient_key].append(card.issued_at)
    rows = []
    for kind in sorted(set(by_patient) | set(without), key=_kind_key):
        patients = by_patient.get(kind, {})
        cards = windows = repeats = 0
        for times in patients.values():
            times.sort()
            opened: datetime | None = None
            for i, at in enumerate(times):
                cards += 1
                if i and at - times[i - 1] <= window:
                    repeats += 1
                if opened is None or at - opened >= window:
                    opened, windows = at, windows + 1
        rows.append(RepeatRow(kind, len(patients), cards, windows, cards / windows if windows else None, repeats,
                              _rate(repeats, cards), without[kind]))
    return tuple(rows)


def _clinician_row(kind: str, cards: Sequence[IssuedFact], zone: tzinfo) -> ClinicianRow:
    days: Counter[tuple[str, date]] = Counter(
        (c.user_key, c.issued_at.astimezone(zone).date()) for c in cards if c.user_key is not None)
    per_day = tuple(sorted(days.values()))
    n = sum(per_day)
    return ClinicianRow(kind, len(per_day), n, n / len(per_day) if per_day else None,
                        statistics.median(per_day) if per_day else None, max(per_day) if per_day else None,
                        sum(1 for c in cards if c.user_key is None), per_day)


def _clinicians(issued_cards: Sequence[IssuedFact], zone: tzinfo) -> tuple[ClinicianRow, ...]:
    if not issued_cards:
        return ()
    kinds = sorted({c.kind for c in issued_cards}, key=_kind_key)
    return (_clinician_row("all", issued_cards, zone),
            *(_clinician_row(kind, [c for c in issued_cards if c.kind == kind], zone) for kind in kinds))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], align: str = "") -> list[str]:
    """Columns padded to their widths; `align` has an "l" or "r" per column (default: the first text, left;
    the others numbers, right)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    lines = []
    for cells in [header, *rows]:
        parts = [cell.ljust(w) if a == "l" else cell.rjust(w) for cell, w, a in zip(cells, widths, align, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return lines


def render_report(report: FeedbackReport) -> str:
    """A plain-text table, for `mscc-alert feedback-report`."""
    if not report.by_kind and not report.suppressed_by_kind:
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
    if report.reasons_by_kind:
        lines += ["", "Override reasons by kind (share of the kind's overridden cards)"]
        lines += _table(
            ("kind", "count", "share", "reason (system|code)", "meaning"),
            [(r.kind, str(r.count), _percent(r.share), r.reason, r.label or "-") for r in report.reasons_by_kind],
            align="lrrll",
        )
    lines += ["", "Cards suppressed (not shown again: a clinician had already acted on the same card)"]
    if report.suppressed_by_kind:
        lines += _table(("kind", "suppressed"), [(k, str(report.suppressed_by_kind[k])) for k in sorted(
            report.suppressed_by_kind, key=_kind_key)])
    else:
        lines.append("none (suppression needs MSCC_ALERT_PSEUDONYM_SECRET)")
    if report.by_version:
        lines += ["", "By rules version (suppressed share = suppressed / (issued + suppressed))"]
        lines += _table(
            ("rules version", "kind", "issued", "accepted", "overridden", "acceptance", "override", "suppressed",
             "suppressed share"),
            [(r.rules_version, r.kind, str(r.issued), str(r.accepted), str(r.overridden), _percent(r.acceptance_rate),
              _percent(r.override_rate), str(r.suppressed), _percent(r.suppressed_share)) for r in report.by_version],
            align="llrrrrrrr",
        )
    if report.reasons_by_version:
        lines += ["", "Override reasons by rules version (share of that version's overridden cards of the kind)"]
        lines += _table(
            ("rules version", "kind", "count", "share", "reason (system|code)", "meaning"),
            [(r.rules_version, r.kind, str(r.count), _percent(r.share), r.reason, r.label or "-")
             for r in report.reasons_by_version],
            align="llrrll",
        )
    if report.repeats:
        lines += ["", f"Repeat cards (same patient, same kind, within {REPEAT_DAYS} days; from the patient pseudonym)"]
        lines += _table(
            ("kind", "patients", "cards", f"cards/patient/{REPEAT_DAYS}d", "repeats", "repeat rate",
             "no pseudonym"),
            [(r.kind, str(r.patients), str(r.cards), _number(r.cards_per_patient_30d), str(r.repeats),
              _percent(r.repeat_share), str(r.without_pseudonym)) for r in report.repeats],
        )
    if report.clinicians:
        lines += ["", "Cards per clinician per day (clinician-days with at least one card; from the user pseudonym)"]
        lines += _table(
            ("kind", "clinician-days", "cards", "mean", "median", "max", "no pseudonym"),
            [(r.kind, str(r.clinician_days), str(r.cards), _number(r.mean), _number(r.median),
              "-" if r.maximum is None else str(r.maximum), str(r.without_pseudonym)) for r in report.clinicians],
        )
    return "\n".join(lines) + "\n"
