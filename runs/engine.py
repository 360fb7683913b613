"""The step engine: executes one step of a run (the step job's body) and records it through the run services."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from ordinaut_site import logs
from ordinaut_site.budgets import budget_charge
from ordinaut_site.errors import AttemptsExhausted, StepError, ToolInputInvalid, ToolOutputInvalid
from pipelines.spec import Step
from pipelines.storable import storable_text
from pipelines.templates import Rendering, condition_evaluate, has_templates, reads_steps, render
from pipelines.tools import AwaitApproval, Suspend, ToolCall, schema_errors, tool_resolve

from . import metrics as run_metrics
from . import services as run_services
from .attempts import (
    RETRY_JITTER_RATIO,
    Attempt,
    Next,
    Outcome,
    RetryIn,
    RetryPolicy,
    attempt_failure,
    retry_delay_s,
    retry_policy,
    template_context,
    tool_call,
)
from .fanout import fan_out
from .models import Run, StepRun
from .selectors import run_get_for_step
from .services import After, Claim

logger = logging.getLogger(__name__)

__all__ = ["RETRY_JITTER_RATIO", "Next", "Outcome", "RetryIn", "RetryPolicy", "retry_delay_s", "step_execute"]


def step_execute(*, run_id: str, index: int, claim_id: str, timeout_s: float | None = None) -> Outcome:
    """Run step `index` of a run, at most once to success per step (record-level idempotency).
    `timeout_s`: the step's timeout as its message carries it (its soft time limit); with it, on
    PostgreSQL, the run is loaded by the statement that claims the step."""
    claimed: Claim | None = None
    tried = timeout_s is not None and connection.vendor == "postgresql"
    if tried:
        assert timeout_s is not None
        loaded = run_services.step_claim_loaded(run_id=run_id, index=index, claim_id=claim_id, timeout_s=timeout_s)
        run, claimed = loaded if loaded is not None else (None, None)
    else:
        run = run_get_for_step(run_id=run_id)
    if run is None:
        logger.warning("step job for a run that does not exist", extra={"run": run_id, "step": index})
        return Next.STOP
    with logs.bind(run=run.pk, task=run.task_id, step=index):
        return _step_execute(run, index, claim_id, claimed, tried=tried and claimed is None)


def _step_execute(run: Run, index: int, claim_id: str, claimed: Claim | None = None, *, tried: bool = False) -> Outcome:
    """`claimed`: the claim step_execute already made (the run is then running). `tried`: it
    tried and got none; run.status is what the run was then."""
    if claimed is not None:
        return _claimed(run, index, claimed, starting=claimed.started_run)
    if run.status == Run.Status.SCHEDULED and index == 0:
        if not run_services.run_due(run=run):
            # Dispatched ahead of its instant and, now that it came, not to run (skipped, or
            # held for its turn: released later with a message of its own).
            logger.info("scheduled run not started: %s", run.skip_reason or "held for its turn")
            return Next.STOP
        tried = False  # it was scheduled when step_execute tried; now it is queued: claim it
    if run.status not in (Run.Status.QUEUED, Run.Status.RUNNING):
        logger.info("run is %s; step %s not started", run.status, index)
        return Next.STOP
    if index >= len(run.pipeline):
        return Next.STOP
    if tried:
        # The claim step_execute tried saw the run queued or running: the step is another's, or done.
        return _after_redelivery(run, index)
    timeout_s = run_services.step_timeout_s(task=run.task, step=run.pipeline[index])
    # The claim also starts a queued run (queued -> running), in the same transaction.
    starting = run.status == Run.Status.QUEUED
    claim = run_services.step_claim(run=run, index=index, claim_id=claim_id, timeout_s=timeout_s)
    if claim is None:
        return _after_redelivery(run, index)
    return _claimed(run, index, claim, starting=starting and run.status == Run.Status.RUNNING)


def _claimed(run: Run, index: int, claim: Claim, *, starting: bool) -> Outcome:
    """The step is this message's: execute it and record how the attempt ended."""
    if starting:
        run_metrics.run_started(run)
    step = Step.of(run.pipeline, index)
    timeout_s = run_services.step_timeout_s(task=run.task, step=run.pipeline[index])
    record = claim.step
    attempt = Attempt(record, claim.at)
    policy = retry_policy(task=run.task, step=step)
    rendered: Any = step.with_

    try:
        # A foreach step's own job calls no tool (its items' jobs do, each counting its attempts):
        # claimed again after a loss, it only sends the items still due.
        if not step.fans_out and record.resume_at is None and record.attempts > policy.max_attempts:
            # Only redeliveries get here: each time the step's worker died mid-call.
            raise AttemptsExhausted(f"gave up after {record.attempts - 1} attempts whose worker was lost")
        condition = step.if_
        templated = has_templates(rendered) or step.fans_out
        context: dict[str, Any] | None = None
        if condition is not None or templated:
            reads = step.fans_out or reads_steps(rendered, condition)
            context = template_context(run, index, with_steps=reads)
        if condition is not None and context is not None:
            decision, _ = condition_evaluate(condition, context)
            if not decision:
                return _next(run_services.step_skipped(run=run, step=record))
        if step.fans_out and context is not None:
            return _next(fan_out(run=run, step=step, record=record, context=context, timeout_s=timeout_s))
        if templated and context is not None:
            rendered = render(rendered, context, Rendering())
        tool = tool_resolve(record.uses)
        problems = schema_errors(tool.input_schema, rendered, prefix="with")
        if problems:
            raise ToolInputInvalid("; ".join(problems))
        if tool.cost > 0 and record.resume_at is None:  # a resumed wait is not a new call
            budget_charge(agent=run.task.owner, cost=tool.cost, tool=tool.name)
        call = ToolCall(
            run_id=str(run.pk),
            step_id=record.step_id,
            timeout_s=timeout_s,
            attempt=record.attempts,
            resume_at=record.resume_at,
        )
        output, output_json = tool_call(tool, rendered, call)
    except Suspend as suspend:
        return _suspend(run, record, rendered, suspend.until)
    except AwaitApproval as ask:
        run_services.approval_request(
            run=run, step=record, input=rendered, message=ask.message, data=ask.data, timeout_s=ask.timeout_s
        )
        return Next.STOP
    except (OperationalError, InterfaceError):
        raise  # the database, not the tool: the job retries (runs/jobs.py)
    except Exception as exc:  # a StepError, a time limit while rendering, a bug: the step's failure
        error = attempt_failure(exc, timeout_s=timeout_s, what=f"step {record.step_id}")
        return _failed(run, attempt, rendered, error, policy)

    history = attempt.end("succeeded")
    try:
        with _savepoint():
            after = run_services.step_succeeded(
                run=run, step=record, input=rendered, output=output, output_json=output_json, history=history
            )
    except (OperationalError, InterfaceError):
        raise  # the database, not the step: the job retries
    except DatabaseError as exc:
        # The database refused the record (a value the checks above did not foresee). Left
        # running, the step would be swept and its tool called again, and again: fail it instead.
        logger.exception("could not record the success of step %s", record.step_id)
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        error = ToolOutputInvalid(f"the step's result could not be stored: {message}")
        return _failed(run, attempt, rendered, error, policy)
    # None: someone else finished or reset the step meanwhile (or the run was canceled).
    return _next(after)


