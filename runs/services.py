"""Run and step-run services: creation, dispatch, every status change (conditional updates),
approvals, cancel, replay and the recovery sweeper."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from celery import chain, current_app, signature
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ordinaut_site.audit import SYSTEM, Actor, audit_record
from ordinaut_site.errors import ApprovalDeclined, Conflict, StepCanceled, ValidationFailed

from .models import Approval, Run, StepRun
from .selectors import model_from_columns

if TYPE_CHECKING:
    from tasks.models import Task

logger = logging.getLogger(__name__)

# The step job lives in pipelines/jobs.py; runs/ refers to it by its stable Celery name so the
# dependency points one way (pipelines -> runs), as DESIGN.md section 3 asks.
STEP_JOB_NAME = "pipelines.run_step"
# Runs the sweeper handles per pass; the next pass takes the rest.
SWEEP_BATCH = 200
MAX_APPROVAL_ITEMS = 1000
MAX_REPLAY_KEY_TRIES = 5


class RunAlreadyExists(Conflict):
    """A run for this (task, trigger_key) exists: the occurrence already ran or is running."""


def _logical_now(task: Task, at: datetime) -> str:
    return at.astimezone(ZoneInfo(task.timezone)).replace(microsecond=0).isoformat()


def step_id_of(step: dict[str, Any], index: int) -> str:
    return str(step.get("id") or f"step_{index + 1}")


def step_timeout_s(*, task: Task, step: dict[str, Any]) -> float:
    """A step's timeout: its own, else the task's default, else the global default; capped."""
    value = step.get("timeout_seconds") or task.timeout_seconds or settings.ORDINAUT_DEFAULT_STEP_TIMEOUT_S
    return float(min(value, settings.ORDINAUT_MAX_STEP_TIMEOUT_S))


def _grace(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _jitter_parked(jitter_s: float) -> bool:
    """A jitter longer than a broker countdown may be (ORDINAUT_MAX_COUNTDOWN_S, below the
    visibility timeout) is held in the database, like a long wait: no chain is sent, and the
    sweeper sends it once the run's deadline, the end of its jitter, has passed."""
    return jitter_s > settings.ORDINAUT_MAX_COUNTDOWN_S


def _queued_deadline(now: datetime, jitter_s: float) -> datetime:
    """When the sweeper takes over a queued run: its jitter plus ORDINAUT_QUEUED_GRACE_S for a
    chain that was sent; the end of the jitter for one held in the database."""
    if _jitter_parked(jitter_s):
        return now + _grace(jitter_s)
    return now + _grace(settings.ORDINAUT_QUEUED_GRACE_S + jitter_s)


# --- Creation and dispatch ---------------------------------------------------------------------


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
    hold: bool = False,
) -> Run:
    """Create a run and its pending step rows; a queued run is dispatched after commit, unless
    `hold` (overlap=queue): then it waits, queued without a deadline, until run_release_held.

    Raises RunAlreadyExists when the (task, trigger_key) pair is taken (the occurrence exists).
    """
    if trigger_key is None:
        trigger_key = f"{trigger}:{uuid.uuid4()}"
    context: dict[str, Any] = {"params": {**task.params, **(params or {})}, "event": event, "now": None}
    if scheduled_for is not None:
        context["now"] = _logical_now(task, scheduled_for)
    return _run_insert(
        task=task,
        trigger=trigger,
        trigger_key=trigger_key,
        scheduled_for=scheduled_for,
        context=context,
        pipeline=task.pipeline,
        replay_of=replay_of,
        actor=actor,
        status=status,
        skip_reason=skip_reason,
        jitter_seconds=jitter_seconds,
        hold=hold,
    )


def _run_insert(
    *,
    task: Task,
    trigger: str,
    trigger_key: str,
    scheduled_for: datetime | None,
    context: dict[str, Any],
    pipeline: list[dict[str, Any]],
    replay_of: Run | None,
    actor: Actor,
    status: str,
    skip_reason: str = "",
    jitter_seconds: float = 0,
    start_index: int = 0,
    reused: Sequence[StepRun] = (),
    hold: bool = False,
) -> Run:
    now = timezone.now()
    finished = status == Run.Status.SKIPPED
    sending = not finished and not hold and not _jitter_parked(jitter_seconds)
    # Counted here rather than by run_dispatch: one statement (and one commit) less per run.
    dispatching = sending and start_index < len(pipeline)
    reused_by_index = {step.index: step for step in reused}
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
                current_step=start_index,
                dispatch_count=1 if dispatching else 0,
                finished_at=now if finished else None,
                deadline_at=None if finished or hold else _queued_deadline(now, jitter_seconds),
            )
            # A skipped run never executes, so it has no step rows.
            StepRun.objects.bulk_create(() if finished else _new_steps(run, reused_by_index))
            if actor.kind != SYSTEM.kind:
                # Runs the system creates (schedules, events) are their own record; an actor's
                # request to run something is an action worth auditing.
                audit_record(
                    actor=actor,
                    action="run.replay" if replay_of is not None else "run.create",
                    subject_type="run",
                    subject_id=run.pk,
                    details={"task": str(task.pk), "trigger": trigger, "trigger_key": trigger_key},
                )
            if sending:
                _dispatch_on_commit(run, task, start_index=start_index, counted=dispatching)
    except IntegrityError as exc:
        if Run.objects.filter(task=task, trigger_key=trigger_key).exists():
            raise RunAlreadyExists(
                f"a run for {trigger_key!r} of this task already exists", trigger_key=trigger_key
            ) from exc
        raise
    return run


