"""Task services: create, update and trigger tasks (the only writers of Task rows)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from ordinaut_site.errors import Conflict
from ordinaut_site.models import Agent
from ordinaut_site.services import Actor, audit_record
from pipelines.spec import payload_validate
from runs.models import Run
from runs.services import run_create

from .models import Task
from .schedules import schedule_validate


def task_create(*, owner: Agent, actor: Actor, fields: dict[str, Any]) -> Task:
    """Create a task from validated API fields; the schedule and payload are checked here too."""
    fields = dict(fields)
    fields["payload"] = payload_validate(fields.get("payload"))
    task = Task(owner=owner, **fields)
    task.schedule_expr = schedule_validate(kind=task.schedule_kind, expr=task.schedule_expr, tz=task.timezone)
    with transaction.atomic():
        task.save()
        audit_record(
            actor=actor,
            action="task.create",
            subject_type="task",
            subject_id=task.pk,
            details={"title": task.title, "schedule_kind": task.schedule_kind, "schedule_expr": task.schedule_expr},
        )
    return task


def task_run_now(
    *, task: Task, actor: Actor, params: dict[str, Any] | None = None, idempotency_key: str | None = None
) -> Run:
    """A manual run, whatever the schedule; a paused task may still be run by hand."""
    if task.status == Task.Status.CANCELED:
        raise Conflict("The task is canceled; it cannot run.")
    trigger_key = f"manual:{idempotency_key}" if idempotency_key else None
    return run_create(task=task, trigger=Run.Trigger.MANUAL, trigger_key=trigger_key, params=params, actor=actor)
