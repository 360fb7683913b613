"""Five-field POSIX cron: parsing (names, ranges, steps, lists, @macros) and local wall-clock candidates.

Semantics follow Vixie cron: day-of-week 0 and 7 are Sunday; when both day-of-month and day-of-week
are restricted (neither field starts with `*`), a day matches if EITHER matches.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

# (name, low, high) per field, in expression order.
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
MONTH_NAMES = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
DOW_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Feb 29 on a given weekday can be 28 years apart; no valid expression needs more.
MAX_SEARCH_DAYS = 366 * 29


class CronError(ValueError):
    """A cron expression is malformed; the message names the field."""


@dataclass(frozen=True)
class CronSpec:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    dom_star: bool
    dow_star: bool
    normalized: str  # numeric form, dow 7 folded into 0; parse_cron(normalized) == this spec

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.days
        dow_ok = day.isoweekday() % 7 in self.weekdays
        # Vixie cron: a field starting with "*" (even "*/2") does not trigger the OR rule; then
        # both day sets must match. When both fields are restricted, either may match.
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def local_candidates(self, start: datetime) -> Iterator[datetime]:
        """Naive local wall-clock times matching the spec, from `start` (inclusive), in order."""
        day = start.date()
        first = True
        for _ in range(MAX_SEARCH_DAYS):
            if day.month not in self.months:
                day = _first_of_next_month(day)
                first = False
                continue
            if self.day_matches(day):
                for hour in self.hours:
                    if first and hour < start.hour:
                        continue
                    for minute in self.minutes:
                        candidate = datetime(day.year, day.month, day.day, hour, minute)
                        if candidate >= start:
                            yield candidate
            first = False
            day += timedelta(days=1)


def _first_of_next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def _value(token: str, index: int) -> int:
    name, low, high = FIELDS[index]
    upper = token.upper()
    if index == 3 and upper in MONTH_NAMES:
        return MONTH_NAMES[upper]
    if index == 4 and upper in DOW_NAMES:
        return DOW_NAMES[upper]
    if not token.isdigit():
        raise CronError(f"{name} field: {token!r} is not a number" + (" or a name" if index >= 3 else ""))
    value = int(token)
    if not low <= value <= high:
        raise CronError(f"{name} field: {value} is out of range {low}-{high}")
    return value


def _parse_field(text: str, index: int) -> set[int]:
    name, low, high = FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{name} field: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name} field: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first, last = _value(first_text, index), _value(last_text, index)
            if first > last:
                raise CronError(f"{name} field: range {base!r} runs backwards")
        else:
            first = _value(base, index)
            last = high if slash else first  # Vixie: "5/15" means 5-max/15
        values.update(range(first, last + 1, step))
    return values


def parse_cron(expr: str) -> CronSpec:
    text = " ".join(expr.split())
    text = MACROS.get(text.lower(), text)
    if text.startswith("@"):
        raise CronError(f"unknown macro {text!r}; known: {', '.join(MACROS)}")
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}: {expr!r}")
    minutes, hours, days, months, weekdays = (_parse_field(part, i) for i, part in enumerate(parts))
    weekdays = {day % 7 for day in weekdays}  # 7 is Sunday too
    # A field starting with "*" ("*", "*/2") is kept as written: it is numeric already, and the
    # star matters (the day-of-month/day-of-week OR rule), so parsing `normalized` gives this spec.
    normalized = " ".join(
        part if part.startswith("*") else ",".join(str(v) for v in sorted(values))
        for part, values in zip(parts, (minutes, hours, days, months, weekdays), strict=True)
    )
    return CronSpec(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        dom_star=parts[2].startswith("*"),
        dow_star=parts[4].startswith("*"),
        normalized=normalized,
    )
