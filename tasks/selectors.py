"""Read-side queries for tasks: visibility, listing, and upcoming occurrences."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from django.db import DatabaseError
from django.db.models import QuerySet
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from ordinaut_site.errors import NotFound, ValidationFailed
from ordinaut_site.models import Agent

from .beat_schedule import beat_row_schedule
from .models import Task
from .schedules import (
    PREVIEW_MAX,
    moment_validate,
    next_due,
    occurrence_json,
    occurrences,
    parse_schedule,
    schedule_validate,
)

logger = logging.getLogger(__name__)


def task_visible_to(agent: Agent) -> QuerySet[Task]:
    """Tasks an agent may see: its own, or every task for admins. Deleted tasks are gone."""
    tasks = Task.objects.select_related("owner").filter(deleted_at__isnull=True)
    return tasks if agent.is_admin else tasks.filter(owner=agent)


def task_get(*, agent: Agent, task_id: uuid.UUID | str) -> Task:
    task = task_visible_to(agent).filter(pk=task_id).first()
    if task is None:
        raise NotFound("Task not found.")
    return task


def task_list(
    *, agent: Agent, status: str | None = None, schedule_kind: str | None = None, search: str | None = None
) -> QuerySet[Task]:
    tasks = task_visible_to(agent)
    if status:
        if status not in Task.Status.values:
            raise ValidationFailed.on("status", f"must be one of {', '.join(Task.Status.values)}")
        tasks = tasks.filter(status=status)
    if schedule_kind:
        if schedule_kind not in Task.Kind.values:
            raise ValidationFailed.on("schedule_kind", f"must be one of {', '.join(Task.Kind.values)}")
        tasks = tasks.filter(schedule_kind=schedule_kind)
    if search:
        tasks = tasks.filter(title__icontains=search[:200])
    return tasks.order_by("-created_at", "-id")


def task_next_runs(*, task: Task, count: int) -> list[dict[str, Any]]:
    """What beat will dispatch next for this task, computed the way beat computes it: from the
    task's beat row, with the same schedule class and next_due. Occurrences a snooze covers are
    listed with `"skipped": "snoozed"`. Nothing for a parked task: beat does not fire it."""
    if task.status != Task.Status.ACTIVE or task.periodic_task_id is None or task.schedule_parked_at is not None:
        return []
    rows = PeriodicTask.objects.select_related("crontab", "interval", "clocked", "rrule_schedule")
    try:
        periodic = rows.filter(pk=task.periodic_task_id, enabled=True).first()
        if periodic is None:
            return []
        schedule = beat_row_schedule(periodic, task_kind=task.schedule_kind, task_timezone=task.timezone).occurrence
    except DatabaseError:
        raise
    except Exception:  # beat parks the task when it loads this row; until then, nothing is listed
        logger.warning("task %s: its beat row cannot be evaluated", task.pk, exc_info=True)
        return []
    cursor = max(task.fired_through or timezone.now(), timezone.now())
    out: list[dict[str, Any]] = []
    while len(out) < count:
        at = next_due(schedule, cursor=cursor, wake=task.snoozed_until)
        if at is None:
            break
        item = occurrence_json(at, schedule.tz)
        if task.snoozed_until is not None and at < task.snoozed_until:
            item["skipped"] = "snoozed"
        out.append(item)
        cursor = at
    return out


def schedule_preview(*, kind: str, expr: str, tz: str, count: int, after: datetime | None = None) -> dict[str, Any]:
    start = moment_validate(after) if after is not None else timezone.now()
    # The checks task creation makes, including "has an occurrence after `after`".
    expr = schedule_validate(kind=kind, expr=expr, tz=tz, now=start)
    schedule = parse_schedule(kind, expr, tz, now=start)
    if schedule is None:
        return {"description": _describe_unscheduled(kind, expr), "occurrences": []}
    found = occurrences(schedule, after=start, count=min(count, PREVIEW_MAX))
    return {"description": schedule.describe(), "occurrences": [occurrence_json(at, schedule.tz) for at in found]}


def _describe_unscheduled(kind: str, expr: str) -> str:
    if kind == Task.Kind.EVENT:
        return f"Runs when an event with topic {expr!r} arrives."
    return "Runs only when started by hand (run_now)."
