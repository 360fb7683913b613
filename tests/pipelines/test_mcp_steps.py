"""MCP tools as pipeline steps on the real Celery worker, against real MCP servers (HTTP on loopback
and stdio subprocesses): outputs stored, tool errors permanent, outages and timeouts retried."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.models import ToolServer
from runs.models import StepRun
from tests.support.mcp_servers import TOKEN, TOKEN_ENV, digest, free_port, http_server, shared_http_server
from tests.support.pipelines import finished, start_manual_run
from tests.support.processes import wait_for
from tests.support.tool_servers import register_http, register_stdio

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

QUICK_RETRY = {"max_attempts": 3, "backoff_seconds": 0.2, "backoff_max_seconds": 0.5}


def one_step(uses: str, with_: dict[str, Any], **step: Any) -> dict[str, Any]:
    return {"pipeline": [{"id": "call", "uses": uses, "with": with_, **step}]}


def run_to_the_end(agent: Any, worker: Any, payload: dict[str, Any]) -> tuple[Any, StepRun]:
    run_id = start_manual_run(agent.client, payload)
    run = wait_for(lambda: finished(run_id), timeout=60, message="the run to finish")
    worker.wait_idle()
    return run, StepRun.objects.get(run=run, step_id="call")


def test_a_step_calls_an_mcp_tool_and_stores_its_structured_output(agent: Any, worker: Any) -> None:
    server = register_http(shared_http_server().url)
    payload = {
        "params": {"city": "Chisinau"},
        "pipeline": [
            {"id": "call", "uses": f"{server.name}.forecast", "with": {"city": "${params.city}", "days": 2}},
            {"id": "after", "uses": "orchestrator.echo", "with": {"high": "${steps.call.high_c}"}},
        ],
    }

    run, step = run_to_the_end(agent, worker, payload)

    assert run.status == "succeeded", run.error
    assert step.output == {"city": "Chisinau", "summary": "sunny", "high_c": 21.5, "days": ["day 1", "day 2"]}
    assert step.attempts == 1
    assert run.result == {"high": 21.5}
    shown = agent.client.get(f"/runs/{run.pk}").json()["steps"][0]
    assert (shown["uses"], shown["output"]["summary"]) == (f"{server.name}.forecast", "sunny")


def test_a_tool_error_fails_the_step_at_once(agent: Any, worker: Any) -> None:
    server = register_http(shared_http_server().url)

    run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.fail", {"reason": "no"}, retry=QUICK_RETRY))

    assert run.status == "failed"
    assert (step.status, step.attempts) == ("failed", 1)
    assert (step.error or {})["code"] == "tool_error"
    assert (step.error or {})["retryable"] is False
    assert "cannot do it: no" in (step.error or {})["message"]
    assert (run.error or {})["code"] == "tool_error"


def test_a_tool_error_marked_retryable_is_retried_then_fails(agent: Any, worker: Any) -> None:
    server = register_http(shared_http_server().url)

    run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.flaky", {"reason": "busy"}, retry=QUICK_RETRY))

    assert run.status == "failed"
    assert step.attempts == 3
    assert [entry["outcome"] for entry in step.attempt_history] == ["retry", "retry", "failed"]
    assert (step.error or {})["code"] == "tool_error"


def test_a_server_that_is_down_is_retried_then_fails(agent: Any, worker: Any) -> None:
    server = register_http(shared_http_server().url)
    ToolServer.objects.filter(pk=server.pk).update(url=f"http://127.0.0.1:{free_port()}/mcp")

    run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.forecast", {"city": "x"}, retry=QUICK_RETRY))

    assert run.status == "failed"
    assert step.attempts == 3
    assert [entry["outcome"] for entry in step.attempt_history] == ["retry", "retry", "failed"]
    assert (step.error or {})["code"] == "tool_unavailable"
    assert (step.error or {})["retryable"] is True


def test_a_slow_tool_times_out_at_the_servers_timeout_and_is_retried(agent: Any, worker: Any) -> None:
    server = register_http(shared_http_server().url, timeout_seconds=0.5)
    retry = {**QUICK_RETRY, "max_attempts": 2}

    run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.slow", {"seconds": 10}, retry=retry))

    assert run.status == "failed"
    assert (step.attempts, (step.error or {})["code"]) == (2, "timeout")
    assert all(entry["duration_ms"] < 5000 for entry in step.attempt_history)


def test_a_header_from_the_workers_environment_reaches_the_server_and_no_answer_shows_it(
    agent: Any, worker: Any
) -> None:
    with http_server(token=TOKEN) as protected:
        server = register_http(protected.url, headers_from_env={"Authorization": TOKEN_ENV})
        run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.whoami", {}))

    assert run.status == "succeeded", run.error
    assert step.output == {"authorization_sha256": digest(f"Bearer {TOKEN}")}
    answers = [
        agent.client.get(f"/runs/{run.pk}").content.decode(),
        agent.client.get("/tool-servers").content.decode(),
        agent.client.get(f"/tool-servers/{server.name}").content.decode(),
        agent.client.get(f"/tools?server={server.name}").content.decode(),
    ]
    assert all(TOKEN not in answer for answer in answers)
    assert json.loads(answers[2])["header_names"] == ["Authorization"]


def test_credentials_the_server_refuses_fail_the_step_at_once(agent: Any, worker: Any) -> None:
    with http_server(token=TOKEN) as protected:
        server = register_http(protected.url, headers_from_env={"Authorization": TOKEN_ENV})
        ToolServer.objects.filter(pk=server.pk).update(headers_from_env={})
        run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.whoami", {}, retry=QUICK_RETRY))

    assert run.status == "failed"
    assert (step.attempts, (step.error or {})["code"], (step.error or {})["retryable"]) == (
        1,
        "tool_auth_failed",
        False,
    )


def test_input_that_breaks_the_tools_schema_fails_before_the_call(agent: Any, worker: Any) -> None:
    server = register_http(shared_http_server().url)

    run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.forecast", {"days": "2"}, retry=QUICK_RETRY))

    assert run.status == "failed"
    assert (step.attempts, (step.error or {})["code"]) == (1, "input_invalid")
    assert "'city' is a required property" in (step.error or {})["message"]


def test_a_stdio_server_runs_as_a_step(agent: Any, worker: Any) -> None:
    server = register_stdio()

    run, step = run_to_the_end(agent, worker, one_step(f"{server.name}.forecast", {"city": "Orhei"}))

    assert run.status == "succeeded", run.error
    assert (step.output or {})["city"] == "Orhei"
