"""Ordinaut as an MCP server (/mcp): the agents' API as MCP tools, over the same services, selectors
and serializers as the REST views, with the same bearer tokens, scopes, isolation and audit."""

from __future__ import annotations

import json
import logging
import math
import tomllib
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.utils.encoders import JSONEncoder

from pipelines import catalog
from pipelines.api import ValidateRequestSerializer
from pipelines.dryrun import pipeline_dry_run
from pipelines.tools_api import ToolListQuerySerializer, tool_data
from runs import selectors as run_selectors
from runs import services as run_services
from runs.api import (
    ApprovalListQuerySerializer,
    ApprovalSerializer,
    ApproveSerializer,
    RejectSerializer,
    ReplaySerializer,
    RunDetailSerializer,
    RunListQuerySerializer,
    RunSerializer,
)
from runs.models import Approval, Run
from tasks import events as task_events
from tasks import selectors as task_selectors
from tasks import services as task_services
from tasks.api import (
    NextRunsQuerySerializer,
    RunNowSerializer,
    SchedulePreviewSerializer,
    SnoozeSerializer,
    TaskListQuerySerializer,
    TaskSerializer,
)
from tasks.events_api import EventPublishSerializer
from tasks.events_api import accepted_body as event_accepted  # the 202 body of POST /events
from tasks.models import Task
from tasks.schedules import PREVIEW_MAX, describe

from . import logs
from .api import INTERNAL_ERROR_MESSAGE, MAX_OFFSET, LimitOffsetPagination, error_body
from .api import _flatten_fields as flatten_fields  # the REST handler's own flattening, so messages match
from .api import _validation_message as validation_message
from .audit import Actor
from .errors import NotAuthenticated, OrdinautError, PermissionDenied, ValidationFailed
from .models import (
    SCOPE_EVENTS_PUBLISH,
    SCOPE_RUNS_READ,
    SCOPE_RUNS_WRITE,
    SCOPE_TASKS_READ,
    SCOPE_TASKS_WRITE,
    SCOPE_TOOLS_READ,
    Agent,
)
from .parsers import check_json_limits
from .services import TOKEN_PREFIX, token_authenticate
from .throttling import AgentRateThrottle, AgentWriteRateThrottle

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# The SDK requires an issuer URL with auth settings; it is only published with OAuth metadata,
# which Ordinaut does not serve (its bearer tokens are agent tokens, not OAuth tokens).
UNUSED_ISSUER_URL = "https://ordinaut.invalid"
DEFAULT_PAGE = LimitOffsetPagination.default_limit
MAX_PAGE = LimitOffsetPagination.max_limit


def _version() -> str:
    try:
        with (Path(__file__).resolve().parents[1] / "pyproject.toml").open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0"


# --- Bearer auth: the agent tokens of the REST API ---------------------------------------------


class AgentAccessToken(AccessToken):
    """An authenticated agent token; carries the Agent row loaded when the token was checked."""

    _agent: Agent | None = PrivateAttr(default=None)

    @property
    def agent(self) -> Agent | None:
        return self._agent


class AgentTokenVerifier(TokenVerifier):
    """`Authorization: Bearer ord_...` -> the agent, exactly as the REST API authenticates it."""

    async def verify_token(self, token: str) -> AccessToken | None:
        found = await sync_to_async(token_authenticate, thread_sensitive=True)(token.strip())
        if found is None:
            return None
        agent, agent_token = found
        access = AgentAccessToken(
            token=f"{TOKEN_PREFIX}{agent_token.prefix}",  # the public prefix: the secret stays out of reprs
            client_id=agent.name,
            subject=str(agent.pk),
            scopes=sorted(agent.scopes),
            expires_at=int(agent_token.expires_at.timestamp()) if agent_token.expires_at else None,
        )
        access._agent = agent
        return access


