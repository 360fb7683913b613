"""Interval (seconds or ISO 8601 duration) and once (ISO 8601 timestamp) schedules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ordinaut_site.errors import ValidationFailed
from tasks.schedules import interval_seconds, occurrences, parse_schedule, schedule_validate


@pytest.mark.parametrize(
    ("expr", "seconds"), [("90", 90), ("PT15M", 900), ("PT1H30M", 5400), ("P1D", 86400), ("P1W", 604800), ("PT2S", 2)]
)
def test_interval_forms(expr: str, seconds: int) -> None:
    assert interval_seconds(expr) == seconds


@pytest.mark.parametrize("expr", ["0", "P1M", "every hour", "PT0.5S", "-5", "P"])
def test_bad_intervals_are_400_material(expr: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        interval_seconds(expr)
    assert "schedule_expr" in caught.value.fields


def test_interval_occurrences_sit_on_a_grid_not_on_now() -> None:
    schedule = parse_schedule("interval", "PT15M", "Europe/Chisinau")
    assert schedule is not None
    fired = occurrences(schedule, after=datetime(2026, 11, 26, 10, 7, 33, 9, tzinfo=UTC), count=2)
    assert fired == [datetime(2026, 11, 26, 10, 15, tzinfo=UTC), datetime(2026, 11, 26, 10, 30, tzinfo=UTC)]


def test_once_naive_means_task_timezone_and_fires_once() -> None:
    schedule = parse_schedule("once", "2026-12-01T09:00", "Europe/Chisinau")
    assert schedule is not None
    assert occurrences(schedule, after=datetime(2026, 11, 26, tzinfo=UTC), count=3) == [
        datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    ]


def test_once_in_the_past_has_no_future_occurrence() -> None:
    with pytest.raises(ValidationFailed) as caught:
        schedule_validate(kind="once", expr="2020-01-01T00:00:00Z", tz="UTC", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert caught.value.fields == {"schedule_expr": ["has no occurrence in the future"]}


def test_exhausted_rrule_has_no_future_occurrence() -> None:
    with pytest.raises(ValidationFailed, match="no occurrence in the future"):
        schedule_validate(
            kind="rrule",
            expr="DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;COUNT=2",
            tz="UTC",
            now=datetime(2026, 1, 1, tzinfo=UTC),
        )


def test_unknown_timezone_names_the_timezone_field() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("cron", "0 9 * * *", "Europe/Atlantis")
    assert "timezone" in caught.value.fields
