"""GET /events and GET /events/{id}: an agent's own events (every agent's for admins), newest first."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from ordinaut_site.models import SCOPE_EVENTS_PUBLISH, SCOPE_TASKS_READ
from tasks.events import event_publish
from tasks.models import Event
from tests.support.api_matrix import assert_error, client_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def publisher(make_agent: Any) -> Any:
    return make_agent(scopes=[SCOPE_EVENTS_PUBLISH])


def publish(handle: Any, topic: str, **payload: Any) -> Event:
    return event_publish(publisher=handle.agent, actor=Actor.system("tests"), topic=topic, payload=payload)


def listed(client: Any, query: str = "") -> list[str]:
    response = client.get(f"/events{query}")
    assert response.status_code == 200, response.json()
    return [item["topic"] for item in response.json()["results"]]


def test_list_is_newest_first_with_every_field(publisher: Any) -> None:
    first = publish(publisher, "a.one", n=1)
    publish(publisher, "a.two", n=2)

    response = publisher.client.get("/events")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [item["topic"] for item in body["results"]] == ["a.two", "a.one"]
    item = body["results"][1]
    assert item == {
        "id": str(first.pk),
        "topic": "a.one",
        "payload": {"n": 1},
        "source": "",
        "publisher": {"id": str(publisher.agent.pk), "name": publisher.agent.name},
        "hops": 0,
        "broadcast": False,
        "emitted_by_run": None,
        "stream_id": None,  # tests run in a transaction: the stream entry is added at commit
        "published_at": item["published_at"],
        "consumed_at": None,
    }


def test_topic_filter_is_exact_or_a_glob(publisher: Any) -> None:
    for topic in ("email.received", "email.sent", "emailx", "sms.received", "email.received.spam"):
        publish(publisher, topic)

    assert listed(publisher.client, "?topic=email.received") == ["email.received"]
    assert sorted(listed(publisher.client, "?topic=email.*")) == ["email.received", "email.received.spam", "email.sent"]
    assert sorted(listed(publisher.client, "?topic=*.received")) == ["email.received", "sms.received"]
    assert listed(publisher.client, "?topic=email.se%3Ft") == ["email.sent"]
    assert len(listed(publisher.client, "?topic=")) == 5  # an empty value is no filter


def test_since_and_until_filter_by_publication_time(publisher: Any) -> None:
    old = publish(publisher, "old")
    Event.objects.filter(pk=old.pk).update(published_at=timezone.now() - timedelta(days=2))
    publish(publisher, "new")
    day_ago = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")

    assert listed(publisher.client, f"?since={day_ago}") == ["new"]
    assert listed(publisher.client, f"?until={day_ago}") == ["old"]


def test_limit_and_offset_page_the_list(publisher: Any) -> None:
    for n in range(5):
        publish(publisher, f"page.{n}")

    body = publisher.client.get("/events?limit=2&offset=1").json()

    assert body["count"] == 5
    assert [item["topic"] for item in body["results"]] == ["page.3", "page.2"]
    assert body["next"]
    assert body["previous"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("?topic=has%20space", "topic"), ("?since=yesterday", "since"), ("?limit=0", "limit"), ("?until=x", "until")],
)
def test_bad_filters_are_400_naming_the_field(publisher: Any, query: str, field: str) -> None:
    response = publisher.client.get(f"/events{query}")
    assert_error(response, 400, "validation_error")
    assert field in response.json()["error"]["fields"]


def test_agents_see_their_own_events_and_admins_see_all(publisher: Any, make_agent: Any) -> None:
    other = make_agent(scopes=[SCOPE_EVENTS_PUBLISH])
    admin = make_agent(admin=True)
    mine = publish(publisher, "mine")
    publish(other, "theirs")

    assert listed(publisher.client) == ["mine"]
    assert listed(other.client) == ["theirs"]
    assert sorted(listed(admin.client)) == ["mine", "theirs"]
    assert publisher.client.get(f"/events/{mine.pk}").json()["topic"] == "mine"
    assert admin.client.get(f"/events/{mine.pk}").status_code == 200


def test_another_agents_event_is_404_like_a_missing_one(publisher: Any, make_agent: Any) -> None:
    event = publish(publisher, "private")
    other = make_agent(scopes=[SCOPE_EVENTS_PUBLISH])

    hidden = other.client.get(f"/events/{event.pk}")
    missing = other.client.get(f"/events/{uuid.uuid4()}")

    assert_error(hidden, 404, "not_found")
    assert hidden.json()["error"] == missing.json()["error"]


def test_listing_needs_events_publish_and_a_token(make_agent: Any, publisher: Any) -> None:
    event = publish(publisher, "x")
    reader = make_agent(scopes=[SCOPE_TASKS_READ])
    assert_error(reader.client.get("/events"), 403, "permission_denied")
    assert_error(reader.client.get(f"/events/{event.pk}"), 403, "permission_denied")
    assert_error(client_with(None).get("/events"), 401, "not_authenticated")
