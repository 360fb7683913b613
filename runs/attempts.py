"""What a step job and an item job share: the outcome of a job, retry policy and delays, the
attempt history, the template context, and the tool call with its failures made StepErrors."""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from ordinaut_site.errors import StepError, ToolOutputInvalid, ToolOutputTooLarge, ToolTimeout
from pipelines.spec import Step
from pipelines.storable import storable_json
from pipelines.tools import AwaitApproval, Suspend, Tool, ToolCall, schema_errors

from .models import Run, StepItem, StepRun
from .selectors import step_outputs

logger = logging.getLogger(__name__)

Record = TypeVar("Record", StepRun, StepItem)

# Retry delays are spread by +/- this fraction so a burst of failures does not retry in lockstep.
# Kept below 1/3 so each delay is still longer than the one before (until the cap).
RETRY_JITTER_RATIO = 0.2


class Next(enum.Enum):
    """What the chain should do after this step job."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True)
class RetryIn:
    """Send this same message again after a countdown (a retry, or a short wait)."""

    countdown_s: float


Outcome = Next | RetryIn


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_s: float
    backoff_max_s: float


def retry_policy(*, task: Any, step: Step) -> RetryPolicy:
    """The step's `retry`, filled in from the task's defaults (max_retries counts retries)."""
    retry = step.retry
    return RetryPolicy(
        max_attempts=int(retry.get("max_attempts") or task.max_retries + 1),
        backoff_s=float(retry.get("backoff_seconds", task.retry_backoff_seconds)),
        backoff_max_s=float(retry.get("backoff_max_seconds", task.retry_backoff_max_seconds)),
    )


def retry_delay_s(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with jitter after failed attempt number `attempt` (1-based), always
    below the broker's visibility timeout (ORDINAUT_MAX_COUNTDOWN_S, checked in settings)."""
    base = min(policy.backoff_s * 2 ** min(attempt - 1, 30), policy.backoff_max_s)
    delay = base * random.uniform(1 - RETRY_JITTER_RATIO, 1 + RETRY_JITTER_RATIO)
    return max(0.0, min(delay, float(settings.ORDINAUT_MAX_COUNTDOWN_S)))


def template_context(run: Run, index: int, *, with_steps: bool = True) -> dict[str, Any]:
    """What `${...}` and `if` see: params, steps, event, task, run, now."""
    context = run.context or {}
    return {
        "params": context.get("params") or {},
        "event": context.get("event"),
        "now": context.get("now"),
        "task": {"id": str(run.task_id), "title": run.task.title, "timezone": run.task.timezone},
        "run": {
            "id": str(run.pk),
            "trigger": run.trigger,
            "trigger_key": run.trigger_key,
            "scheduled_for": run.scheduled_for.isoformat() if run.scheduled_for else None,
            "replay_of": str(run.replay_of_id) if run.replay_of_id else None,
        },
        "steps": step_outputs(run=run, before_index=index) if with_steps else {},
    }


class Attempt(Generic[Record]):
    """The attempt history of one claimed step (or item), appended to as this attempt ends."""

    def __init__(self, record: Record, started: datetime) -> None:
        self.record: Record = record
        self.started = started
        # This attempt's start entry (written by the claim) is replaced when it ends; an earlier
        # attempt that only ever started (its worker died) reads as lost, with its start time.
        history: list[dict[str, Any]] = []
        for entry in record.attempt_history or []:
            number = entry.get("attempt")
            if number == record.attempts and entry.get("outcome") == "running":
                continue
            if entry.get("outcome") == "running":
                entry = {**entry, "outcome": "lost", "finished_at": None, "error": None}
            history.append(entry)
        recorded = {entry.get("attempt") for entry in history}
        for number in range(1, record.attempts):
            if number not in recorded:  # lost before its claim recorded a start
                history.append({"attempt": number, "started_at": None, "outcome": "lost", "error": None})
        history.sort(key=lambda entry: entry.get("attempt") or 0)
        self.history = history

    def end(self, outcome: str, *, error: dict[str, Any] | None = None, retry_in_s: float | None = None) -> list[Any]:
        now = timezone.now()
        entry: dict[str, Any] = {
            "attempt": self.record.attempts,
            "started_at": self.started.isoformat(),
            "finished_at": now.isoformat(),
            "duration_ms": max(0, int((now - self.started).total_seconds() * 1000)),
            "outcome": outcome,
            "error": error,
        }
        if retry_in_s is not None:
            entry["retry_in_s"] = round(retry_in_s, 3)
        return [*self.history, entry]


def attempt_failure(exc: Exception, *, timeout_s: float, what: str) -> StepError:
    """What the body of an attempt (a step's or an item's: rendering, the tool call, its checks)
    raised, as the StepError that fails the attempt: a StepError as it is, a soft time limit hit
    outside the tool call a timeout, anything else a bug of the step (logged with its traceback),
    never a lost run. `what` names the attempt in the messages ("step fetch", "item 3 of step fetch")."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, SoftTimeLimitExceeded):
        return ToolTimeout(f"{what} ran past {timeout_s:g}s")
    logger.exception("%s raised", what)
    return StepError(f"{type(exc).__name__}: {exc}"[:1000], code="tool_error", retryable=False)


def tool_call(tool: Tool, rendered: Any, call: ToolCall) -> tuple[Any, str]:
    """Call the tool; its output and that output's stored JSON text. Every way a call can fail is
    a StepError (a time limit is a timeout, a tool's bug a tool_error); waits and approvals are
    the tool's requests (Suspend, AwaitApproval), and the database's errors stay its own."""
    try:
        output = tool.func(rendered, call)
        problems = schema_errors(tool.output_schema, output, prefix="output")
        if problems:
            raise ToolOutputInvalid("; ".join(problems))
        return output, stored_output(output)
    except (StepError, Suspend, AwaitApproval, OperationalError, InterfaceError):
        raise
    except SoftTimeLimitExceeded:
        raise ToolTimeout(f"the step ran past {call.timeout_s:g}s") from None
    except Exception as exc:  # a tool bug is the step's failure, never a lost run
        logger.exception("tool %s raised", tool.name)
        raise StepError(f"{type(exc).__name__}: {exc}"[:1000], code="tool_error", retryable=False) from None


def stored_output(output: Any) -> str:
    """The tool's output as the JSON text its StepRun stores (serialized once: the size check
    and the record use the same text); ToolOutputInvalid / ToolOutputTooLarge when it cannot be."""
    try:
        text = storable_json(output, prefix="output")
    except (TypeError, ValueError) as exc:
        raise ToolOutputInvalid(f"the tool's output cannot be stored as JSON: {exc}") from None
    if len(text) > settings.ORDINAUT_MAX_STEP_OUTPUT_BYTES:
        raise ToolOutputTooLarge(
            f"output is {len(text)} bytes; ORDINAUT_MAX_STEP_OUTPUT_BYTES is {settings.ORDINAUT_MAX_STEP_OUTPUT_BYTES}"
        )
    return text
