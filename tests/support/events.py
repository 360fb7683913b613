"""Helpers of the events tests: the session's stream emptied around a test, events put straight on
it, and in-process consumers with short reads and no real sleeping."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings

from ordinaut_site.audit import Actor
from tasks.event_consumer import EventConsumer
from tasks.events import event_publish, event_stream_add
from tasks.models import Event


def stream_clear(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=f"{settings.ORDINAUT_EVENT_STREAM}*"))
    if keys:
        client.delete(*keys)


def clean_stream(redis_client: redis.Redis) -> Iterator[str]:
    """For a fixture: the session's event stream (worker subprocesses know it too), emptied, with
    no consumer group, before and after the test."""
    stream_clear(redis_client)
    yield settings.ORDINAUT_EVENT_STREAM
    stream_clear(redis_client)


def publish(agent: Any, topic: str, payload: dict[str, Any] | None = None, *, stream: bool = True) -> Event:
    """Publish as `agent` and add the event to the stream now (a test's transaction never commits,
    so the after-commit XADD of event_publish would not happen)."""
    event = event_publish(publisher=agent, actor=Actor.system("tests"), topic=topic, payload=payload or {})
    if stream:
        assert event_stream_add(event), "Redis took the event"
    return event


def make_consumer(**options: Any) -> EventConsumer:
    options.setdefault("name", f"test-{uuid.uuid4().hex[:8]}")
    options.setdefault("block_ms", 20)
    options.setdefault("sleep", lambda seconds: None)
    return EventConsumer(**options)


def pending_count(client: redis.Redis, consumer: str | None = None) -> int:
    """Entries read but not acknowledged (of one consumer, or of the whole group)."""
    summary: Any = client.xpending(settings.ORDINAUT_EVENT_STREAM, settings.ORDINAUT_EVENT_GROUP)
    if consumer is None:
        return int(summary["pending"])
    for entry in summary["consumers"]:
        name = entry["name"].decode() if isinstance(entry["name"], bytes) else entry["name"]
        if name == consumer:
            return int(entry["pending"])
    return 0
