"""The built-in tool that feeds a trigger: orchestrator.emit_event publishes an event through the same
service as POST /events. It lives in tasks/ (the events intake) and registers itself with the pipeline
tools when the app is ready."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ordinaut_site.audit import Actor
from ordinaut_site.errors import Conflict, StepError, ToolInputInvalid, ValidationFailed
from pipelines.tools import ToolCall, builtin
from runs.models import Run

from .events import TOPIC_REGEX, event_publish


class EventHopsExceeded(StepError):
    """A chain of events emitted by steps grew past ORDINAUT_EVENT_MAX_HOPS (a task loop)."""

    code = "event_hops_exceeded"


@builtin(
    "emit_event",
    description=(
        "Publishes an event {topic, payload} as the task's owner, so the owner's event tasks whose topic "
        "matches run next (tasks chain through topics). Each event a step emits counts one hop more than "
        "the event that started its run; past ORDINAUT_EVENT_MAX_HOPS the step fails (event_hops_exceeded). "
        "Output: {id, topic}."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "topic": {"type": "string", "pattern": TOPIC_REGEX},
            "payload": {"type": "object"},
            "source": {"type": "string", "maxLength": 200},
        },
        "required": ["topic"],
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {"id": {"type": "string"}, "topic": {"type": "string"}},
        "required": ["id", "topic"],
    },
)
def emit_event(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    run = Run.objects.select_related("task__owner").get(pk=call.run_id)
    cause = (run.context or {}).get("event")
    hops = int(cause.get("hops") or 0) + 1 if isinstance(cause, dict) else 1
    if hops > settings.ORDINAUT_EVENT_MAX_HOPS:
        raise EventHopsExceeded(
            f"this run was started by an event {hops - 1} hop(s) from an outside one; emitting {payload['topic']!r} "
            f"would exceed ORDINAUT_EVENT_MAX_HOPS ({settings.ORDINAUT_EVENT_MAX_HOPS}): is a task emitting a "
            "topic that leads back to itself?"
        )
    owner = run.task.owner
    try:
        event = event_publish(
            publisher=owner,
            actor=Actor.of_agent(owner),
            topic=payload["topic"],
            payload=payload.get("payload") or {},
            source=payload.get("source") or f"run:{run.pk}",
            # A step that runs again (its worker died after publishing) finds its event instead.
            idempotency_key=f"run:{run.pk}:{call.step_id}",
            hops=hops,
            emitted_by_run=run,
        )
    except ValidationFailed as exc:
        raise ToolInputInvalid(exc.message) from None
    except Conflict as exc:
        raise StepError(f"this step already emitted another event: {exc.message}", code="event_conflict") from None
    return {"id": str(event.pk), "topic": event.topic}
