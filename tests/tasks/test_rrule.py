"""RFC 5545 recurrence rules: BYDAY ordinals, month days, leap years, COUNT/UNTIL, INTERVAL, DTSTART."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ordinaut_site.errors import ValidationFailed
from tasks.schedules import occurrences, parse_schedule, schedule_normalize

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


def _next(expr: str, after: datetime = JAN_1, count: int = 5, tz: str = "UTC") -> list[datetime]:
    schedule = parse_schedule("rrule", expr, tz, now=after)
    assert schedule is not None
    return occurrences(schedule, after=after, count=count)


def test_first_monday_of_each_month() -> None:
    fired = _next("FREQ=MONTHLY;BYDAY=1MO;BYHOUR=9;BYMINUTE=0", count=3)
    assert [at.strftime("%a %Y-%m-%d %H:%M") for at in fired] == [
        "Mon 2026-01-05 09:00",
        "Mon 2026-02-02 09:00",
        "Mon 2026-03-02 09:00",
    ]


def test_last_friday_of_each_month() -> None:
    fired = _next("RRULE:FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=17;BYMINUTE=0", count=3)
    assert [at.strftime("%a %m-%d") for at in fired] == ["Fri 01-30", "Fri 02-27", "Fri 03-27"]


def test_month_day_31_skips_short_months() -> None:
    fired = _next("FREQ=MONTHLY;BYMONTHDAY=31;BYHOUR=9;BYMINUTE=0", count=4)
    assert [at.strftime("%b") for at in fired] == ["Jan", "Mar", "May", "Jul"]


def test_feb_29_only_in_leap_years() -> None:
    fired = _next("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYHOUR=0;BYMINUTE=0", count=3)
    assert [at.year for at in fired] == [2028, 2032, 2036]


def test_count_exhausts() -> None:
    fired = _next("DTSTART:20260105T090000Z\nRRULE:FREQ=DAILY;COUNT=3", count=10)
    assert [at.day for at in fired] == [5, 6, 7]


def test_until_exhausts_inclusive() -> None:
    fired = _next("DTSTART:20260105T090000Z\nRRULE:FREQ=DAILY;UNTIL=20260108T090000Z", count=10)
    assert [at.day for at in fired] == [5, 6, 7, 8]


def test_interval_2_weekly_keeps_the_dtstart_week_parity() -> None:
    fired = _next("DTSTART;TZID=UTC:20260105T080000\nRRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=MO", count=4)
    assert [at.strftime("%m-%d") for at in fired] == ["01-05", "01-19", "02-02", "02-16"]


def test_rdate_and_exdate() -> None:
    expr = (
        "DTSTART;TZID=Europe/Chisinau:20260105T090000\n"
        "RRULE:FREQ=DAILY;COUNT=3\n"
        "EXDATE;TZID=Europe/Chisinau:20260106T090000\n"
        "RDATE;TZID=Europe/Chisinau:20260110T120000"
    )
    fired = _next(expr, tz="Europe/Chisinau", count=10)
    assert [at.astimezone().strftime("%m-%d") for at in fired] == ["01-05", "01-07", "01-10"]


def test_dtstart_in_another_zone_is_converted() -> None:
    fired = _next(
        "DTSTART;TZID=America/New_York:20260105T090000\nRRULE:FREQ=DAILY;COUNT=1", tz="Europe/Chisinau", count=1
    )
    assert fired == [datetime(2026, 1, 5, 14, 0, tzinfo=UTC)]


def test_rule_without_dtstart_is_stored_with_local_midnight_of_today() -> None:
    stored = schedule_normalize(
        "rrule", "FREQ=DAILY;BYHOUR=9", "Europe/Chisinau", now=datetime(2026, 11, 26, 15, 42, 17, tzinfo=UTC)
    )
    assert stored == "DTSTART;TZID=Europe/Chisinau:20261126T000000\nRRULE:FREQ=DAILY;BYHOUR=9"
    # Minutes and seconds come from DTSTART, never from the moment the rule was written.
    fired = _next(stored, after=datetime(2026, 11, 26, 15, 42, 17, tzinfo=UTC), tz="Europe/Chisinau", count=1)
    assert fired == [datetime(2026, 11, 27, 7, 0, tzinfo=UTC)]


def test_seed_morning_briefing_rule() -> None:
    fired = _next(
        "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
        after=datetime(2026, 11, 27, 12, tzinfo=UTC),
        tz="Europe/Chisinau",
        count=2,
    )
    assert fired == [datetime(2026, 11, 30, 6, 30, tzinfo=UTC), datetime(2026, 12, 1, 6, 30, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("FREQ=FORTNIGHTLY", "FREQ=FORTNIGHTLY is not one of"),
        ("BYHOUR=9", "has no FREQ"),
        ("FREQ=DAILY;BYHOUR=25", "rule 'FREQ=DAILY;BYHOUR=25'"),
        ("FREQ=DAILY;COUNT=2;UNTIL=20270101T000000Z", "COUNT and UNTIL cannot both be set"),
        ("DTSTART:2026-01-01\nRRULE:FREQ=DAILY", "is not an RFC 5545 date"),
        ("VEVENT:whatever\nRRULE:FREQ=DAILY", "unsupported line 'VEVENT'"),
        ("DTSTART:20260101T000000Z", "needs an RRULE line"),
    ],
)
def test_malformed_rrule_is_a_clear_error_on_schedule_expr(expr: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("rrule", expr, "UTC")
    assert "schedule_expr" in caught.value.fields
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=HOURLY;INTERVAL=5;BYMINUTE=7",
        "FREQ=DAILY;INTERVAL=3;BYHOUR=9",
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR;BYHOUR=8",
        "FREQ=MONTHLY;INTERVAL=5;BYDAY=-1FR",
        "FREQ=MONTHLY;BYSETPOS=2;BYDAY=TU,TH",
        "FREQ=YEARLY;INTERVAL=3;BYMONTH=2;BYMONTHDAY=29",
        "FREQ=MINUTELY;INTERVAL=7",
        "FREQ=DAILY;UNTIL=20400101T000000",
    ],
)
def test_lookups_years_after_dtstart_match_a_full_walk(rule: str) -> None:
    """Lookups jump DTSTART ahead by whole periods (so old rules stay fast); the occurrences
    must be exactly those of walking the rule from its real DTSTART."""
    from dateutil.rrule import rrulestr

    expr = f"DTSTART:20210105T061500\nRRULE:{rule}"
    after = datetime(2031, 7, 19, 13, 0, tzinfo=UTC)
    fired = _next(expr, after=after, count=6)
    walked = rrulestr(rule, dtstart=datetime(2021, 1, 5, 6, 15)).xafter(datetime(2031, 7, 19, 13, 0), count=6)
    assert [at.replace(tzinfo=None) for at in fired] == list(walked)