def _new_steps(run: Run, reused_by_index: dict[int, StepRun] | None = None) -> list[StepRun]:
    reused_by_index = reused_by_index or {}
    return [
        _reused_step(run, reused_by_index[index])
        if index in reused_by_index
        else StepRun(run=run, index=index, step_id=step_id_of(step, index), uses=str(step.get("uses", "")))
        for index, step in enumerate(run.pipeline)
    ]


def _dispatch_on_commit(run: Run, task: Task, *, start_index: int = 0, counted: bool = True) -> None:
    run_id, steps, jitter = run.pk, len(run.pipeline), run.jitter_seconds
    timeouts = [step_timeout_s(task=task, step=step) for step in run.pipeline]
    transaction.on_commit(
        lambda: run_dispatch(
            run_id=run_id,
            from_index=start_index,
            step_count=steps,
            countdown=jitter,
            timeouts=timeouts,
            counted=counted,
        )
    )


@dataclass(frozen=True)
class ScheduledRun:
    """One occurrence the scheduler (or the events consumer) decided on: a run to create, queued,
    held or skipped. An event's run carries the event, which its steps see as `event`."""

    task: Task
    scheduled_for: datetime
    trigger_key: str
    skip_reason: str = ""
    jitter_seconds: float = 0
    hold: bool = False
    trigger: str = Run.Trigger.SCHEDULE
    event: dict[str, Any] | None = None


def runs_create_scheduled(items: Sequence[ScheduledRun]) -> list[Run]:
    """Create the runs of many occurrences (or events) with a few statements (a burst of occurrences at one
    instant is the scheduler's hardest moment). Occurrences that already have a run are left
    alone: the unique (task, trigger_key) decides, as for a single run. Returns the created runs;
    queued ones are dispatched after commit. Call inside a transaction."""
    now = timezone.now()
    rows = []
    for item in items:
        skipped = bool(item.skip_reason)
        dispatching = (
            not skipped and not item.hold and not _jitter_parked(item.jitter_seconds) and bool(item.task.pipeline)
        )
        rows.append(
            Run(
                id=uuid.uuid4(),
                task=item.task,
                trigger=item.trigger,
                trigger_key=item.trigger_key,
                scheduled_for=item.scheduled_for,
                status=Run.Status.SKIPPED if skipped else Run.Status.QUEUED,
                skip_reason=item.skip_reason,
                context={
                    "params": item.task.params,
                    "event": item.event,
                    "now": _logical_now(item.task, item.scheduled_for),
                },
                pipeline=item.task.pipeline,
                jitter_seconds=item.jitter_seconds,
                dispatch_count=1 if dispatching else 0,
                finished_at=now if skipped else None,
                deadline_at=None if skipped or item.hold else _queued_deadline(now, item.jitter_seconds),
            )
        )
    if not rows:
        return []
    Run.objects.bulk_create(rows, ignore_conflicts=True)
    inserted = set(Run.objects.filter(pk__in=[row.pk for row in rows]).values_list("pk", flat=True))
    created = [(row, item) for row, item in zip(rows, items, strict=True) if row.pk in inserted]
    StepRun.objects.bulk_create(
        [step for row, _ in created if row.status == Run.Status.QUEUED for step in _new_steps(row)], batch_size=1000
    )
    for row, item in created:
        if row.status == Run.Status.QUEUED and not item.hold and not _jitter_parked(item.jitter_seconds):
            _dispatch_on_commit(row, item.task, counted=row.dispatch_count == 1)
    return [row for row, _ in created]


