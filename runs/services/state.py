"""A run's status changes (conditional updates, won by one caller) and the one rule for what a run
becomes after one of its steps is done."""

from __future__ import annotations

import enum
import logging
import uuid
from typing import Any

from celery import current_app
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.errors import Conflict, StepCanceled
from pipelines.spec import Step

from ..models import Approval, Run, StepItem, StepRun
from ..signals import run_finished, scheduled_run_due
from .deadlines import grace, logical_now

logger = logging.getLogger(__name__)


class After(enum.Enum):
    """What follows a finished step: the next step, or nothing (the run ended, or was ended by
    someone else meanwhile)."""

    NEXT_STEP = "next_step"
    RUN_ENDED = "run_ended"


def run_error(*, code: str, message: str, step_id: str) -> dict[str, str]:
    """The error a failed run carries: the failing step's code and message, and which step."""
    return {"code": code, "message": message, "step_id": step_id}


def run_error_of_step(*, step_id: str, error: dict[str, Any] | None) -> dict[str, str]:
    error = error or {}
    return run_error(code=error.get("code", "step_failed"), message=error.get("message", ""), step_id=step_id)


def continues_on_error(run: Run, index: int) -> bool:
    """A failed step fails its run unless its pipeline entry says `on_error: continue`."""
    return index < len(run.pipeline) and Step.of(run.pipeline, index).continues_on_error


def is_last_step(run: Run, index: int) -> bool:
    return index >= len(run.pipeline) - 1


def run_after_step(
    *,
    run: Run,
    index: int,
    step_id: str,
    failed: bool,
    output: Any = None,
    error: dict[str, Any] | None = None,
    from_status: str = Run.Status.RUNNING,
) -> After:
    """The one rule for what a run becomes once step `index` is done (succeeded, skipped or failed):
    a failure fails the run (unless `on_error: continue`); the last step's end succeeds it, with
    that step's output as the result; otherwise the next step runs."""
    if failed and not continues_on_error(run, index):
        run_fail(run=run, error=run_error_of_step(step_id=step_id, error=error), from_status=from_status)
        return After.RUN_ENDED
    if is_last_step(run, index):
        run_succeed(run=run, result=output, from_status=from_status)
        return After.RUN_ENDED
    return After.NEXT_STEP


def run_on_terminal(*, run: Run) -> None:
    """Called once after each transition of a run to succeeded, failed or canceled (after commit):
    the policies of the apps above (overlap=queue starts the next held run) hook in through the
    run_finished signal. Runs created already skipped do not pass through here. It never raises."""
    for receiver, answer in run_finished.send_robust(sender=Run, run=run):
        if isinstance(answer, Exception):
            logger.error("run_finished receiver %r failed", receiver, exc_info=answer, extra={"run": str(run.pk)})


def after_terminal(run: Run, status: str) -> None:
    run.status = status
    transaction.on_commit(lambda: run_on_terminal(run=run))


def run_finish_empty(*, run_id: uuid.UUID) -> None:
    """A run with no steps left to send succeeds at once."""
    now = timezone.now()
    won = Run.objects.filter(pk=run_id, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).update(
        status=Run.Status.SUCCEEDED, started_at=Coalesce(F("started_at"), Value(now)), finished_at=now, deadline_at=None
    )
    if won:
        after_terminal(Run.objects.get(pk=run_id), Run.Status.SUCCEEDED)


def run_mark_running(*, run: Run) -> bool:
    """queued -> running; sets the logical `now` of runs that have no scheduled_for. Won by one caller."""
    now = timezone.now()
    context = dict(run.context)
    if not context.get("now"):
        context["now"] = logical_now(run.task, now)
    won = bool(
        Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
            status=Run.Status.RUNNING, started_at=now, context=context
        )
    )
    if won:
        run.status, run.started_at, run.context = Run.Status.RUNNING, now, context
    return won


def run_succeed(*, run: Run, result: Any, from_status: str = Run.Status.RUNNING) -> bool:
    won = bool(
        Run.objects.filter(pk=run.pk, status=from_status).update(
            status=Run.Status.SUCCEEDED,
            result=result,
            finished_at=timezone.now(),
            deadline_at=None,
            current_step=len(run.pipeline),
        )
    )
    if won:
        run.result = result
        after_terminal(run, Run.Status.SUCCEEDED)
    return won


def run_fail(*, run: Run, error: dict[str, Any], from_status: str = Run.Status.RUNNING) -> bool:
    won = bool(
        Run.objects.filter(pk=run.pk, status=from_status).update(
            status=Run.Status.FAILED, error=error, finished_at=timezone.now(), deadline_at=None
        )
    )
    if won:
        run.error = error
        after_terminal(run, Run.Status.FAILED)
    return won


def run_extend_deadline(*, run: Run, seconds: float, current_step: int | None = None) -> None:
    """The sweeper leaves the run alone until then (the step is alive, waiting or backing off)."""
    fields: dict[str, Any] = {"deadline_at": timezone.now() + grace(seconds)}
    if current_step is not None:
        fields["current_step"] = current_step
    Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(**fields)


# --- A run created ahead of its instant (status scheduled), when its first step starts ----------


