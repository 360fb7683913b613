"""`manage.py mcp_stdio` end to end: the official MCP client's stdio transport against the command as
a real subprocess on the test database, as a desktop client starts it (the token in ORDINAUT_TOKEN),
and the run finishing on a real Celery worker."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from ordinaut_site.audit import Actor
from ordinaut_site.management.commands.mcp_stdio import TOKEN_ENV
from ordinaut_site.mcp_server import mcp
from ordinaut_site.models import AgentToken
from ordinaut_site.services import agent_deactivate, token_revoke
from runs.models import Run
from tests.mcp.calls import call_tool, structured, tool_error
from tests.support.pipelines import echo_pipeline
from tests.support.processes import BASE_DIR, child_env, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

CALL_TIMEOUT_S = 60.0  # bounds a hang: it includes the subprocess's Django start
COMMAND = [sys.executable, "manage.py", "mcp_stdio"]
T = TypeVar("T")


def server(token: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=COMMAND[0], args=COMMAND[1:], env=child_env(**{TOKEN_ENV: token}), cwd=BASE_DIR
    )


def over_stdio(token: str, errlog: Path, work: Callable[[Client], Awaitable[T]]) -> T:
    """Start `manage.py mcp_stdio` with the token and do `work` with a client connected to it.

    async_to_sync (not anyio.run) keeps the ORM a test does mid-session on this thread, where the
    test's database connection is."""

    async def go() -> T:
        with errlog.open("a") as log, anyio.fail_after(CALL_TIMEOUT_S):
            async with Client(stdio_client(server(token), errlog=log)) as client:
                return await work(client)

    return async_to_sync(go)()


@pytest.fixture
def errlog(tmp_path: Path) -> Path:
    """The subprocess's stderr (its logs), for a failing assertion to show."""
    return tmp_path / "mcp_stdio.stderr"


def started(token: str | None) -> subprocess.CompletedProcess[str]:
    env = child_env(**({TOKEN_ENV: token} if token is not None else {}))
    if token is None:
        env.pop(TOKEN_ENV, None)
    return subprocess.run(
        COMMAND, env=env, cwd=BASE_DIR, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CALL_TIMEOUT_S
    )


def _finished(run_id: str) -> Run | None:
    run = Run.objects.get(pk=run_id)
    return run if run.status in Run.TERMINAL else None


def test_the_tools_are_those_of_the_http_server_with_the_same_schemas(agent: Any, errlog: Path) -> None:
    async def listed(client: Client) -> dict[str, Any]:
        return {tool.name: tool.input_schema for tool in (await client.list_tools()).tools}

    over = over_stdio(agent.token, errlog, listed)

    in_process = {tool.name: tool.input_schema for tool in async_to_sync(mcp.list_tools)()}
    assert over == in_process
    assert {"create_task", "run_now", "get_run", "approve_run", "publish_event"} <= set(over)


def test_an_agent_creates_and_runs_a_task_over_stdio_and_the_worker_runs_it(
    agent: Any, worker: Any, errlog: Path
) -> None:
    async def create_and_run(client: Client) -> tuple[dict[str, Any], dict[str, Any]]:
        body = {"title": "over stdio", "schedule_kind": "manual", "payload": echo_pipeline(1)}
        task = structured(await client.call_tool("create_task", body))
        return task, structured(await client.call_tool("run_now", {"task_id": task["id"]}))

    task, queued = over_stdio(agent.token, errlog, create_and_run)

    now = agent.client.get(f"/tasks/{task['id']}").json()
    assert {**task, "last_run_at": None} == {**now, "last_run_at": None}  # run_now has set it since
    assert queued["status"] == "queued"
    run = wait_for(lambda: _finished(queued["id"]), message="the run started over stdio to finish")
    assert run.status == Run.Status.SUCCEEDED

    async def read(client: Client) -> dict[str, Any]:
        return structured(await client.call_tool("get_run", {"run_id": queued["id"]}))

    body = over_stdio(agent.token, errlog, read)
    assert body["status"] == "succeeded"
    assert [step["output"] for step in body["steps"]] == [{"i": 0}]
    assert body == agent.client.get(f"/runs/{queued['id']}").json()
    worker.wait_idle()


def test_a_token_without_the_scope_gets_the_http_endpoints_error_body(make_agent: Any, errlog: Path) -> None:
    reader = make_agent(scopes=["tasks:read"])
    arguments = {"title": "x", "schedule_kind": "manual", "payload": echo_pipeline(1)}

    async def create(client: Client) -> Any:
        return await client.call_tool("create_task", arguments)

    over = tool_error(over_stdio(reader.token, errlog, create), "create_task")
    in_process = tool_error(call_tool(reader.token, "create_task", arguments), "create_task")

    assert over["error"] == in_process["error"]
    assert over["error"]["code"] == "permission_denied"
    assert "tasks:write" in over["error"]["message"]


def test_errors_come_back_as_the_rest_body(agent: Any, errlog: Path) -> None:
    async def calls(client: Client) -> list[Any]:
        bad = {"title": "x", "schedule_kind": "cron", "schedule_expr": "nope", "payload": echo_pipeline(1)}
        return [
            await client.call_tool("create_task", bad),
            await client.call_tool("get_task", {"task_id": str(uuid.uuid4())}),
        ]

    bad, missing = over_stdio(agent.token, errlog, calls)

    assert tool_error(bad, "create_task")["error"]["fields"].keys() == {"schedule_expr"}
    assert tool_error(missing, "get_task")["error"]["code"] == "not_found"


def test_a_token_revoked_mid_session_stops_working_at_the_next_call(agent: Any, errlog: Path) -> None:
    token = AgentToken.objects.get(agent=agent.agent)

    async def calls(client: Client) -> tuple[Any, Any]:
        before = await client.call_tool("list_tasks", {})
        await sync_to_async(token_revoke)(token=token, actor=Actor.system("tests"))
        return before, await client.call_tool("list_tasks", {})

    before, after = over_stdio(agent.token, errlog, calls)

    assert structured(before)["count"] == 0
    assert tool_error(after, "list_tasks")["error"] == {
        "code": "not_authenticated",
        "message": "Invalid, expired or revoked token.",
    }


def test_without_a_token_the_command_exits_at_once_with_one_line_on_stderr() -> None:
    result = started(None)

    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {TOKEN_ENV} is not set: put the agent's API token (ord_...) in the environment."
    ]


@pytest.mark.parametrize("case", ["unknown", "revoked", "expired", "deactivated"])
def test_a_token_that_does_not_authenticate_exits_at_start_with_one_line_on_stderr(agent: Any, case: str) -> None:
    token = agent.token
    row = AgentToken.objects.get(agent=agent.agent)
    if case == "unknown":
        token = "ord_zzzzzzzz_not-a-token"
    elif case == "revoked":
        token_revoke(token=row, actor=Actor.system("tests"))
    elif case == "expired":
        AgentToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    else:
        agent_deactivate(agent=agent.agent, actor=Actor.system("tests"))

    result = started(token)

    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {TOKEN_ENV} does not authenticate: the token is invalid, expired or revoked, "
        "or its agent is deactivated."
    ]
    assert token not in result.stderr
