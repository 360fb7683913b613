"""Read-side queries for runs and step runs."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from ordinaut_site.errors import NotFound
from ordinaut_site.models import Agent

from .models import Run, StepRun


def run_get_for_step(*, run_id: str) -> Run | None:
    """The run a step job works on, with its task (None if it was deleted meanwhile)."""
    return Run.objects.select_related("task").filter(pk=run_id).first()


def run_visible_to(agent: Agent) -> QuerySet[Run]:
    """Runs inherit their task owner's visibility; admins see everything."""
    runs = Run.objects.select_related("task")
    return runs if agent.is_admin else runs.filter(task__owner=agent)


def run_get(*, agent: Agent, run_id: uuid.UUID | str) -> Run:
    run = run_visible_to(agent).filter(pk=run_id).first()
    if run is None:
        raise NotFound("Run not found.")
    return run


def run_steps(*, run: Run) -> QuerySet[StepRun]:
    return StepRun.objects.filter(run=run).order_by("index")
