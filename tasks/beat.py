"""Beat rows: the single writer that keeps a task's django-celery-beat rows in step with the task.

Each schedulable task owns exactly one PeriodicTask and one schedule row of its own (schedule rows
are never shared: deleting one cascades to every PeriodicTask pointing at it). Saving the
PeriodicTask bumps its `date_changed`, which is how Ordinaut's beat (tasks/scheduler.py) learns about
the change.

django-celery-beat's change marker (the single `PeriodicTasks` row, which its stock
DatabaseScheduler reads to know it must reload; Ordinaut's does not) is bumped only with
ORDINAUT_BEAT_CHANGE_MARKER, and then at most once per transaction, after commit
(`_marker_bump_on_commit`), never by dcb's model signals: those bump it on every save of a
PeriodicTask or schedule row, three times per created task, with a SELECT ... FOR UPDATE that holds
the one row locked until commit and so serialized every concurrent task write (B4,
docs/benchmarks.md). Bumped after commit, the marker never says "changed" before the change is
visible. Rows are therefore written here without dcb's signals: schedule rows by queryset
(bulk_create, update, a raw delete), the PeriodicTask with `no_changes` (dcb's own opt-out) and
without dcb's `validate_unique` query for the name (unique by construction: the task's id).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import router, transaction
from django.utils import timezone as dj_timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from .cron import parse_cron
from .models import RRuleSchedule, Task
from .schedules import SCHEDULED_KINDS, describe, interval_seconds, once_instant, timezone_validate

FIRE_JOB_NAME = "tasks.fire"
FIRE_BATCH_JOB_NAME = "tasks.fire_batch"
RECORD_MISSED_JOB_NAME = "tasks.record_missed"
PERIODIC_TASK_PREFIX = "ordinaut:task:"
# RRULE rows need a dcb schedule to be valid; a one-off clock that never comes is harmless.
NEVER = datetime(9999, 12, 31, tzinfo=UTC)
# The schedule foreign keys of a PeriodicTask (exactly one is set); not the Task's schedule fields.
PERIODIC_SCHEDULE_FIELDS = ("crontab", "interval", "clocked", "solar")


def periodic_task_name(task: Task) -> str:
    return f"{PERIODIC_TASK_PREFIX}{task.pk}"


def beat_wanted(task: Task) -> bool:
    return task.schedule_kind in SCHEDULED_KINDS and task.status == Task.Status.ACTIVE and task.deleted_at is None


def _schedule_row(task: Task) -> tuple[str, type[Any], dict[str, Any]]:
    kind = task.schedule_kind
    if kind == Task.Kind.CRON:
        minute, hour, dom, month, dow = parse_cron(task.schedule_expr).normalized.split(" ")
        return (
            "crontab",
            CrontabSchedule,
            {
                "minute": minute,
                "hour": hour,
                "day_of_month": dom,
                "month_of_year": month,
                "day_of_week": dow,
                "timezone": task.timezone,
            },
        )
    if kind == Task.Kind.INTERVAL:
        return (
            "interval",
            IntervalSchedule,
            {
                "every": interval_seconds(task.schedule_expr),
                "period": IntervalSchedule.SECONDS,
            },
        )
    if kind == Task.Kind.ONCE:
        return (
            "clocked",
            ClockedSchedule,
            {
                "clocked_time": once_instant(task.schedule_expr, timezone_validate(task.timezone)),
            },
        )
    return "clocked", ClockedSchedule, {"clocked_time": NEVER}  # RRULE, see RRuleSchedule


# Cron and interval descriptions depend on their three arguments alone (cron_descriptor is slow; an
# RRULE's may depend on today, through its default DTSTART), as in tasks/api.py.
_describe_pure = lru_cache(maxsize=4096)(describe)


def _description(task: Task) -> str:
    if task.schedule_kind in (Task.Kind.CRON, Task.Kind.INTERVAL):
        return _describe_pure(task.schedule_kind, task.schedule_expr, task.timezone)
    return describe(task.schedule_kind, task.schedule_expr, task.timezone)


def _marker_bump() -> None:
    """What dcb's PeriodicTasks.update_changed() does, in one statement once the row exists."""
    if not PeriodicTasks.objects.filter(ident=1).update(last_update=dj_timezone.now()):
        PeriodicTasks.update_changed()


def _marker_bump_on_commit() -> None:
    """Bump dcb's change marker once the current transaction commits, once however many beat rows
    it wrote (a rolled-back savepoint drops its callback, so a later write registers another).
    Only with ORDINAUT_BEAT_CHANGE_MARKER: nothing of Ordinaut's reads the marker."""
    if not settings.ORDINAUT_BEAT_CHANGE_MARKER:
        return
    connection = transaction.get_connection(router.db_for_write(PeriodicTasks))
    if any(func is _marker_bump for _, func, _ in connection.run_on_commit):
        return
    # robust: the task's change is committed by then; a failed bump is logged, not the request's error.
    transaction.on_commit(_marker_bump, using=connection.alias, robust=True)


