"""Schedules of every kind behind one interface: validation, the next occurrence after an instant,
and a human description. Preview, next_runs and beat all call `next_after`, so they cannot disagree.

Wall-clock rules (RFC 5545 section 3.3.5): cron and RRULE occurrences are
computed as local times in the task's timezone; a local time inside a spring-forward gap is read
with the UTC offset in force before the gap (02:30 -> 03:30 new time); an ambiguous local time
(fall-back) fires once, at its first instant. zoneinfo's fold=0 gives exactly these readings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cron_descriptor import ExpressionDescriptor, FormatException, MissingFieldException, Options
from django.db import models

from ordinaut_site.errors import ValidationFailed

from .cron import CronError, CronSpec, parse_cron
from .rrules import RRuleError, RRuleSpec, describe_rrule, dtstart_default, parse_rrule, with_dtstart
from .topics import TOPIC_GLOB


class ScheduleKind(models.TextChoices):
    """Task.Kind: defined here, below the model, so that schedules never import the model."""

    CRON = "cron"
    RRULE = "rrule"
    ONCE = "once"
    INTERVAL = "interval"
    EVENT = "event"
    MANUAL = "manual"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# DST shifts are at most a couple of hours; near a transition, scan this far around a candidate
# because the local -> UTC mapping is not monotonic there.
TRANSITION_MARGIN = timedelta(hours=3)
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 366 * 86400
PREVIEW_MAX = 100
# Instants a schedule may produce or be asked about: a day inside Python's calendar, so that any
# UTC offset (all are under 24 h) still gives a representable local time. Beyond: no occurrence.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
SUPPORTED_RANGE = f"{EARLIEST.date().isoformat()} to {LATEST.date().isoformat()} UTC"
_DURATION = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE)
SCHEDULED_KINDS = (ScheduleKind.CRON, ScheduleKind.RRULE, ScheduleKind.ONCE, ScheduleKind.INTERVAL)

_ZONES: frozenset[str] | None = None


class Schedule(Protocol):
    kind: str
    tz: ZoneInfo

    def next_after(self, after: datetime) -> datetime | None:
        """The first occurrence strictly after `after` (aware), as an aware UTC datetime."""

    def describe(self) -> str: ...


def timezone_validate(name: str) -> ZoneInfo:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    if not isinstance(name, str) or name not in _ZONES:
        raise ValidationFailed.on("timezone", f"{name!r} is not an IANA timezone name (e.g. Europe/Chisinau)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed.on("timezone", f"{name!r} is not an IANA timezone name") from None


def _to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a gap time takes the pre-transition offset, an ambiguous time its first instant.
    return local.replace(tzinfo=tz).astimezone(UTC)


def _representable(instant: datetime | None) -> datetime | None:
    return instant if instant is not None and EARLIEST <= instant <= LATEST else None


def _near_transition(local: datetime, tz: ZoneInfo) -> bool:
    before = (local - TRANSITION_MARGIN).replace(tzinfo=tz).utcoffset()
    after = (local + TRANSITION_MARGIN).replace(tzinfo=tz).utcoffset()
    return before != after


@dataclass
class WallClockSchedule:
    """Cron and RRULE: local wall-clock candidates mapped to instants by the DST rules."""

    kind: str
    tz: ZoneInfo
    candidates: Callable[[datetime], Iterator[datetime]]
    describer: Callable[[], str]  # lazy: beat and the fire job never need the sentence

    def next_after(self, after: datetime) -> datetime | None:
        try:
            return _representable(self._next_after(after))
        except OverflowError:  # the rule runs off the calendar (year 9999): no further occurrence
            return None

    def _next_after(self, after: datetime) -> datetime | None:
        after_local = after.astimezone(self.tz).replace(tzinfo=None)
        near = _near_transition(after_local, self.tz)
        start = after_local - TRANSITION_MARGIN if near else after_local.replace(microsecond=0)
        best: datetime | None = None
        best_local: datetime | None = None
        for local in self.candidates(start):
            if best_local is not None and local > best_local + TRANSITION_MARGIN:
                break
            instant = _to_utc(local, self.tz)
            if instant <= after or (best is not None and instant >= best):
                continue
            best, best_local = instant, local
            if not _near_transition(local, self.tz):
                break  # away from transitions the mapping is monotonic: the first is the earliest
        return best

    def describe(self) -> str:
        return f"{self.describer()} ({self.tz.key})"


@dataclass
class IntervalSchedule:
    """Every N seconds on a grid anchored at the Unix epoch, so no seconds of 'now' leak in."""

    seconds: int
    tz: ZoneInfo
    kind: str = ScheduleKind.INTERVAL

    def next_after(self, after: datetime) -> datetime | None:
        elapsed = (after - EPOCH).total_seconds()
        steps = int(elapsed // self.seconds) + 1
        try:
            return _representable(EPOCH + timedelta(seconds=steps * self.seconds))
        except OverflowError:
            return None

    def describe(self) -> str:
        return f"Every {_duration_words(self.seconds)}"


@dataclass
class OnceSchedule:
    at: datetime  # aware UTC
    tz: ZoneInfo
    kind: str = ScheduleKind.ONCE

    def next_after(self, after: datetime) -> datetime | None:
        return self.at if self.at > after else None

    def describe(self) -> str:
        return f"Once, at {self.at.astimezone(self.tz).isoformat()} ({self.tz.key})"


def _duration_words(seconds: int) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}" if count != 1 else unit
    return f"{seconds} seconds" if seconds != 1 else "second"


def interval_seconds(expr: str) -> int:
    text = expr.strip()
    if re.fullmatch(r"\d+", text):
        seconds = int(text)
    else:
        match = _DURATION.match(text)
        if not match or text.upper() in ("P", "PT"):
            raise ValidationFailed.on(
                "schedule_expr", f"{expr!r} is not a number of seconds or an ISO 8601 duration like PT15M or P1D"
            )
        weeks, days, hours, minutes, secs = match.groups()
        total = (
            int(weeks or 0) * 604800
            + int(days or 0) * 86400
            + int(hours or 0) * 3600
            + int(minutes or 0) * 60
            + float(secs or 0)
        )
        if total != int(total):
            raise ValidationFailed.on("schedule_expr", "an interval must be a whole number of seconds")
        seconds = int(total)
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ValidationFailed.on("schedule_expr", f"interval must be {MIN_INTERVAL_S}..{MAX_INTERVAL_S} seconds")
    return seconds


def once_instant(expr: str, tz: ZoneInfo) -> datetime:
    text = expr.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValidationFailed.on(
            "schedule_expr", f"{expr!r} is not an ISO 8601 timestamp (e.g. 2026-12-01T09:00:00+02:00)"
        ) from None
    try:
        # Naive means the task's timezone.
        instant = _to_utc(parsed, tz) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        instant = None
    if _representable(instant) is None:
        raise ValidationFailed.on("schedule_expr", f"{expr!r} is outside the supported range ({SUPPORTED_RANGE})")
    assert instant is not None
    return instant


def _describe_cron(expr: str, spec: CronSpec) -> str:
    options = Options()
    options.use_24hour_time_format = True
    try:
        text = str(ExpressionDescriptor(expr, options).get_description())
    except (FormatException, MissingFieldException, Exception):  # the descriptor is cosmetic
        text = f"Cron {spec.normalized}"
    if not spec.dom_star and not spec.dow_star:
        text = text.replace(", only on ", " or on ")  # Vixie OR of day-of-month and day-of-week
    return text


def parse_schedule(kind: str, expr: str, tz_name: str, *, now: datetime | None = None) -> Schedule | None:
    """The schedule for (kind, expr, timezone), or None for event and manual tasks.
    Raises ValidationFailed naming the field. `now` only supplies an RRULE's default DTSTART."""
    tz = timezone_validate(tz_name)
    text = (expr or "").strip()
    if kind in (ScheduleKind.MANUAL, ScheduleKind.EVENT):
        return None
    if not text:
        raise ValidationFailed.on("schedule_expr", f"is required for schedule_kind {kind!r}")
    if kind == ScheduleKind.CRON:
        try:
            spec = parse_cron(text)
        except CronError as exc:
            raise ValidationFailed.on("schedule_expr", str(exc)) from None
        return WallClockSchedule(kind, tz, spec.local_candidates, lambda: _describe_cron(text, spec))
    if kind == ScheduleKind.RRULE:
        rule = _parse_rrule(text, tz, now)
        return WallClockSchedule(kind, tz, rule.local_candidates, lambda: describe_rrule(rule))
    if kind == ScheduleKind.INTERVAL:
        return IntervalSchedule(interval_seconds(text), tz)
    if kind == ScheduleKind.ONCE:
        return OnceSchedule(once_instant(text, tz), tz)
    raise ValidationFailed.on("schedule_kind", f"unknown kind {kind!r}")


