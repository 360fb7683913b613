"""The API's endpoint table (method, path, scope, target, body) and the world of objects the
authorization and audit tests call it against."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from rest_framework.test import APIClient

from ordinaut_site.audit import Actor
from ordinaut_site.models import (
    ALL_SCOPES,
    SCOPE_ADMIN,
    SCOPE_AGENTS_ADMIN,
    SCOPE_EVENTS_PUBLISH,
    SCOPE_RUNS_READ,
    SCOPE_RUNS_WRITE,
    SCOPE_TASKS_READ,
    SCOPE_TASKS_WRITE,
    SCOPE_TOOLS_READ,
    SCOPE_TOOLS_WRITE,
    Agent,
)
from ordinaut_site.services import agent_create, token_issue
from pipelines.models import Tool as CatalogTool
from pipelines.services import tool_server_clean, tool_server_create
from runs.models import Approval, Run
from tasks.events import event_publish
from tasks.services import task_create, task_pause
from tests.support.mcp_servers import shared_http_server
from tests.support.pipelines import approval_payload, echo_pipeline, manual_task_body, run_in_process

ANY_AGENT = None  # the endpoint needs a valid token and no particular scope
OWNER_SCOPES = [SCOPE_TASKS_READ, SCOPE_TASKS_WRITE, SCOPE_RUNS_READ, SCOPE_RUNS_WRITE, SCOPE_EVENTS_PUBLISH]
NON_ADMIN_SCOPES = [scope for scope in ALL_SCOPES if scope != SCOPE_ADMIN]
# Objects an agent owns (directly, or through the task a run belongs to): others get a 404.
OWNED_TARGETS = {"task", "paused_task", "failed_run", "waiting_run", "approval", "event"}
# Apps (by module name) whose tables db_fingerprint() compares.
FINGERPRINT_APPS = {"ordinaut_site", "tasks", "runs", "pipelines", "django_celery_beat"}
FAILING_PAYLOAD = {"pipeline": [{"id": "boom", "uses": "nowhere.missing_tool"}]}


def _unique_agent_body() -> dict[str, Any]:
    return {"name": f"matrix-{uuid.uuid4().hex[:10]}", "scopes": []}


def _unique_tool_server_body() -> dict[str, Any]:
    # Registering makes no connection, so the URL need not answer.
    return {"name": f"matrix-{uuid.uuid4().hex[:10]}", "url": "http://127.0.0.1:9/mcp"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # as /openapi.json writes it
    scope: str | None
    success: int
    target: str | None = None  # which object `{id}` names (see World)
    body: dict[str, Any] | Callable[[], dict[str, Any]] | None = None
    writes: bool = False  # a successful call changes the database

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def owned(self) -> bool:
        return self.target in OWNED_TARGETS

    def json_body(self) -> dict[str, Any] | None:
        return self.body() if callable(self.body) else self.body


MATRIX = [
    # Agents and audit (agents are managed by scope, not by owner: see the *_stronger_agent tests).
    Endpoint("GET", "/agents/me", ANY_AGENT, 200),
    Endpoint("GET", "/agents", SCOPE_AGENTS_ADMIN, 200),
    Endpoint("POST", "/agents", SCOPE_AGENTS_ADMIN, 201, body=_unique_agent_body, writes=True),
    Endpoint("GET", "/agents/{id}", SCOPE_AGENTS_ADMIN, 200, target="agent"),
    Endpoint("DELETE", "/agents/{id}", SCOPE_AGENTS_ADMIN, 204, target="agent", writes=True),
    Endpoint("GET", "/agents/{id}/tokens", SCOPE_AGENTS_ADMIN, 200, target="agent"),
    Endpoint("POST", "/agents/{id}/tokens", SCOPE_AGENTS_ADMIN, 201, target="agent", body={}, writes=True),
    Endpoint("DELETE", "/agents/{id}/tokens/{prefix}", SCOPE_AGENTS_ADMIN, 204, target="agent", writes=True),
    Endpoint("GET", "/audit", SCOPE_ADMIN, 200),
    # Tasks and schedules.
    Endpoint("GET", "/tasks", SCOPE_TASKS_READ, 200),
    Endpoint("POST", "/tasks", SCOPE_TASKS_WRITE, 201, body=manual_task_body(echo_pipeline(1)), writes=True),
    Endpoint("GET", "/tasks/{id}", SCOPE_TASKS_READ, 200, target="task"),
    Endpoint("PATCH", "/tasks/{id}", SCOPE_TASKS_WRITE, 200, target="task", body={"title": "renamed"}, writes=True),
    Endpoint("DELETE", "/tasks/{id}", SCOPE_TASKS_WRITE, 204, target="task", writes=True),
    Endpoint("POST", "/tasks/{id}/run_now", SCOPE_TASKS_WRITE, 202, target="task", body={}, writes=True),
    Endpoint("POST", "/tasks/{id}/pause", SCOPE_TASKS_WRITE, 200, target="task", writes=True),
    Endpoint("POST", "/tasks/{id}/resume", SCOPE_TASKS_WRITE, 200, target="paused_task", writes=True),
    Endpoint("POST", "/tasks/{id}/cancel", SCOPE_TASKS_WRITE, 200, target="task", writes=True),
    Endpoint(
        "POST", "/tasks/{id}/snooze", SCOPE_TASKS_WRITE, 200, target="task", body={"delay_seconds": 60}, writes=True
    ),
    Endpoint("GET", "/tasks/{id}/next_runs", SCOPE_TASKS_READ, 200, target="task"),
    Endpoint("GET", "/tasks/{id}/stats", SCOPE_TASKS_READ, 200, target="task"),
    Endpoint(
        "POST",
        "/schedules/preview",
        SCOPE_TASKS_READ,
        200,
        body={"schedule_kind": "cron", "schedule_expr": "0 9 * * *", "timezone": "UTC", "count": 2},
    ),
    Endpoint("POST", "/pipelines/validate", SCOPE_TASKS_READ, 200, body={"payload": echo_pipeline(1)}),
    # Runs and approvals.
    Endpoint("GET", "/runs", SCOPE_RUNS_READ, 200),
    Endpoint("GET", "/runs/stats", SCOPE_RUNS_READ, 200),
    Endpoint("GET", "/runs/{id}", SCOPE_RUNS_READ, 200, target="failed_run"),
    Endpoint("POST", "/runs/{id}/cancel", SCOPE_RUNS_WRITE, 200, target="waiting_run", writes=True),
    Endpoint(
        "POST", "/runs/{id}/replay", SCOPE_RUNS_WRITE, 202, target="failed_run", body={"from": "start"}, writes=True
    ),
    Endpoint("POST", "/runs/{id}/approve", SCOPE_RUNS_WRITE, 200, target="waiting_run", body={}, writes=True),
    Endpoint("POST", "/runs/{id}/reject", SCOPE_RUNS_WRITE, 200, target="waiting_run", body={}, writes=True),
    Endpoint("GET", "/approvals", SCOPE_RUNS_READ, 200),
    Endpoint("GET", "/approvals/{id}", SCOPE_RUNS_READ, 200, target="approval"),
    # Tools and tool servers (a catalog shared by all agents: nothing is owned). Registering a
    # server needs admin (docs/mcp.md); refreshing the world's server asks a real MCP server on loopback.
    Endpoint("GET", "/tools", SCOPE_TOOLS_READ, 200),
    Endpoint("GET", "/tools/{name}", SCOPE_TOOLS_READ, 200, target="tool"),
    Endpoint("GET", "/tool-servers", SCOPE_TOOLS_READ, 200),
    Endpoint("GET", "/tool-servers/{name}", SCOPE_TOOLS_READ, 200, target="tool_server"),
    Endpoint("POST", "/tool-servers", SCOPE_ADMIN, 201, body=_unique_tool_server_body, writes=True),
    Endpoint("POST", "/tool-servers/{name}/refresh", SCOPE_TOOLS_WRITE, 200, target="tool_server", writes=True),
    # Events (an agent reads back the events it published).
    Endpoint(
        "POST",
        "/events",
        SCOPE_EVENTS_PUBLISH,
        202,
        body={"topic": "matrix.published", "payload": {"n": 1}, "source": "matrix"},
        writes=True,
    ),
    Endpoint("GET", "/events", SCOPE_EVENTS_PUBLISH, 200),
    Endpoint("GET", "/events/topics", SCOPE_EVENTS_PUBLISH, 200),
    Endpoint("GET", "/events/{id}", SCOPE_EVENTS_PUBLISH, 200, target="event"),
]
OWNED = [endpoint for endpoint in MATRIX if endpoint.owned]
MANAGE_AGENT = [endpoint for endpoint in MATRIX if endpoint.target == "agent" and endpoint.writes]
GETS = [endpoint for endpoint in MATRIX if endpoint.method == "GET"]


@dataclass
class World:
    """Agent A's objects in every state an endpoint needs, plus a weak victim agent with a token."""

    owner: Agent
    ids: dict[str, str]
    victim_prefix: str
    names: dict[str, str] = field(default_factory=dict)  # what `{name}` is, for targets named by name

    def url(self, endpoint: Endpoint, target_id: str | None = None) -> str:
        path = endpoint.path
        if endpoint.target is not None and "{id}" in path:
            path = path.replace("{id}", target_id or self.ids[endpoint.target])
        if endpoint.target is not None and "{name}" in path:
            path = path.replace("{name}", target_id or self.names[endpoint.target])
        return path.replace("{prefix}", self.victim_prefix)


