"""Sending a run's steps to the workers: the Celery chain, and the one way to send it after commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from celery import chain, current_app, signature
from django.conf import settings
from django.db import transaction
from django.db.models import F

from ..job_names import STEP_JOB_NAME
from ..models import Run
from .deadlines import step_timeouts
from .state import run_finish_empty


def dispatch_on_commit(run: Run, *, from_index: int = 0, countdown: float = 0, counted: bool = False) -> None:
    """Send the run's chain from `from_index` once the transaction that made it due commits (a
    worker must find the rows it is told about). `counted`: the caller already added this dispatch
    to the run's dispatch_count."""
    run_id, step_count = run.pk, len(run.pipeline)
    timeouts = step_timeouts(task=run.task, pipeline=run.pipeline)
    transaction.on_commit(
        lambda: run_dispatch(
            run_id=run_id,
            from_index=from_index,
            step_count=step_count,
            countdown=countdown,
            timeouts=timeouts,
            counted=counted,
        )
    )


def run_dispatch(
    *,
    run_id: uuid.UUID,
    from_index: int,
    step_count: int,
    countdown: float = 0,
    timeouts: Sequence[float] | None = None,
    counted: bool = False,
) -> None:
    """Send the Celery chain for steps from_index..end: immutable (run id, index) signatures,
    stamped with the run id so the whole chain can be revoked. A run without steps finishes here.
    Each step carries its timeout as the soft time limit (the tool sees SoftTimeLimitExceeded).
    `counted`: the caller already added this dispatch to the run's dispatch_count. The countdown
    never exceeds ORDINAUT_MAX_COUNTDOWN_S (callers hold longer jitters in the database)."""
    if from_index >= step_count:
        run_finish_empty(run_id=run_id)
        return
    if timeouts is None:
        run = Run.objects.select_related("task").only("pipeline", "task__timeout_seconds").get(pk=run_id)
        timeouts = step_timeouts(task=run.task, pipeline=run.pipeline)
    if not counted:
        Run.objects.filter(pk=run_id).update(dispatch_count=F("dispatch_count") + 1)
    steps = [
        signature(
            STEP_JOB_NAME,
            args=(str(run_id), index),
            immutable=True,
            app=current_app,
            soft_time_limit=timeouts[index],
            time_limit=timeouts[index] + settings.ORDINAUT_HARD_TIME_LIMIT_GRACE_S,
        )
        for index in range(from_index, step_count)
    ]
    flow = chain(*steps) if len(steps) > 1 else steps[0]
    flow.stamp(run_id=str(run_id))
    options: dict[str, Any] = {}
    if countdown:
        options["countdown"] = min(countdown, settings.ORDINAUT_MAX_COUNTDOWN_S)
    flow.apply_async(**options)