mcp = MCPServer(
    "ordinaut",
    version=_version(),
    title="Ordinaut",
    instructions=(
        "Ordinaut schedules and runs tasks for AI agents. A task has a schedule (cron, rrule, once, "
        "interval, event or manual) and a payload {params, pipeline}: steps that call tools. Create "
        "tasks, preview schedules, run them now, watch their runs, approve or reject runs that wait for "
        "a human, publish events that start event tasks, and list the tools steps can use. Every tool "
        "needs a scope of the calling agent's token (named in its description); "
        "other agents' tasks and runs are not found unless the agent is an admin. Errors come back as "
        'the REST error shape: {"error": {"code", "message", "fields"?}, "request_id"}.'
    ),
    log_level="WARNING",
    token_verifier=AgentTokenVerifier(),
    auth=AuthSettings(issuer_url=UNUSED_ISSUER_URL, resource_server_url=None),  # type: ignore[arg-type]
)


def transport_security(allowed_hosts: list[str]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding allowlist (Host and Origin headers) from Django's ALLOWED_HOSTS.

    Django ignores the port; the SDK compares exact names or `name:*`, so each entry is allowed with
    any port. `*` turns the check off, as it turns Django's off. A `.example.com` entry allows
    example.com only: the SDK has no subdomain wildcard, so list subdomains one by one.
    """
    if "*" in allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts: list[str] = []
    origins: list[str] = []
    for entry in allowed_hosts:
        name = entry.strip().lstrip(".").lower()
        if not name:
            continue
        hosts += [name, f"{name}:*"]
        origins += [f"{scheme}://{name}{port}" for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


# --- Calling services the way the REST views do ------------------------------------------------


def _caller() -> Agent:
    access = get_access_token()
    agent = access.agent if isinstance(access, AgentAccessToken) else None
    if agent is None:
        raise NotAuthenticated("Authentication credentials were not provided.")
    return agent


class RateLimited(OrdinautError):
    code = "rate_limited"
    status = 429


def _throttle(agent: Agent, *, writes: bool) -> None:
    """The REST API's per-agent rate limits; a tool that changes something counts as a write."""
    request = cast(Request, SimpleNamespace(user=agent, method="POST" if writes else "GET", META={}))
    for throttle in (AgentRateThrottle(), AgentWriteRateThrottle()):
        if not throttle.allow_request(request, None):
            wait_s = math.ceil(throttle.wait() or 1)
            raise RateLimited(f"Request was throttled. Expected available in {wait_s} seconds.", retry_after=wait_s)


def _plain(data: Any) -> Any:
    """The JSON the REST response would carry (UUIDs, datetimes and decimals as DRF writes them)."""
    return json.loads(json.dumps(data, cls=JSONEncoder))


def _in_django(
    agent: Agent, scope: str, writes: bool, json_arguments: dict[str, Any], work: Callable[[Agent], Any]
) -> Any:
    if not agent.has_scope(scope):
        raise PermissionDenied(f"This token lacks the scope {scope!r} this tool needs.")
    _throttle(agent, writes=writes)
    _check_json(json_arguments)
    try:
        return _plain(work(agent))
    except drf_exceptions.ValidationError as exc:
        fields = flatten_fields(exc.detail)
        raise ValidationFailed(validation_message(fields), fields=fields) from None


def _error_text(exc: OrdinautError) -> str:
    return json.dumps(error_body(exc.code, exc.message, exc.fields))


async def _call(
    tool: str,
    scope: str,
    work: Callable[[Agent], Any],
    *,
    writes: bool = False,
    json_arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `work(agent)` in Django's thread for the ORM, after the scope and rate checks and the
    API's JSON limits on the free-form arguments (`json_arguments`, by argument name).

    Service errors become a ToolError carrying the REST error body; anything unexpected is logged
    with the request id and answered as an internal error, never as a traceback.
    """
    request_id = logs.current("request_id") or uuid.uuid4().hex
    with logs.bind(request_id=request_id):
        try:
            agent = _caller()
            with logs.bind(agent=agent.name):
                result = await sync_to_async(_in_django, thread_sensitive=True)(
                    agent, scope, writes, json_arguments or {}, work
                )
        except OrdinautError as exc:
            raise ToolError(_error_text(exc)) from None
        except Exception:
            logger.exception("MCP tool %s failed", tool)
            raise ToolError(json.dumps(error_body("internal_error", INTERNAL_ERROR_MESSAGE))) from None
    return cast(dict[str, Any], result)


def _check_json(arguments: dict[str, Any]) -> None:
    """The REST parser's limits (depth, string length, items, NUL; no NaN or Infinity)."""
    check_json_limits({name: value for name, value in arguments.items() if value is not None})


def _validated(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> dict[str, Any]:
    serializer = serializer_class(data={k: v for k, v in data.items() if v is not None})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _page(
    items: Any, limit: int, offset: int, serializer_class: type[serializers.Serializer] | None = None
) -> dict[str, Any]:
    """A page (of a queryset or a list) in the REST list shape; `next_offset` (null on the last
    page) stands in for `next`."""
    count = len(items) if isinstance(items, list) else items.count()
    page = items[offset : offset + limit]
    results = serializer_class(page, many=True).data if serializer_class is not None else page
    return {"count": count, "next_offset": offset + limit if offset + limit < count else None, "results": results}


# --- Parameter types (descriptions are what an agent reads) ------------------------------------

TaskId = Annotated[uuid.UUID, Field(description="The task's id (UUID).")]
RunId = Annotated[uuid.UUID, Field(description="The run's id (UUID).")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"Page size, 1..{MAX_PAGE}.")]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="How many items to skip (newest first).")]
Count = Annotated[int, Field(ge=1, le=PREVIEW_MAX, description=f"How many occurrences, 1..{PREVIEW_MAX}.")]
Comment = Annotated[str, Field(max_length=2000, description="Why (kept with the decision and in the audit log).")]

