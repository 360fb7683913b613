"""Beat rows as schedules: each django-celery-beat schedule row of an Ordinaut task becomes an
`OccurrenceSchedule`, a celery schedule over the one occurrence function (tasks/schedules.py).

Beat builds every Ordinaut entry with `beat_row_schedule`, from the task's PeriodicTask and its
schedule row (crontab, interval, clocked, or the RRuleSchedule beside the placeholder clock), and
the task's next_runs use the same function, so what is listed is what beat fires.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery import schedules
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from .schedules import IntervalSchedule as EveryNSeconds
from .schedules import OnceSchedule, Schedule, ScheduleKind, parse_schedule, timezone_validate

NEVER_S = 365 * 86400.0
# The attribute beat's row query adds: the crontab's timezone as plain text. The model field turns
# it into a ZoneInfo while the row is loaded, and raises there for a name that is not a timezone,
# which would fail the whole query instead of the one row.
CRONTAB_TIMEZONE_TEXT = "crontab_timezone_text"


class ScheduleRowError(ValueError):
    """A beat row that does not describe a schedule Ordinaut can evaluate."""


class OccurrenceSchedule(schedules.BaseSchedule):
    """A celery schedule over an occurrence function (`occurrence`, a tasks/schedules.py Schedule):
    due when an occurrence lies in (last_run_at, now]; the next check is the next occurrence.
    Beat and next_runs evaluate `occurrence` directly (cursor and snooze are Ordinaut's, not
    celery's last_run_at); `is_due` serves anything that drives it the celery way."""

    def __init__(self, occurrence: Schedule, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.occurrence = occurrence
        self.next_after: Callable[[datetime], datetime | None] = occurrence.next_after

    def now(self) -> datetime:
        nowfun = getattr(self, "nowfun", None)
        return nowfun() if nowfun else datetime.now(UTC)

    def remaining_estimate(self, last_run_at: datetime) -> Any:
        nxt = self.next_after(_aware(last_run_at))
        return None if nxt is None else nxt - self.now()

    def is_due(self, last_run_at: datetime) -> schedules.schedstate:
        now = self.now()
        nxt = self.next_after(_aware(last_run_at))
        if nxt is None:
            return schedules.schedstate(False, NEVER_S)
        if nxt <= now:
            following = self.next_after(now)
            return schedules.schedstate(True, NEVER_S if following is None else (following - now).total_seconds())
        return schedules.schedstate(False, (nxt - now).total_seconds())

    def __repr__(self) -> str:
        return f"<OccurrenceSchedule {self.occurrence.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OccurrenceSchedule) and self.occurrence == other.occurrence

    def __hash__(self) -> int:
        return id(self)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def rrule_schedule(*, rrule: str, tz_name: str) -> OccurrenceSchedule:
    """An RRuleSchedule row's schedule (its text always carries DTSTART, so `now` plays no part)."""
    parsed = parse_schedule(ScheduleKind.RRULE, rrule, tz_name)
    if parsed is None:
        raise ScheduleRowError("an RRULE row without a rule")
    return OccurrenceSchedule(parsed)


def crontab_schedule(row: CrontabSchedule, *, tz_name: str) -> OccurrenceSchedule:
    """Cron with the wall-clock DST rules, from the crontab's five fields in its timezone."""
    fields = (row.minute, row.hour, row.day_of_month, row.month_of_year, row.day_of_week)
    parsed = parse_schedule(ScheduleKind.CRON, " ".join(str(f) for f in fields), tz_name)
    assert parsed is not None  # a cron expression always has a schedule
    return OccurrenceSchedule(parsed)


def interval_schedule(row: IntervalSchedule, *, tz: ZoneInfo) -> OccurrenceSchedule:
    """Every N seconds on the epoch grid. `tz` only shapes how occurrences are shown."""
    if row.period not in {p for p, _ in IntervalSchedule.PERIOD_CHOICES}:
        raise ScheduleRowError(f"interval period {row.period!r} is not one of django-celery-beat's")
    seconds = timedelta(**{row.period: row.every}).total_seconds()
    if seconds < 1 or seconds != int(seconds):
        raise ScheduleRowError(f"an interval of {seconds:g} seconds; it must be a whole number, at least 1")
    return OccurrenceSchedule(EveryNSeconds(int(seconds), tz))


def clocked_schedule(row: ClockedSchedule, *, tz: ZoneInfo) -> OccurrenceSchedule:
    """Once, at the clock's instant."""
    return OccurrenceSchedule(OnceSchedule(_aware(row.clocked_time).astimezone(UTC), tz))


def beat_row_schedule(row: PeriodicTask, *, task_kind: str, task_timezone: str) -> OccurrenceSchedule:
    """The schedule an Ordinaut task's PeriodicTask row says, the only way beat reads one.

    Raises (ScheduleRowError, ValidationFailed, or whatever a corrupt row causes) when the row
    cannot be evaluated or is not of the task's kind; beat parks the task then. `task_timezone`
    shapes how interval and once occurrences are shown; a crontab's own timezone is its truth.
    """
    schedule = _row_schedule(row, task_timezone)
    if schedule.occurrence.kind != task_kind:
        raise ScheduleRowError(f"the beat row holds a {schedule.occurrence.kind} schedule; the task is {task_kind}")
    return schedule


def _row_schedule(row: PeriodicTask, task_timezone: str) -> OccurrenceSchedule:
    rrule = getattr(row, "rrule_schedule", None)  # reverse one-to-one: absent unless RRULE
    if rrule is not None:
        return rrule_schedule(rrule=rrule.rrule, tz_name=rrule.timezone)
    if row.crontab_id is not None:
        text = getattr(row, CRONTAB_TIMEZONE_TEXT, None)
        return crontab_schedule(row.crontab, tz_name=text if text is not None else str(row.crontab.timezone))
    tz = timezone_validate(task_timezone)
    if row.interval_id is not None:
        return interval_schedule(row.interval, tz=tz)
    if row.clocked_id is not None:
        return clocked_schedule(row.clocked, tz=tz)
    raise ScheduleRowError("the periodic task has no crontab, interval, clocked or RRULE schedule")