def _reused_step(run: Run, old: StepRun) -> StepRun:
    return StepRun(
        run=run,
        index=old.index,
        step_id=old.step_id,
        uses=old.uses,
        status=old.status,
        attempts=0,
        input=old.input,
        output=old.output,
        error=old.error,
        attempt_history=[{"outcome": "reused", "from_run": str(old.run_id)}],
        started_at=old.started_at,
        finished_at=old.finished_at,
        duration_ms=old.duration_ms,
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
        timeouts = [step_timeout_s(task=run.task, step=step) for step in run.pipeline]
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


# --- Run transitions ---------------------------------------------------------------------------


def run_on_terminal(*, run: Run) -> None:
    """Called once after each transition of a run to succeeded, failed or canceled (after commit).

    The scheduling policies hook in here (overlap=queue starts the next queued occurrence). Runs
    created already skipped do not pass through here. It must not raise into the engine.
    """
    if run.task.overlap == "queue":  # Task.Overlap.QUEUE; other tasks pay nothing here
        run_release_held(task_id=run.task_id)


def _held(queryset: Any) -> Any:
    """Runs waiting for their turn (overlap=queue): queued, never dispatched, no deadline."""
    return queryset.filter(status=Run.Status.QUEUED, deadline_at__isnull=True, dispatch_count=0)


def run_release_held(*, task_id: Any) -> Run | None:
    """Start the oldest run waiting for its turn, once no other run of its task is active."""
    from tasks.models import Task

    with transaction.atomic():
        # The same lock the fire job takes: a run it holds back is either seen here or sees
        # that nothing is active any more, so no waiting run is left behind.
        if not Task.objects.select_for_update().filter(pk=task_id).exists():
            return None
        runs = Run.objects.filter(task_id=task_id)
        held = _held(runs)
        if runs.filter(status__in=Run.ACTIVE).exclude(pk__in=held.values("pk")).exists():
            return None
        run = held.order_by("scheduled_for", "created_at").first()
        if run is None:
            return None
        run.deadline_at = _queued_deadline(timezone.now(), run.jitter_seconds)
        run.save(update_fields=["deadline_at"])
        if not _jitter_parked(run.jitter_seconds):
            run_id, steps, jitter = run.pk, len(run.pipeline), run.jitter_seconds
            transaction.on_commit(lambda: run_dispatch(run_id=run_id, from_index=0, step_count=steps, countdown=jitter))
    return run


def _after_terminal(run: Run, status: str) -> None:
    run.status = status

    def call() -> None:
        try:
            run_on_terminal(run=run)
        except Exception:
            logger.exception("run_on_terminal failed", extra={"run": str(run.pk)})

    transaction.on_commit(call)


def run_finish_empty(*, run_id: uuid.UUID) -> None:
    now = timezone.now()
    won = Run.objects.filter(pk=run_id, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).update(
        status=Run.Status.SUCCEEDED, started_at=Coalesce(F("started_at"), Value(now)), finished_at=now, deadline_at=None
    )
    if won:
        _after_terminal(Run.objects.get(pk=run_id), Run.Status.SUCCEEDED)


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
        _after_terminal(run, Run.Status.SUCCEEDED)
    return won


def run_fail(*, run: Run, error: dict[str, Any], from_status: str = Run.Status.RUNNING) -> bool:
    won = bool(
        Run.objects.filter(pk=run.pk, status=from_status).update(
            status=Run.Status.FAILED, error=error, finished_at=timezone.now(), deadline_at=None
        )
    )
    if won:
        run.error = error
        _after_terminal(run, Run.Status.FAILED)
    return won


def run_extend_deadline(*, run: Run, seconds: float, current_step: int | None = None) -> None:
    """The sweeper leaves the run alone until then (the step is alive, waiting or backing off)."""
    fields: dict[str, Any] = {"deadline_at": timezone.now() + _grace(seconds)}
    if current_step is not None:
        fields["current_step"] = current_step
    Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(**fields)


def run_cancel(*, run: Run, actor: Actor) -> Run:
    """Any active run -> canceled: its chain is revoked, running or waiting steps end as failed
    (code `canceled`), later steps never start."""
    now = timezone.now()
    with transaction.atomic():
        won = Run.objects.filter(pk=run.pk, status__in=Run.ACTIVE).update(
            status=Run.Status.CANCELED, finished_at=now, deadline_at=None
        )
        if not won:
            current = Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()
            raise Conflict(f"the run is {current}; only queued, running or waiting runs can be canceled")
        Approval.objects.filter(run=run, status=Approval.Status.PENDING).update(
            status=Approval.Status.CANCELED, decided_at=now, decided_by=_actor_dict(actor)
        )
        # A running step may be waiting (approval, wait, retry backoff) with no worker to end it:
        # end them all here. A tool call in flight completes, but its output is not recorded.
        StepRun.objects.filter(run=run, status=StepRun.Status.RUNNING).update(
            status=StepRun.Status.FAILED,
            error=StepCanceled("the run was canceled while this step was running or waiting").as_dict(),
            finished_at=now,
            resume_at=None,
        )
        audit_record(actor=actor, action="run.cancel", subject_type="run", subject_id=run.pk, details={})
        run_id = str(run.pk)
        transaction.on_commit(lambda: _revoke_chain(run_id))
        run.refresh_from_db()
        _after_terminal(run, Run.Status.CANCELED)
    return run


def _revoke_chain(run_id: str) -> None:
    try:
        current_app.control.revoke_by_stamped_headers({"run_id": run_id}, terminate=False)
    except Exception:  # the run is canceled in the database either way; steps check it first
        logger.exception("could not broadcast the revoke of run %s", run_id)


def _actor_dict(actor: Actor) -> dict[str, str]:
    return {"kind": actor.kind, "id": actor.id, "name": actor.name}


# --- Step transitions --------------------------------------------------------------------------


@dataclass
class Claim:
    """A step this message now owns, and when this attempt began."""

    step: StepRun
    at: datetime


def step_claim(*, run: Run, index: int, claim_id: str, timeout_s: float) -> Claim | None:
    """pending -> running for this message, or resume a step this same message was running
    (broker redelivery, retry countdown). None when another message owns it, it is done, or the
    run is no longer queued or running. Resuming a step that suspended itself (a wait) is not a
    new attempt. In the same transaction the run records its progress (current step, deadline)
    and, if it was queued, starts (queued -> running, with its logical `now` when it had none);
    the in-memory run follows."""
    now = timezone.now()
    deadline = now + _grace(timeout_s + settings.ORDINAUT_RUNNING_GRACE_S)
    if connection.vendor == "postgresql":
        step = _step_claim_one_statement(run=run, index=index, claim_id=claim_id, now=now, deadline=deadline)
    else:
        step = _step_claim_orm(run=run, index=index, claim_id=claim_id, now=now, deadline=deadline)
    return None if step is None else Claim(step, now)


# On PostgreSQL the claim is one statement: the conditional UPDATEs of the step and of the run in
# data-modifying CTEs, the claimed row returned. One round trip and one commit instead of six and
# two: the claim is the largest part of what each step pays the database.
_CLAIM_SQL = """
WITH claimed AS (
    UPDATE runs_steprun
       SET status = 'running',
           claim_id = %(claim_id)s,
           attempts = CASE WHEN resume_at IS NULL THEN attempts + 1 ELSE attempts END,
           started_at = COALESCE(started_at, %(now)s)
     WHERE run_id = %(run_id)s AND index = %(index)s
       AND (status = 'pending' OR (status = 'running' AND claim_id = %(claim_id)s))
       AND EXISTS (SELECT 1 FROM runs_run WHERE id = %(run_id)s AND status IN ('queued', 'running'))
 RETURNING id, run_id, index, step_id, uses, status, attempts, input, claim_id, attempt_history,
           resume_at, started_at
), progressed AS (
    UPDATE runs_run
       SET current_step = %(index)s,
           deadline_at = %(deadline)s,
           status = 'running',
           started_at = COALESCE(started_at, %(now)s),
           context = CASE WHEN context->>'now' IS NULL
                          THEN jsonb_set(context, '{now}', to_jsonb(%(now_local)s::text))
                          ELSE context END
     WHERE id = %(run_id)s AND status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM claimed)
 RETURNING status, started_at, context
)
SELECT claimed.*, progressed.* FROM claimed LEFT JOIN progressed ON true
"""
_CLAIM_COLUMNS = (
    "id",
    "run_id",
    "index",
    "step_id",
    "uses",
    "status",
    "attempts",
    "input",
    "claim_id",
    "attempt_history",
    "resume_at",
    "started_at",
)


def _step_claim_one_statement(
    *, run: Run, index: int, claim_id: str, now: datetime, deadline: datetime
) -> StepRun | None:
    params: dict[str, Any] = {
        "claim_id": claim_id,
        "now": now,
        "run_id": run.pk,
        "index": index,
        "deadline": deadline,
        "now_local": _logical_now(run.task, now),
    }
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = dict(zip(_CLAIM_COLUMNS, row[: len(_CLAIM_COLUMNS)], strict=True))
    for name in ("input", "attempt_history"):  # jsonb arrives as text, as for the ORM's JSONField
        if isinstance(values[name], str):
            values[name] = json.loads(values[name])
    run_status, run_started_at, run_context = row[len(_CLAIM_COLUMNS) :]
    if run_status is not None:
        run.status, run.started_at = run_status, run_started_at
        run.context = json.loads(run_context) if isinstance(run_context, str) else run_context
    return model_from_columns(StepRun, values)  # type: ignore[no-any-return]


def _step_claim_orm(*, run: Run, index: int, claim_id: str, now: datetime, deadline: datetime) -> StepRun | None:
    with transaction.atomic():
        if run.status == Run.Status.QUEUED and not run_mark_running(run=run):
            run.refresh_from_db(fields=["status", "started_at", "context"])
        if run.status != Run.Status.RUNNING:
            return None
        # Row lock where the database has one (SQLite's IMMEDIATE transactions lock it all).
        found = list(StepRun.objects.select_for_update().filter(run_id=run.pk, index=index).order_by()[:1])
        if not found:
            return None
        step = found[0]
        mine = step.status == StepRun.Status.RUNNING and step.claim_id == claim_id
        if step.status != StepRun.Status.PENDING and not mine:
            return None
        if step.resume_at is None:
            step.attempts += 1
        step.status, step.claim_id = StepRun.Status.RUNNING, claim_id
        step.started_at = step.started_at or now
        StepRun.objects.filter(pk=step.pk).update(
            status=step.status, claim_id=claim_id, attempts=step.attempts, started_at=step.started_at
        )
        Run.objects.filter(pk=run.pk).update(current_step=index, deadline_at=deadline)
    return step


def step_get(*, run: Run, index: int) -> StepRun | None:
    return StepRun.objects.filter(run=run, index=index).first()


def _finish_fields(step: StepRun) -> dict[str, Any]:
    now = timezone.now()
    duration = None
    if step.started_at is not None:
        duration = max(0, int((now - step.started_at).total_seconds() * 1000))
    return {"finished_at": now, "duration_ms": duration, "resume_at": None}


def _owned(step: StepRun) -> Any:
    return StepRun.objects.filter(pk=step.pk, status=StepRun.Status.RUNNING, claim_id=step.claim_id)


# The other statement every step runs; on PostgreSQL written out, for the same reason as the claim.
_SUCCEED_SQL = """
UPDATE runs_steprun
   SET status = 'succeeded', input = %s::jsonb, output = %s::jsonb, error = NULL,
       attempt_history = %s::jsonb, finished_at = %s, duration_ms = %s, resume_at = NULL
 WHERE id = %s AND status = 'running' AND claim_id = %s
"""


def _jsonb(value: Any) -> str | None:
    """A JSONField value as SQL sees it: Python None is SQL NULL, as the ORM stores it."""
    return None if value is None else json.dumps(value)


# The last step of a run: the step and its run succeed in one statement.
_SUCCEED_LAST_SQL = """
WITH done AS (
    UPDATE runs_steprun
       SET status = 'succeeded', input = %(input)s::jsonb, output = %(output)s::jsonb, error = NULL,
           attempt_history = %(history)s::jsonb, finished_at = %(now)s, duration_ms = %(duration)s,
           resume_at = NULL
     WHERE id = %(step_id)s AND status = 'running' AND claim_id = %(claim_id)s
 RETURNING id
), finished AS (
    UPDATE runs_run
       SET status = 'succeeded', result = %(output)s::jsonb, finished_at = %(now)s, deadline_at = NULL,
           current_step = %(steps)s
     WHERE id = %(run_id)s AND status = 'running' AND EXISTS (SELECT 1 FROM done)
 RETURNING id
)
SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM finished)
"""


def step_succeed(
    *,
    step: StepRun,
    input: Any,
    output: Any,
    output_json: str | None = None,
    history: list[dict[str, Any]] | None = None,
    finish_run: Run | None = None,
) -> bool:
    """running -> succeeded, only for the message that claimed it. With `finish_run` (the last
    step), its run succeeds too, with the output as its result, in the same transaction.
    `output_json`: the output already serialized (the engine's size check made it), reused."""
    fields = _finish_fields(step)
    if history is not None:
        fields["attempt_history"] = history
    if connection.vendor == "postgresql" and history is not None:
        # Python None is SQL NULL, as the ORM stores it, not the JSON text "null".
        output_text = output_json if output_json is not None and output is not None else _jsonb(output)
        if finish_run is not None:
            return _step_and_run_succeed(step, finish_run, input, output, output_text, history, fields)
        params = [
            _jsonb(input),
            output_text,
            json.dumps(history),
            fields["finished_at"],
            fields["duration_ms"],
            step.pk,
            step.claim_id,
        ]
        with connection.cursor() as cursor:
            cursor.execute(_SUCCEED_SQL, params)
            return bool(cursor.rowcount)
    with transaction.atomic():
        won = bool(
            _owned(step).update(status=StepRun.Status.SUCCEEDED, input=input, output=output, error=None, **fields)
        )
        if won and finish_run is not None:
            run_succeed(run=finish_run, result=output)
    return won


def _step_and_run_succeed(
    step: StepRun,
    run: Run,
    input: Any,
    output: Any,
    output_text: str | None,
    history: list[dict[str, Any]],
    fields: dict[str, Any],
) -> bool:
    params: dict[str, Any] = {
        "input": _jsonb(input),
        "output": output_text,
        "history": json.dumps(history),
        "now": fields["finished_at"],
        "duration": fields["duration_ms"],
        "step_id": step.pk,
        "claim_id": step.claim_id,
        "run_id": run.pk,
        "steps": len(run.pipeline),
    }
    with connection.cursor() as cursor:
        cursor.execute(_SUCCEED_LAST_SQL, params)
        step_done, run_done = cursor.fetchone()
    if run_done:
        run.result = output
        _after_terminal(run, Run.Status.SUCCEEDED)
    return bool(step_done)


def step_fail(
    *,
    step: StepRun,
    input: Any,
    error: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    output: Any = None,
) -> bool:
    fields = _finish_fields(step)
    if history is not None:
        fields["attempt_history"] = history
    return bool(_owned(step).update(status=StepRun.Status.FAILED, input=input, output=output, error=error, **fields))


def step_skip(*, step: StepRun) -> bool:
    """running -> skipped: its `if` was false. No attempt was made; the output is null."""
    return bool(
        _owned(step).update(
            status=StepRun.Status.SKIPPED, attempts=0, input=None, output=None, error=None, **_finish_fields(step)
        )
    )


def step_retry_later(
    *, run: Run, step: StepRun, input: Any, error: dict[str, Any], history: list[dict[str, Any]], delay_s: float
) -> bool:
    """The attempt failed transiently: the step stays running under the same claim (the retry
    message has the same id) and the sweeper waits out the delay before calling it lost."""
    won = bool(_owned(step).update(input=input, error=error, attempt_history=history))
    if won:
        timeout_s = step_timeout_s(task=run.task, step=run.pipeline[step.index])
        run_extend_deadline(run=run, seconds=delay_s + timeout_s + settings.ORDINAUT_RUNNING_GRACE_S)
    return won


def step_suspend(*, run: Run, step: StepRun, input: Any, until: datetime, parked: bool) -> bool:
    """The tool asked to be called again at `until` (orchestrator.wait). Short waits come back
    by countdown; parked ones are re-dispatched by the sweeper once `until` passes."""
    won = bool(_owned(step).update(input=input, resume_at=until))
    if won:
        now = timezone.now()
        if parked:
            deadline = until
        else:
            timeout_s = step_timeout_s(task=run.task, step=run.pipeline[step.index])
            deadline = until + _grace(timeout_s + settings.ORDINAUT_RUNNING_GRACE_S)
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(deadline_at=max(deadline, now))
    return won


# --- Approvals ---------------------------------------------------------------------------------


def approval_request(
    *, run: Run, step: StepRun, input: Any, message: str, data: Any, timeout_s: float
) -> Approval | None:
    """running -> waiting_approval: the step stays running until a decision or expiry closes it.
    None when the run stopped running meanwhile (canceled)."""
    now = timezone.now()
    with transaction.atomic():
        approval, _ = Approval.objects.get_or_create(
            run=run,
            step_index=step.index,
            defaults={
                "step_id": step.step_id,
                "message": message,
                "data": data,
                "expires_at": now + _grace(timeout_s),
            },
        )
        _owned(step).update(input=input)
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.WAITING_APPROVAL, deadline_at=None, current_step=step.index
        )
        if not won:
            Approval.objects.filter(pk=approval.pk, status=Approval.Status.PENDING).update(
                status=Approval.Status.CANCELED, decided_at=now
            )
            return None
    return approval