def run_due(*, run: Run) -> bool:
    """The first step of a scheduled run starts: the task's owner (tasks/, through the
    scheduled_run_due signal) decides whether it starts, waits its turn or is skipped, and makes
    that transition. True when the run is now queued (the step goes on to claim it); the
    in-memory run follows the database."""
    decided = any(answer is True for _, answer in scheduled_run_due.send(sender=Run, run=run))
    if not decided:
        run_scheduled_start(run=run)
    if run.status == Run.Status.SCHEDULED:
        # No transition of this run won (another process moved it meanwhile: a cancel, the
        # sweeper): what it is now. A transition that won updated the in-memory run.
        row = Run.objects.filter(pk=run.pk).values("status", "skip_reason", "deadline_at").first()
        if row is None:
            return False
        run.status, run.skip_reason, run.deadline_at = row["status"], row["skip_reason"], row["deadline_at"]
    return run.status == Run.Status.QUEUED and run.deadline_at is not None


def run_scheduled_start(*, run: Run) -> bool:
    """scheduled -> queued: its instant came and it runs (the in-memory run follows)."""
    won = bool(Run.objects.filter(pk=run.pk, status=Run.Status.SCHEDULED).update(status=Run.Status.QUEUED))
    if won:
        run.status = Run.Status.QUEUED
    return won


def run_scheduled_hold(*, run: Run) -> bool:
    """scheduled -> queued and held (overlap=queue): it starts when the runs before it end (the
    in-memory run follows)."""
    won = bool(
        Run.objects.filter(pk=run.pk, status=Run.Status.SCHEDULED).update(
            status=Run.Status.QUEUED, deadline_at=None, dispatch_count=0
        )
    )
    if won:
        run.status, run.deadline_at, run.dispatch_count = Run.Status.QUEUED, None, 0
    return won


def run_scheduled_skip(*, run: Run, reason: str) -> bool:
    """scheduled -> skipped, with the reason (paused, snoozed, deleted, condition, overlap,
    rescheduled, ...): its steps never run."""
    now = timezone.now()
    won = bool(
        Run.objects.filter(pk=run.pk, status=Run.Status.SCHEDULED).update(
            status=Run.Status.SKIPPED, skip_reason=reason, finished_at=now, deadline_at=None
        )
    )
    if won:
        StepRun.objects.filter(run=run, status=StepRun.Status.PENDING).update(
            status=StepRun.Status.SKIPPED, skip_reason=reason[:24], finished_at=now
        )
        run.status, run.skip_reason, run.finished_at, run.deadline_at = Run.Status.SKIPPED, reason, now, None
    return won


def run_cancel(*, run: Run, actor: Actor) -> Run:
    """Any active run -> canceled: its chain is revoked, running or waiting steps end as failed
    (code `canceled`), later steps never start."""
    now = timezone.now()
    with transaction.atomic():
        won = Run.objects.filter(pk=run.pk, status__in=Run.NOT_DONE).update(
            status=Run.Status.CANCELED, finished_at=now, deadline_at=None
        )
        if not won:
            current = Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()
            raise Conflict(f"the run is {current}; only scheduled, queued, running or waiting runs can be canceled")
        Approval.objects.filter(run=run, status=Approval.Status.PENDING).update(
            status=Approval.Status.CANCELED, decided_at=now, decided_by=actor_dict(actor)
        )
        # A running step may be waiting (approval, wait, retry backoff) with no worker to end it:
        # end them all here. A tool call in flight completes, but its output is not recorded.
        StepRun.objects.filter(run=run, status=StepRun.Status.RUNNING).update(
            status=StepRun.Status.FAILED,
            error=StepCanceled("the run was canceled while this step was running or waiting").as_dict(),
            finished_at=now,
            resume_at=None,
        )
        # A foreach step's items not done never run (or, in flight, are not recorded).
        StepItem.objects.filter(step__run=run, status__in=[StepItem.Status.PENDING, StepItem.Status.RUNNING]).update(
            status=StepItem.Status.SKIPPED, skip_reason="canceled", claim_id="", deadline_at=None, finished_at=now
        )
        audit_record(actor=actor, action="run.cancel", subject_type="run", subject_id=run.pk, details={})
        run_id = str(run.pk)
        transaction.on_commit(lambda: _revoke_chain(run_id))
        run.refresh_from_db()
        after_terminal(run, Run.Status.CANCELED)
    return run


def _revoke_chain(run_id: str) -> None:
    try:
        current_app.control.revoke_by_stamped_headers({"run_id": run_id}, terminate=False)
    except Exception:  # the run is canceled in the database either way; steps check it first
        logger.exception("could not broadcast the revoke of run %s", run_id)


def actor_dict(actor: Actor) -> dict[str, str]:
    return {"kind": actor.kind, "id": actor.id, "name": actor.name}


def skip_locked(queryset: Any) -> Any:
    """select_for_update(skip_locked=True) of the queryset's own rows where the database has it
    (not of rows a select_related joins: a run's task row belongs to tasks/ and beat locks it);
    SQLite serialises writers anyway, and the conditional updates that follow keep two sweepers
    from both winning."""
    features = connection.features
    if not features.has_select_for_update:
        return queryset
    own_rows = ("self",) if features.has_select_for_update_of else ()
    return queryset.select_for_update(skip_locked=features.has_select_for_update_skip_locked, of=own_rows)