def _parse_rrule(text: str, tz: ZoneInfo, now: datetime | None) -> RRuleSpec:
    local_now = moment_validate(now or datetime.now(UTC)).astimezone(tz).replace(tzinfo=None)
    try:
        return parse_rrule(text, tz, dtstart_default(local_now))
    except RRuleError as exc:
        raise ValidationFailed.on("schedule_expr", str(exc)) from None


def schedule_normalize(kind: str, expr: str, tz_name: str, *, now: datetime) -> str:
    """The expression to store. An RRULE without DTSTART gets one (local midnight of today), so
    its occurrences never depend on when it is evaluated. Other kinds are stored as written."""
    text = (expr or "").strip()
    if kind == ScheduleKind.MANUAL:
        return ""
    if kind == ScheduleKind.RRULE:
        tz = timezone_validate(tz_name)
        return with_dtstart(text, _parse_rrule(text, tz, now), tz)
    return text


def moment_validate(moment: datetime, *, field: str = "after") -> datetime:
    """An instant schedules are asked about (a preview's `after`) must be inside EARLIEST..LATEST."""
    if _representable(moment) is None:
        raise ValidationFailed.on(field, f"is outside the supported range ({SUPPORTED_RANGE})")
    return moment


def schedule_validate(*, kind: str, expr: str, tz: str, now: datetime | None = None) -> str:
    """Validate a schedule and return the expression to store; a time-based schedule must have
    at least one occurrence after `now`."""
    now = now or datetime.now(UTC)
    normalized = schedule_normalize(kind, expr, tz, now=now)
    if kind == ScheduleKind.EVENT:
        event_topic_validate(normalized)
    schedule = parse_schedule(kind, normalized, tz, now=now)
    if schedule is not None and schedule.next_after(now) is None:
        raise ValidationFailed.on("schedule_expr", "has no occurrence in the future")
    return normalized


