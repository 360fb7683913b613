"""The events consumer delivers the entries of one read together (tasks.events.events_deliver: one
transaction, few statements), with the guarantees of one-by-one delivery: a poison event falls back
to one by one without taking the others with it, a batch committed but not acknowledged creates
nothing when delivered again, the same event twice in a read runs once, overlap policies see the
runs of the events before them in the read, and each run's first step is sent with its publishing
request's log fields."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from ordinaut_site import logs
from runs.models import Run
from runs.services import dispatch
from tasks import event_consumer, services
from tasks.event_consumer import EventConsumer
from tasks.events import ENTRY_AGENT, ENTRY_EVENT, ENTRY_REQUEST_ID, ENTRY_TOPIC, events_deliver
from tasks.models import Event
from tests.support.events import clean_stream, make_consumer, pending_count, publish

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def event_stream(redis_client: redis.Redis) -> Iterator[str]:
    yield from clean_stream(redis_client)


def runs_of(event: Event) -> list[Run]:
    return list(Run.objects.filter(trigger_key=f"event:{event.pk}").order_by("scheduled_for", "created_at"))


def read_all(consumer: EventConsumer) -> list[tuple[str, dict[str, str] | None]]:
    consumer.step()  # joins the group (its own pending entries first: none)
    return consumer._read(">", block_ms=None)


def test_the_events_of_one_read_are_delivered_with_few_statements(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", overlap="allow")
    make_task("event", "email.received", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(20)]
    consumer = make_consumer()
    batch = read_all(consumer)

    with CaptureQueriesContext(connection) as queries:
        assert consumer.handle(batch) == 20

    assert [len(runs_of(event)) for event in events] == [2] * 20
    # One by one, each event cost about ten statements; together, the read's events cost a
    # handful for all of them (one fire: the runs and steps inserted in bulk).
    assert len(queries) <= 20, [q["sql"][:80] for q in queries.captured_queries]
    assert (consumer.stats.entries, consumer.stats.delivered, consumer.stats.runs) == (20, 20, 40)
    assert not Event.objects.filter(consumed_at__isnull=True).exists()


def test_a_poison_event_in_the_middle_of_a_read_does_not_fail_the_others(
    agent: Any, make_task: Any, redis_client: redis.Redis, monkeypatch: Any, caplog: Any
) -> None:
    make_task("event", "email.*", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(5)]
    poison = str(events[2].pk)
    real = services.occurrences_fire
    calls: list[int] = []

    def fire(occurrences: list[Any], now: Any) -> Any:
        # Creating a run of this event fails (whatever the reason: a bug, a row it cannot take).
        if any(o.event and o.event["id"] == poison for o in occurrences):
            calls.append(len(occurrences))
            raise ValueError("a poison event")
        return real(occurrences, now)

    monkeypatch.setattr(services, "occurrences_fire", fire)

    stats = make_consumer().run(iterations=3)

    assert [len(runs_of(event)) for event in events] == [1, 1, 0, 1, 1]
    assert (stats.entries, stats.delivered, stats.bad, stats.runs, stats.errors) == (5, 4, 1, 4, 0)
    assert pending_count(redis_client) == 0, "the poison entry is acknowledged and logged (dead-lettered)"
    assert "failed; delivering them one by one" in caplog.text
    assert f"delivering event {poison}" in caplog.text
    assert calls == [5, 1], "tried in the read's fire, then alone"
    assert Event.objects.get(pk=poison).consumed_at is None, "its delivery was rolled back"


def test_a_read_committed_but_not_acknowledged_creates_nothing_when_claimed(
    agent: Any, make_task: Any, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    make_task("event", "email.*", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(4)]
    dead = make_consumer(name="dead")
    batch = read_all(dead)

    def lost(*args: Any) -> None:
        raise redis.ConnectionError("the consumer died after the commit, before its XACK")

    monkeypatch.setattr(dead.client, "xack", lost)
    with pytest.raises(redis.ConnectionError):
        dead.handle(batch)
    assert [len(runs_of(event)) for event in events] == [1, 1, 1, 1], "committed"
    assert pending_count(redis_client, "dead") == 4

    heir = make_consumer(name="heir", claim_idle_ms=0)
    stats = heir.run(iterations=2)

    assert stats.claimed == 4
    assert (stats.delivered, stats.runs) == (4, 0)
    assert [len(runs_of(event)) for event in events] == [1, 1, 1, 1]
    assert pending_count(redis_client) == 0


def test_the_same_event_twice_in_one_read_runs_once(
    agent: Any, make_task: Any, redis_client: redis.Redis, event_stream: str
) -> None:
    make_task("event", "email.*", overlap="allow")
    event = publish(agent.agent, "email.received")
    other = publish(agent.agent, "email.received")
    redis_client.xadd(event_stream, {ENTRY_EVENT: str(event.pk), ENTRY_TOPIC: event.topic})  # re-published

    stats = make_consumer().run(iterations=3)

    assert [len(runs_of(event)), len(runs_of(other))] == [1, 1]
    assert (stats.entries, stats.delivered, stats.runs) == (3, 3, 2)
    assert pending_count(redis_client) == 0


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [
        ("skip", [("queued", ""), ("skipped", "overlap"), ("skipped", "overlap")]),
        ("queue", [("queued", ""), ("queued", ""), ("queued", "")]),
        ("cancel_previous", [("canceled", ""), ("canceled", ""), ("queued", "")]),
    ],
)
def test_overlap_sees_the_runs_of_the_events_before_in_the_same_read(
    agent: Any, make_task: Any, overlap: str, expected: list[tuple[str, str]]
) -> None:
    task = make_task("event", "email.*", overlap=overlap)
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(3)]

    stats = make_consumer().run(iterations=3)

    assert stats.delivered == 3
    runs = [runs_of(event)[0] for event in events]
    assert [(run.status, run.skip_reason) for run in runs] == expected
    if overlap == "queue":
        # The first is sent; the next ones wait for it (held: not dispatched yet).
        assert [run.dispatch_count for run in runs] == [1, 0, 0]
    assert Run.objects.filter(task=task).count() == 3


def test_a_false_condition_in_a_read_gives_a_skipped_run_and_the_others_run(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", overlap="allow", condition="event.payload.urgent")
    urgent = publish(agent.agent, "email.received", {"urgent": True})
    calm = publish(agent.agent, "email.received", {"urgent": False})

    stats = make_consumer().run(iterations=3)

    assert [(run.status, run.skip_reason) for run in runs_of(urgent) + runs_of(calm)] == [
        ("queued", ""),
        ("skipped", "condition"),
    ]
    assert (stats.runs, stats.skipped_runs) == (1, 1)


def test_a_transient_database_error_leaves_the_whole_read_pending(
    agent: Any, make_task: Any, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    make_task("event", "email.*", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(3)]
    real = event_consumer.events_deliver
    failures = iter([OperationalError("the database went away")])

    def flaky(**kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(**kwargs)

    monkeypatch.setattr(event_consumer, "events_deliver", flaky)
    consumer = make_consumer()

    consumer.run(iterations=2)
    assert [len(runs_of(event)) for event in events] == [0, 0, 0]
    assert pending_count(redis_client) == 3, "not acknowledged, not delivered one by one: read again"
    consumer.run(iterations=2)

    assert [len(runs_of(event)) for event in events] == [1, 1, 1]
    assert pending_count(redis_client) == 0
    assert consumer.stats.errors == 1


def test_each_runs_first_step_is_sent_with_its_publishing_requests_log_fields(
    agent: Any, make_task: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    make_task("event", "email.*", overlap="allow")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(3)]
    sent: dict[str, tuple[str | None, str | None]] = {}

    def record(*, run_id: Any, **kwargs: Any) -> None:
        sent[str(run_id)] = (logs.current("request_id"), logs.current("agent"))

    monkeypatch.setattr(dispatch, "run_dispatch", record)
    batch: list[tuple[str, dict[str, str] | None]] = [
        (f"{n + 1}-0", {ENTRY_EVENT: str(event.pk), ENTRY_REQUEST_ID: f"req-{n}", ENTRY_AGENT: f"agent-{n}"})
        for n, event in enumerate(events)
    ]
    consumer = make_consumer()
    consumer.step()
    monkeypatch.setattr(consumer.client, "xack", lambda *args: len(args) - 2)

    with django_capture_on_commit_callbacks(execute=True):
        assert consumer.handle(batch) == 3

    assert sent == {str(runs_of(event)[0].pk): (f"req-{n}", f"agent-{n}") for n, event in enumerate(events)}


def test_events_deliver_tells_unknown_and_consumed_events_apart(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*")
    event = publish(agent.agent, "email.received", stream=False)
    missing = "00000000-0000-0000-0000-000000000000"

    first = events_deliver(event_ids=[str(event.pk), missing, "not-a-uuid"])
    again = events_deliver(event_ids=[str(event.pk)])

    assert [len(first[str(event.pk)] or []), first[missing], first["not-a-uuid"]] == [1, None, None]
    assert again == {str(event.pk): []}


def test_a_condition_over_last_run_sees_the_run_of_the_event_before_in_the_same_read(
    agent: Any, make_task: Any
) -> None:
    make_task("event", "email.*", overlap="allow", condition="!last_run")
    events = [publish(agent.agent, "email.received", {"n": n}) for n in range(3)]

    stats = make_consumer().run(iterations=3)

    assert stats.delivered == 3
    assert [(run.status, run.skip_reason) for event in events for run in runs_of(event)] == [
        ("queued", ""),
        ("skipped", "condition"),
        ("skipped", "condition"),
    ]
