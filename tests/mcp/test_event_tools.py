"""MCP publish_event: events published as the calling agent, like POST /events."""

from __future__ import annotations

from typing import Any

import pytest

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
