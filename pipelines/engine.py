"""The step engine: executes one step of a run and records it through runs/ services."""

from __future__ import annotations

import enum
import logging
from typing import Any

from django.conf import settings

from ordinaut_site import logs
from ordinaut_site.errors import StepError
from runs import services as run_services
from runs.models import Run, StepRun
from runs.selectors import run_get_for_step

from .tools import ToolCall, tool_resolve

logger = logging.getLogger(__name__)


class Next(enum.Enum):
    """What the chain should do after this step job."""

    CONTINUE = "continue"
    STOP = "stop"


def step_timeout_s(run: Run, step: dict[str, Any]) -> float:
    value = step.get("timeout_seconds") or run.task.timeout_seconds or settings.ORDINAUT_DEFAULT_STEP_TIMEOUT_S
    return float(min(value, settings.ORDINAUT_MAX_STEP_TIMEOUT_S))


def step_execute(*, run_id: str, index: int, claim_id: str) -> Next:
    """Run step `index` of a run, at most once to success per step (record-level idempotency)."""
    run = run_get_for_step(run_id=run_id)
    if run is None:
        logger.warning("step job for a run that does not exist", extra={"run": run_id, "step": index})
        return Next.STOP
    with logs.bind(run=run.pk, task=run.task_id, step=index):
        return _step_execute(run, index, claim_id)


def _step_execute(run: Run, index: int, claim_id: str) -> Next:
    if run.status == Run.Status.QUEUED:
        run_services.run_mark_running(run=run)
        run.refresh_from_db(fields=["status", "started_at", "context"])
    if run.status != Run.Status.RUNNING:
        logger.info("run is %s; step %s not started", run.status, index)
        return Next.STOP
    if index >= len(run.pipeline):
        return Next.STOP
    step = run.pipeline[index]
    timeout_s = step_timeout_s(run, step)

    record = run_services.step_claim(run=run, index=index, claim_id=claim_id, timeout_s=timeout_s)
    if record is None:
        return _after_redelivery(run, index)

    rendered = step.get("with", {})
    try:
        tool = tool_resolve(record.uses)
        output = tool.func(rendered, ToolCall(run_id=str(run.pk), step_id=record.step_id, timeout_s=timeout_s))
    except StepError as exc:
        return _fail(run, record, rendered, exc.as_dict())
    except Exception as exc:  # a tool bug is the step's failure, never a lost run
        logger.exception("tool %s raised", record.uses)
        return _fail(
            run, record, rendered, {"code": "tool_error", "message": f"{type(exc).__name__}: {exc}", "retryable": False}
        )

    if not run_services.step_succeed(step=record, input=rendered, output=output):
        return Next.STOP  # someone else finished or reset it meanwhile
    if index == len(run.pipeline) - 1:
        run_services.run_succeed(run=run, result=output)
        return Next.STOP
    return Next.CONTINUE


def _fail(run: Run, record: StepRun, rendered: Any, error: dict[str, Any]) -> Next:
    run_services.step_fail(step=record, input=rendered, error=error)
    run_services.run_fail(
        run=run, error={"code": error["code"], "message": error["message"], "step_id": record.step_id}
    )
    return Next.STOP


def _after_redelivery(run: Run, index: int) -> Next:
    """This message found its step owned by another message or already done. Continue the chain
    only when the step is done and the next one was never started: then the original message
    died after finishing but before sending the rest of the chain."""
    current = run_services.step_get(run=run, index=index)
    if current is None or current.status not in StepRun.DONE:
        return Next.STOP
    if current.status == StepRun.Status.FAILED:
        error = current.error or {}
        run_services.run_fail(
            run=run,
            error={
                "code": error.get("code", "step_failed"),
                "message": error.get("message", ""),
                "step_id": current.step_id,
            },
        )
        return Next.STOP
    if index == len(run.pipeline) - 1:
        run_services.run_succeed(run=run, result=current.output)
        return Next.STOP
    following = run_services.step_get(run=run, index=index + 1)
    if following is not None and following.status == StepRun.Status.PENDING:
        return Next.CONTINUE
    return Next.STOP