def approval_decide(*, run: Run, approve: bool, actor: Actor, items: list[Any] | None = None, comment: str = "") -> Run:
    """A human decision on the run's pending approval; the rest of the pipeline resumes on a
    fresh chain (or the run fails: see approval_close)."""
    with transaction.atomic():
        # Lock the run row: a concurrent cancel, expiry or second decision waits for this one.
        locked = Run.objects.select_for_update().select_related("task").filter(pk=run.pk).first()
        if locked is None or locked.status != Run.Status.WAITING_APPROVAL:
            status = locked.status if locked else "gone"
            raise Conflict(f"the run is {status}; only a run waiting for approval can be approved or rejected")
        approval = Approval.objects.filter(run=locked, status=Approval.Status.PENDING).order_by("-step_index").first()
        if approval is None:
            raise Conflict("the run has no pending approval")
        if approve:
            approved_items = _approved_items(approval, items)
            status = Approval.Status.APPROVED
        else:
            if items:
                raise ValidationFailed.on("items", "only an approval takes items")
            approved_items, status = [], Approval.Status.REJECTED
        approval_close(run=locked, approval=approval, status=status, items=approved_items, comment=comment, actor=actor)
        audit_record(
            actor=actor,
            action="approval.approve" if approve else "approval.reject",
            subject_type="run",
            subject_id=locked.pk,
            details={
                "approval": str(approval.pk),
                "step_id": approval.step_id,
                "approved_items": len(approved_items),
                "comment": comment[:200],
            },
        )
    locked.refresh_from_db()
    return locked


