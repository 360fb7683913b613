"""Wall-clock correctness across DST in Europe/Chisinau and America/New_York, for cron and RRULE
(the table and its transitions: tests/support/dst.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tasks.schedules import occurrences, parse_schedule
from tests.support.dst import KINDS, ZONES, daily, window_start


def _local_days(kind: str, zone: str, hh_mm: str, day: str) -> list[str]:
    """Local fire times (with offsets) from two days before `day` to two days after."""
    schedule = parse_schedule(kind, daily(kind, hh_mm), zone)
    assert schedule is not None
    fired = occurrences(schedule, after=window_start(zone, day), count=5)
    return [at.astimezone(ZoneInfo(zone)).isoformat() for at in fired]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zone", list(ZONES))
def test_daily_0900_fires_at_0900_local_before_and_after_both_changes(kind: str, zone: str) -> None:
    spring, fall, _ = ZONES[zone]
    for day in (spring, fall):
        fired = _local_days(kind, zone, "09:00", day)
        assert [f[11:16] for f in fired] == ["09:00"] * 5, fired
        assert len({f[19:] for f in fired}) == 2, "the UTC offset changes under a steady 09:00"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zone", list(ZONES))
def test_0230_on_spring_forward_day_fires_at_0330(kind: str, zone: str) -> None:
    spring, _, _ = ZONES[zone]
    fired = _local_days(kind, zone, "02:30", spring)
    by_day = {f[:10]: f[11:16] for f in fired}
    assert by_day[spring] == "03:30"
    assert [t for d, t in by_day.items() if d != spring] == ["02:30"] * 4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zone", list(ZONES))
def test_ambiguous_time_on_fall_back_day_fires_once_at_its_first_instant(kind: str, zone: str) -> None:
    _, fall, ambiguous = ZONES[zone]
    fired = _local_days(kind, zone, ambiguous, fall)
    on_the_day = [f for f in fired if f.startswith(fall)]
    assert len(on_the_day) == 1
    first_instant = datetime.fromisoformat(f"{fall}T{ambiguous}").replace(tzinfo=ZoneInfo(zone), fold=0)
    assert on_the_day[0] == first_instant.isoformat()
    assert len(fired) == 5
    assert len(set(fired)) == 5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zone", list(ZONES))
def test_0130_daily_on_fall_back_day_fires_once(kind: str, zone: str) -> None:
    _, fall, _ = ZONES[zone]
    fired = _local_days(kind, zone, "01:30", fall)
    assert [f[:10] for f in fired].count(fall) == 1


def test_every_30_minutes_through_new_york_fall_back_skips_the_repeated_hour() -> None:
    schedule = parse_schedule("cron", "*/30 * * * *", "America/New_York")
    assert schedule is not None
    fired = occurrences(schedule, after=datetime(2027, 11, 7, 4, 40, tzinfo=UTC), count=4)
    local = [at.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M%z") for at in fired]
    assert local == ["01:00-0400", "01:30-0400", "02:00-0500", "02:30-0500"]


def test_hourly_rrule_through_chisinau_spring_forward_has_no_duplicates() -> None:
    schedule = parse_schedule("rrule", "DTSTART:20270101T000000\nRRULE:FREQ=HOURLY;BYMINUTE=30", "Europe/Chisinau")
    assert schedule is not None
    fired = occurrences(schedule, after=datetime(2027, 3, 27, 22, 0, tzinfo=UTC), count=4)
    local = [at.astimezone(ZoneInfo("Europe/Chisinau")).strftime("%H:%M%z") for at in fired]
    assert local == ["00:30+0200", "01:30+0200", "03:30+0300", "04:30+0300"]
