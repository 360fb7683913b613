"""POST /events: the event is stored (audited), added to the stream after commit, and answered 202."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.conf import settings

from ordinaut_site.models import SCOPE_EVENTS_PUBLISH, SCOPE_TASKS_WRITE, AuditLog
from tasks.models import Event
from tests.support.api_matrix import assert_error, client_with

pytestmark = pytest.mark.django_db

BODY = {"topic": "email.received", "payload": {"from": "ana@example.com", "subject": "Invoice"}, "source": "imap"}


@pytest.fixture
def publisher(make_agent: Any) -> Any:
    return make_agent(scopes=[SCOPE_EVENTS_PUBLISH])


def test_publish_answers_202_and_stores_the_event(publisher: Any) -> None:
    response = publisher.client.post("/events", BODY, format="json", HTTP_X_REQUEST_ID="publish-1")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert set(body) == {"id", "topic", "stream_id", "published_at"}
    event = Event.objects.get(pk=body["id"])
    assert (event.topic, event.payload, event.source, event.publisher_id) == (
        "email.received",
        BODY["payload"],
        "imap",
        publisher.agent.pk,
    )
    assert event.hops == 0
    assert body["published_at"].replace("Z", "+00:00") == event.published_at.isoformat()
    row = AuditLog.objects.get(request_id="publish-1")
    assert (row.action, row.subject_type, row.subject_id) == ("event.publish", "event", body["id"])
    assert row.details["topic"] == "email.received"


def test_source_is_optional(publisher: Any) -> None:
    response = publisher.client.post("/events", {"topic": "ping", "payload": {}}, format="json")
    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["id"]).source == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "topic"),
        ({"topic": "", "payload": {}}, "topic"),
        ({"topic": "has space", "payload": {}}, "topic"),
        ({"topic": "email.*", "payload": {}}, "topic"),  # globs are for tasks, not for events
        ({"topic": "x" * 201, "payload": {}}, "topic"),
        ({"topic": "ok"}, "payload"),
        ({"topic": "ok", "payload": [1, 2]}, "payload"),
        ({"topic": "ok", "payload": "text"}, "payload"),
        ({"topic": "ok", "payload": None}, "payload"),
        ({"topic": "ok", "payload": {}, "source": "s" * 201}, "source"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(publisher: Any, body: dict[str, Any], field: str) -> None:
    response = publisher.client.post("/events", body, format="json")

    assert_error(response, 400, "validation_error")
    assert field in response.json()["error"]["fields"], response.json()
    assert not Event.objects.exists()


def test_a_body_that_is_not_an_object_is_400(publisher: Any) -> None:
    response = publisher.client.post("/events", "[1]", content_type="application/json")
    assert_error(response, 400, "validation_error")
    assert not Event.objects.exists()


def test_a_payload_over_the_limit_is_400(publisher: Any, settings: Any) -> None:
    settings.ORDINAUT_EVENT_MAX_PAYLOAD_BYTES = 100
    response = publisher.client.post("/events", {"topic": "big", "payload": {"text": "x" * 200}}, format="json")
    assert_error(response, 400, "validation_error")
    assert "ORDINAUT_EVENT_MAX_PAYLOAD_BYTES" in response.json()["error"]["fields"]["payload"][0]
    assert not Event.objects.exists()


def test_no_token_is_401_and_no_scope_is_403(make_agent: Any) -> None:
    assert_error(client_with(None).post("/events", BODY, format="json"), 401, "not_authenticated")
    writer = make_agent(scopes=[SCOPE_TASKS_WRITE])
    response = writer.client.post("/events", BODY, format="json")
    assert_error(response, 403, "permission_denied")
    assert "events:publish" in response.json()["error"]["message"]
    assert not Event.objects.exists()


def test_the_same_idempotency_key_and_body_replay_the_first_event(publisher: Any) -> None:
    first = publisher.client.post("/events", BODY, format="json", HTTP_IDEMPOTENCY_KEY="mail-42")
    again = publisher.client.post("/events", BODY, format="json", HTTP_IDEMPOTENCY_KEY="mail-42")

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 1
    assert AuditLog.objects.filter(action="event.publish").count() == 1


def test_the_same_idempotency_key_with_another_body_is_409(publisher: Any) -> None:
    publisher.client.post("/events", BODY, format="json", HTTP_IDEMPOTENCY_KEY="mail-43")
    other = publisher.client.post(
        "/events", {**BODY, "payload": {"subject": "Other"}}, format="json", HTTP_IDEMPOTENCY_KEY="mail-43"
    )

    assert_error(other, 409, "conflict")
    assert Event.objects.count() == 1


def test_idempotency_keys_are_per_agent(publisher: Any, make_agent: Any) -> None:
    other = make_agent(scopes=[SCOPE_EVENTS_PUBLISH])
    first = publisher.client.post("/events", BODY, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    second = other.client.post("/events", BODY, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]


# --- After commit: on the stream -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_event_is_on_the_stream_when_the_answer_comes(publisher: Any, redis_client: redis.Redis) -> None:
    response = publisher.client.post("/events", BODY, format="json")

    assert response.status_code == 202
    body = response.json()
    assert body["stream_id"]
    entries: Any = redis_client.xrange(settings.ORDINAUT_EVENT_STREAM, min=body["stream_id"], max=body["stream_id"])
    [(stream_id, fields)] = entries
    assert stream_id == body["stream_id"].encode()
    assert fields[b"event"] == body["id"].encode()
    assert fields[b"topic"] == b"email.received"
    # The publishing request's id and agent travel with the entry (the consumer's lines carry them).
    assert fields[b"request_id"] == response["X-Request-ID"].encode()
    assert fields[b"agent"] == publisher.agent.name.encode()
    assert Event.objects.get(pk=body["id"]).stream_id == body["stream_id"]


@pytest.mark.django_db(transaction=True)
def test_with_redis_away_the_event_is_kept_with_no_stream_id(publisher: Any, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    response = publisher.client.post("/events", BODY, format="json")

    assert response.status_code == 202
    assert response.json()["stream_id"] is None
    event = Event.objects.get(pk=response.json()["id"])
    assert event.stream_id == ""
    assert event.payload == BODY["payload"]