def approval_items(*, approval: Approval) -> list[Any]:
    """The items an approval asks about: its data's items when the data is a list, else the data
    itself as the one item (none when it has no data)."""
    data = approval.data
    return list(data) if isinstance(data, list) else ([] if data is None else [data])


def _approved_items(approval: Approval, items: list[Any] | None) -> list[Any]:
    """The items approved: all of the approval's items when none are named; otherwise each named
    item must be one of them (approvers pick, they do not edit)."""
    candidates = approval_items(approval=approval)
    if items is None:
        return list(candidates)
    if len(items) > MAX_APPROVAL_ITEMS:
        raise ValidationFailed.on("items", f"at most {MAX_APPROVAL_ITEMS} items")
    keys = {_json_key(candidate) for candidate in candidates}
    for position, item in enumerate(items):
        if _json_key(item) not in keys:
            raise ValidationFailed(
                f"items.{position}: is not one of the items this approval asked about",
                fields={f"items.{position}": ["is not one of the items this approval asked about"]},
            )
    return list(items)


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def approval_close(
    *, run: Run, approval: Approval, status: str, items: list[Any], comment: str, actor: Actor | None
) -> None:
    """Record the decision on the approval and its step, then move the run on (call with the run
    row locked). Approved: the pipeline resumes. Rejected or expired: the step fails with the
    decision as its output, and the step's on_error decides: `fail` (default) fails the run,
    `continue` resumes it so a later `if` can look at steps.<id>.status."""
    now = timezone.now()
    decided_by = _actor_dict(actor) if actor is not None else None
    Approval.objects.filter(pk=approval.pk).update(
        status=status, decided_at=now, decided_by=decided_by, comment=comment, approved_items=items
    )
    output = {"status": status, "approved_items": items, "decided_by": decided_by, "comment": comment}
    step = StepRun.objects.get(run=run, index=approval.step_index)
    entry = {
        "attempt": max(step.attempts, 1),
        "started_at": approval.created_at.isoformat(),
        "finished_at": now.isoformat(),
        "duration_ms": int((now - approval.created_at).total_seconds() * 1000),
        "outcome": status,
        "error": None,
    }
    history = [*step.attempt_history, entry]
    step_def = run.pipeline[approval.step_index] if approval.step_index < len(run.pipeline) else {}
    if status == Approval.Status.APPROVED:
        step_succeed(step=step, input=step.input, output=output, history=history)
        go_on = True
    else:
        error = ApprovalDeclined(
            f"approval {status}" + (f" by {decided_by['name']}" if decided_by and decided_by["name"] else ""),
            code=f"approval_{status}",
        ).as_dict()
        step_fail(step=step, input=step.input, error=error, history=history, output=output)
        go_on = step_def.get("on_error") == "continue"
        if not go_on:
            run_fail(
                run=run,
                error={"code": error["code"], "message": error["message"], "step_id": approval.step_id},
                from_status=Run.Status.WAITING_APPROVAL,
            )
            return
    next_index = approval.step_index + 1
    if next_index >= len(run.pipeline):
        run_succeed(run=run, result=output, from_status=Run.Status.WAITING_APPROVAL)
        return
    Run.objects.filter(pk=run.pk, status=Run.Status.WAITING_APPROVAL).update(
        status=Run.Status.RUNNING,
        current_step=next_index,
        deadline_at=now + _grace(settings.ORDINAUT_QUEUED_GRACE_S),
    )
    run_id, steps = run.pk, len(run.pipeline)
    transaction.on_commit(lambda: run_dispatch(run_id=run_id, from_index=next_index, step_count=steps))


