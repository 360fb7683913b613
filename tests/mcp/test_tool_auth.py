"""MCP tools authenticate with agent tokens, need the scope of the matching REST endpoint, and keep each
agent to its own tasks and runs (admins see all), exactly like the REST API."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from ordinaut_site.audit import SYSTEM
from ordinaut_site.mcp_server import AgentAccessToken, AgentTokenVerifier, mcp
from ordinaut_site.models import (
    ALL_SCOPES,
    SCOPE_RUNS_READ,
    SCOPE_RUNS_WRITE,
    SCOPE_TASKS_READ,
    SCOPE_TASKS_WRITE,
)
from ordinaut_site.services import agent_deactivate, token_issue, token_revoke
from runs.models import Approval, Run
from tasks.models import Task
from tests.mcp.conftest import ToolCaller
from tests.support.api_matrix import MATRIX, db_fingerprint
from tests.support.pipelines import approval_payload, echo_pipeline, run_in_process

pytestmark = pytest.mark.django_db

SOME_ID = str(uuid.uuid4())
MANUAL = {"title": "t", "schedule_kind": "manual", "payload": echo_pipeline(1)}
# Each tool, the REST endpoint it stands for (docs/mcp.md), and arguments that pass its input schema.
TOOLS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "create_task": ("POST", "/tasks", MANUAL),
    "list_tasks": ("GET", "/tasks", {}),
    "get_task": ("GET", "/tasks/{id}", {"task_id": SOME_ID}),
    "update_task": ("PATCH", "/tasks/{id}", {"task_id": SOME_ID, "changes": {"title": "x"}}),
    "delete_task": ("DELETE", "/tasks/{id}", {"task_id": SOME_ID}),
    "preview_schedule": ("POST", "/schedules/preview", {"schedule_kind": "cron", "schedule_expr": "0 9 * * *"}),
    "next_runs": ("GET", "/tasks/{id}/next_runs", {"task_id": SOME_ID}),
    "run_now": ("POST", "/tasks/{id}/run_now", {"task_id": SOME_ID}),
    "pause_task": ("POST", "/tasks/{id}/pause", {"task_id": SOME_ID}),
    "resume_task": ("POST", "/tasks/{id}/resume", {"task_id": SOME_ID}),
    "cancel_task": ("POST", "/tasks/{id}/cancel", {"task_id": SOME_ID}),
    "snooze_task": ("POST", "/tasks/{id}/snooze", {"task_id": SOME_ID, "delay_seconds": 60}),
    "validate_pipeline": ("POST", "/pipelines/validate", {"payload": echo_pipeline(1)}),
    "list_runs": ("GET", "/runs", {}),
    "get_run": ("GET", "/runs/{id}", {"run_id": SOME_ID}),
    "cancel_run": ("POST", "/runs/{id}/cancel", {"run_id": SOME_ID}),
    "replay_run": ("POST", "/runs/{id}/replay", {"run_id": SOME_ID}),
    "approve_run": ("POST", "/runs/{id}/approve", {"run_id": SOME_ID}),
    "reject_run": ("POST", "/runs/{id}/reject", {"run_id": SOME_ID}),
    "list_approvals": ("GET", "/approvals", {}),
    "publish_event": ("POST", "/events", {"topic": "mail.received", "payload": {}}),
    "list_tools": ("GET", "/tools", {}),
    "task_stats": ("GET", "/tasks/{id}/stats", {"task_id": SOME_ID}),
    "run_stats": ("GET", "/runs/stats", {}),
    "list_topics": ("GET", "/events/topics", {}),
}
REST_SCOPES = {(endpoint.method, endpoint.path): endpoint.scope for endpoint in MATRIX}


def tool_scope(name: str) -> str:
    method, path, _ = TOOLS[name]
    scope = REST_SCOPES[(method, path)]
    assert scope is not None
    return scope


def test_the_table_covers_every_tool() -> None:
    listed = {tool.name for tool in async_to_sync(mcp.list_tools)()}
    assert listed == set(TOOLS)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_each_tool_describes_its_scope_and_its_arguments(name: str) -> None:
    tool = next(tool for tool in async_to_sync(mcp.list_tools)() if tool.name == name)

    assert tool.description
    assert f"scope {tool_scope(name)}" in " ".join(tool.description.split())
    for argument, schema in tool.input_schema["properties"].items():
        assert schema.get("description") or "$ref" in schema, f"{name}.{argument} has no description"


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_token_without_the_scope_is_refused_and_changes_nothing(name: str, tools_as: Any, agent: Any) -> None:
    needed = tool_scope(name)
    weak = tools_as(scopes=[scope for scope in ALL_SCOPES if scope not in (needed, "admin")])
    before = db_fingerprint()

    error = weak.error(name, **TOOLS[name][2])

    assert error == {
        "code": "permission_denied",
        "message": f"This token lacks the scope {needed!r} this tool needs.",
    }
    assert db_fingerprint() == before


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ([SCOPE_TASKS_READ], {"list_tasks"}),
        ([SCOPE_RUNS_READ], {"list_runs", "list_approvals"}),
        ([SCOPE_TASKS_WRITE, SCOPE_RUNS_WRITE], set()),
    ],
)
def test_read_scopes_do_not_imply_write_scopes_or_the_reverse(
    scopes: list[str], allowed: set[str], tools_as: Any
) -> None:
    caller = tools_as(scopes=scopes)
    for name in ("list_tasks", "list_runs", "list_approvals"):
        result = caller(name)
        assert result.is_error == (name not in allowed), (name, result.content)


def test_a_narrowed_token_has_only_its_scopes(agent: Any) -> None:
    _, raw = token_issue(agent=agent.agent, actor=SYSTEM, scopes=[SCOPE_TASKS_READ])
    narrowed = ToolCaller(SimpleNamespace(token=raw))

    assert narrowed.ok("list_tasks")["count"] == 0
    assert narrowed.error("create_task", **MANUAL)["code"] == "permission_denied"
    assert not Task.objects.exists()


def test_a_call_without_credentials_is_not_authenticated(db: Any) -> None:
    error = ToolCaller(None).error("list_tasks")

    assert error["code"] == "not_authenticated"


def test_the_verifier_accepts_a_live_token_and_gives_the_agents_scopes(agent: Any) -> None:
    access = async_to_sync(AgentTokenVerifier().verify_token)(agent.token)

    assert isinstance(access, AgentAccessToken)
    assert access.agent == agent.agent
    assert access.subject == str(agent.agent.pk)
    assert access.client_id == agent.agent.name
    assert access.scopes == sorted(agent.agent.scopes)
    assert agent.token not in repr(access), "the secret stays out of the token's repr"


def test_the_verifier_refuses_bad_revoked_and_deactivated_tokens(make_agent: Any) -> None:
    verify = async_to_sync(AgentTokenVerifier().verify_token)
    revoked, deactivated = make_agent(), make_agent()
    token_revoke(token=revoked.agent.tokens.get(), actor=SYSTEM)
    agent_deactivate(agent=deactivated.agent, actor=SYSTEM)

    for token in ("ord_zzzzzzzz_not-a-token", str(uuid.uuid4()), "", revoked.token, deactivated.token):
        assert verify(token) is None, token


# --- Isolation -----------------------------------------------------------------------------------


@pytest.fixture
def others(make_agent: Any) -> dict[str, str]:
    """Another agent's task, failed run and run waiting for approval."""
    owner = make_agent().agent
    task = Task.objects.create(owner=owner, title="theirs", schedule_kind="manual", payload=echo_pipeline(1))
    failed = run_in_process(owner, {"pipeline": [{"id": "boom", "uses": "nowhere.x"}]})
    waiting = run_in_process(owner, approval_payload())
    return {"task": str(task.pk), "failed": str(failed.pk), "waiting": str(waiting.pk)}