def _periodic_save(periodic: PeriodicTask) -> None:
    """dcb's PeriodicTask.save() without its marker bump (`no_changes`, dcb's own opt-out; see the
    module's docstring) and without Model.validate_unique's query for the name, which is unique by
    construction (the task's id; the database's constraint still holds). dcb's other checks and
    normalizations are kept."""
    periodic.no_changes = True
    periodic.exchange = periodic.exchange or None
    periodic.routing_key = periodic.routing_key or None
    periodic.queue = periodic.queue or None
    periodic.headers = periodic.headers or None
    if not periodic.enabled:
        periodic.last_run_at = None
    periodic._clean_expires()
    chosen = [name for name in PERIODIC_SCHEDULE_FIELDS if getattr(periodic, f"{name}_id") is not None]
    if len(chosen) != 1:
        raise ValidationError("Only one of clocked, interval, crontab, or solar must be set")
    if chosen == ["clocked"] and not periodic.one_off:
        raise ValidationError("clocked must be one off, one_off must set True")
    super(PeriodicTask, periodic).save()  # Model.save: dcb's save() is what this replaces


def _schedule_row_write(model: type[Any], row: Any, values: dict[str, Any]) -> Any:
    """Create the schedule row, or update it where it differs, without dcb's signals (which would
    bump the marker then and there, see the module's docstring)."""
    if row is None:
        return model.objects.bulk_create([model(**values)])[0]
    changed = {name: value for name, value in values.items() if _stored(getattr(row, name)) != _stored(value)}
    if changed:
        model.objects.filter(pk=row.pk).update(**changed)
        for name, value in changed.items():
            setattr(row, name, value)
    return row


def _stored(value: Any) -> Any:
    """A schedule field's value as compared: a crontab's timezone is read as a ZoneInfo, written as its name."""
    return str(value) if isinstance(value, tzinfo) else value


def _schedule_row_delete(row: Any) -> None:
    """Delete a schedule row no PeriodicTask points at any more, without dcb's signals."""
    queryset = type(row).objects.filter(pk=row.pk)
    queryset._raw_delete(queryset.db)


def beat_rows_sync(task: Task) -> PeriodicTask | None:
    """Create, update or disable the task's beat rows so they say what the task says.

    Called for a task not saved yet (its id is set on construction), it only sets
    `task.periodic_task`, so the task's own INSERT carries it instead of an UPDATE after it.

    Part of the caller's transaction when there is one (no savepoint of its own: two statements
    fewer; every caller lets an error here fail its whole change), else a transaction of its own."""
    with transaction.atomic(savepoint=False):
        periodic = PeriodicTask.objects.filter(pk=task.periodic_task_id).first() if task.periodic_task_id else None
        if not beat_wanted(task):
            if periodic is not None and periodic.enabled:
                periodic.enabled = False
                _periodic_save(periodic)
                _marker_bump_on_commit()
            return periodic

        field, model, values = _schedule_row(task)
        row = _schedule_row_write(model, getattr(periodic, field) if periodic is not None else None, values)
        created = periodic is None
        if periodic is None:
            periodic = PeriodicTask(
                name=periodic_task_name(task), task=FIRE_JOB_NAME, kwargs=json.dumps({"task_id": str(task.pk)})
            )
        stale = [getattr(periodic, f) for f in PERIODIC_SCHEDULE_FIELDS if f != field and getattr(periodic, f, None)]
        for name in PERIODIC_SCHEDULE_FIELDS:
            setattr(periodic, name, row if name == field else None)
        periodic.one_off = field == "clocked"  # dcb requires clocked rows to be one-off
        periodic.enabled = True
        periodic.priority = task.priority
        periodic.description = f"Ordinaut task {task.title!r}: " + _description(task)
        _periodic_save(periodic)
        for old in stale:  # after the PeriodicTask points elsewhere, so no row refers to it
            _schedule_row_delete(old)

        if task.schedule_kind == Task.Kind.RRULE:
            RRuleSchedule.objects.update_or_create(
                periodic_task=periodic, defaults={"rrule": task.schedule_expr, "timezone": task.timezone}
            )
        elif not created:  # a new PeriodicTask has no RRULE row to drop
            RRuleSchedule.objects.filter(periodic_task=periodic).delete()
        if task.periodic_task_id != periodic.pk:
            if not task._state.adding:
                Task.objects.filter(pk=task.pk).update(periodic_task=periodic)
            task.periodic_task = periodic
        _marker_bump_on_commit()
    return periodic
