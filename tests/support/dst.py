"""The DST table every schedule path is checked against: the occurrence function (tests/tasks/test_dst.py),
POST /schedules/preview, and beat firing for real (tests/tasks/test_scheduler.py).

2027 transitions: Chisinau springs forward 02:00->03:00 on Mar 28 and falls back 03:00->02:00 on
Oct 31; New York springs forward 02:00->03:00 on Mar 14 and falls back 02:00->01:00 on Nov 7.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

ZONES = {
    # zone: (spring-forward day, fall-back day, an ambiguous local time on the fall-back day)
    "Europe/Chisinau": ("2027-03-28", "2027-10-31", "02:30"),
    "America/New_York": ("2027-03-14", "2027-11-07", "01:30"),
}
KINDS = ("cron", "rrule")
# 09:00 is away from every change; 02:30 is in both spring gaps; 01:30 is New York's repeated hour
# (and 02:30 Chisinau's) on the fall-back day.
TIMES = ("09:00", "02:30", "01:30")


def daily(kind: str, hh_mm: str) -> str:
    hour, minute = (int(x) for x in hh_mm.split(":"))
    if kind == "cron":
        return f"{minute} {hour} * * *"
    return f"DTSTART:20270101T000000\nRRULE:FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute}"


def window_start(zone: str, day: str) -> datetime:
    """Local midnight two days before `day`: the five daily occurrences after it surround the change."""
    return datetime.combine(date.fromisoformat(day) - timedelta(days=2), time(), tzinfo=ZoneInfo(zone))


def expected_local(zone: str, hh_mm: str, day: str) -> list[str]:
    """The five local fire times of a daily `hh_mm` from two days before `day` to two days after, by
    RFC 5545: a time in a spring-forward gap is read with the offset before the gap (02:30 -> 03:30),
    an ambiguous one is its first instant. zoneinfo's fold=0 reading is exactly that."""
    tz = ZoneInfo(zone)
    first = date.fromisoformat(day) - timedelta(days=2)
    wall = time.fromisoformat(hh_mm)
    return [
        datetime.combine(first + timedelta(days=n), wall, tzinfo=tz).astimezone(UTC).astimezone(tz).isoformat()
        for n in range(5)
    ]