def event_topic_validate(topic: str) -> None:
    if not topic:
        raise ValidationFailed.on("schedule_expr", "an event task needs a topic, exact or glob (email.*)")
    if not TOPIC_GLOB.match(topic):
        raise ValidationFailed.on("schedule_expr", "an event topic holds letters, digits and . _ : - * ? [ ]")


# A task's cursor is the instant up to which beat has dispatched its occurrences; its wake is the
# snooze's end (Task.snoozed_until). A snooze is pending while its wake is after the cursor: the
# occurrences it covers are still dispatched (and recorded as skipped), then the wake-up runs.
# These two functions are the only place that rule is written; beat, the fire job, next_runs and
# next_run_at all call them.


def _pending_wake(cursor: datetime, wake: datetime | None) -> datetime | None:
    return wake if wake is not None and wake > cursor else None


def next_due(schedule: Schedule, *, cursor: datetime, wake: datetime | None) -> datetime | None:
    """The next time beat dispatches for the task: the next occurrence after `cursor`, or the
    pending snooze wake-up if that comes first. None: nothing is owed any more."""
    nominal = schedule.next_after(cursor)
    pending = _pending_wake(cursor, wake)
    if nominal is None or (pending is not None and pending < nominal):
        return pending
    return nominal


def next_run(schedule: Schedule, *, cursor: datetime, wake: datetime | None) -> datetime | None:
    """The next time the task actually runs (Task.next_run_at): a pending snooze wake-up, else
    the next occurrence after `cursor`."""
    return _pending_wake(cursor, wake) or schedule.next_after(cursor)


def occurrences(schedule: Schedule, *, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    cursor = after
    while len(out) < count:
        nxt = schedule.next_after(cursor)
        if nxt is None:
            break
        out.append(nxt)
        cursor = nxt
    return out


def occurrence_json(at: datetime, tz: ZoneInfo) -> dict[str, Any]:
    return {"at": at.astimezone(tz).isoformat(), "utc": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def describe(kind: str, expr: str, tz_name: str) -> str:
    if kind == ScheduleKind.MANUAL:
        return "Runs only when started by hand (run_now)."
    if kind == ScheduleKind.EVENT:
        return f"Runs when an event with topic {expr!r} arrives."
    try:
        schedule = parse_schedule(kind, expr, tz_name)
    except ValidationFailed:
        return f"{kind}: {expr}"
    return schedule.describe() if schedule else ""