def approval_expire(*, run_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Expire the run's pending approval if its time is up (the sweeper calls this)."""
    now = now or timezone.now()
    with transaction.atomic():
        # SKIP LOCKED: a run another sweeper (or a decision) holds is theirs to finish.
        run = _locking(Run.objects.select_related("task")).filter(pk=run_id, status=Run.Status.WAITING_APPROVAL).first()
        if run is None:
            return False
        approval = Approval.objects.filter(run=run, status=Approval.Status.PENDING, expires_at__lte=now).first()
        if approval is None:
            return False
        approval_close(run=run, approval=approval, status=Approval.Status.EXPIRED, items=[], comment="", actor=None)
        audit_record(
            actor=SYSTEM,
            action="approval.expire",
            subject_type="run",
            subject_id=run.pk,
            details={"approval": str(approval.pk), "step_id": approval.step_id},
        )
    return True


def _locking(queryset: Any) -> Any:
    """select_for_update(skip_locked=True) where the database has it; SQLite serialises writers
    anyway, and the conditional updates that follow keep two sweepers from both winning."""
    if not connection.features.has_select_for_update:
        return queryset
    return queryset.select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)


# --- Replay ------------------------------------------------------------------------------------

REPLAY_FROM = ("failed_step", "start")


def run_replay(*, run: Run, from_: str, actor: Actor) -> Run:
    """A new run of a failed or canceled run's task, with the same params, event and logical
    time, linked by replay_of. From the failed step: the steps before it keep their stored
    outputs (copied, not re-run), provided the task's pipeline still has them unchanged."""
    if from_ not in REPLAY_FROM:
        raise ValidationFailed.on("from", f"must be one of {', '.join(REPLAY_FROM)}")
    if run.status not in (Run.Status.FAILED, Run.Status.CANCELED):
        raise Conflict(f"the run is {run.status}; only failed or canceled runs can be replayed")
    task = run.task
    if task.deleted_at is not None or task.status == task.Status.CANCELED:
        raise Conflict("the run's task is deleted or canceled; it cannot run again")
    pipeline = task.pipeline
    start_index, reused = 0, list[StepRun]()
    if from_ == "failed_step":
        start_index, reused = _replay_reuse(run, pipeline)
    context = {
        "params": run.context.get("params") or {},
        "event": run.context.get("event"),
        "now": run.context.get("now"),
    }
    for _ in range(MAX_REPLAY_KEY_TRIES):
        number = Run.objects.filter(replay_of=run).count() + 1
        try:
            return _run_insert(
                task=task,
                trigger=Run.Trigger.REPLAY,
                trigger_key=f"replay:{run.pk}:{number}",
                scheduled_for=None,
                context=context,
                pipeline=pipeline,
                replay_of=run,
                actor=actor,
                status=Run.Status.QUEUED,
                start_index=start_index,
                reused=reused,
            )
        except RunAlreadyExists:  # a concurrent replay took this number
            continue
    raise Conflict("could not allocate a replay number; try again")


