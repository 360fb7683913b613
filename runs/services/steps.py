"""A step run's status changes: the claim a step job makes, and how each attempt ends (succeeded,
failed, skipped, retried later, suspended), with the run following by the rule in state.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ..models import Run, StepRun
from ..selectors import STEP_ROW_COLUMNS, STEP_ROW_SELECT, model_from_columns, run_from_step_row
from .deadlines import running_deadline, step_timeout_s
from .state import After, after_terminal, is_last_step, run_after_step, run_extend_deadline, run_mark_running

# --- Step transitions --------------------------------------------------------------------------


@dataclass
class Claim:
    """A step this message now owns, and when this attempt began."""

    step: StepRun
    at: datetime
    # This claim started its run (queued -> running); step_claim_loaded says, step_claim's caller sees.
    started_run: bool = False


def step_claim(*, run: Run, index: int, claim_id: str, timeout_s: float) -> Claim | None:
    """pending -> running for this message, or resume a step this same message was running
    (broker redelivery, retry countdown). None when another message owns it, it is done, or the
    run is no longer queued or running. Resuming a step that suspended itself (a wait) is not a
    new attempt. In the same transaction the run records its progress (current step, deadline)
    and, if it was queued, starts (queued -> running, with its logical `now` when it had none);
    the in-memory run follows."""
    now = timezone.now()
    deadline = running_deadline(now, timeout_s)
    if connection.vendor == "postgresql":
        step = _step_claim_one_statement(run=run, index=index, claim_id=claim_id, now=now, deadline=deadline)
    else:
        step = _step_claim_orm(run=run, index=index, claim_id=claim_id, now=now, deadline=deadline)
    return None if step is None else Claim(step, now)


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
# pending -> running for this message (or this message's own running step, resumed), while the run
# is queued or running and the step before it is done: the first part of both claim statements
# below. (A step's success does not wait for the disk, see step_succeed: the next step's claim is
# what keeps a chain from going on past a success a database crash lost.)
_CLAIMED_CTE = f"""
claimed AS (
    UPDATE runs_steprun
       SET status = 'running',
           claim_id = %(claim_id)s,
           attempts = CASE WHEN resume_at IS NULL THEN attempts + 1 ELSE attempts END,
           attempt_history = CASE WHEN resume_at IS NULL
                                  THEN attempt_history || jsonb_build_array(jsonb_build_object(
                                       'attempt', attempts + 1, 'started_at', %(now_text)s::text,
                                       'outcome', 'running'))
                                  ELSE attempt_history END,
           started_at = COALESCE(started_at, %(now)s)
     WHERE run_id = %(run_id)s AND index = %(index)s
       AND (status = 'pending' OR (status = 'running' AND claim_id = %(claim_id)s))
       AND EXISTS (SELECT 1 FROM runs_run WHERE id = %(run_id)s AND status IN ('queued', 'running'))
       AND (%(index)s = 0 OR EXISTS (SELECT 1 FROM runs_steprun prior
                                      WHERE prior.run_id = %(run_id)s AND prior.index = %(index)s - 1
                                        AND prior.status IN ('succeeded', 'failed', 'skipped')))
 RETURNING {", ".join(_CLAIM_COLUMNS)}
)"""  # noqa: S608 - constant column names, values are parameters
# The run's side of a claim: it records its progress (current step, deadline) and starts if it was
# queued, its logical `now` computed in SQL from the task's timezone as logical_now() writes it (ISO
# 8601, to the second, with the offset) when it had none.
_PROGRESSED_CTE = """
progressed AS (
    UPDATE runs_run
       SET current_step = %(index)s,
           deadline_at = %(deadline)s,
           status = 'running',
           started_at = COALESCE(runs_run.started_at, %(now)s),
           context = CASE WHEN runs_run.context->>'now' IS NULL
                          THEN jsonb_set(runs_run.context, '{now}', to_jsonb(local.now_text))
                          ELSE runs_run.context END
      FROM tasks_task t,
           LATERAL (SELECT to_char(date_trunc('second', at_local), 'YYYY-MM-DD"T"HH24:MI:SS')
                           || CASE WHEN offset_ < interval '0' THEN '-' ELSE '+' END
                           || to_char(CASE WHEN offset_ < interval '0' THEN -offset_ ELSE offset_ END, 'HH24:MI')
                           AS now_text
                      FROM (SELECT %(now)s::timestamptz AT TIME ZONE t.timezone AS at_local,
                                   (%(now)s::timestamptz AT TIME ZONE t.timezone)
                                   - (%(now)s::timestamptz AT TIME ZONE 'UTC') AS offset_) parts) local
     WHERE runs_run.id = %(run_id)s AND t.id = runs_run.task_id
       AND runs_run.status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM claimed)
 RETURNING runs_run.status, runs_run.started_at, runs_run.context
)"""
# On PostgreSQL the claim is one statement: the conditional UPDATEs of the step and of the run in
# data-modifying CTEs, the claimed row returned. One round trip and one commit instead of six and
# two: the claim is the largest part of what each step pays the database.
_CLAIM_SQL = f"""
WITH {_CLAIMED_CTE}, {_PROGRESSED_CTE}
SELECT claimed.*, progressed.* FROM claimed LEFT JOIN progressed ON true
"""  # noqa: S608 - constant column names, values are parameters


# Two of a step's writes are not worth a wait for the disk (a WAL flush, milliseconds on most disks,
# each time): their commits do not wait for it (synchronous_commit off for that statement), and
# the next write that does wait (a run's end, a failure, a run's creation) flushes them too.
# - The claim. One lost with a database crash leaves the step as it was before, which its job,
#   still holding its message, claims again when it retries on the lost connection: what a kept
#   claim would have led to as well.
# - The success of a step that is not the last. One lost with a crash leaves the step running (or
#   pending); the next step's message, already sent, finds the step before it not done and does
#   not claim (_CLAIMED_CTE), so the chain stops there, and the sweeper re-runs the step at the
#   run's deadline (a tool call that may run twice, as with a lost worker). A run's end (success or
#   failure) waits for the flush: what follows it (a held run released, an event emitted, the
#   API's answer) must not be undone.
# Visibility is not affected: other sessions see an asynchronous commit at once. In one
# simple-protocol query string, SET LOCAL holds for that statement's implicit transaction alone.
# Only in autocommit (inside a transaction it would hold for everything else there) and with
# client-side binding (Django's default for psycopg), which sends the query string as it is.
_COMMIT_ASYNC = "SET LOCAL synchronous_commit = off;\n"


def execute_commit_async(cursor: Any, sql: str, params: Any) -> None:
    """Execute one statement whose commit does not wait for the WAL flush when it can (in
    autocommit, with client-side binding); the cursor is then at that statement's result."""
    if not connection.in_atomic_block and isinstance(cursor.cursor, psycopg.ClientCursor):
        cursor.execute(_COMMIT_ASYNC + sql, params)
        cursor.nextset()  # past the SET's result
    else:
        cursor.execute(sql, params)