KIND_HELP = (
    "How the task is triggered: cron (schedule_expr '0 9 * * 1-5', names and @daily allowed), rrule "
    "(RFC 5545, 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=9', optional DTSTART line), once (ISO 8601 time, naive = "
    "the task's timezone), interval (seconds or ISO 8601 duration 'PT15M', on a grid from the epoch), "
    "event (a topic, exact or glob 'email.*'), manual (empty; only run_now)."
)
FIELD_HELP = {
    "title": "A short name, 1..200 characters.",
    "description": "Free text, up to 2000 characters.",
    "schedule_expr": "The schedule in the syntax of schedule_kind (empty for manual).",
    "timezone": f"IANA timezone the schedule is read in (default {settings.TIME_ZONE}).",
    "payload": (
        'What a run does: {"params": {...}, "pipeline": [step, ...]}. A step is {"id", "uses": '
        '"server.tool", "with": {...}, "if"?, "save_as"?, "retry"?, "timeout_seconds"?, "on_error"?: '
        '"fail"|"continue"}. Strings may hold ${...} JMESPath templates over {params, steps, event, '
        "task, run, now}, e.g. ${steps.fetch.items} or ${now+24h}. Check it first with validate_pipeline."
    ),
    "priority": "0 (lowest) to 9 (highest); default 5.",
    "max_retries": "Default retries of a failing step, 0..20.",
    "retry_backoff_seconds": "First retry delay in seconds, doubled each attempt.",
    "retry_backoff_max_seconds": "Longest retry delay in seconds.",
    "timeout_seconds": "Default step timeout in seconds (null: the server default).",
    "catchup_window_seconds": "After downtime, occurrences younger than this still run (default 300).",
    "overlap": "When the previous run is still active: skip (default), allow, queue or cancel_previous.",
    "jitter_seconds": "A random delay 0..N seconds before the first step.",
    "condition": "JMESPath over {task, event, last_run, now}; falsy skips the occurrence (null: none).",
}


def _field(name: str) -> Any:
    return Field(default=None, description=FIELD_HELP[name])


