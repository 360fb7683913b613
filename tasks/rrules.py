"""RFC 5545 recurrence rules: parsing (DTSTART, RRULE, RDATE, EXDATE lines) into local wall-clock
candidates with python-dateutil, and a human description.

Rules are evaluated on naive local wall-clock times in the task's timezone (so 09:00 stays 09:00
across DST changes); tasks/schedules.py maps each local time to an instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from dateutil import rrule as du
from dateutil.relativedelta import relativedelta

MAX_LINES = 20
_DATE_TIME = re.compile(r"^(\d{8})(T(\d{6})(Z?))?$")
_UNTIL = re.compile(r"UNTIL=([0-9TZ]+)", re.IGNORECASE)
FREQ_UNITS = {
    "YEARLY": "year",
    "MONTHLY": "month",
    "WEEKLY": "week",
    "DAILY": "day",
    "HOURLY": "hour",
    "MINUTELY": "minute",
    "SECONDLY": "second",
}
DAY_NAMES = {
    "MO": "Monday",
    "TU": "Tuesday",
    "WE": "Wednesday",
    "TH": "Thursday",
    "FR": "Friday",
    "SA": "Saturday",
    "SU": "Sunday",
}
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last", -2: "second to last"}
MONTHS = [
    "",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


class RRuleError(ValueError):
    """A recurrence rule is malformed or names a different timezone."""


FIXED_PERIODS = {"SECONDLY": 1, "MINUTELY": 60, "HOURLY": 3600, "DAILY": 86400, "WEEKLY": 604800}

# RFC 5545 ranges of the numeric rule parts: (lowest, highest, negative values allowed).
# dateutil does not check most of them: out of range it raises TypeError or IndexError while
# iterating, or loops until year 9999 (BYMONTH=13), so they are refused before it sees them.
# BYSECOND stops at 59: dateutil cannot produce the leap second RFC 5545 allows.
PART_RANGES = {
    "BYSECOND": (0, 59, False),
    "BYMINUTE": (0, 59, False),
    "BYHOUR": (0, 23, False),
    "BYMONTHDAY": (1, 31, True),
    "BYYEARDAY": (1, 366, True),
    "BYWEEKNO": (1, 53, True),
    "BYMONTH": (1, 12, False),
    "BYSETPOS": (1, 366, True),
}
# BYDAY ordinals (+2MO): weeks of the year, or of the month with FREQ=MONTHLY.
BYDAY_ORDINAL_MAX = 53
BYDAY_ORDINAL_MAX_MONTHLY = 5
_BYDAY = re.compile(r"^([+-]?\d{1,3})?([A-Z]{2})$")
_INTEGER = re.compile(r"^[+-]?\d{1,9}$")


def _integer(rule: str, part: str, text: str) -> int:
    if not _INTEGER.match(text):
        raise RRuleError(f"rule {rule!r}: {part}={text} is not a whole number (of at most 9 digits)")
    return int(text)


def _check_ranges(rule: str, params: dict[str, str]) -> None:
    """Refuse numeric rule parts outside RFC 5545's ranges, naming the part and the range."""
    for part in ("INTERVAL", "COUNT"):
        if part in params and _integer(rule, part, params[part]) < 1:
            raise RRuleError(f"rule {rule!r}: {part}={params[part]} must be 1 or more")
    for part, (low, high, signed) in PART_RANGES.items():
        for text in params[part].split(",") if part in params else []:
            value = _integer(rule, part, text)
            if not (low <= value <= high or (signed and -high <= value <= -low)):
                allowed = f"{low}..{high}" + (f" or -{high}..-{low}" if signed else "")
                raise RRuleError(f"rule {rule!r}: {part}={text} is out of range ({allowed})")
    highest = BYDAY_ORDINAL_MAX_MONTHLY if params["FREQ"] == "MONTHLY" else BYDAY_ORDINAL_MAX
    for text in params["BYDAY"].split(",") if "BYDAY" in params else []:
        match = _BYDAY.match(text)
        if not match or match.group(2) not in DAY_NAMES:
            raise RRuleError(f"rule {rule!r}: BYDAY={text} is not a weekday (MO..SU), optionally numbered (+1MO, -1FR)")
        if match.group(1) is not None and not 1 <= abs(int(match.group(1))) <= highest:
            within = "the month" if highest == BYDAY_ORDINAL_MAX_MONTHLY else "the year"
            raise RRuleError(
                f"rule {rule!r}: BYDAY={text} is out of range (1..{highest} or -{highest}..-1 weeks of {within})"
            )


