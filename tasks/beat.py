"""Beat rows: the single writer that keeps a task's django-celery-beat rows in step with the task.

Each schedulable task owns exactly one PeriodicTask and one schedule row of its own (schedule rows
are never shared: deleting one cascades to every PeriodicTask pointing at it). PeriodicTask.save()
bumps `date_changed` and dcb's change marker, which is how beat learns about the change.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

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


def beat_rows_sync(task: Task) -> PeriodicTask | None:
    """Create, update or disable the task's beat rows so they say what the task says."""
    with transaction.atomic():
        periodic = PeriodicTask.objects.filter(pk=task.periodic_task_id).first() if task.periodic_task_id else None
        if not beat_wanted(task):
            if periodic is not None and periodic.enabled:
                periodic.enabled = False
                periodic.save()
            return periodic

        field, model, values = _schedule_row(task)
        row = getattr(periodic, field) if periodic is not None else None
        if row is None:
            row = model.objects.create(**values)
        else:
            for name, value in values.items():
                setattr(row, name, value)
            row.save()
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
        periodic.description = f"Ordinaut task {task.title!r}: " + describe(
            task.schedule_kind, task.schedule_expr, task.timezone
        )
        periodic.save()
        for old in stale:  # after the PeriodicTask points elsewhere, so the cascade reaches nothing
            old.delete()

        if task.schedule_kind == Task.Kind.RRULE:
            RRuleSchedule.objects.update_or_create(
                periodic_task=periodic, defaults={"rrule": task.schedule_expr, "timezone": task.timezone}
            )
        else:
            RRuleSchedule.objects.filter(periodic_task=periodic).delete()
        if task.periodic_task_id != periodic.pk:
            Task.objects.filter(pk=task.pk).update(periodic_task=periodic)
            task.periodic_task = periodic
    return periodic
