"""Cards at the edges of the calendar: just before and after midnight UTC, the turn of a year, a leap day, and the
days a site's clock changes. The suite runs at whatever hour CI starts it, so these instants are travelled to
(time-machine) rather than waited for; the expected dates are worked out here with the standard library alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from tests.scenarios import fhir_builders as fb
from tests.test_card_text import only_card

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

INSTANTS = [
    "2026-12-31T23:59:30Z",  # the last seconds of a year
    "2027-01-01T00:00:30Z",  # the first seconds of the next
    "2026-12-02T00:10:00Z",  # just after midnight UTC: the hour a CI run once failed in
    "2028-02-29T12:00:00Z",  # a leap day
    "2026-03-08T07:30:00Z",  # 03:30 in New York, whose clock has just gone forward (02:00 EST -> 03:00 EDT)
    "2026-11-01T06:30:00Z",  # 01:30 in New York, whose clock has just gone back (02:00 EDT -> 01:00 EST)
]
ZONES = [None, "America/New_York", "Pacific/Kiritimati"]


@pytest.fixture(params=INSTANTS)
def frozen(request: pytest.FixtureRequest) -> Iterator[datetime]:
    with time_machine.travel(request.param, tick=False):
        yield fb.now()


def _client(zone: str | None) -> Any:
    from fastapi.testclient import TestClient

    from cds_hooks.protocol.app import create_app
    from cds_hooks.settings import Settings

    return TestClient(create_app(Settings(database_url="memory://", time_zone=zone)))


def _why(client: Any, conditions: list[fb.JSON]) -> str:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(onset_days_ago=400), *conditions])
    why: str = only_card(client, body)["detail"].split("\n\n")[0]
    return why


def _day(moment: datetime, zone: tzinfo) -> str:
    """How a card writes a day of the year it is in now, worked out independently."""
    local = moment.astimezone(zone)
    return f"{local.day} {_MONTHS[local.month - 1]}"


@pytest.mark.parametrize("zone", ZONES)
def test_relative_days_hold_at_the_edges_of_the_calendar(frozen: datetime, zone: str | None) -> None:
    # Whole days ago are the same wall-clock time that many days back in any zone (a clock change shifts it by an
    # hour, which crosses no midnight at these instants' hours), so "today", "yesterday" and "9 days" hold in each.
    reader = ZoneInfo(zone) if zone else ZoneInfo("UTC")
    nine = frozen - timedelta(days=9)
    with _client(zone) as client:
        why = _why(client, [fb.back_pain(onset_days_ago=9), fb.finding(fb.DIFFICULTY_WALKING, onset_days_ago=1),
                            fb.finding(fb.URINARY_RETENTION, onset_days_ago=0)])
    year = "" if nine.astimezone(reader).year == frozen.astimezone(reader).year else f" {nine.astimezone(reader).year}"
    assert f"low back pain since {_day(nine, reader)}{year} (9 days)" in why, why
    assert "difficulty walking since yesterday" in why, why
    assert "urinary retention since today" in why, why
    assert re.search(r"Breast cancer \([A-Z][a-z]{2} \d{4}, 13 months ago\)", why), why


def test_an_evening_finding_is_today_in_the_sites_zone(frozen: datetime) -> None:
    """A finding written in UTC an hour ago is dated by the site's own day: in New York and on Kiritimati it is
    "today" or "yesterday" as that zone's calendar says, whatever UTC's day is."""
    hour_ago = frozen - timedelta(hours=1)
    pain = fb.back_pain(onset_days_ago=None)
    pain["onsetDateTime"] = pain["recordedDate"] = hour_ago.isoformat().replace("+00:00", "Z")
    for zone in ("America/New_York", "Pacific/Kiritimati"):
        local = ZoneInfo(zone)
        expected = "today" if hour_ago.astimezone(local).date() == frozen.astimezone(local).date() else "yesterday"
        with _client(zone) as client:
            why = _why(client, [pain])
        assert f"low back pain since {expected}" in why, (zone, why)
