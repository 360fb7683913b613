"""The tasks app's MCP tools: tasks, schedules and events, as /tasks, /schedules/preview and /events.

Registered on Ordinaut's MCP server when the app is ready. The task's fields are TaskSerializer's
(create_task's arguments, update_task's `changes`): one list, read from the REST serializer.
Each tool needs the scope its REST twin declares; create_task, run_now and publish_event take an
`idempotency_key` with the REST Idempotency-Key's semantics and store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, cast

from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from ordinaut_site.audit import Actor
from ordinaut_site.auth import view_scope
from ordinaut_site.mcp_server import (
    DEFAULT_PAGE,
    DESTRUCTIVE,
    IDEMPOTENCY_ARGUMENT,
    IDEMPOTENCY_PARAMETER,
    READ_ONLY,
    WRITES,
    IdempotencyKey,
    Limit,
    Offset,
    TaskId,
    call,
    given,
    mcp,
    page,
    serializer_changes_model,
    serializer_parameters,
    validated,
    with_parameters,
)
from ordinaut_site.models import Agent
from runs.api import RunSerializer, RunStatsSerializer
from runs.selectors import run_stats

from . import events as task_events
from . import selectors as task_selectors
from . import services as task_services
from .api import (
    KIND_HELP,
    NextRunsQuerySerializer,
    RunNowSerializer,
    SchedulePreviewSerializer,
    SchedulePreviewView,
    SnoozeSerializer,
    TaskListQuerySerializer,
    TaskSerializer,
    TaskViewSet,
)
from .events_api import EventPublishSerializer, EventViewSet, TopicSerializer
from .events_api import accepted_body as event_accepted  # the 202 body of POST /events
from .models import Task
from .schedules import PREVIEW_MAX, describe

Count = Annotated[int, Field(ge=1, le=PREVIEW_MAX, description=f"How many occurrences, 1..{PREVIEW_MAX}.")]
if TYPE_CHECKING:
    TaskChanges = BaseModel
else:  # the PATCH body: TaskSerializer's writable fields, all optional
    TaskChanges = serializer_changes_model(TaskSerializer, "TaskChanges")


def _task_data(task: Task) -> dict[str, Any]:
    return cast(dict[str, Any], TaskSerializer(task).data)


@mcp.tool(annotations=WRITES)
@with_parameters(*serializer_parameters(TaskSerializer), IDEMPOTENCY_PARAMETER)
async def create_task(**arguments: Any) -> dict[str, Any]:
    """Create a task owned by the calling agent (scope tasks:write). Returns the task as GET /tasks/{id}
    does, with next_run_at and a plain-English schedule_description. Same checks as POST /tasks; the
    arguments are POST /tasks's body fields."""
    body = given(arguments)

    def work(agent: Agent) -> Any:
        fields = validated(TaskSerializer, body)
        return _task_data(task_services.task_create(owner=agent, actor=Actor.of_agent(agent), fields=fields))

    return await call(
        "create_task",
        view_scope(TaskViewSet, "create"),
        work,
        writes=True,
        json_arguments={"payload": body.get("payload")},
        idempotency_key=arguments.get(IDEMPOTENCY_ARGUMENT),
        arguments=body,
    )


