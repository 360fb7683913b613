"""The tasks app's scrape-time metrics (ordinaut_site/metrics.py): beat's leader lock, heartbeat age
and due backlog; the event stream's consumer lag and the consumers alive."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone
from prometheus_client.core import Metric

from ordinaut_site import metrics
from ordinaut_site.health import health_redis

from .event_consumer import HEARTBEAT_TTL_S, consumers_alive
from .events import stream_id_key
from .health import beat_heartbeat_age_s
from .models import Task
from .scheduler import leader_key

# Beat sends an occurrence within a tick of its time and then moves the task's next_run_at on:
# a task whose next_run_at is older than this was not sent.
BACKLOG_GRACE_S = 5
# When Redis cannot say how far behind the group is, entries are counted up to this many.
LAG_COUNT_MAX = 10_000


def beat_state() -> Iterator[Metric]:
    client = health_redis()
    try:
        held = bool(client.exists(leader_key()))
    finally:
        client.close()
    age = beat_heartbeat_age_s()
    due_before = timezone.now() - timedelta(seconds=BACKLOG_GRACE_S)
    # next_run_at is indexed: the range scan reads the overdue rows only.
    backlog = Task.objects.filter(
        next_run_at__lt=due_before,
        status=Task.Status.ACTIVE,
        deleted_at__isnull=True,
        schedule_parked_at__isnull=True,
    ).count()
    yield metrics.gauge("ordinaut_beat_lock_held", "1 when a beat holds the leader lock in Redis.", held)
    yield metrics.gauge(
        "ordinaut_beat_heartbeat_age_seconds",
        "Seconds since the leading beat's last heartbeat (written every few seconds); +Inf: none.",
        float("inf") if age is None else age,
    )
    yield metrics.gauge(
        "ordinaut_beat_due_backlog",
        f"Active tasks due more than {BACKLOG_GRACE_S}s ago that beat has not sent.",
        backlog,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_lag(client: redis.Redis, stream: str, group: str, now_ms: int) -> tuple[int, float, int]:
    """(entries the group has not read, age in seconds of the oldest of them, entries read but not
    acknowledged)."""
    if not client.exists(stream):
        return 0, 0.0, 0
    info: dict[str, Any] | None = None
    for candidate in client.xinfo_groups(stream):  # type: ignore[union-attr]
        if _text(candidate.get("name")) == group:
            info = candidate
    if info is None:  # no consumer ever ran: the whole stream is owed
        first: Any = client.xrange(stream, count=1)
        behind = int(client.xlen(stream))  # type: ignore[arg-type]
        oldest = stream_id_key(_text(first[0][0]))[0] if first else now_ms
        return behind, max(0.0, (now_ms - oldest) / 1000), 0
    last = _text(info.get("last-delivered-id") or "0-0")
    next_entry: Any = client.xrange(stream, min=f"({last}", count=1)
    lag = info.get("lag")
    if lag is None:  # Redis cannot tell (entries deleted or trimmed): count them, up to a bound
        lag = len(client.xrange(stream, min=f"({last}", count=LAG_COUNT_MAX))  # type: ignore[arg-type]
    oldest_s = (now_ms - stream_id_key(_text(next_entry[0][0]))[0]) / 1000 if next_entry else 0.0
    return int(lag), max(0.0, oldest_s), int(info.get("pending") or 0)


def events_state() -> Iterator[Metric]:
    client = health_redis()
    try:
        seconds, micros = client.time()  # type: ignore[misc]
        now_ms = int(seconds) * 1000 + int(micros) // 1000  # the clock the stream ids come from
        lag, lag_s, pending = _stream_lag(client, settings.ORDINAUT_EVENT_STREAM, settings.ORDINAUT_EVENT_GROUP, now_ms)
        alive = len(consumers_alive(client))
    finally:
        client.close()
    yield metrics.gauge(
        "ordinaut_events_consumer_lag_entries", "Stream entries the consumer group has not read yet.", lag
    )
    yield metrics.gauge(
        "ordinaut_events_consumer_lag_seconds", "Age of the oldest entry the group has not read (0: none).", lag_s
    )
    yield metrics.gauge(
        "ordinaut_events_pending_entries", "Entries a consumer read but has not acknowledged yet.", pending
    )
    yield metrics.gauge(
        "ordinaut_events_consumers_alive", f"Events consumers that beat within {HEARTBEAT_TTL_S} s.", alive
    )


metrics.source_register("beat", beat_state)
metrics.source_register("events", events_state)