def claim_fetch(sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Execute a claim statement (its commit not waiting for the flush) and return its one row."""
    with connection.cursor() as cursor:
        execute_commit_async(cursor, sql, params)
        row: tuple[Any, ...] | None = cursor.fetchone()
    return row


def _claim_params(*, run_id: Any, index: int, claim_id: str, now: datetime, deadline: datetime) -> dict[str, Any]:
    return {
        "claim_id": claim_id,
        "now": now,
        "run_id": run_id,
        "index": index,
        "deadline": deadline,
        "now_text": now.isoformat(),
    }


def _step_claim_one_statement(
    *, run: Run, index: int, claim_id: str, now: datetime, deadline: datetime
) -> StepRun | None:
    params = _claim_params(run_id=run.pk, index=index, claim_id=claim_id, now=now, deadline=deadline)
    row = claim_fetch(_CLAIM_SQL, params)
    return None if row is None else _claimed_step(run, row)


# The claim of a step job whose message carries the step's timeout, in the same statement as the
# load of its run and task (the first thing a step job would otherwise do, a round trip of its
# own): the claim above, then the run and task rows as the statement's snapshot saw them (before
# the claim) and the claimed step, if any. The run is returned even when the claim fails (another
# message owns the step, the run is scheduled or finished), for the engine to decide what that means.
_CLAIM_LOAD_SQL = f"""
WITH {_CLAIMED_CTE}, {_PROGRESSED_CTE}
SELECT {STEP_ROW_SELECT}, claimed.*, progressed.*
  FROM runs_run r JOIN tasks_task t ON t.id = r.task_id
  LEFT JOIN claimed ON true LEFT JOIN progressed ON true
 WHERE r.id = %(run_id)s
"""  # noqa: S608 - constant column names, values are parameters


def step_claim_loaded(*, run_id: str, index: int, claim_id: str, timeout_s: float) -> tuple[Run, Claim | None] | None:
    """On PostgreSQL, for a step job whose message carries its step's timeout: the step claim of
    step_claim() and the load of the run with its task (run_get_for_step) in one statement. None
    when the run does not exist; else the run, following the claim, and the claim (None when
    step_claim would have returned None)."""
    now = timezone.now()
    params = _claim_params(
        run_id=run_id, index=index, claim_id=claim_id, now=now, deadline=running_deadline(now, timeout_s)
    )
    row = claim_fetch(_CLAIM_LOAD_SQL, params)
    if row is None:
        return None
    run = run_from_step_row(row)
    was_queued = run.status == Run.Status.QUEUED
    step = _claimed_step(run, row[STEP_ROW_COLUMNS:])
    if step is None:
        return run, None
    return run, Claim(step, now, started_run=was_queued and run.status == Run.Status.RUNNING)


def _claimed_step(run: Run, row: tuple[Any, ...]) -> StepRun | None:
    """The step from the columns a claim statement returns (claimed's, then progressed's), the
    in-memory run following its own update; None when nothing was claimed."""
    if row[0] is None:
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
        if index > 0 and not StepRun.objects.filter(run_id=run.pk, index=index - 1, status__in=StepRun.DONE).exists():
            return None  # the step before it is not done (as the PostgreSQL claim checks)
        if step.resume_at is None:
            step.attempts += 1
            step.attempt_history = [*(step.attempt_history or []), attempt_started(step.attempts, now)]
        step.status, step.claim_id = StepRun.Status.RUNNING, claim_id
        step.started_at = step.started_at or now
        StepRun.objects.filter(pk=step.pk).update(
            status=step.status,
            claim_id=claim_id,
            attempts=step.attempts,
            started_at=step.started_at,
            attempt_history=step.attempt_history,
        )
        Run.objects.filter(pk=run.pk).update(current_step=index, deadline_at=deadline)
    return step


def attempt_started(number: int, at: datetime) -> dict[str, Any]:
    """The history entry a claim writes as an attempt starts; the attempt's end replaces it, and
    one never ended (its worker died) reads as lost, with its start time."""
    return {"attempt": number, "started_at": at.isoformat(), "outcome": "running"}


def history_with(history: list[dict[str, Any]] | None, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempt history with `entry` in place of the entry of the same attempt (its start)."""
    return [*(item for item in history or [] if item.get("attempt") != entry.get("attempt")), entry]


def step_get(*, run: Run, index: int) -> StepRun | None:
    return StepRun.objects.filter(run=run, index=index).first()


def _finish_fields(step: StepRun) -> dict[str, Any]:
    now = timezone.now()
    duration = None
    if step.started_at is not None:
        duration = max(0, int((now - step.started_at).total_seconds() * 1000))
    return {"finished_at": now, "duration_ms": duration, "resume_at": None}


def owned_by_claim(step: StepRun) -> Any:
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
            execute_commit_async(cursor, _SUCCEED_SQL, params)
            return bool(cursor.rowcount)
    with transaction.atomic():
        won = bool(
            owned_by_claim(step).update(
                status=StepRun.Status.SUCCEEDED, input=input, output=output, error=None, **fields
            )
        )
        if won and finish_run is not None:
            run_after_step(run=finish_run, index=step.index, step_id=step.step_id, failed=False, output=output)
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
        after_terminal(run, Run.Status.SUCCEEDED)
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
    return bool(
        owned_by_claim(step).update(status=StepRun.Status.FAILED, input=input, output=output, error=error, **fields)
    )


def step_skip(*, step: StepRun) -> bool:
    """running -> skipped: its `if` was false. No attempt was made; the output is null."""
    return bool(
        owned_by_claim(step).update(
            status=StepRun.Status.SKIPPED,
            skip_reason="condition",
            attempts=0,
            attempt_history=[],
            input=None,
            output=None,
            error=None,
            **_finish_fields(step),
        )
    )


def step_retry_later(
    *, run: Run, step: StepRun, input: Any, error: dict[str, Any], history: list[dict[str, Any]], delay_s: float
) -> bool:
    """The attempt failed transiently: the step stays running under the same claim (the retry
    message has the same id) and the sweeper waits out the delay before calling it lost."""
    won = bool(owned_by_claim(step).update(input=input, error=error, attempt_history=history))
    if won:
        timeout_s = step_timeout_s(task=run.task, step=run.pipeline[step.index])
        run_extend_deadline(run=run, seconds=delay_s + timeout_s + settings.ORDINAUT_RUNNING_GRACE_S)
    return won


def step_suspend(*, run: Run, step: StepRun, input: Any, until: datetime, parked: bool) -> bool:
    """The tool asked to be called again at `until` (orchestrator.wait). Short waits come back
    by countdown; parked ones are re-dispatched by the sweeper once `until` passes."""
    won = bool(owned_by_claim(step).update(input=input, resume_at=until))
    if won:
        now = timezone.now()
        if parked:
            deadline = until
        else:
            timeout_s = step_timeout_s(task=run.task, step=run.pipeline[step.index])
            deadline = running_deadline(until, timeout_s)
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(deadline_at=max(deadline, now))
    return won


# --- Approvals ---------------------------------------------------------------------------------


# --- How the engine ends an attempt: the step's record, then the run by the after-step rule -----


def step_succeeded(
    *, run: Run, step: StepRun, input: Any, output: Any, output_json: str | None, history: list[dict[str, Any]]
) -> After | None:
    """Record the success of the step this message claimed and move the run on; None when the
    claim was lost meanwhile (another message finished or reset it, or the run was canceled).
    When the step is the last one, the run's success is written in the same statement."""
    last = is_last_step(run, step.index)
    won = step_succeed(
        step=step,
        input=input,
        output=output,
        output_json=output_json,
        history=history,
        finish_run=run if last else None,
    )
    if not won:
        return None
    return After.RUN_ENDED if last else After.NEXT_STEP


def step_failed(
    *, run: Run, step: StepRun, input: Any, error: dict[str, Any], history: list[dict[str, Any]]
) -> After | None:
    """Record the final failure of the claimed step (no retry left) and move the run on by the
    after-step rule; None when the claim was lost meanwhile."""
    with transaction.atomic():
        if not step_fail(step=step, input=input, error=error, history=history):
            return None
        return run_after_step(run=run, index=step.index, step_id=step.step_id, failed=True, error=error)


def step_skipped(*, run: Run, step: StepRun) -> After | None:
    """The step's `if` was false: record it skipped and move the run on; None when the claim was lost."""
    if not step_skip(step=step):
        return None
    return run_after_step(run=run, index=step.index, step_id=step.step_id, failed=False, output=None)
