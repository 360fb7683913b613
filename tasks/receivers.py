"""What tasks/ does when the layers it builds on report a change: an owner deactivated or reactivated
(ordinaut_site.signals), a run finished, held runs found by the sweeper, or a run fired ahead of its
instant reaching it (runs.signals)."""

from __future__ import annotations

import contextlib
from typing import Any

from django.dispatch import receiver

from ordinaut_site.audit import Actor
from ordinaut_site.errors import Conflict
from ordinaut_site.models import Agent
from ordinaut_site.signals import agent_deactivated, agent_reactivated
from runs.models import Run
from runs.signals import held_runs_found, run_finished, scheduled_run_due

from .models import Task
from .services import task_pause, task_release_held, task_resume, task_start_scheduled


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


@receiver(run_finished, dispatch_uid="tasks.release_next_held_run")
def release_next_held_run(*, run: Run, **_: Any) -> None:
    """overlap=queue: a run's end is the next held run's turn. Other tasks pay nothing here."""
    if run.task.overlap == Task.Overlap.QUEUE:
        task_release_held(task_id=run.task_id)


@receiver(held_runs_found, dispatch_uid="tasks.release_lost_held_runs")
def release_lost_held_runs(*, task_ids: list[Any], **_: Any) -> int:
    """The sweeper found held runs; start those whose turn it is (their release was lost)."""
    return sum(task_release_held(task_id=task_id) is not None for task_id in task_ids)


@receiver(scheduled_run_due, dispatch_uid="tasks.start_scheduled_run")
def start_scheduled_run(*, run: Run, **_: Any) -> bool:
    """A run fired ahead of its instant starts: the task decides, as a fire at the instant would."""
    task_start_scheduled(run=run)
    return True