# Day filters that can contradict each other (BYMONTH=2;BYMONTHDAY=30). Below MONTHLY, dateutil
# walks such a rule day by day (or second by second) to year 9999 before saying it never occurs:
# 5 to 11 seconds a lookup. The same filters at FREQ=YEARLY are checked a year at a time.
_DAY_FILTERS = ("BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO")
_DAY_PARTS = (*_DAY_FILTERS, "BYDAY", "WKST")


def _check_some_day_matches(rule: str, params: dict[str, str], start: datetime) -> None:
    """A rule below MONTHLY whose day filters no calendar day satisfies is refused (the
    Gregorian calendar repeats every 400 years, so a year-by-year walk settles it)."""
    if params["FREQ"] not in FIXED_PERIODS or params["FREQ"] == "WEEKLY":
        return
    if not any(part in params for part in _DAY_FILTERS):
        return
    days = {part: params[part] for part in _DAY_PARTS if part in params}
    if "BYDAY" in days:  # no ordinals below MONTHLY: the weekday alone filters
        days["BYDAY"] = ",".join(re.sub(r"^[+-]?\d+", "", day) for day in days["BYDAY"].split(","))
    yearly = "FREQ=YEARLY;" + ";".join(f"{part}={value}" for part, value in days.items())
    try:
        first = du.rrulestr(yearly, dtstart=start.replace(month=1, day=1), ignoretz=True).after(start, inc=True)
    except Exception:  # the rule itself parsed; leave anything stranger to it
        return
    if first is None:
        named = ";".join(f"{part}={params[part]}" for part in _DAY_FILTERS if part in params)
        raise RRuleError(f"rule {rule!r} never occurs: no calendar day matches {named}")


# Instances one period of each frequency can hold at most, before the BYHOUR/BYMINUTE/BYSECOND
# expansion: a BYSETPOS beyond what a period can hold never matches (dateutil would walk to 9999).
_DAYS_PER_PERIOD = {"YEARLY": 366, "MONTHLY": 31, "WEEKLY": 7, "DAILY": 1, "HOURLY": 1, "MINUTELY": 1, "SECONDLY": 1}
_TIME_PARTS_EXPANDED = {
    "YEARLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "MONTHLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "WEEKLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "DAILY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "HOURLY": ("BYMINUTE", "BYSECOND"),
    "MINUTELY": ("BYSECOND",),
    "SECONDLY": (),
}


def _check_setpos_can_match(rule: str, params: dict[str, str]) -> None:
    """BYSETPOS picks the n-th instance of each period: a rule whose every BYSETPOS is beyond the
    most instances a period can hold never occurs, and is refused at once."""
    if "BYSETPOS" not in params:
        return
    freq = params["FREQ"]
    most = _DAYS_PER_PERIOD[freq]
    for part in _TIME_PARTS_EXPANDED[freq]:
        most *= len(params[part].split(",")) if part in params else 1
    positions = [abs(int(text)) for text in params["BYSETPOS"].split(",")]
    if min(positions) > most:
        raise RRuleError(
            f"rule {rule!r} never occurs: a FREQ={freq} period holds at most {most} instance(s), "
            f"so BYSETPOS={params['BYSETPOS']} picks none"
        )


# Below DAILY, dateutil advances one second (minute, hour) at a time and tests the day filters on
# each: FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=29;... examined tens of millions of seconds a lookup
# (8-14 s). With INTERVAL=1 and no BYSETPOS, such a rule is the same set as FREQ=DAILY with the
# time parts it expands made explicit (all of them where the rule leaves one free), which dateutil
# walks a day at a time.
_SUB_DAILY_FREE = {
    "SECONDLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "MINUTELY": ("BYHOUR", "BYMINUTE"),
    "HOURLY": ("BYHOUR",),
}
_TIME_RANGE = {"BYHOUR": 24, "BYMINUTE": 60, "BYSECOND": 60}


