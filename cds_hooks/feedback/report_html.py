"""The feedback report as one self-contained HTML page: inline SVG charts and tables, no script, no external
file or font, so it opens offline and can be mailed to a committee as it is. Figures are those of
`feedback_report.build_report`; the definitions shown under each chart are the ones in its docstring."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from cds_hooks.feedback.report import (
    REPEAT_DAYS,
    UNRECORDED,
    FeedbackReport,
    _kind_key,
)

__all__ = ["render_html"]

ACCEPTED, OVERRIDDEN, NONE, SUPPRESSED, NEUTRAL = "#2e7d32", "#e65100", "#bdbdbd", "#3949ab", "#00838f"
_CHART_WIDTH = 1040
_LABEL_WIDTH = 300
_BAR_HEIGHT = 26
_GAP = 10

Segment = tuple[float, str, str]  # value, colour, text shown on the segment


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _bars(rows: Sequence[tuple[str, Sequence[Segment]]], scale: float, legend: Sequence[tuple[str, str]] = (),
          title: str = "", label_width: int = _LABEL_WIDTH) -> str:
    """Horizontal bars, one per row, each made of stacked segments; `scale` is the value of a full bar."""
    plot = _CHART_WIDTH - label_width - 80
    top = 34 if legend else 8
    height = top + len(rows) * (_BAR_HEIGHT + _GAP) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{_CHART_WIDTH}" height="{height}" '
             f'viewBox="0 0 {_CHART_WIDTH} {height}" aria-label="{escape(title)}">']
    x = label_width
    for name, colour in legend:
        parts.append(f'<rect x="{x}" y="8" width="14" height="14" fill="{colour}"/>'
                     f'<text x="{x + 20}" y="20" class="legend">{escape(name)}</text>')
        x += 30 + 8 * len(name)
    for i, (label, segments) in enumerate(rows):
        y = top + i * (_BAR_HEIGHT + _GAP)
        parts.append(f'<text x="{label_width - 10}" y="{y + _BAR_HEIGHT * 0.68}" text-anchor="end" '
                     f'class="label">{escape(label)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y}" width="{plot}" height="{_BAR_HEIGHT}" fill="#f3f3f3"/>')
        start = float(label_width)
        for value, colour, text in segments:
            width = plot * value / scale if scale else 0.0
            if width <= 0:
                continue
            parts.append(f'<rect x="{start:.1f}" y="{y}" width="{width:.1f}" height="{_BAR_HEIGHT}" fill="{colour}">'
                         f'<title>{escape(text)}</title></rect>')
            if text and width >= 8 * len(text) + 8:
                parts.append(f'<text x="{start + 6:.1f}" y="{y + _BAR_HEIGHT * 0.68}" class="on-bar">'
                             f'{escape(text)}</text>')
            start += width
        after = " · ".join(t for v, _, t in segments if v and t and plot * v / scale < 8 * len(t) + 8)
        if after:
            parts.append(f'<text x="{start + 6:.1f}" y="{y + _BAR_HEIGHT * 0.68}" class="label">{escape(after)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_NUMBER = re.compile(r"-|\d[\d.,]*%?")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Numbers right-aligned (a column is numeric when all its cells are), text left-aligned."""
    numeric = [all(_NUMBER.fullmatch(row[i]) for row in rows) and bool(rows) for i in range(len(header))]
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f"<{tag} class='{'num' if n else 'text'}'>{escape(v)}</{tag}>"
                       for v, n in zip(values, numeric, strict=True))

    head = cells("th", header)
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, explanation: str, *content: str) -> str:
    return f"<section><h2>{escape(title)}</h2><p class='why'>{escape(explanation)}</p>{''.join(content)}</section>"


def _outcomes(report: FeedbackReport) -> str:
    rows: list[tuple[str, Sequence[Segment]]] = []
    for row in report.by_kind:
        if not row.issued:
            continue
        ignored = row.issued - row.accepted - row.overridden
        rows.append((f"{row.kind} ({row.issued} issued)", [
            (row.accepted / row.issued, ACCEPTED, f"accepted {_pct(row.accepted / row.issued)}"),
            (row.overridden / row.issued, OVERRIDDEN, f"overridden {_pct(row.overridden / row.issued)}"),
            (ignored / row.issued, NONE, f"no feedback {_pct(ignored / row.issued)}"),
        ]))
    chart = _bars(rows, 1.0, [("accepted", ACCEPTED), ("overridden", OVERRIDDEN), ("no feedback", NONE)],
                  "Outcome of the cards issued, by tier") if rows else "<p>No cards issued.</p>"
    table = _table(("tier", "issued", "feedback rows", "accepted", "overridden", "acceptance", "override",
                    "suppressed"),
                   [(r.kind, str(r.issued), str(r.feedback), str(r.accepted), str(r.overridden),
                     _pct(r.acceptance_rate), _pct(r.override_rate), str(report.suppressed_by_kind.get(r.kind, 0)))
                    for r in report.by_kind])
    return _section("Cards issued, accepted and overridden, by tier",
                    "Each card counted once, by its latest feedback; rates per issued card. A card with no feedback "
                    "was ignored or never shown. 'unknown' is feedback on a card this store has no record of.",
                    chart, table)


