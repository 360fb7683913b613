"""Read-side queries for runs, step runs and approvals."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from ordinaut_site.errors import NotFound
from ordinaut_site.models import Agent

from .models import Approval, Run, StepRun


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


def run_list(
    *,
    agent: Agent,
    task_id: uuid.UUID | None = None,
    status: list[str] | None = None,
    trigger: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Run]:
    """Runs an agent may see, newest first, filtered by task, status, trigger and creation time."""
    runs = run_visible_to(agent)
    if task_id is not None:
        runs = runs.filter(task_id=task_id)
    if status:
        runs = runs.filter(status__in=status)
    if trigger:
        runs = runs.filter(trigger__in=trigger)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    if until is not None:
        runs = runs.filter(created_at__lt=until)
    return runs.order_by("-created_at", "-pk")


def run_steps(*, run: Run) -> QuerySet[StepRun]:
    return StepRun.objects.filter(run=run).order_by("index")


def step_outputs(*, run: Run, before_index: int) -> dict[str, Any]:
    """Outputs of the finished steps before `before_index`, by step id and by save_as (what
    templates see as `steps`). Read from the database: outputs never travel through the broker."""
    aliases = {
        index: step["save_as"]
        for index, step in enumerate(run.pipeline[:before_index])
        if isinstance(step, dict) and step.get("save_as")
    }
    outputs: dict[str, Any] = {}
    rows = StepRun.objects.filter(run=run, index__lt=before_index, status__in=StepRun.DONE).values_list(
        "index", "step_id", "output"
    )
    for index, step_id, output in rows:
        outputs[step_id] = output
        if index in aliases:
            outputs[aliases[index]] = output
    return outputs


def approval_visible_to(agent: Agent) -> QuerySet[Approval]:
    approvals = Approval.objects.select_related("run", "run__task")
    return approvals if agent.is_admin else approvals.filter(run__task__owner=agent)


def approval_list(*, agent: Agent, status: list[str] | None = None, run_id: uuid.UUID | None = None) -> Any:
    approvals = approval_visible_to(agent)
    if status:
        approvals = approvals.filter(status__in=status)
    if run_id is not None:
        approvals = approvals.filter(run_id=run_id)
    return approvals.order_by("-created_at", "-pk")
