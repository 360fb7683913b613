"""Run and step-run services: creation, dispatch, and every status change (conditional updates)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from celery import chain, current_app, signature
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from ordinaut_site.errors import Conflict
from ordinaut_site.services import SYSTEM, Actor, audit_record

from .models import Run, StepRun

if TYPE_CHECKING:
    from tasks.models import Task

logger = logging.getLogger(__name__)

# The step job lives in pipelines/jobs.py; runs/ refers to it by its stable Celery name so the
# dependency points one way (pipelines -> runs), as DESIGN.md section 3 asks.
STEP_JOB_NAME = "pipelines.run_step"
# How long a queued run may wait for its first step before the sweeper re-dispatches it.
QUEUED_GRACE_S = 300
# Added to a step's timeout before the sweeper considers a running step lost.
RUNNING_GRACE_S = 120


class RunAlreadyExists(Conflict):
    """A run for this (task, trigger_key) exists: the occurrence already ran or is running."""


def _logical_now(task: Task, at: datetime) -> str:
    return at.astimezone(ZoneInfo(task.timezone)).isoformat()


def run_create(
    *,
    task: Task,
    trigger: str,
    trigger_key: str | None = None,
    scheduled_for: datetime | None = None,
    params: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
    replay_of: Run | None = None,
    actor: Actor = SYSTEM,
    status: str = Run.Status.QUEUED,
    skip_reason: str = "",
    jitter_seconds: float = 0,
) -> Run:
    """Create a run and its pending step rows; a queued run is dispatched after commit.

    Raises RunAlreadyExists when the (task, trigger_key) pair is taken (the occurrence exists).
    """
    if trigger_key is None:
        trigger_key = f"{trigger}:{uuid.uuid4()}"
    merged_params = {**task.params, **(params or {})}
    pipeline = task.pipeline
    context: dict[str, Any] = {"params": merged_params, "event": event, "now": None}
    if scheduled_for is not None:
        context["now"] = _logical_now(task, scheduled_for)
    now = timezone.now()
    finished = status == Run.Status.SKIPPED
    try:
        with transaction.atomic():
            run = Run.objects.create(
                task=task,
                trigger=trigger,
                trigger_key=trigger_key,
                scheduled_for=scheduled_for,
                status=status,
                skip_reason=skip_reason,
                context=context,
                pipeline=pipeline,
                replay_of=replay_of,
                jitter_seconds=jitter_seconds,
                finished_at=now if finished else None,
                deadline_at=None if finished else now + timedelta(seconds=QUEUED_GRACE_S + jitter_seconds),
            )
            StepRun.objects.bulk_create(
                StepRun(run=run, index=index, step_id=step_id_of(step, index), uses=str(step.get("uses", "")))
                for index, step in enumerate(pipeline)
            )
            if actor.kind != SYSTEM.kind:
                # Runs the system creates (schedules, events) are their own record; an actor's
                # request to run something is an action worth auditing.
                audit_record(
                    actor=actor,
                    action="run.create",
                    subject_type="run",
                    subject_id=run.pk,
                    details={"task": str(task.pk), "trigger": trigger, "trigger_key": trigger_key},
                )
            if not finished:
                run_id, steps = run.pk, len(pipeline)
                transaction.on_commit(
                    lambda: run_dispatch(run_id=run_id, from_index=0, step_count=steps, countdown=jitter_seconds)
                )
    except IntegrityError as exc:
        if Run.objects.filter(task=task, trigger_key=trigger_key).exists():
            raise RunAlreadyExists(
                f"a run for {trigger_key!r} of this task already exists", trigger_key=trigger_key
            ) from exc
        raise
    return run


def step_id_of(step: dict[str, Any], index: int) -> str:
    return str(step.get("id") or f"step_{index + 1}")


def run_dispatch(*, run_id: uuid.UUID, from_index: int, step_count: int, countdown: float = 0) -> None:
    """Send the Celery chain for steps from_index..end: immutable (run id, index) signatures,
    stamped with the run id so the whole chain can be revoked. A run without steps finishes here."""
    if from_index >= step_count:
        run_finish_empty(run_id=run_id)
        return
    Run.objects.filter(pk=run_id).update(dispatch_count=F("dispatch_count") + 1)
    steps = [
        signature(STEP_JOB_NAME, args=(str(run_id), index), immutable=True, app=current_app)
        for index in range(from_index, step_count)
    ]
    flow = chain(*steps) if len(steps) > 1 else steps[0]
    flow.stamp(run_id=str(run_id))
    options: dict[str, Any] = {}
    if countdown:
        options["countdown"] = countdown
    flow.apply_async(**options)


def run_finish_empty(*, run_id: uuid.UUID) -> None:
    now = timezone.now()
    Run.objects.filter(pk=run_id, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).update(
        status=Run.Status.SUCCEEDED, started_at=now, finished_at=now, deadline_at=None
    )


def run_mark_running(*, run: Run) -> bool:
    """queued -> running; sets the logical `now` of runs that have no scheduled_for. Won by one caller."""
    now = timezone.now()
    context = dict(run.context)
    if not context.get("now"):
        context["now"] = _logical_now(run.task, now)
    won = bool(
        Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
            status=Run.Status.RUNNING, started_at=now, context=context
        )
    )
    if won:
        run.status, run.started_at, run.context = Run.Status.RUNNING, now, context
    return won


def step_claim(*, run: Run, index: int, claim_id: str, timeout_s: float) -> StepRun | None:
    """pending -> running for this message, or resume a step this same message was running
    (broker redelivery after a lost worker). None when another message owns it or it is done."""
    now = timezone.now()
    claimed = (
        StepRun.objects.filter(run=run, index=index)
        .filter(Q(status=StepRun.Status.PENDING) | Q(status=StepRun.Status.RUNNING, claim_id=claim_id))
        .update(status=StepRun.Status.RUNNING, claim_id=claim_id, attempts=F("attempts") + 1, started_at=now)
    )
    if not claimed:
        return None
    Run.objects.filter(pk=run.pk).update(
        current_step=index, deadline_at=now + timedelta(seconds=timeout_s + RUNNING_GRACE_S)
    )
    return StepRun.objects.get(run=run, index=index)


def step_get(*, run: Run, index: int) -> StepRun | None:
    return StepRun.objects.filter(run=run, index=index).first()


def _finish_fields(step: StepRun) -> dict[str, Any]:
    now = timezone.now()
    duration = None
    if step.started_at is not None:
        duration = max(0, int((now - step.started_at).total_seconds() * 1000))
    return {"finished_at": now, "duration_ms": duration}


def step_succeed(*, step: StepRun, input: Any, output: Any) -> bool:
    """running -> succeeded, only for the message that claimed it."""
    return bool(
        StepRun.objects.filter(pk=step.pk, status=StepRun.Status.RUNNING, claim_id=step.claim_id).update(
            status=StepRun.Status.SUCCEEDED, input=input, output=output, error=None, **_finish_fields(step)
        )
    )


def step_fail(*, step: StepRun, input: Any, error: dict[str, Any]) -> bool:
    return bool(
        StepRun.objects.filter(pk=step.pk, status=StepRun.Status.RUNNING, claim_id=step.claim_id).update(
            status=StepRun.Status.FAILED, input=input, error=error, **_finish_fields(step)
        )
    )


def run_succeed(*, run: Run, result: Any) -> bool:
    return bool(
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.SUCCEEDED,
            result=result,
            finished_at=timezone.now(),
            deadline_at=None,
            current_step=len(run.pipeline),
        )
    )


def run_fail(*, run: Run, error: dict[str, Any]) -> bool:
    return bool(
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.FAILED, error=error, finished_at=timezone.now(), deadline_at=None
        )
    )
