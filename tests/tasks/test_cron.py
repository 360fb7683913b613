"""Cron expressions: field syntax, weekday numbering, the Vixie day-of-month/day-of-week OR rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ordinaut_site.errors import ValidationFailed
from tasks.schedules import occurrences, parse_schedule


def _next(expr: str, after: datetime, count: int = 1, tz: str = "UTC") -> list[datetime]:
    schedule = parse_schedule("cron", expr, tz)
    assert schedule is not None
    return occurrences(schedule, after=after, count=count)


# 2026-11-23 is a Monday.
MONDAY = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("dow", "weekdays"),
    [
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("SUN", {"Sun"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("MON-FRI", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("mon,wed,fri", {"Mon", "Wed", "Fri"}),
        ("5-7", {"Fri", "Sat", "Sun"}),
        ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
    ],
)
def test_day_of_week_numbering(dow: str, weekdays: set[str]) -> None:
    fired = _next(f"0 8 * * {dow}", MONDAY, count=14)
    assert {at.strftime("%a") for at in fired} == weekdays
    assert all(at.strftime("%H:%M") == "08:00" for at in fired)


def test_0800_weekdays_fires_monday_to_friday_only() -> None:
    fired = _next("0 8 * * 1-5", MONDAY, count=10)
    assert [at.strftime("%a %d") for at in fired] == [
        "Mon 23",
        "Tue 24",
        "Wed 25",
        "Thu 26",
        "Fri 27",
        "Mon 30",
        "Tue 01",
        "Wed 02",
        "Thu 03",
        "Fri 04",
    ]


def test_day_of_month_and_day_of_week_both_restricted_match_either() -> None:
    # Vixie cron: "0 9 1 * 1" is the 1st of the month OR any Monday.
    fired = _next("0 9 1 * 1", MONDAY, count=5)
    assert [at.strftime("%a %b %d") for at in fired] == [
        "Mon Nov 23",
        "Mon Nov 30",
        "Tue Dec 01",
        "Mon Dec 07",
        "Mon Dec 14",
    ]


def test_star_step_in_day_of_month_counts_as_unrestricted() -> None:
    # A field starting with "*" is unrestricted for the OR rule, so this is every Monday on odd days.
    fired = _next("0 9 */2 * 1", MONDAY, count=3)
    assert all(at.strftime("%a") == "Mon" and at.day % 2 == 1 for at in fired)


def test_month_names_ranges_steps_and_lists() -> None:
    assert [at.strftime("%b") for at in _next("0 0 1 JAN,jul *", MONDAY, count=3)] == ["Jan", "Jul", "Jan"]
    assert [at.minute for at in _next("5/20 * * * *", MONDAY, count=3)] == [5, 25, 45]
    assert [at.hour for at in _next("0 9-17/4 * * *", MONDAY, count=3)] == [9, 13, 17]


def test_day_31_skips_short_months() -> None:
    fired = _next("0 12 31 * *", datetime(2026, 1, 1, tzinfo=UTC), count=4)
    assert [at.strftime("%b") for at in fired] == ["Jan", "Mar", "May", "Jul"]


def test_feb_29_only_in_leap_years() -> None:
    fired = _next("0 0 29 2 *", datetime(2026, 1, 1, tzinfo=UTC), count=2)
    assert [at.year for at in fired] == [2028, 2032]


def test_macros() -> None:
    assert _next("@daily", MONDAY)[0] == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert _next("@hourly", MONDAY)[0] == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def test_no_seconds_leak_from_the_reference_time() -> None:
    fired = _next("*/15 * * * *", datetime(2026, 11, 23, 10, 7, 33, 123456, tzinfo=UTC), count=2)
    assert fired == [datetime(2026, 11, 23, 10, 15, tzinfo=UTC), datetime(2026, 11, 23, 10, 30, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("0 8 * *", "needs 5 fields"),
        ("60 8 * * *", "minute field: 60 is out of range 0-59"),
        ("0 24 * * *", "hour field: 24 is out of range"),
        ("0 8 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("0 8 * 13 *", "month field: 13 is out of range"),
        ("0 8 * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("0 8 * * FUNDAY", "day-of-week field: 'FUNDAY' is not a number or a name"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("0 5-1 * * *", "runs backwards"),
        ("@reboot", "unknown macro"),
    ],
)
def test_malformed_cron_is_a_clear_error_on_schedule_expr(expr: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("cron", expr, "UTC")
    assert "schedule_expr" in caught.value.fields
    assert fragment in caught.value.message
