"""/mcp end to end: the real ASGI app under uvicorn, the official MCP client over HTTP with an agent's
bearer token, and the run finishing on a real Celery worker; Django keeps answering beside it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from runs.models import Run
from tests.mcp.calls import structured, tool_error
from tests.support.pipelines import echo_pipeline
from tests.support.processes import BASE_DIR, child_env, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

CALL_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Web:
    """`uvicorn ordinaut_site.asgi:application --lifespan on` (the Procfile's web) on a free port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"web-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Web:
        command = [sys.executable, "-m", "uvicorn", "ordinaut_site.asgi:application"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "on"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, env=child_env(), cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.up, timeout=60, message=f"the web process to answer (log: {self.log_path})")
        return self

    def up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"web exited with {self.proc.returncode}; log: {self.log_path}")
        try:
            return httpx2.get(f"{self.base}/health/live", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop: the lifespan shuts down
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
            raise AssertionError(f"web did not stop on SIGINT; log: {self.log_path}") from None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def web(django_db_setup: Any, worker_logs: Path) -> Iterator[Web]:
    server = Web(worker_logs).start()
    yield server
    server.stop()


def mcp_calls(web: Web, token: str, *calls: tuple[str, dict[str, Any]], mode: str = "auto") -> list[CallToolResult]:
    """Connect to /mcp with the token, make the calls in order, return their results."""

    async def go() -> list[CallToolResult]:
        headers = {"Authorization": f"Bearer {token}"}
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with (
                httpx2.AsyncClient(headers=headers, timeout=CALL_TIMEOUT_S) as http,
                Client(streamable_http_client(f"{web.base}/mcp", http_client=http), mode=mode) as client,  # type: ignore[arg-type]
            ):
                return [await client.call_tool(name, arguments) for name, arguments in calls]

    return anyio.run(go)


def list_tool_names(web: Web, token: str, mode: str = "auto") -> list[str]:
    async def go() -> list[str]:
        headers = {"Authorization": f"Bearer {token}"}
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with (
                httpx2.AsyncClient(headers=headers, timeout=CALL_TIMEOUT_S) as http,
                Client(streamable_http_client(f"{web.base}/mcp", http_client=http), mode=mode) as client,  # type: ignore[arg-type]
            ):
                return [tool.name for tool in (await client.list_tools()).tools]

    return anyio.run(go)


def raw_mcp(web: Web, token: str | None, path: str = "/mcp", **headers: str) -> httpx2.Response:
    """One JSON-RPC tools/list POST, for what the SDK client would hide (statuses, headers)."""
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx2.post(f"{web.base}{path}", json=body, headers=sent, timeout=CALL_TIMEOUT_S)


def _finished(run_id: str) -> Run | None:
    run = Run.objects.get(pk=run_id)
    return run if run.status in Run.TERMINAL else None


def test_an_agent_creates_and_runs_a_task_over_mcp_and_the_worker_runs_it(web: Web, agent: Any, worker: Any) -> None:
    assert {"create_task", "run_now", "get_run", "approve_run"} <= set(list_tool_names(web, agent.token))

    [created] = mcp_calls(
        web, agent.token, ("create_task", {"title": "over mcp", "schedule_kind": "manual", "payload": echo_pipeline(2)})
    )
    task = structured(created)
    [started] = mcp_calls(web, agent.token, ("run_now", {"task_id": task["id"]}))
    queued = structured(started)
    assert queued["status"] == "queued"

    run = wait_for(lambda: _finished(queued["id"]), message="the run started over MCP to finish")

    assert run.status == Run.Status.SUCCEEDED
    [read] = mcp_calls(web, agent.token, ("get_run", {"run_id": queued["id"]}))
    body = structured(read)
    assert body["status"] == "succeeded"
    assert [step["output"] for step in body["steps"]] == [{"i": 0}, {"i": 1}]
    assert body == agent.client.get(f"/runs/{queued['id']}").json()
    worker.wait_idle()


def test_errors_come_back_as_tool_errors_with_the_rest_body(web: Web, agent: Any) -> None:
    bad, missing = mcp_calls(
        web,
        agent.token,
        ("create_task", {"title": "x", "schedule_kind": "cron", "schedule_expr": "nope", "payload": echo_pipeline(1)}),
        ("get_task", {"task_id": str(uuid.uuid4())}),
    )

    assert tool_error(bad, "create_task")["error"]["fields"].keys() == {"schedule_expr"}
    assert tool_error(missing, "get_task")["error"]["code"] == "not_found"


def test_a_legacy_session_client_works_against_the_stateless_endpoint(web: Web, agent: Any) -> None:
    [listed] = mcp_calls(web, agent.token, ("list_tasks", {}), mode="legacy")

    assert structured(listed)["count"] == 0


@pytest.mark.parametrize("token", [None, "ord_zzzzzzzz_not-a-token", "not-even-ours"])
def test_a_missing_or_bad_token_is_401(web: Web, token: str | None) -> None:
    response = raw_mcp(web, token)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert response.headers["X-Request-ID"]


def test_the_sdk_client_sees_a_bad_token_as_an_error(web: Web) -> None:
    with pytest.raises(BaseException) as caught:
        list_tool_names(web, "ord_zzzzzzzz_not-a-token")

    flat = [caught.value]
    while isinstance(flat[-1], BaseExceptionGroup):
        flat.append(flat[-1].exceptions[0])
    assert isinstance(flat[-1], MCPError), caught.value


def test_mcp_answers_with_a_request_id_and_a_trailing_slash_is_not_redirected(web: Web, agent: Any) -> None:
    plain = raw_mcp(web, agent.token, **{"X-Request-ID": "mcp-e2e-1"})
    slashed = raw_mcp(web, agent.token, path="/mcp/")

    assert plain.status_code == 200, plain.text
    assert plain.headers["X-Request-ID"] == "mcp-e2e-1"
    assert "create_task" in {tool["name"] for tool in plain.json()["result"]["tools"]}
    assert slashed.status_code == 200, slashed.text


def test_a_host_outside_allowed_hosts_is_refused(web: Web, agent: Any) -> None:
    response = raw_mcp(web, agent.token, Host=f"rebound.example:{web.port}")

    assert response.status_code == 421


def test_a_body_over_the_limit_is_413_in_the_error_shape(web: Web, agent: Any) -> None:
    response = httpx2.post(
        f"{web.base}/mcp",
        content=b"x" * (2 * 1024 * 1024),
        headers={"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"},
        timeout=CALL_TIMEOUT_S,
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_django_paths_still_answer_on_the_same_server(web: Web, agent: Any) -> None:
    headers = {"Authorization": f"Bearer {agent.token}"}

    assert httpx2.get(f"{web.base}/health/live", timeout=CALL_TIMEOUT_S).status_code == 200
    tasks = httpx2.get(f"{web.base}/tasks", headers=headers, timeout=CALL_TIMEOUT_S)
    assert tasks.status_code == 200
    assert tasks.json()["count"] == 0
    beside = httpx2.get(f"{web.base}/mcp/other", headers=headers, timeout=CALL_TIMEOUT_S)
    assert beside.status_code == 404
    assert beside.json()["error"]["code"] == "not_found"


def test_the_lifespan_completes_on_shutdown(django_db_setup: Any, worker_logs: Path) -> None:
    server = Web(worker_logs).start()

    returncode = server.stop()

    assert returncode == 0, server.log_text()
    assert "Application startup complete" in server.log_text()
    assert "Application shutdown complete" in server.log_text()