def _reasons(report: FeedbackReport) -> str:
    if not report.reasons_by_kind:
        return _section("Override reasons", "Cards whose latest feedback is an override.", "<p>No overrides.</p>")
    rows: list[tuple[str, Sequence[Segment]]] = []
    for row in report.reasons_by_kind:
        label = row.label or row.reason.rsplit("|", 1)[-1]
        rows.append((f"{row.kind}: {label[:39] + '…' if len(label) > 40 else label}",
                     [(row.share, OVERRIDDEN, f"{row.count} ({_pct(row.share)})")]))
    table = _table(("tier", "reason", "system", "code", "count", "share of the tier's overrides"),
                   [(r.kind, r.label or "-", *(r.reason.rsplit("|", 1) if "|" in r.reason else ("-", r.reason)),
                     str(r.count), _pct(r.share)) for r in report.reasons_by_kind])
    return _section("Override reasons, by tier",
                    "Share of each tier's overridden cards, by the coded reason the clinician chose. Codes from HL7 "
                    "non-adherence-reason-codes (CDS Hooks 3.0 ballot) where one fits; ours otherwise.",
                    _bars(rows, 1.0, title="Override reasons by tier", label_width=430), table)


def _versions(report: FeedbackReport) -> str:
    if not report.by_version:
        return ""
    rows: list[tuple[str, Sequence[Segment]]] = []
    for r in report.by_version:
        rows.append((f"{r.rules_version} · {r.kind}", [
            (r.acceptance_rate or 0.0, ACCEPTED, f"accepted {_pct(r.acceptance_rate)}"),
            (r.override_rate or 0.0, OVERRIDDEN, f"overridden {_pct(r.override_rate)}"),
            (1 - (r.acceptance_rate or 0.0) - (r.override_rate or 0.0) if r.issued else 0.0, NONE,
             f"no feedback {_pct(1 - (r.acceptance_rate or 0.0) - (r.override_rate or 0.0))}" if r.issued else ""),
        ]))
    table = _table(("rules version", "tier", "issued", "accepted", "overridden", "acceptance", "override",
                    "suppressed", "suppressed share"),
                   [(r.rules_version, r.kind, str(r.issued), str(r.accepted), str(r.overridden),
                     _pct(r.acceptance_rate), _pct(r.override_rate), str(r.suppressed), _pct(r.suppressed_share))
                    for r in report.by_version])
    if report.reasons_by_version:
        table += "<h3>Override reasons by rules version</h3>" + _table(
            ("rules version", "tier", "reason", "code", "count", "share of the version's overrides"),
            [(r.rules_version, r.kind, r.label or "-", r.reason.rsplit("|", 1)[-1], str(r.count), _pct(r.share))
             for r in report.reasons_by_version])
    return _section("By rules version",
                    "The rules version is the package version plus a hash of the value sets and rules that made the "
                    f"card. {UNRECORDED}: cards issued before versions were recorded. Suppressed share = suppressed / "
                    "(issued + suppressed).",
                    _bars(rows, 1.0, [("accepted", ACCEPTED), ("overridden", OVERRIDDEN), ("no feedback", NONE)],
                          "Acceptance and override by rules version"), table)


def _suppressed(report: FeedbackReport) -> str:
    kinds = sorted(report.suppressed_by_kind, key=_kind_key)
    if not kinds:
        return _section("Cards suppressed", "Cards not shown again because a clinician had already acted on them.",
                        "<p>None. Suppression needs MSCC_ALERT_PSEUDONYM_SECRET to be set.</p>")
    issued = {r.kind: r.issued for r in report.by_kind}
    scale = max(report.suppressed_by_kind[k] + issued.get(k, 0) for k in kinds)
    rows: list[tuple[str, Sequence[Segment]]] = [
        (k, [(issued.get(k, 0), NEUTRAL, f"shown {issued.get(k, 0)}"),
             (report.suppressed_by_kind[k], SUPPRESSED, f"suppressed {report.suppressed_by_kind[k]}")]) for k in kinds]
    return _section("Cards suppressed",
                    "Cards not shown because a clinician had already accepted or overridden the same card for the "
                    "same patient (14 days after an override; the order's time frame after an acceptance), and it "
                    "had neither escalated nor gained new evidence.",
                    _bars(rows, scale, [("shown", NEUTRAL), ("suppressed", SUPPRESSED)], "Cards suppressed by tier"))