def daily_equivalent(params: dict[str, str]) -> dict[str, str] | None:
    """The FREQ=DAILY rule with the same occurrences as a sub-daily rule with day filters, or None
    when there is no such rule (INTERVAL above 1, BYSETPOS) or nothing to gain (no day filter)."""
    freq = params["FREQ"]
    if freq not in _SUB_DAILY_FREE or int(params.get("INTERVAL", "1") or 1) != 1 or "BYSETPOS" in params:
        return None
    if not any(part in params for part in (*_DAY_FILTERS, "BYDAY")):
        return None
    daily = {**params, "FREQ": "DAILY"}
    daily.pop("INTERVAL", None)
    for part in _SUB_DAILY_FREE[freq]:
        daily.setdefault(part, ",".join(str(value) for value in range(_TIME_RANGE[part])))
    return daily


def _anchored(rule: du.rrule, params: dict[str, str], dtstart: datetime, start: datetime) -> du.rrule:
    """The same rule with DTSTART moved forward by whole periods to just before `start`.

    dateutil iterates from DTSTART, so a year-old hourly rule would walk 8,760 occurrences for
    every lookup. Moving DTSTART by whole periods (INTERVAL x FREQ) keeps every occurrence from
    there on, and what DTSTART supplies as defaults (time of day, weekday, day of month). Rules
    with COUNT count from their real DTSTART and are left alone; so are month/year rules whose
    DTSTART falls on a day some months lack."""
    if "COUNT" in params or start <= dtstart:
        return rule
    interval = int(params.get("INTERVAL", "1") or 1)
    freq = params["FREQ"]
    if freq in FIXED_PERIODS:
        period = timedelta(seconds=FIXED_PERIODS[freq] * interval)
        periods = (start - dtstart) // period - 1
        return rule.replace(dtstart=dtstart + periods * period) if periods > 0 else rule
    months = (start.year - dtstart.year) * 12 + (start.month - dtstart.month)
    step = interval * (12 if freq == "YEARLY" else 1)
    periods = months // step - 1
    if periods <= 0 or dtstart.day > 28:
        return rule
    return rule.replace(dtstart=dtstart + relativedelta(months=periods * step))


@dataclass
class RRuleSpec:
    rules: list[tuple[du.rrule, dict[str, str]]]
    rdates: list[datetime]
    exdates: list[datetime]
    dtstart: datetime  # naive local
    has_dtstart: bool

    @property
    def params(self) -> list[dict[str, str]]:
        return [params for _, params in self.rules]

    def local_candidates(self, start: datetime) -> Iterator[datetime]:
        """Naive local times of the rule from `start` (inclusive), in order."""
        ruleset = du.rruleset()
        for rule, params in self.rules:
            ruleset.rrule(_anchored(rule, params, self.dtstart, start))
        for added in self.rdates:
            ruleset.rdate(added)
        for removed in self.exdates:
            ruleset.exdate(removed)
        return ruleset.xafter(start, inc=True)


def _parse_value(value: str, params: dict[str, str], tz: ZoneInfo, what: str) -> datetime:
    """An RFC 5545 DATE or DATE-TIME -> naive local time in tz."""
    match = _DATE_TIME.match(value.strip())
    if not match:
        raise RRuleError(f"{what}: {value!r} is not an RFC 5545 date or date-time (YYYYMMDD[THHMMSS[Z]])")
    day, _, clock, utc = match.groups()
    try:
        parsed = datetime.strptime(day + (clock or "000000"), "%Y%m%d%H%M%S")
    except ValueError:
        raise RRuleError(f"{what}: {value!r} is not a valid date") from None
    source: tzinfo | None = UTC if utc else None
    named = params.get("TZID")
    if not utc and named and named != tz.key:
        try:
            source = ZoneInfo(named)
        except (ValueError, KeyError, OSError):
            raise RRuleError(f"{what}: unknown TZID {named!r}") from None
    if source is None:
        return parsed
    try:
        return parsed.replace(tzinfo=source).astimezone(tz).replace(tzinfo=None)
    except OverflowError:  # e.g. 99991231T230000Z seen from a zone east of UTC: past year 9999
        raise RRuleError(f"{what}: {value!r} is outside the calendar in {tz.key}") from None