def build_world(owner: Agent) -> World:
    actor = Actor.system("tests")
    cron = {"schedule_kind": "cron", "schedule_expr": "0 9 * * *", "timezone": "UTC", "payload": echo_pipeline(1)}
    task = task_create(owner=owner, actor=actor, fields={"title": "a's task", **cron})
    paused = task_pause(task=task_create(owner=owner, actor=actor, fields={"title": "a's paused", **cron}), actor=actor)
    failed = run_in_process(owner, FAILING_PAYLOAD)
    waiting = run_in_process(owner, approval_payload())
    assert (failed.status, waiting.status) == (Run.Status.FAILED, Run.Status.WAITING_APPROVAL)
    event = event_publish(publisher=owner, actor=actor, topic="matrix.world", payload={"n": 1})
    victim = agent_create(name=f"victim-{uuid.uuid4().hex[:8]}", scopes=[], actor=actor)
    victim_token, _ = token_issue(agent=victim, actor=actor)
    tool_server = tool_server_create(
        fields=tool_server_clean(name=f"matrix-tools-{uuid.uuid4().hex[:8]}", url=shared_http_server().url),
        actor=actor,
    )
    CatalogTool.objects.create(server=tool_server, name="forecast", input_schema={"type": "object"})
    return World(
        owner=owner,
        ids={
            "task": str(task.pk),
            "paused_task": str(paused.pk),
            "failed_run": str(failed.pk),
            "waiting_run": str(waiting.pk),
            "approval": str(Approval.objects.get(run=waiting).pk),
            "agent": str(victim.pk),
            "tool_server": str(tool_server.pk),
            "event": str(event.pk),
        },
        victim_prefix=victim_token.prefix,
        names={"tool_server": tool_server.name, "tool": f"{tool_server.name}.forecast"},
    )


def call(client: APIClient, endpoint: Endpoint, url: str, **headers: Any) -> Any:
    body = endpoint.json_body()
    if body is None:
        return client.generic(endpoint.method, url, **headers)
    return client.generic(endpoint.method, url, json.dumps(body), content_type="application/json", **headers)


def db_fingerprint() -> dict[str, list[str]]:
    """Every row of Ordinaut's tables and the beat tables, to prove a refused request changed nothing.
    A token's last_used_at is left out: authenticating is not a change the caller made."""
    state: dict[str, list[str]] = {}
    for model in apps.get_models():
        if model._meta.app_config.name not in FINGERPRINT_APPS:
            continue
        fields = [f.attname for f in model._meta.concrete_fields if f.attname != "last_used_at"]
        state[model._meta.label] = sorted(repr(row) for row in model._default_manager.values_list(*fields))
    return state


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert body["request_id"] == response["X-Request-ID"]


def client_with(token: str | None) -> APIClient:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client