class TaskChanges(BaseModel):
    """Only the fields given change (PATCH); the merged task is validated as a whole."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = _field("title")
    description: str | None = _field("description")
    schedule_kind: Task.Kind | None = Field(default=None, description=KIND_HELP)
    schedule_expr: str | None = _field("schedule_expr")
    timezone: str | None = _field("timezone")
    payload: dict[str, Any] | None = _field("payload")
    priority: int | None = _field("priority")
    max_retries: int | None = _field("max_retries")
    retry_backoff_seconds: float | None = _field("retry_backoff_seconds")
    retry_backoff_max_seconds: float | None = _field("retry_backoff_max_seconds")
    timeout_seconds: int | None = _field("timeout_seconds")
    catchup_window_seconds: int | None = _field("catchup_window_seconds")
    overlap: Task.Overlap | None = _field("overlap")
    jitter_seconds: int | None = _field("jitter_seconds")
    condition: str | None = _field("condition")


READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


def _task_data(task: Task) -> dict[str, Any]:
    return cast(dict[str, Any], TaskSerializer(task).data)


# --- Tasks and schedules -------------------------------------------------------------------------


@mcp.tool(annotations=WRITES)
async def create_task(
    title: Annotated[str, Field(description=FIELD_HELP["title"])],
    schedule_kind: Annotated[Task.Kind, Field(description=KIND_HELP)],
    payload: Annotated[dict[str, Any], Field(description=FIELD_HELP["payload"])],
    schedule_expr: Annotated[str, Field(description=FIELD_HELP["schedule_expr"])] = "",
    timezone: Annotated[str | None, _field("timezone")] = None,
    description: Annotated[str | None, _field("description")] = None,
    priority: Annotated[int | None, _field("priority")] = None,
    max_retries: Annotated[int | None, _field("max_retries")] = None,
    retry_backoff_seconds: Annotated[float | None, _field("retry_backoff_seconds")] = None,
    retry_backoff_max_seconds: Annotated[float | None, _field("retry_backoff_max_seconds")] = None,
    timeout_seconds: Annotated[int | None, _field("timeout_seconds")] = None,
    catchup_window_seconds: Annotated[int | None, _field("catchup_window_seconds")] = None,
    overlap: Annotated[Task.Overlap | None, _field("overlap")] = None,
    jitter_seconds: Annotated[int | None, _field("jitter_seconds")] = None,
    condition: Annotated[str | None, _field("condition")] = None,
) -> dict[str, Any]:
    """Create a task owned by the calling agent (scope tasks:write). Returns the task as GET /tasks/{id}
    does, with next_run_at and a plain-English schedule_description. Same checks as POST /tasks."""
    body = {
        "title": title,
        "schedule_kind": schedule_kind,
        "schedule_expr": schedule_expr,
        "timezone": timezone,
        "payload": payload,
        "description": description,
        "priority": priority,
        "max_retries": max_retries,
        "retry_backoff_seconds": retry_backoff_seconds,
        "retry_backoff_max_seconds": retry_backoff_max_seconds,
        "timeout_seconds": timeout_seconds,
        "catchup_window_seconds": catchup_window_seconds,
        "overlap": overlap,
        "jitter_seconds": jitter_seconds,
        "condition": condition,
    }

    def work(agent: Agent) -> Any:
        fields = _validated(TaskSerializer, body)
        return _task_data(task_services.task_create(owner=agent, actor=Actor.of_agent(agent), fields=fields))

    return await _call("create_task", SCOPE_TASKS_WRITE, work, writes=True, json_arguments={"payload": payload})


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
        query = _validated(TaskListQuerySerializer, filters)
        return _page(task_selectors.task_list(agent=agent, **query), limit, offset, TaskSerializer)

    return await _call("list_tasks", SCOPE_TASKS_READ, work)


@mcp.tool(annotations=READ_ONLY)
async def get_task(task_id: TaskId) -> dict[str, Any]:
    """One task, as GET /tasks/{id} returns it (scope tasks:read)."""

    def work(agent: Agent) -> Any:
        return _task_data(task_selectors.task_get(agent=agent, task_id=task_id))

    return await _call("get_task", SCOPE_TASKS_READ, work)


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

    return await _call("update_task", SCOPE_TASKS_WRITE, work, writes=True, json_arguments={"changes": data})


@mcp.tool(annotations=DESTRUCTIVE)
async def delete_task(task_id: TaskId) -> dict[str, Any]:
    """Delete a task like DELETE /tasks/{id} (scope tasks:write): it stops firing and disappears from
    lists; its runs stay readable. Returns {"id", "deleted": true}."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        task_services.task_delete(task=task, actor=Actor.of_agent(agent))
        return {"id": task.pk, "deleted": True}

    return await _call("delete_task", SCOPE_TASKS_WRITE, work, writes=True)