def _repeats(report: FeedbackReport) -> str:
    if not report.repeats:
        return ""
    rows: list[tuple[str, Sequence[Segment]]] = [
        (f"{r.kind} ({r.cards} cards, {r.patients} patients)",
         [(r.repeat_share or 0.0, OVERRIDDEN, f"repeats {_pct(r.repeat_share)}")]) for r in report.repeats]
    table = _table(("tier", "patients", "cards", f"cards per patient per {REPEAT_DAYS} days", "repeats",
                    "repeat rate", "cards without a patient pseudonym"),
                   [(r.kind, str(r.patients), str(r.cards),
                     "-" if r.cards_per_patient_30d is None else f"{r.cards_per_patient_30d:.2f}", str(r.repeats),
                     _pct(r.repeat_share), str(r.without_pseudonym)) for r in report.repeats])
    return _section("Repeat cards",
                    f"A repeat is a card for a patient who had a card of the same tier in the {REPEAT_DAYS} days "
                    f"before. Cards per patient per {REPEAT_DAYS} days: each patient's cards grouped into "
                    f"{REPEAT_DAYS}-day windows; 1.00 means nobody saw the same card twice within {REPEAT_DAYS} "
                    "days. From the keyed patient pseudonym, never the patient id.",
                    _bars(rows, 1.0, title="Repeat rate by tier"), table)


def _clinicians(report: FeedbackReport) -> str:
    if not report.clinicians:
        return ""
    overall = report.clinicians[0]
    buckets = [sum(1 for n in overall.per_day if (n == k if k < 5 else n >= 5)) for k in range(1, 6)]
    rows: list[tuple[str, Sequence[Segment]]] = [
        (f"{k if k < 5 else '5 or more'} card{'s' if k > 1 else ''} a day",
         [(count, NEUTRAL, f"{count} clinician-days")])
        for k, count in zip(range(1, 6), buckets, strict=True)]
    table = _table(("tier", "clinician-days", "cards", "mean", "median", "max", "cards without a user pseudonym"),
                   [(r.kind, str(r.clinician_days), str(r.cards), "-" if r.mean is None else f"{r.mean:.2f}",
                     "-" if r.median is None else f"{r.median:g}", "-" if r.maximum is None else str(r.maximum),
                     str(r.without_pseudonym)) for r in report.clinicians])
    chart = _bars(rows, max(buckets) or 1, title="Clinician-days by number of cards") if overall.per_day else ""
    return _section("Cards per clinician per day",
                    "For each clinician (keyed pseudonym of the CDS Hooks userId) and UTC day with at least one card: "
                    "how many cards they were shown. The chart counts clinician-days by cards shown (all tiers).",
                    chart, table)


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212121; margin: 24px 40px;
       max-width: 1100px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h3 { font-size: 16px; margin: 16px 0 2px; } h2 { font-size: 19px; margin: 28px 0 4px; border-top: 1px solid #ddd;
       padding-top: 16px; }
p.meta { color: #555; margin: 0 0 8px; } p.why { color: #444; margin: 2px 0 10px; max-width: 980px; }
table { border-collapse: collapse; margin: 10px 0 4px; font-size: 14px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 10px; vertical-align: top; }
th { background: #f5f5f5; } .num { text-align: right; } .text { text-align: left; }
svg text.label { font-size: 14px; fill: #212121; } svg text.legend { font-size: 13px; fill: #333; }
svg text.on-bar { font-size: 13px; fill: #fff; font-weight: 600; }
"""


def render_html(report: FeedbackReport, generated: datetime | None = None) -> str:
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(r.issued for r in report.by_kind)
    body = "".join((
        _outcomes(report), _reasons(report), _suppressed(report), _versions(report), _repeats(report),
        _clinicians(report),
    ))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mscc-alert feedback report</title>"
        f"<style>{_STYLE}</style></head><body><h1>mscc-alert: how clinicians answered the cards</h1>"
        f"<p class='meta'>Generated {escape(when)} from the feedback store · {total} cards issued · "
        f"{sum(report.suppressed_by_kind.values())} suppressed. No patient or clinician identifiers: only keyed "
        "pseudonyms are stored.</p>"
        f"{body}</body></html>"
    )

