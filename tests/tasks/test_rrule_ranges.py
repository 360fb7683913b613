"""RRULE parts outside RFC 5545's ranges are a clear error on schedule_expr, never a dateutil crash."""

from __future__ import annotations

import pytest

from ordinaut_site.errors import ValidationFailed
from tasks.schedules import parse_schedule, schedule_validate

# (rule, the part its error names): each crashed dateutil (TypeError, IndexError, ValueError while
# iterating, ZeroDivisionError) or never returned (BYMONTH=13 walks to year 9999) before.
OUT_OF_RANGE = [
    ("FREQ=SECONDLY;BYSECOND=99", "BYSECOND=99"),
    ("FREQ=SECONDLY;BYSECOND=60", "BYSECOND=60"),
    ("FREQ=MINUTELY;BYSECOND=-1", "BYSECOND=-1"),
    ("FREQ=MINUTELY;BYMINUTE=99", "BYMINUTE=99"),
    ("FREQ=HOURLY;BYHOUR=25", "BYHOUR=25"),
    ("FREQ=HOURLY;BYHOUR=9,24", "BYHOUR=24"),
    ("FREQ=DAILY;BYMONTH=13", "BYMONTH=13"),
    ("FREQ=DAILY;BYMONTH=0", "BYMONTH=0"),
    ("FREQ=DAILY;BYMONTHDAY=32", "BYMONTHDAY=32"),
    ("FREQ=DAILY;BYMONTHDAY=0", "BYMONTHDAY=0"),
    ("FREQ=MONTHLY;BYMONTHDAY=-32", "BYMONTHDAY=-32"),
    ("FREQ=YEARLY;BYYEARDAY=367", "BYYEARDAY=367"),
    ("FREQ=YEARLY;BYWEEKNO=54", "BYWEEKNO=54"),
    ("FREQ=YEARLY;BYWEEKNO=0", "BYWEEKNO=0"),
    ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=0", "BYSETPOS=0"),
    ("FREQ=MONTHLY;BYDAY=+60FR", "BYDAY=+60FR"),
    ("FREQ=MONTHLY;BYDAY=6FR", "BYDAY=6FR"),
    ("FREQ=MONTHLY;BYDAY=0MO", "BYDAY=0MO"),
    ("FREQ=YEARLY;BYDAY=54MO", "BYDAY=54MO"),
    ("FREQ=WEEKLY;BYDAY=XX", "BYDAY=XX"),
    ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0"),
    ("FREQ=DAILY;INTERVAL=-1", "INTERVAL=-1"),
    ("FREQ=DAILY;COUNT=0", "COUNT=0"),
    ("FREQ=DAILY;BYHOUR=99999999999999999999", "BYHOUR=99999999999999999999"),
    ("FREQ=DAILY;BYHOUR=nine", "BYHOUR=NINE"),
]


@pytest.mark.parametrize(("rule", "named"), OUT_OF_RANGE)
def test_an_out_of_range_part_is_an_error_naming_it(rule: str, named: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("rrule", rule, "UTC")
    assert list(caught.value.fields) == ["schedule_expr"]
    assert named in caught.value.message


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=MINUTELY;BYSECOND=0,59",
        "FREQ=DAILY;BYHOUR=0,23;BYMINUTE=0,59",
        "FREQ=MONTHLY;BYMONTHDAY=1,31,-1,-31",
        "FREQ=YEARLY;BYYEARDAY=1,366,-366",
        "FREQ=YEARLY;BYWEEKNO=1,53,-53",
        "FREQ=YEARLY;BYMONTH=1,12",
        "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=1,-1",
        "FREQ=MONTHLY;BYDAY=+5FR,-5MO,1TU",
        "FREQ=YEARLY;BYDAY=+53MO,-53SU",
        "DTSTART:20990101T000000Z\nRRULE:FREQ=DAILY;INTERVAL=1;COUNT=1",
    ],
)
def test_the_ends_of_each_range_are_accepted(rule: str) -> None:
    assert schedule_validate(kind="rrule", expr=rule, tz="UTC")


def test_a_rule_dateutil_cannot_parse_is_an_error_on_schedule_expr() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("rrule", "FREQ=DAILY;WKST=XX", "UTC")
    assert list(caught.value.fields) == ["schedule_expr"]
    assert "WKST" in caught.value.message


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=HOURLY;BYYEARDAY=1;BYMONTH=3",
        "FREQ=MINUTELY;BYMONTH=4,6,9,11;BYMONTHDAY=31",
    ],
)
def test_day_filters_no_day_satisfies_are_refused_at_once(rule: str) -> None:
    # Before, dateutil walked these to year 9999 (5 to 11 s a request) before finding nothing.
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("rrule", rule, "UTC")
    assert list(caught.value.fields) == ["schedule_expr"]
    assert "never occurs" in caught.value.message


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29",  # leap years only
        "FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",  # a Monday Feb 29: years apart
        "FREQ=DAILY;BYWEEKNO=53;BYDAY=TH",
        "FREQ=MINUTELY;BYYEARDAY=366;BYDAY=SU",
    ],
)
def test_rare_but_possible_days_are_accepted(rule: str) -> None:
    assert schedule_validate(kind="rrule", expr=rule, tz="UTC")