OTHER_OBJECT_CALLS = [
    ("get_task", {"task_id": "task"}),
    ("update_task", {"task_id": "task", "changes": {"title": "mine now"}}),
    ("delete_task", {"task_id": "task"}),
    ("next_runs", {"task_id": "task"}),
    ("run_now", {"task_id": "task"}),
    ("pause_task", {"task_id": "task"}),
    ("cancel_task", {"task_id": "task"}),
    ("get_run", {"run_id": "failed"}),
    ("replay_run", {"run_id": "failed"}),
    ("cancel_run", {"run_id": "waiting"}),
    ("approve_run", {"run_id": "waiting"}),
    ("reject_run", {"run_id": "waiting"}),
]


@pytest.mark.parametrize(("name", "arguments"), OTHER_OBJECT_CALLS, ids=[name for name, _ in OTHER_OBJECT_CALLS])
def test_another_agents_object_is_not_found_and_untouched(
    name: str, arguments: dict[str, Any], tools: Any, others: dict[str, str]
) -> None:
    resolved = {key: others.get(value, value) if isinstance(value, str) else value for key, value in arguments.items()}
    before = db_fingerprint()

    error = tools.error(name, **resolved)

    assert error["code"] == "not_found"
    assert db_fingerprint() == before


def test_lists_show_another_agents_objects_to_admins_only(tools: Any, tools_as: Any, others: dict[str, str]) -> None:
    admin = tools_as(admin=True)

    assert tools.ok("list_tasks")["count"] == 0
    assert tools.ok("list_runs")["count"] == 0
    assert tools.ok("list_approvals")["count"] == 0
    assert others["task"] in {task["id"] for task in admin.ok("list_tasks")["results"]}
    assert {others["failed"], others["waiting"]} <= {run["id"] for run in admin.ok("list_runs")["results"]}
    assert admin.ok("list_approvals", status=["pending"])["count"] == 1


def test_an_admin_acts_on_another_agents_run_which_stays_the_owners(tools_as: Any, others: dict[str, str]) -> None:
    admin = tools_as(admin=True)

    admin.ok("approve_run", run_id=others["waiting"])
    started = admin.ok("run_now", task_id=others["task"])

    assert Approval.objects.get(run_id=others["waiting"]).status == "approved"
    assert Run.objects.get(pk=started["id"]).task.owner.name != admin.handle.agent.name


def test_a_task_is_always_created_for_the_calling_agent(tools: Any, agent: Any) -> None:
    created = tools.ok("create_task", **MANUAL)

    assert Task.objects.get(pk=created["id"]).owner == agent.agent


# --- Rate limits ---------------------------------------------------------------------------------


def test_the_apis_per_agent_write_rate_limit_counts_tool_calls(tools: Any, settings: Any) -> None:
    settings.ORDINAUT_WRITE_RATE_LIMIT = "2/min"

    for _ in range(2):
        tools.ok("create_task", **MANUAL)
    error = tools.error("create_task", **MANUAL)

    assert error["code"] == "rate_limited"
    assert "Expected available in" in error["message"]
    assert Task.objects.count() == 2
    assert tools.ok("list_tasks")["count"] == 2, "reads are not writes"