@mcp.tool(annotations=READ_ONLY)
async def list_tasks(
    status: Annotated[Task.Status | None, Field(description="Only tasks in this status.")] = None,
    schedule_kind: Annotated[Task.Kind | None, Field(description="Only tasks of this kind.")] = None,
    search: Annotated[str | None, Field(description="Text the title contains (case-insensitive).")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The calling agent's tasks (every agent's for admins), newest first (scope tasks:read).
    Returns {count, next_offset, results: [task, ...]}, results as GET /tasks lists them."""

    def work(agent: Agent) -> Any:
        filters = {"status": status, "schedule_kind": schedule_kind, "search": search}
        query = validated(TaskListQuerySerializer, filters)
        return page(task_selectors.task_list(agent=agent, **query), limit, offset, TaskSerializer)

    return await call("list_tasks", view_scope(TaskViewSet, "list"), work)


@mcp.tool(annotations=READ_ONLY)
async def get_task(task_id: TaskId) -> dict[str, Any]:
    """One task, as GET /tasks/{id} returns it (scope tasks:read)."""

    def work(agent: Agent) -> Any:
        return _task_data(task_selectors.task_get(agent=agent, task_id=task_id))

    return await call("get_task", view_scope(TaskViewSet, "retrieve"), work)


@mcp.tool(annotations=WRITES)
async def update_task(
    task_id: TaskId,
    changes: Annotated[TaskChanges, Field(description="The fields to change; the others stay.")],
) -> dict[str, Any]:
    """Change a task like PATCH /tasks/{id} (scope tasks:write): the merged task is validated, and a
    changed schedule starts afresh from now. Give null to clear condition or timeout_seconds."""
    data = changes.model_dump(exclude_unset=True)

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        serializer = TaskSerializer(task, data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        return _task_data(task_services.task_update(task=task, actor=Actor.of_agent(agent), fields=fields))

    return await call(
        "update_task", view_scope(TaskViewSet, "partial_update"), work, writes=True, json_arguments={"changes": data}
    )


@mcp.tool(annotations=DESTRUCTIVE)
async def delete_task(task_id: TaskId) -> dict[str, Any]:
    """Delete a task like DELETE /tasks/{id} (scope tasks:write): it stops firing and disappears from
    lists; its runs stay readable. Returns {"id", "deleted": true}."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        task_services.task_delete(task=task, actor=Actor.of_agent(agent))
        return {"id": task.pk, "deleted": True}

    return await call("delete_task", view_scope(TaskViewSet, "destroy"), work, writes=True)


@mcp.tool(annotations=READ_ONLY)
async def preview_schedule(
    schedule_kind: Annotated[Task.Kind, Field(description=KIND_HELP)],
    schedule_expr: Annotated[str, Field(description=TaskSerializer().fields["schedule_expr"].help_text)] = "",
    timezone: Annotated[str | None, Field(description=TaskSerializer().fields["timezone"].help_text)] = None,
    count: Count = 5,
    after: Annotated[datetime | None, Field(description="List occurrences after this time (default: now).")] = None,
) -> dict[str, Any]:
    """Check a schedule before creating a task, like POST /schedules/preview (scope tasks:read).
    Returns {description, occurrences: [{at (local, with offset), utc}, ...]}: what would fire."""

    def work(agent: Agent) -> Any:
        body = {
            "schedule_kind": schedule_kind,
            "schedule_expr": schedule_expr,
            "timezone": timezone,
            "count": count,
            "after": after,
        }
        data = validated(SchedulePreviewSerializer, body)
        return task_selectors.schedule_preview(
            kind=data["schedule_kind"],
            expr=data["schedule_expr"],
            tz=data["timezone"],
            count=data["count"],
            after=data.get("after"),
        )

    return await call("preview_schedule", view_scope(SchedulePreviewView), work)


@mcp.tool(annotations=READ_ONLY)
async def next_runs(task_id: TaskId, count: Count = 5) -> dict[str, Any]:
    """A task's next occurrences as beat will fire them, like GET /tasks/{id}/next_runs (scope
    tasks:read). Returns {description, occurrences}; one a snooze covers has "skipped": "snoozed"."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        query = validated(NextRunsQuerySerializer, {"count": count})
        return {
            "description": describe(task.schedule_kind, task.schedule_expr, task.timezone),
            "occurrences": task_selectors.task_next_runs(task=task, count=query["count"]),
        }

    return await call("next_runs", view_scope(TaskViewSet, "next_runs"), work)


@mcp.tool(annotations=WRITES)
async def run_now(
    task_id: TaskId,
    params: Annotated[dict[str, Any] | None, Field(description="Merged over the payload's params.")] = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Start a run of the task now, whatever its schedule (a paused task too), like POST
    /tasks/{id}/run_now (scope tasks:write). Returns the queued run; follow it with get_run."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        body = validated(RunNowSerializer, {"params": params})
        run = task_services.task_run_now(
            task=task, actor=Actor.of_agent(agent), params=body.get("params"), idempotency_key=idempotency_key
        )
        return RunSerializer(run).data

    return await call(
        "run_now",
        view_scope(TaskViewSet, "run_now"),
        work,
        writes=True,
        json_arguments={"params": params},
        idempotency_key=idempotency_key,
        arguments={"task_id": str(task_id), "params": params},
    )


def _transition_tool(
    name: str, action: str, transition: Callable[..., Task], annotations: ToolAnnotations, doc: str
) -> None:
    """A tool that applies one task transition (pause, resume, cancel) and answers the task."""

    async def tool(task_id: TaskId) -> dict[str, Any]:
        def work(agent: Agent) -> Any:
            task = task_selectors.task_get(agent=agent, task_id=task_id)
            return _task_data(transition(task=task, actor=Actor.of_agent(agent)))

        return await call(name, view_scope(TaskViewSet, action), work, writes=True)

    tool.__name__ = tool.__qualname__ = name
    mcp.tool(name=name, description=doc, annotations=annotations)(tool)


_transition_tool(
    "pause_task",
    "pause",
    task_services.task_pause,
    WRITES,
    "Pause an active task: it stops firing until resumed (scope tasks:write). Returns the task.",
)
_transition_tool(
    "resume_task",
    "resume",
    task_services.task_resume,
    WRITES,
    "Resume a paused task at its next occurrence after now, without backfill (scope tasks:write). Returns the task.",
)
_transition_tool(
    "cancel_task",
    "cancel",
    task_services.task_cancel,
    DESTRUCTIVE,
    "Cancel a task for good: it never fires again (scope tasks:write). Returns the task.",
)


@mcp.tool(annotations=WRITES)
async def snooze_task(
    task_id: TaskId,
    delay_seconds: Annotated[
        int | None, Field(description="Postpone the next run by this many seconds (give this or until).")
    ] = None,
    until: Annotated[datetime | None, Field(description="Postpone the next run to this time, with offset.")] = None,
    reason: Annotated[str, Field(max_length=500, description="Why (kept in the audit log).")] = "",
) -> dict[str, Any]:
    """Postpone an active scheduled task's next run (scope tasks:write); occurrences before the new
    time are recorded as skipped runs (reason snoozed). Returns the task with snoozed_until."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        body = validated(SnoozeSerializer, {"delay_seconds": delay_seconds, "until": until, "reason": reason})
        return _task_data(task_services.task_snooze(task=task, actor=Actor.of_agent(agent), **body))

    return await call("snooze_task", view_scope(TaskViewSet, "snooze"), work, writes=True)


@mcp.tool(annotations=WRITES)
async def publish_event(
    topic: Annotated[
        str,
        Field(
            description="What happened, dotted by convention ('email.received'): 1..200 letters, digits "
            "and . _ : -. Event tasks whose schedule_expr matches it, exactly or by glob ('email.*'), run."
        ),
    ],
    payload: Annotated[dict[str, Any], Field(description="Any JSON object; steps see it as ${event.payload...}.")],
    source: Annotated[str, Field(description="Free text: where it comes from.")] = "",
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Publish an event like POST /events (scope events:publish): it is stored, added to the event
    stream, and the publisher's active event tasks matching its topic run (an admin's reach every
    agent's). Returns {id, topic, stream_id, published_at}."""

    def work(agent: Agent) -> Any:
        body = validated(EventPublishSerializer, {"topic": topic, "payload": payload, "source": source})
        # The key is also the event's own: after the REST store forgets it, the event still dedups.
        event = task_events.event_publish(
            publisher=agent, actor=Actor.of_agent(agent), idempotency_key=idempotency_key or "", **body
        )
        return event_accepted(event)

    return await call(
        "publish_event",
        view_scope(EventViewSet, "create"),
        work,
        writes=True,
        json_arguments={"payload": payload},
        idempotency_key=idempotency_key,
        arguments={"topic": topic, "payload": payload, "source": source},
    )


@mcp.tool(annotations=READ_ONLY)
async def task_stats(task_id: TaskId) -> dict[str, Any]:
    """A task's run statistics, like GET /tasks/{id}/stats (scope tasks:read): counts by status and
    trigger, success_rate, p50/p95 of duration_seconds and lateness_seconds, last_failure."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        return RunStatsSerializer(run_stats(agent=None, task_id=task.pk)).data

    return await call("task_stats", view_scope(TaskViewSet, "stats"), work)


@mcp.tool(annotations=READ_ONLY)
async def list_topics(limit: Limit = DEFAULT_PAGE, offset: Offset = 0) -> dict[str, Any]:
    """The event topics the calling agent has published (every agent's for admins), most recent first,
    like GET /events/topics (scope events:publish). Returns {count, next_offset, results: [{topic,
    count, last_published_at}, ...]}."""

    def work(agent: Agent) -> Any:
        return page(task_events.event_topics(agent=agent), limit, offset, TopicSerializer)

    return await call("list_topics", view_scope(EventViewSet, "topics"), work)