def _savepoint() -> Any:
    """A savepoint when the engine runs inside a transaction (tests, callers that batch), so a
    refused statement does not break it; nothing otherwise, where one statement is atomic on its
    own and a failed one leaves the connection usable (a worker runs in autocommit)."""
    return transaction.atomic() if transaction.get_connection().in_atomic_block else contextlib.nullcontext()


def _next(after: After | None) -> Outcome:
    """The chain goes on only when the after-step rule says the next step runs."""
    return Next.CONTINUE if after is After.NEXT_STEP else Next.STOP


def _suspend(run: Run, record: StepRun, rendered: Any, until: datetime) -> Outcome:
    remaining = (until - timezone.now()).total_seconds()
    parked = remaining > settings.ORDINAUT_MAX_COUNTDOWN_S
    if not run_services.step_suspend(run=run, step=record, input=rendered, until=until, parked=parked):
        return Next.STOP
    if parked:
        # Longer than a broker countdown may be: the sweeper re-dispatches the run after `until`.
        logger.info("step %s parked until %s", record.step_id, until.isoformat())
        return Next.STOP
    return RetryIn(max(0.0, remaining))


def _failed(run: Run, attempt: Attempt[StepRun], rendered: Any, exc: StepError, policy: RetryPolicy) -> Outcome:
    record = attempt.record
    error = exc.as_dict()
    # Messages quote what tools and servers said, which may hold a NUL the database refuses.
    error["message"] = storable_text(str(error["message"]))
    error["attempt"] = record.attempts
    if exc.retryable and record.attempts < policy.max_attempts:
        delay = retry_delay_s(policy, record.attempts)
        history = attempt.end("retry", error=error, retry_in_s=delay)
        logger.info("step %s attempt %s failed (%s); retrying in %.1fs", record.step_id, record.attempts, exc, delay)
        if run_services.step_retry_later(
            run=run, step=record, input=rendered, error=error, history=history, delay_s=delay
        ):
            return RetryIn(delay)
        return Next.STOP
    history = attempt.end("failed", error=error)
    return _next(run_services.step_failed(run=run, step=record, input=rendered, error=error, history=history))


def _after_redelivery(run: Run, index: int) -> Outcome:
    """This message found its step owned by another message or already done. Continue the chain
    only when the step is done and the next one was never started: then the original message
    died after finishing but before sending the rest of the chain."""
    current = run_services.step_get(run=run, index=index)
    if current is None or current.status not in StepRun.DONE:
        return Next.STOP
    after = run_services.run_after_step(
        run=run,
        index=index,
        step_id=current.step_id,
        failed=current.status == StepRun.Status.FAILED,
        output=current.output,
        error=current.error,
    )
    if after is After.RUN_ENDED:
        return Next.STOP
    following = run_services.step_get(run=run, index=index + 1)
    if following is not None and following.status == StepRun.Status.PENDING:
        return Next.CONTINUE
    return Next.STOP
