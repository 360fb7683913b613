"""The events consumer loop, in process on the real Redis stream: read in a group, deliver, acknowledge;
replays and claimed entries create nothing twice; bad entries and outages never stop it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from runs.models import Run
from tasks import event_consumer
from tasks.event_consumer import consumers_alive
from tasks.models import Event
from tasks.scheduler import beat_heartbeat_key
from tests.support.events import clean_stream, make_consumer, pending_count, publish

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def event_stream(redis_client: redis.Redis) -> Iterator[str]:
    yield from clean_stream(redis_client)


def runs_of(event: Event) -> list[Run]:
    return list(Run.objects.filter(trigger_key=f"event:{event.pk}"))


def test_the_consumer_creates_the_run_and_acknowledges_the_entry(
    agent: Any, make_task: Any, redis_client: redis.Redis
) -> None:
    task = make_task("event", "email.*")
    event = publish(agent.agent, "email.received", {"subject": "hi"})
    consumer = make_consumer()

    stats = consumer.run(iterations=3)

    [run] = runs_of(event)
    assert (run.task_id, run.trigger, run.context["event"]["payload"]) == (task.pk, "event", {"subject": "hi"})
    assert (stats.entries, stats.delivered, stats.runs, stats.bad, stats.errors) == (1, 1, 1, 0, 0)
    assert pending_count(redis_client) == 0
    assert Event.objects.get(pk=event.pk).consumed_at is not None


def test_a_non_matching_event_is_acknowledged_without_a_run(
    agent: Any, make_task: Any, redis_client: redis.Redis
) -> None:
    make_task("event", "email.*")
    event = publish(agent.agent, "sms.received")

    stats = make_consumer().run(iterations=3)

    assert runs_of(event) == []
    assert (stats.delivered, stats.runs) == (1, 0)
    assert pending_count(redis_client) == 0


def test_a_false_condition_gives_a_skipped_run(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", condition="event.payload.urgent")
    event = publish(agent.agent, "email.received", {"urgent": False})

    stats = make_consumer().run(iterations=3)

    [run] = runs_of(event)
    assert (run.status, run.skip_reason) == ("skipped", "condition")
    assert stats.skipped_runs == 1


def test_bad_entries_are_acknowledged_and_the_loop_goes_on(
    agent: Any, make_task: Any, redis_client: redis.Redis, event_stream: str, caplog: Any
) -> None:
    make_task("event", "email.*")
    redis_client.xadd(event_stream, {"topic": "no.event.id"})
    redis_client.xadd(event_stream, {"event": "not-a-uuid"})
    redis_client.xadd(event_stream, {"event": str(uuid.uuid4())})
    good = publish(agent.agent, "email.received")

    stats = make_consumer().run(iterations=3)

    assert (stats.entries, stats.bad, stats.delivered, stats.errors) == (4, 3, 1, 0)
    assert len(runs_of(good)) == 1
    assert pending_count(redis_client) == 0
    assert "does not exist" in caplog.text
    assert "has no event id" in caplog.text


def test_replaying_the_stream_from_the_start_creates_no_duplicate_runs(
    agent: Any, make_task: Any, redis_client: redis.Redis, event_stream: str
) -> None:
    make_task("event", "email.*", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(3)]
    make_consumer().run(iterations=3)
    assert Run.objects.count() == 3

    redis_client.xgroup_setid(event_stream, settings.ORDINAUT_EVENT_GROUP, id="0")
    stats = make_consumer().run(iterations=3)

    assert stats.entries == 3, "the entries were read again"
    assert Run.objects.count() == 3
    # And even with the consumed marks gone, the trigger keys keep one run per (task, event).
    Event.objects.update(consumed_at=None)
    redis_client.xgroup_setid(event_stream, settings.ORDINAUT_EVENT_GROUP, id="0")
    make_consumer().run(iterations=3)
    assert sorted(len(runs_of(event)) for event in events) == [1, 1, 1]
    assert pending_count(redis_client) == 0


def test_entries_of_a_consumer_killed_mid_batch_are_claimed_by_another(
    agent: Any, make_task: Any, redis_client: redis.Redis
) -> None:
    make_task("event", "email.*", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(3)]
    dead = make_consumer(name="dead")
    dead.step()  # joins the group; nothing of its own pending yet
    batch = dead._read(">", block_ms=None)
    dead.handle(batch[:1])  # ... and dies after the first entry of its batch
    assert pending_count(redis_client, "dead") == 2

    patient = make_consumer(name="patient")  # claims only entries idle for a minute: none yet
    patient.run(iterations=3)
    assert pending_count(redis_client, "dead") == 2

    heir = make_consumer(name="heir", claim_idle_ms=0)
    stats = heir.run(iterations=2)

    assert stats.claimed == 2
    assert pending_count(redis_client) == 0
    assert [len(runs_of(event)) for event in events] == [1, 1, 1]


def test_a_transient_database_error_leaves_the_entry_pending_until_it_succeeds(
    agent: Any, make_task: Any, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    make_task("event", "email.*")
    event = publish(agent.agent, "email.received")
    real = event_consumer.event_deliver
    failures = iter([OperationalError("the database went away")])

    def flaky(**kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(**kwargs)

    monkeypatch.setattr(event_consumer, "event_deliver", flaky)
    slept: list[float] = []
    consumer = make_consumer(sleep=slept.append)

    consumer.run(iterations=2)
    assert runs_of(event) == []
    assert pending_count(redis_client) == 1, "not acknowledged: it is read again"
    consumer.run(iterations=2)

    assert len(runs_of(event)) == 1
    assert pending_count(redis_client) == 0
    assert consumer.stats.errors == 1
    assert slept == [event_consumer.BACKOFF_START_S]


def test_with_redis_away_the_loop_backs_off_and_keeps_going(caplog: Any) -> None:
    slept: list[float] = []
    away = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    consumer = make_consumer(client=away, sleep=slept.append)

    stats = consumer.run(iterations=4)

    assert stats.errors == 4
    assert slept == [0.5, 1.0, 2.0, 4.0]
    assert "Redis unavailable" in caplog.text


def test_an_event_stored_while_redis_was_away_is_added_and_delivered(
    agent: Any, make_task: Any, redis_client: redis.Redis
) -> None:
    make_task("event", "email.*")
    event = publish(agent.agent, "email.received", stream=False)
    Event.objects.filter(pk=event.pk).update(
        published_at=timezone.now() - timedelta(seconds=settings.ORDINAUT_EVENT_REPUBLISH_AFTER_S + 1)
    )
    recent = publish(agent.agent, "email.other", stream=False)  # may still be on its way: left alone

    stats = make_consumer().run(iterations=3)

    assert stats.republished == 1
    assert Event.objects.get(pk=event.pk).stream_id
    assert Event.objects.get(pk=recent.pk).stream_id == ""
    assert len(runs_of(event)) == 1


def test_unconsumed_events_whose_entries_are_gone_are_added_again(
    agent: Any, make_task: Any, redis_client: redis.Redis, event_stream: str
) -> None:
    make_task("event", "email.*", overlap="allow")
    lost = publish(agent.agent, "email.received", {"n": 1})
    Event.objects.filter(pk=lost.pk).update(published_at=timezone.now() - timedelta(minutes=5))
    redis_client.delete(event_stream)  # Redis restarted without persistence
    fresh = publish(agent.agent, "email.received", {"n": 2})
    old_stream_id = Event.objects.get(pk=lost.pk).stream_id

    stats = make_consumer().run(iterations=3)

    assert stats.republished == 1
    assert Event.objects.get(pk=lost.pk).stream_id != old_stream_id
    assert [len(runs_of(lost)), len(runs_of(fresh))] == [1, 1]


def test_the_heartbeat_says_a_consumer_is_alive_and_health_reports_it(redis_client: redis.Redis) -> None:
    redis_client.set(beat_heartbeat_key(), f"{time.time():.3f}")  # beat is fine; only the consumer is judged
    consumer = make_consumer(name="beating")
    consumer.step()

    assert "beating" in consumers_alive(redis_client)
    body = Client().get("/health").json()
    assert body["status"] == "healthy"
    assert body["checks"]["events_consumer"]["ok"] is True
    assert "beating" in body["checks"]["events_consumer"]["consumers"]

    consumer.run(iterations=1)  # a clean stop takes its beat away
    assert "beating" not in consumers_alive(redis_client)
    response = Client().get("/health")
    assert response.status_code == 200, "a silent consumer degrades /health, it does not fail it"
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["events_consumer"]["ok"] is False
    assert Client().get("/health/ready").status_code == 200
