"""Schedules at the ends of the calendar (years 1 and 9999): a clear 400 or no occurrence, never a crash.

Found by the schemathesis long profile (R4): POST /schedules/preview with `after` 0001-01-01T01:00Z
answered 500 (OverflowError converting to a local time), and so did POST /tasks with a `once` at
9999-12-31T23:59:59 in New York or an RRULE whose DTSTART is in year 9999.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.schedules import LATEST, occurrences, parse_schedule
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("kind", "expr", "tz"),
    [
        ("once", "9999-12-31T23:59:59", "America/New_York"),
        ("once", "9999-12-31T23:59:59-12:00", "UTC"),
        ("once", "0001-01-01T00:00:00", "Asia/Kolkata"),
        ("rrule", "DTSTART:99991231T235959Z\nRRULE:FREQ=DAILY", "UTC"),
        ("rrule", "DTSTART;TZID=America/New_York:99991231T230000\nRRULE:FREQ=HOURLY", "UTC"),
        ("rrule", "DTSTART:99991231T235959\nRRULE:FREQ=DAILY", "Pacific/Kiritimati"),
    ],
)
def test_a_schedule_off_the_calendar_is_a_400_on_the_schedule(kind: str, expr: str, tz: str, agent: Any) -> None:
    body = {"schedule_kind": kind, "schedule_expr": expr, "timezone": tz}

    created = agent.client.post("/tasks", {"title": "edge", "payload": echo_pipeline(1), **body}, format="json")
    previewed = agent.client.post("/schedules/preview", body, format="json")

    for response in (created, previewed):
        assert response.status_code == 400, response.json()
        assert list(response.json()["error"]["fields"]) == ["schedule_expr"]


@pytest.mark.parametrize("after", ["0001-01-01T01:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T00:00:00Z"])
@pytest.mark.parametrize(
    ("kind", "expr", "tz"),
    [
        ("cron", "0 9 * * 1-5", "America/New_York"),
        ("rrule", "FREQ=DAILY", "Pacific/Kiritimati"),
        ("interval", "P1D", "UTC"),
    ],
)
def test_a_preview_after_the_ends_of_the_calendar_is_a_400_on_after(
    after: str, kind: str, expr: str, tz: str, agent: Any
) -> None:
    body = {"schedule_kind": kind, "schedule_expr": expr, "timezone": tz, "after": after, "count": 100}
    response = agent.client.post("/schedules/preview", body, format="json")
    assert response.status_code == 400, response.json()
    assert list(response.json()["error"]["fields"]) == ["after"]


def test_occurrences_stop_at_the_end_of_the_supported_range() -> None:
    schedule = parse_schedule("interval", "P1D", "Pacific/Kiritimati")
    assert schedule is not None
    found = occurrences(schedule, after=datetime(9999, 12, 25, tzinfo=UTC), count=100)
    assert 0 < len(found) < 10
    assert all(at <= LATEST for at in found)


def test_an_old_dtstart_still_previews_from_after(agent: Any) -> None:
    body = {
        "schedule_kind": "rrule",
        "schedule_expr": "DTSTART:00010101T000000\nRRULE:FREQ=DAILY",
        "timezone": "America/New_York",
        "after": "2026-01-01T00:00:00Z",
        "count": 2,
    }
    response = agent.client.post("/schedules/preview", body, format="json")
    assert response.status_code == 200, response.json()
    found = [o["at"] for o in response.json()["occurrences"]]
    assert found == ["2026-01-01T00:00:00-05:00", "2026-01-02T00:00:00-05:00"]
