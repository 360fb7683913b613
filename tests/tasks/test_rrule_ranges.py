"""RRULE parts outside RFC 5545's ranges are a clear error on schedule_expr, never a dateutil crash."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule as du

from ordinaut_site.errors import ValidationFailed
from tasks.rrules import _rule_params, daily_equivalent, parse_rrule
from tasks.schedules import occurrences, parse_schedule, schedule_validate

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


# --- Rare rules below DAILY, and BYSETPOS nothing can reach ----------------------------------------


def _first(rule: str, count: int, after: datetime) -> list[datetime]:
    schedule = parse_schedule("rrule", rule, "UTC", now=after)
    assert schedule is not None
    return occurrences(schedule, after=after, count=count)


def test_a_second_by_second_rule_on_rare_days_is_walked_a_day_at_a_time() -> None:
    # Before: dateutil examined every second between two Feb 29ths, 8-14 s a preview.
    rule = "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=29;BYHOUR=23;BYMINUTE=59;BYSECOND=59"
    spec = parse_rrule(rule, ZoneInfo("UTC"), datetime(2026, 12, 3))
    assert spec.rules[0][0]._freq == du.DAILY  # type: ignore[attr-defined]  # the rule dateutil walks
    assert spec.params[0]["FREQ"] == "SECONDLY", "the rule as written is kept (description, storage)"

    found = _first(rule, 3, datetime(2026, 12, 3, tzinfo=UTC))

    assert found == [datetime(year, 2, 29, 23, 59, 59, tzinfo=UTC) for year in (2028, 2032, 2036)]


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=HOURLY;BYDAY=MO,TH;BYMINUTE=15",
        "FREQ=MINUTELY;BYMONTHDAY=1,15;BYHOUR=9,17;BYSECOND=30",
        "FREQ=SECONDLY;BYDAY=SU;BYHOUR=3;BYMINUTE=0,30",
        "FREQ=HOURLY;BYMONTH=1;BYMONTHDAY=1",
        "FREQ=MINUTELY;BYYEARDAY=-1;BYHOUR=23",
        "FREQ=HOURLY;BYDAY=FR;COUNT=30",
        "FREQ=MINUTELY;BYDAY=SA;BYHOUR=6;UNTIL=20270601T000000Z",
    ],
)
def test_the_daily_form_has_exactly_the_same_occurrences(rule: str) -> None:
    start = datetime(2026, 12, 3, 10, 7, 42)
    params = _rule_params(rule)
    daily = daily_equivalent(params)
    assert daily is not None
    as_daily = ";".join(f"{part}={value}" for part, value in daily.items())

    written = list(du.rrulestr(rule.replace("Z", ""), dtstart=start, ignoretz=True).xafter(start, count=200))
    rewritten = list(du.rrulestr(as_daily.replace("Z", ""), dtstart=start, ignoretz=True).xafter(start, count=200))

    assert written == rewritten
    assert len(written) >= 30


@pytest.mark.parametrize(
    "params",
    [
        {"FREQ": "HOURLY", "INTERVAL": "2", "BYDAY": "MO"},  # the interval counts hours: not a daily set
        {"FREQ": "MINUTELY", "BYDAY": "MO", "BYSETPOS": "1"},  # BYSETPOS picks per minute
        {"FREQ": "SECONDLY", "BYHOUR": "9"},  # no day filter: nothing to gain
        {"FREQ": "DAILY", "BYMONTHDAY": "1"},
    ],
)
def test_rules_without_a_daily_form_are_left_alone(params: dict[str, str]) -> None:
    assert daily_equivalent(params) is None


@pytest.mark.parametrize(
    "rule",
    ["FREQ=DAILY;BYSETPOS=366;BYHOUR=1", "FREQ=HOURLY;BYMINUTE=0,30;BYSETPOS=3", "FREQ=WEEKLY;BYSETPOS=-8"],
)
def test_a_bysetpos_no_period_can_reach_is_refused_at_once(rule: str) -> None:
    # Before: FREQ=DAILY;BYSETPOS=366;BYHOUR=1 took 5 s before its 400.
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule("rrule", rule, "UTC")
    assert "never occurs" in caught.value.message
    assert "BYSETPOS" in caught.value.message


def test_a_bysetpos_a_period_can_reach_is_kept() -> None:
    assert _first("FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", 2, datetime(2026, 12, 3, tzinfo=UTC)) == [
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 29, tzinfo=UTC),
    ]
