"""Read-side queries for tasks."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from ordinaut_site.errors import NotFound
from ordinaut_site.models import Agent

from .models import Task


def task_visible_to(agent: Agent) -> QuerySet[Task]:
    """Tasks an agent may see: its own, or every task for admins. Deleted tasks are gone."""
    tasks = Task.objects.select_related("owner").filter(deleted_at__isnull=True)
    return tasks if agent.is_admin else tasks.filter(owner=agent)


def task_get(*, agent: Agent, task_id: uuid.UUID | str) -> Task:
    task = task_visible_to(agent).filter(pk=task_id).first()
    if task is None:
        raise NotFound("Task not found.")
    return task
