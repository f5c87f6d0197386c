"""FHIR date, dateTime and instant values as spans of time.

A partial date is a span: "2019" runs from 2019-01-01 to the end of 2019. docs/clinical-rules.md §3 item 9: compare on
the earliest instant for "before" questions and on the latest instant for "within the window" questions.
A dateTime without a timezone (not valid FHIR, sent anyway) is read as UTC and flagged.
Calendar days are read as a card's reader sees them (`Calendar`): in the site's time zone when one is configured,
for an EHR shows its users times in their own zone whatever offset its FHIR API writes (many write UTC);
otherwise in the offset the dateTime was written with, so that 22:00 on 12 Nov at -05:00 is
12 Nov, as the record shows it, though it is 13 Nov in UTC. A date alone is the date written, in any zone.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


@dataclass(frozen=True, slots=True)
class DateSpan:
    earliest: datetime
    latest: datetime
    text: str  # as written in the record, for display
    assumed_utc: bool = False
    offset: timedelta | None = None  # the UTC offset written in the record; None for a date or a zoneless time

    def __str__(self) -> str:
        return self.text

    def first_day(self, zone: tzinfo | None = None) -> date:
        """The calendar day the span starts on, in `zone` (None: in the offset the record wrote)."""
        return self._day(self.earliest, zone)

    def last_day(self, zone: tzinfo | None = None) -> date:
        """The calendar day the span ends on, in `zone` (None: in the offset the record wrote)."""
        return self._day(self.latest, zone)

    def today(self, now: datetime, zone: tzinfo | None = None) -> date:
        """Today's date to set this span's days against: in `zone`; else in the offset the record wrote, so that
        "today" and "yesterday" agree with the record's own dates; else `now`'s own date."""
        reading = self._reading_zone(zone)
        return now.date() if reading is None else now.astimezone(reading).date()

    def _day(self, moment: datetime, zone: tzinfo | None) -> date:
        if self.offset is None:  # a date (or a zoneless time): the day written, in any zone
            return moment.date()
        return moment.astimezone(self._reading_zone(zone)).date()

    def _reading_zone(self, zone: tzinfo | None) -> tzinfo | None:
        """The zone days are counted in: `zone` if set, else the offset the record wrote, if it wrote one."""
        if zone is not None:
            return zone
        return None if self.offset is None else timezone(self.offset)


@dataclass(frozen=True, slots=True)
class Calendar:
    """The instant evaluated at and the zone its reader counts days in (None: each record's own offset)."""

    now: datetime
    zone: tzinfo | None = None


def _span_of_date_parts(year: int, month: int | None, day: int | None, text: str) -> DateSpan:
    if month is None:
        start, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year, 12, 31, tzinfo=UTC)
    elif day is None:
        last = calendar.monthrange(year, month)[1]
        start, end = datetime(year, month, 1, tzinfo=UTC), datetime(year, month, last, tzinfo=UTC)
    else:
        start = end = datetime(year, month, day, tzinfo=UTC)
    return DateSpan(start, datetime.combine(end.date(), time.max, tzinfo=UTC), text)


def parse_span(value: object) -> DateSpan | None:
    """A FHIR date/dateTime/instant as a str, date or datetime; None if absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, datetime):
        assumed = value.tzinfo is None
        moment = value.replace(tzinfo=UTC) if assumed else value.astimezone(UTC)
        return DateSpan(moment, moment, value.isoformat(), assumed, value.utcoffset())
    if isinstance(value, date):
        return _span_of_date_parts(value.year, value.month, value.day, value.isoformat())
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _DATE.match(text)
    try:
        if match:
            year, month, day = match.groups()
            return _span_of_date_parts(
                int(year), int(month) if month else None, int(day) if day else None, text
            )
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    assumed = parsed.tzinfo is None
    moment = parsed.replace(tzinfo=UTC) if assumed else parsed.astimezone(UTC)
    return DateSpan(moment, moment, text, assumed, parsed.utcoffset())


def span_of_period(start: object, end: object) -> DateSpan | None:
    """A Period: from the start's earliest instant to the end's latest (or the start's latest if open)."""
    first, last = parse_span(start), parse_span(end)
    if first is None:
        return None
    latest = last.latest if last is not None else first.latest
    return DateSpan(first.earliest, max(latest, first.latest), first.text, first.assumed_utc, first.offset)


def span_after_birth(birth: DateSpan, years: float) -> DateSpan:
    """onsetAge: the age in years added to the birth date (keeps the birth date's uncertainty)."""
    delta = timedelta(days=years * 365.25)
    return DateSpan(birth.earliest + delta, birth.latest + delta + timedelta(days=365), f"age {years:g}")


def age_in_years(birth: DateSpan, now: datetime) -> int:
    """Completed years, using the latest possible birth date (the youngest the patient can be)."""
    born = birth.last_day()
    today = birth.today(now)
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