@mcp.tool(annotations=READ_ONLY)
async def preview_schedule(
    schedule_kind: Annotated[Task.Kind, Field(description=KIND_HELP)],
    schedule_expr: Annotated[str, Field(description=FIELD_HELP["schedule_expr"])] = "",
    timezone: Annotated[str | None, _field("timezone")] = None,
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
        data = _validated(SchedulePreviewSerializer, body)
        return task_selectors.schedule_preview(
            kind=data["schedule_kind"],
            expr=data["schedule_expr"],
            tz=data["timezone"],
            count=data["count"],
            after=data.get("after"),
        )

    return await _call("preview_schedule", SCOPE_TASKS_READ, work)


@mcp.tool(annotations=READ_ONLY)
async def next_runs(task_id: TaskId, count: Count = 5) -> dict[str, Any]:
    """A task's next occurrences as beat will fire them, like GET /tasks/{id}/next_runs (scope
    tasks:read). Returns {description, occurrences}; one a snooze covers has "skipped": "snoozed"."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        query = _validated(NextRunsQuerySerializer, {"count": count})
        return {
            "description": describe(task.schedule_kind, task.schedule_expr, task.timezone),
            "occurrences": task_selectors.task_next_runs(task=task, count=query["count"]),
        }

    return await _call("next_runs", SCOPE_TASKS_READ, work)


@mcp.tool(annotations=WRITES)
async def run_now(
    task_id: TaskId,
    params: Annotated[dict[str, Any] | None, Field(description="Merged over the payload's params.")] = None,
) -> dict[str, Any]:
    """Start a run of the task now, whatever its schedule (a paused task too), like POST
    /tasks/{id}/run_now (scope tasks:write). Returns the queued run; follow it with get_run."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        body = _validated(RunNowSerializer, {"params": params})
        run = task_services.task_run_now(task=task, actor=Actor.of_agent(agent), params=body.get("params"))
        return RunSerializer(run).data

    return await _call("run_now", SCOPE_TASKS_WRITE, work, writes=True, json_arguments={"params": params})


@mcp.tool(annotations=WRITES)
async def pause_task(task_id: TaskId) -> dict[str, Any]:
    """Pause an active task: it stops firing until resumed (scope tasks:write). Returns the task."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        return _task_data(task_services.task_pause(task=task, actor=Actor.of_agent(agent)))

    return await _call("pause_task", SCOPE_TASKS_WRITE, work, writes=True)


@mcp.tool(annotations=WRITES)
async def resume_task(task_id: TaskId) -> dict[str, Any]:
    """Resume a paused task at its next occurrence after now, without backfill (scope tasks:write).
    Returns the task."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        return _task_data(task_services.task_resume(task=task, actor=Actor.of_agent(agent)))

    return await _call("resume_task", SCOPE_TASKS_WRITE, work, writes=True)


@mcp.tool(annotations=DESTRUCTIVE)
async def cancel_task(task_id: TaskId) -> dict[str, Any]:
    """Cancel a task for good: it never fires again (scope tasks:write). Returns the task."""

    def work(agent: Agent) -> Any:
        task = task_selectors.task_get(agent=agent, task_id=task_id)
        return _task_data(task_services.task_cancel(task=task, actor=Actor.of_agent(agent)))

    return await _call("cancel_task", SCOPE_TASKS_WRITE, work, writes=True)


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
        body = _validated(SnoozeSerializer, {"delay_seconds": delay_seconds, "until": until, "reason": reason})
        return _task_data(task_services.task_snooze(task=task, actor=Actor.of_agent(agent), **body))

    return await _call("snooze_task", SCOPE_TASKS_WRITE, work, writes=True)


@mcp.tool(annotations=READ_ONLY)
async def validate_pipeline(
    payload: Annotated[dict[str, Any], Field(description=FIELD_HELP["payload"])],
    params: Annotated[dict[str, Any] | None, Field(description="Merged over the payload's params.")] = None,
    step_outputs: Annotated[
        dict[str, Any] | None, Field(description="Fake outputs of upstream steps, by step id (others are null).")
    ] = None,
    event: Annotated[Any, Field(description="The event an event task would see.")] = None,
    timezone: Annotated[str | None, Field(description="Timezone of `now` (default: the server's).")] = None,
    now: Annotated[datetime | None, Field(description="The logical time (default: now).")] = None,
) -> dict[str, Any]:
    """Dry-run a pipeline without calling any tool, like POST /pipelines/validate (scope
    tasks:read). Returns {valid, errors: [{field, message}], warnings, steps: [{id, uses, tool_found,
    if_result, would_run, rendered_input, input_errors, unresolved_paths, errors}]}."""

    def work(agent: Agent) -> Any:
        body = {"payload": payload, "params": params, "step_outputs": step_outputs, "timezone": timezone, "now": now}
        data = _validated(ValidateRequestSerializer, body)
        return pipeline_dry_run(
            payload=data["payload"],
            params=data.get("params"),
            step_outputs=data.get("step_outputs"),
            event=event,
            timezone_name=data.get("timezone"),
            now=data.get("now"),
        )

    free = {"payload": payload, "params": params, "step_outputs": step_outputs, "event": event}
    return await _call("validate_pipeline", SCOPE_TASKS_READ, work, json_arguments=free)


# --- Runs and approvals ------------------------------------------------------------------------


@mcp.tool(annotations=READ_ONLY)
async def list_runs(
    task_id: Annotated[uuid.UUID | None, Field(description="Only runs of this task.")] = None,
    status: Annotated[list[Run.Status] | None, Field(description="Only runs in one of these statuses.")] = None,
    trigger: Annotated[list[Run.Trigger] | None, Field(description="Only runs started by one of these.")] = None,
    since: Annotated[datetime | None, Field(description="Runs created at or after this time.")] = None,
    until: Annotated[datetime | None, Field(description="Runs created before this time.")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Runs of the calling agent's tasks (every run for admins), newest first, without steps (scope
    runs:read). Returns {count, next_offset, results: [run, ...]} as GET /runs lists them."""

    def work(agent: Agent) -> Any:
        query = _validated(
            RunListQuerySerializer,
            {
                "task": task_id,
                "status": ",".join(status) if status else None,
                "trigger": ",".join(trigger) if trigger else None,
                "since": since,
                "until": until,
            },
        )
        runs = run_selectors.run_list(
            agent=agent,
            task_id=query.get("task"),
            status=query.get("status"),
            trigger=query.get("trigger"),
            since=query.get("since"),
            until=query.get("until"),
        )
        return _page(runs, limit, offset, RunSerializer)

    return await _call("list_runs", SCOPE_RUNS_READ, work)


@mcp.tool(annotations=READ_ONLY)
async def get_run(run_id: RunId) -> dict[str, Any]:
    """A run with its steps (input, output, error, timing of each) and approvals, as GET /runs/{id}
    returns it (scope runs:read)."""

    def work(agent: Agent) -> Any:
        return RunDetailSerializer(run_selectors.run_get(agent=agent, run_id=run_id)).data

    return await _call("get_run", SCOPE_RUNS_READ, work)


@mcp.tool(annotations=DESTRUCTIVE)
async def cancel_run(run_id: RunId) -> dict[str, Any]:
    """Cancel a queued, running or waiting run (scope runs:write); later steps never start. Returns
    the run with its steps."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        return RunDetailSerializer(run_services.run_cancel(run=run, actor=Actor.of_agent(agent))).data

    return await _call("cancel_run", SCOPE_RUNS_WRITE, work, writes=True)


@mcp.tool(annotations=WRITES)
async def replay_run(
    run_id: RunId,
    start_from: Annotated[
        Literal["failed_step", "start"],
        Field(
            description="failed_step (reuse the outputs of the steps before the failed one) or start "
            "(run every step again). REST calls it `from`."
        ),
    ] = "failed_step",
) -> dict[str, Any]:
    """Run a failed or canceled run again as a new run, like POST /runs/{id}/replay (scope
    runs:write). Returns the new run (queued)."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        body = _validated(ReplaySerializer, {"from": start_from})
        new_run = run_services.run_replay(run=run, from_=body["from"], actor=Actor.of_agent(agent))
        return RunSerializer(new_run).data

    return await _call("replay_run", SCOPE_RUNS_WRITE, work, writes=True)


@mcp.tool(annotations=WRITES)
async def approve_run(
    run_id: RunId,
    items: Annotated[
        list[Any] | None,
        Field(description="The items approved, picked from the approval's data (default: all of them)."),
    ] = None,
    comment: Comment = "",
) -> dict[str, Any]:
    """Approve what a run waiting for approval asks (status waiting_approval; see list_approvals),
    optionally only some of its items (scope runs:write). The pipeline goes on. Returns the run."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        body = _validated(ApproveSerializer, {"items": items, "comment": comment})
        decided = run_services.approval_decide(
            run=run, approve=True, items=body.get("items"), comment=body["comment"], actor=Actor.of_agent(agent)
        )
        return RunDetailSerializer(decided).data

    return await _call("approve_run", SCOPE_RUNS_WRITE, work, writes=True, json_arguments={"items": items})


@mcp.tool(annotations=WRITES)
async def reject_run(run_id: RunId, comment: Comment = "") -> dict[str, Any]:
    """Reject what a run waiting for approval asks (scope runs:write); the approval step fails and
    its on_error decides whether the run goes on. Returns the run."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        body = _validated(RejectSerializer, {"comment": comment})
        decided = run_services.approval_decide(
            run=run, approve=False, comment=body["comment"], actor=Actor.of_agent(agent)
        )
        return RunDetailSerializer(decided).data

    return await _call("reject_run", SCOPE_RUNS_WRITE, work, writes=True)


@mcp.tool(annotations=READ_ONLY)
async def list_approvals(
    status: Annotated[
        list[Approval.Status] | None, Field(description="Only these statuses (pending: waiting for a decision).")
    ] = None,
    run_id: Annotated[uuid.UUID | None, Field(description="Only the approvals of this run.")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Approvals of the calling agent's runs, newest first, like GET /approvals (scope runs:read).
    Returns {count, next_offset, results: [{id, run, task, step_id, message, data, status, ...}]}."""

    def work(agent: Agent) -> Any:
        query = _validated(ApprovalListQuerySerializer, {"status": ",".join(status) if status else None, "run": run_id})
        approvals = run_selectors.approval_list(agent=agent, status=query.get("status"), run_id=query.get("run"))
        return _page(approvals, limit, offset, ApprovalSerializer)

    return await _call("list_approvals", SCOPE_RUNS_READ, work)


# --- Events and the tool catalog ------------------------------------------------------------------


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
    idempotency_key: Annotated[
        str,
        Field(
            max_length=300,
            description="Publishing again with the same key answers the first event instead of a new one "
            "(a different topic, payload or source with the key is a conflict).",
        ),
    ] = "",
) -> dict[str, Any]:
    """Publish an event like POST /events (scope events:publish): it is stored, added to the event
    stream, and the publisher's active event tasks matching its topic run (an admin's reach every
    agent's). Returns {id, topic, stream_id, published_at}."""

    def work(agent: Agent) -> Any:
        body = _validated(EventPublishSerializer, {"topic": topic, "payload": payload, "source": source})
        event = task_events.event_publish(
            publisher=agent, actor=Actor.of_agent(agent), idempotency_key=idempotency_key, **body
        )
        return event_accepted(event)

    return await _call("publish_event", SCOPE_EVENTS_PUBLISH, work, writes=True, json_arguments={"payload": payload})


@mcp.tool(annotations=READ_ONLY)
async def list_tools(
    server: Annotated[
        str | None, Field(description="Only this server's tools ('orchestrator' for the built-ins).")
    ] = None,
    search: Annotated[str | None, Field(description="Text in the name or description (case-insensitive).")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The tools pipeline steps can use (`uses`: 'server.tool'), like GET /tools (scope tools:read):
    built-ins, Python tools and every enabled MCP server's catalog. Returns {count, next_offset,
    results: [{name, server, description, input_schema, output_schema, cost}]}."""

    def work(agent: Agent) -> Any:
        query = _validated(ToolListQuerySerializer, {"server": server, "search": search})
        return _page([tool_data(tool) for tool in catalog.catalog_tools(**query)], limit, offset)

    return await _call("list_tools", SCOPE_TOOLS_READ, work)