def _replay_reuse(run: Run, pipeline: list[dict[str, Any]]) -> tuple[int, list[StepRun]]:
    old_steps = list(StepRun.objects.filter(run=run).order_by("index"))
    failed_id = (run.error or {}).get("step_id")
    start = next((s.index for s in old_steps if failed_id and s.step_id == failed_id), None)
    if start is None:
        start = next((s.index for s in old_steps if s.status not in StepRun.DONE), len(old_steps))
    for old in old_steps[:start]:
        current = pipeline[old.index] if old.index < len(pipeline) else None
        if current is None or step_id_of(current, old.index) != old.step_id or current.get("uses") != old.uses:
            raise Conflict(
                f"the task's pipeline changed before step {old.step_id!r}; replay from start instead",
                fields={"from": ["the steps before the failed one changed"]},
            )
    return start, old_steps[:start]


# --- Recovery sweeper --------------------------------------------------------------------------


def runs_sweep(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> dict[str, int]:
    """One pass of the recovery sweeper: expire due approvals, then re-dispatch runs whose
    deadline passed (lost publish, dead worker, parked wait now due). Safe on several workers."""
    now = now or timezone.now()
    expired = 0
    due_approvals = (
        Approval.objects.filter(status=Approval.Status.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("run_id", flat=True)[:limit]
    )
    for run_id in list(due_approvals):
        expired += approval_expire(run_id=run_id, now=now)
    recovered = 0
    stuck = (
        Run.objects.filter(status__in=[Run.Status.QUEUED, Run.Status.RUNNING], deadline_at__lte=now)
        .order_by("deadline_at")
        .values_list("pk", flat=True)[:limit]
    )
    for run_id in list(stuck):
        recovered += run_recover(run_id=run_id, now=now)
    # A waiting run (overlap=queue) whose release was lost with a crashed worker.
    waiting = _held(Run.objects.order_by()).values_list("task_id", flat=True).distinct()[:limit]
    for task_id in list(waiting):
        recovered += run_release_held(task_id=task_id) is not None
    if expired or recovered:
        logger.info("sweeper: %s approvals expired, %s runs re-dispatched", expired, recovered)
    return {"approvals_expired": expired, "runs_recovered": recovered}


def run_recover(*, run_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Re-dispatch a run stuck past its deadline from its first unfinished step. A step left
    running by a lost message goes back to pending, so the new message can claim it."""
    now = now or timezone.now()
    with transaction.atomic():
        # SKIP LOCKED: two sweepers never handle the same run; the other one moves on.
        run = (
            _locking(Run.objects.select_related("task"))
            .filter(pk=run_id, status__in=[Run.Status.QUEUED, Run.Status.RUNNING], deadline_at__lte=now)
            .first()
        )
        if run is None:
            return False
        # The conditional update is the claim where SKIP LOCKED is not available (SQLite).
        claimed = Run.objects.filter(pk=run.pk, status=run.status, deadline_at=run.deadline_at).update(
            deadline_at=now + _grace(settings.ORDINAUT_QUEUED_GRACE_S)
        )
        if not claimed:
            return False
        steps = list(StepRun.objects.filter(run=run).order_by("index"))
        unfinished = [s for s in steps if s.status in (StepRun.Status.PENDING, StepRun.Status.RUNNING)]
        if not unfinished:
            _finish_recovered(run, steps)
            return True
        first = unfinished[0]
        StepRun.objects.filter(run=run, index__gte=first.index, status=StepRun.Status.RUNNING).update(
            status=StepRun.Status.PENDING, claim_id=""
        )
        Run.objects.filter(pk=run.pk).update(current_step=first.index)
        if run.dispatch_count == 0 and run.status == Run.Status.QUEUED:
            logger.info("starting run %s: its jitter, held in the database, is over", run.pk)
        else:
            logger.warning(
                "re-dispatching run %s from step %s (%s past its deadline)", run.pk, first.index, now - run.deadline_at
            )
        run_id_, count = run.pk, len(steps)
        timeouts = [step_timeout_s(task=run.task, step=step) for step in run.pipeline]
        transaction.on_commit(
            lambda: run_dispatch(run_id=run_id_, from_index=first.index, step_count=count, timeouts=timeouts)
        )
    return True


def _finish_recovered(run: Run, steps: list[StepRun]) -> None:
    """Every step is done but the run was not closed (the worker died in between): close it."""
    if run.status == Run.Status.QUEUED:
        run_mark_running(run=run)
    for step in steps:
        on_error = run.pipeline[step.index].get("on_error") if step.index < len(run.pipeline) else None
        if step.status == StepRun.Status.FAILED and on_error != "continue":
            error = step.error or {}
            run_fail(
                run=run,
                error={
                    "code": error.get("code", "step_failed"),
                    "message": error.get("message", ""),
                    "step_id": step.step_id,
                },
            )
            return
    run_succeed(run=run, result=steps[-1].output if steps else None)


def runs_record_skipped(*, task: Task, occurrences: list[tuple[str, datetime]], reason: str) -> int:
    """Bulk-record skipped runs (no steps) for (trigger_key, scheduled_for) pairs; pairs that
    already have a run are left alone. Returns how many were recorded."""
    now = timezone.now()
    rows = [
        Run(
            task=task,
            trigger=Run.Trigger.SCHEDULE,
            trigger_key=key,
            scheduled_for=at,
            status=Run.Status.SKIPPED,
            skip_reason=reason,
            finished_at=now,
            pipeline=task.pipeline,
            context={"params": task.params, "event": None, "now": _logical_now(task, at)},
        )
        for key, at in occurrences
    ]
    keys = [key for key, _ in occurrences]
    before = Run.objects.filter(task=task, trigger_key__in=keys).count()
    Run.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    return Run.objects.filter(task=task, trigger_key__in=keys).count() - before
