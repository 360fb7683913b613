"""MCP publish_event: events published as the calling agent, like POST /events."""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic_core
import pytest
from asgiref.sync import async_to_sync
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.mcpserver.exceptions import ToolError

from ordinaut_site.mcp_server import AgentTokenVerifier, mcp
from ordinaut_site.models import AuditLog
from runs.models import Run
from tasks.events import event_deliver
from tasks.models import Event
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


def test_publish_event_stores_and_audits_it_as_the_agent(tools: Any, agent: Any) -> None:
    accepted = tools.ok("publish_event", topic="mail.received", payload={"from": "ana"}, source="imap")

    assert set(accepted) == {"id", "topic", "stream_id", "published_at"}
    assert accepted["topic"] == "mail.received"
    event = Event.objects.get(pk=accepted["id"])
    assert (event.publisher, event.payload, event.source) == (agent.agent, {"from": "ana"}, "imap")
    row = AuditLog.objects.get(action="event.publish", subject_id=accepted["id"])
    assert (row.actor_kind, row.actor_name) == ("agent", agent.agent.name)
    assert agent.client.get(f"/events/{accepted['id']}").json()["payload"] == {"from": "ana"}


def test_a_published_event_reaches_the_agents_matching_event_task(tools: Any) -> None:
    task = tools.ok(
        "create_task", title="on mail", schedule_kind="event", schedule_expr="mail.*", payload=echo_pipeline(1)
    )

    accepted = tools.ok("publish_event", topic="mail.received", payload={"n": 1})
    runs = event_deliver(event_id=accepted["id"])

    assert [str(run.task_id) for run in runs or []] == [task["id"]]
    assert Run.objects.get(task_id=task["id"]).context["event"]["payload"] == {"n": 1}


def test_a_bad_topic_is_a_validation_error_naming_it(tools: Any) -> None:
    error = tools.error("publish_event", topic="mail received!", payload={})

    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["topic"]
    assert not Event.objects.exists()


def test_the_same_idempotency_key_answers_the_first_event(tools: Any) -> None:
    first = tools.ok("publish_event", topic="mail.received", payload={"n": 1}, idempotency_key="k-1")
    again = tools.ok("publish_event", topic="mail.received", payload={"n": 1}, idempotency_key="k-1")
    other = tools.error("publish_event", topic="mail.received", payload={"n": 2}, idempotency_key="k-1")

    assert again["id"] == first["id"]
    assert other["code"] == "conflict"
    assert Event.objects.count() == 1


def test_a_number_beyond_a_double_is_a_validation_error_naming_where(agent: Any) -> None:
    # Over HTTP the JSON-RPC body is parsed by pydantic, which reads 1e400 as inf; the in-memory
    # client of the other tests would turn inf into null on the way. So call the tool as HTTP does.
    arguments = pydantic_core.from_json('{"topic": "mail.received", "payload": {"n": [1, -1e400]}}')
    assert arguments["payload"]["n"][1] == -math.inf

    async def call() -> Any:
        access = await AgentTokenVerifier().verify_token(agent.token)
        reset = auth_context_var.set(AuthenticatedUser(access))  # type: ignore[arg-type]
        try:
            return await mcp.call_tool("publish_event", arguments)
        finally:
            auth_context_var.reset(reset)

    with pytest.raises(ToolError) as raised:
        async_to_sync(call)()

    text = str(raised.value)
    prefix = "Error executing tool publish_event: "
    assert text.startswith(prefix), text
    error = json.loads(text[len(prefix) :])["error"]
    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["payload.n.1"]
    assert not Event.objects.exists()