def _split(line: str) -> tuple[str, dict[str, str], str]:
    head, _, value = line.partition(":")
    name, *raw_params = head.split(";")
    params = {}
    for raw in raw_params:
        key, _, val = raw.partition("=")
        params[key.strip().upper()] = val.strip()
    return name.strip().upper(), params, value.strip()


def _until_to_local(rule: str, tz: ZoneInfo) -> str:
    """UNTIL in UTC (Z) -> local floating time, as dateutil wants for a floating DTSTART."""

    def convert(match: re.Match[str]) -> str:
        text = match.group(1).upper()
        if text.endswith("Z"):
            local = _parse_value(text, {}, tz, "UNTIL")
            return f"UNTIL={local:%Y%m%dT%H%M%S}"
        return match.group(0)

    return _UNTIL.sub(convert, rule)


def _rule_params(rule: str) -> dict[str, str]:
    params = {}
    for part in rule.split(";"):
        if part.strip():
            key, _, value = part.partition("=")
            params[key.strip().upper()] = value.strip().upper()
    return params


def parse_rrule(expr: str, tz: ZoneInfo, default_dtstart: datetime) -> RRuleSpec:
    lines = [line.strip() for line in re.split(r"[\r\n]+", expr.strip()) if line.strip()]
    if not lines:
        raise RRuleError("is empty")
    if len(lines) > MAX_LINES:
        raise RRuleError(f"has more than {MAX_LINES} lines")
    dtstart: datetime | None = None
    rules: list[str] = []
    rdates: list[datetime] = []
    exdates: list[datetime] = []
    for line in lines:
        if ":" not in line or line.upper().startswith("FREQ="):
            rules.append(line)
            continue
        name, params, value = _split(line)
        if name == "DTSTART":
            dtstart = _parse_value(value, params, tz, "DTSTART")
        elif name == "RRULE":
            rules.append(value)
        elif name in ("RDATE", "EXDATE"):
            target = rdates if name == "RDATE" else exdates
            target.extend(_parse_value(v, params, tz, name) for v in value.split(",") if v.strip())
        else:
            raise RRuleError(f"unsupported line {name!r}; use DTSTART, RRULE, RDATE or EXDATE")
    if not rules and not rdates:
        raise RRuleError("needs an RRULE line (e.g. FREQ=DAILY;BYHOUR=9;BYMINUTE=0) or RDATE")
    start = (dtstart or default_dtstart).replace(microsecond=0)
    parsed_rules: list[tuple[du.rrule, dict[str, str]]] = []
    for rule in rules:
        params = _rule_params(rule)
        if "FREQ" not in params:
            raise RRuleError(f"rule {rule!r} has no FREQ")
        if params["FREQ"] not in FREQ_UNITS:
            raise RRuleError(f"FREQ={params['FREQ']} is not one of {', '.join(FREQ_UNITS)}")
        if "COUNT" in params and "UNTIL" in params:
            raise RRuleError("COUNT and UNTIL cannot both be set (RFC 5545)")
        _check_ranges(rule, params)
        _check_setpos_can_match(rule, params)
        evaluated = rule
        daily = daily_equivalent(params)
        if daily is not None:
            evaluated = ";".join(f"{part}={value}" for part, value in daily.items())
        try:
            parsed = du.rrulestr(_until_to_local(evaluated, tz), dtstart=start, ignoretz=True)
        except RRuleError:
            raise
        except Exception as exc:  # dateutil's parser raises ValueError, TypeError, OverflowError, ...
            raise RRuleError(f"rule {rule!r}: {exc}") from None
        assert isinstance(parsed, du.rrule)  # one RRULE value parses to one rule
        _check_some_day_matches(rule, params, start)
        parsed_rules.append((parsed, params))
    return RRuleSpec(rules=parsed_rules, rdates=rdates, exdates=exdates, dtstart=start, has_dtstart=dtstart is not None)


