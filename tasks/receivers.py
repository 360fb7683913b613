"""What tasks/ does when the cross-cutting package reports an owner change (ordinaut_site.signals)."""

from __future__ import annotations

import contextlib
from typing import Any

from django.dispatch import receiver

from ordinaut_site.audit import Actor
from ordinaut_site.errors import Conflict
from ordinaut_site.models import Agent
from ordinaut_site.signals import agent_deactivated, agent_reactivated

from .models import Task
from .services import task_pause, task_resume


def _each_task(tasks: Any, transition: Any, actor: Actor) -> list[str]:
    """Apply a task transition (task_pause, task_resume) to each task, in id order; the ids of those
    it applied to (a task that changed since it was read is a Conflict, and skipped)."""
    done = []
    for task in tasks.order_by("pk"):
        with contextlib.suppress(Conflict):
            transition(task=task, actor=actor)
            done.append(str(task.pk))
    return done


@receiver(agent_deactivated, dispatch_uid="tasks.pause_owner_tasks")
def pause_owner_tasks(*, agent: Agent, actor: Actor, **_: Any) -> list[str]:
    """A deactivated agent's active tasks are paused."""
    active = Task.objects.filter(owner_id=agent.pk, status=Task.Status.ACTIVE, deleted_at__isnull=True)
    return _each_task(active, task_pause, actor)


@receiver(agent_reactivated, dispatch_uid="tasks.resume_owner_tasks")
def resume_owner_tasks(*, agent: Agent, actor: Actor, task_ids: list[str], **_: Any) -> list[str]:
    """The tasks a deactivation paused, and that are still paused, resume."""
    still_paused = Task.objects.filter(
        pk__in=task_ids, owner_id=agent.pk, status=Task.Status.PAUSED, deleted_at__isnull=True
    )
    return _each_task(still_paused, task_resume, actor)