def with_dtstart(expr: str, spec: RRuleSpec, tz: ZoneInfo) -> str:
    """The expression with an explicit DTSTART line, so later evaluations never depend on 'now'."""
    if spec.has_dtstart:
        return expr.strip()
    body = [line.strip() for line in re.split(r"[\r\n]+", expr.strip()) if line.strip()]
    rules = [line if ":" in line and not line.upper().startswith("FREQ=") else f"RRULE:{line}" for line in body]
    return "\n".join([f"DTSTART;TZID={tz.key}:{spec.dtstart:%Y%m%dT%H%M%S}", *rules])


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _byday_words(byday: str) -> str:
    days = [d.strip() for d in byday.split(",") if d.strip()]
    plain = [d for d in days if d in DAY_NAMES]
    if sorted(plain) == sorted(["MO", "TU", "WE", "TH", "FR"]) and len(days) == 5:
        return "every weekday (Monday to Friday)"
    if sorted(plain) == sorted(["SA", "SU"]) and len(days) == 2:
        return "on weekends"
    words = []
    for day in days:
        match = re.match(r"^([+-]?\d+)?([A-Z]{2})$", day)
        if not match or match.group(2) not in DAY_NAMES:
            words.append(day)
            continue
        nth, name = match.groups()
        if nth:
            words.append(f"the {ORDINALS.get(int(nth), nth + 'th')} {DAY_NAMES[name]}")
        else:
            words.append(DAY_NAMES[name])
    return "on " + _join(words)


def describe_rrule(spec: RRuleSpec) -> str:
    """An English sentence for the rule, in the spirit of cron-descriptor."""
    sentences = []
    for params in spec.params:
        unit = FREQ_UNITS[params["FREQ"]]
        interval = int(params.get("INTERVAL", "1") or 1)
        parts = [f"Every {unit}" if interval == 1 else f"Every {interval} {unit}s"]
        if "BYDAY" in params:
            days = _byday_words(params["BYDAY"])
            parts = [days[0].upper() + days[1:]] if days.startswith("every") and interval == 1 else [*parts, days]
        if "BYMONTHDAY" in params:
            values = [v for v in params["BYMONTHDAY"].split(",") if v]
            words = ["the last day" if v == "-1" else f"day {v}" for v in values]
            parts.append("on " + _join(words) + " of the month")
        if "BYMONTH" in params:
            months = [MONTHS[int(v)] for v in params["BYMONTH"].split(",") if v.isdigit() and 1 <= int(v) <= 12]
            parts.append("in " + _join(months))
        if "BYSETPOS" in params:
            parts.append(f"(position {params['BYSETPOS']} in each period)")
        hours = [int(h) for h in params.get("BYHOUR", "").split(",") if h.isdigit()]
        minutes = [int(m) for m in params.get("BYMINUTE", "").split(",") if m.isdigit()]
        if hours:
            minutes = minutes or [spec.dtstart.minute]
            times = [f"{h:02d}:{m:02d}" for h in sorted(hours) for m in sorted(minutes)]
            parts.append("at " + _join(times))
        elif minutes:
            parts.append("at minute " + _join([str(m) for m in sorted(minutes)]))
        elif unit in ("day", "week", "month", "year"):
            parts.append(f"at {spec.dtstart:%H:%M}")
        if "COUNT" in params:
            parts.append(f"{params['COUNT']} times in all")
        if "UNTIL" in params:
            parts.append(f"until {params['UNTIL']}")
        sentences.append(", ".join([parts[0], *parts[1:]]) if len(parts) > 1 else parts[0])
    text = "; ".join(sentences) if sentences else "On the listed dates"
    return f"{text}, starting {spec.dtstart:%Y-%m-%d %H:%M}"


def dtstart_default(now_local: datetime) -> datetime:
    """DTSTART when a rule gives none: local midnight of the day the schedule is set, so that
    FREQ=DAILY alone means 00:00 and the seconds of 'now' never leak into occurrences."""
    return datetime(now_local.year, now_local.month, now_local.day)
