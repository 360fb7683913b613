"""Events: publishing (the Event row, then its entry on the Redis stream), reading them back, and
delivering one to the event tasks it matches. The consumer loop is tasks/event_consumer.py.

Postgres is the truth and the stream only the nudge (docs/events.md, docs/architecture.md): an event is
stored first and added to the stream after commit. When Redis cannot take it, the row keeps an empty
`stream_id` and the events consumer adds it later (`events_republish`); an unconsumed event whose
stream entry is gone (trimmed, or Redis lost its data) is added again too (`events_restore`).
Delivering an event twice creates nothing: its runs have the trigger key `event:<id>`.

Who an event reaches: the active event tasks whose topic (exact, or a glob such as `email.*`,
matched case-sensitively with fnmatch) matches, owned by the event's publisher; an event published
by an agent holding `admin` (with a token that has it: a token narrowed to fewer scopes does not
count) reaches every agent's matching tasks, and so does one emitted by a step of a task whose
owner holds `admin`. One agent can therefore never start another agent's tasks unless it is an
admin. Whether an event reaches everyone is decided when it is published (`Event.broadcast`).
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Count, Max, QuerySet
from django.utils import timezone

from ordinaut_site import logs, metrics
from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.errors import Conflict, NotFound, ValidationFailed
from ordinaut_site.models import Agent
from runs.models import Run

from . import services
from .models import Event, Task

# The patterns are re-exported: the API serializers and the emit_event tool validate with them.
from .topics import TOPIC, TOPIC_FILTER
from .topics import TOPIC_FILTER_REGEX as TOPIC_FILTER_REGEX
from .topics import TOPIC_REGEX as TOPIC_REGEX

logger = logging.getLogger(__name__)

SOURCE_MAX_CHARS = 200
# Fields of a stream entry: the event's id (the consumer loads the row) and, for people reading
# the stream with redis-cli, its topic. The payload stays in Postgres.
ENTRY_EVENT = "event"
ENTRY_TOPIC = "topic"
# The request id and agent of the API call that published the event: the consumer's lines, and the
# runs it starts, carry them on (ordinaut_site/jobs.py).
ENTRY_REQUEST_ID = "request_id"
ENTRY_AGENT = "agent"
# A publish must not hold a request for long when Redis is slow or away: the event is stored and
# the consumer adds it to the stream later.
PUBLISH_TIMEOUT_S = 2.0
REPUBLISH_BATCH = 500
# Redis and Postgres clocks may differ a little; an entry is never older than its event by more.
CLOCK_SKEW_S = 60

_clients: dict[str, redis.Redis] = {}


def stream_redis() -> redis.Redis:
    """This process' client for the event stream (thread-safe; redis-py reconnects after a fork)."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=PUBLISH_TIMEOUT_S, decode_responses=True
        )
        _clients[url] = client
    return client


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id ("1700000000000-3") as a comparable (milliseconds, sequence) pair."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


# --- Publishing ------------------------------------------------------------------------------


def topic_validate(topic: Any, *, field: str = "topic") -> str:
    if not isinstance(topic, str) or not TOPIC.match(topic):
        raise ValidationFailed.on(field, "must be 1 to 200 characters among letters, digits and . _ : -")
    return topic


def event_payload_validate(payload: Any, *, field: str = "payload") -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ValidationFailed.on(field, "must be a JSON object")
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    if size > settings.ORDINAUT_EVENT_MAX_PAYLOAD_BYTES:
        raise ValidationFailed.on(
            field, f"is {size} bytes; ORDINAUT_EVENT_MAX_PAYLOAD_BYTES is {settings.ORDINAUT_EVENT_MAX_PAYLOAD_BYTES}"
        )
    return payload


def _same_event(event: Event, *, topic: str, payload: dict[str, Any], source: str) -> Event:
    if (event.topic, event.payload, event.source) != (topic, payload, source):
        raise Conflict(
            f"idempotency key {event.idempotency_key!r} was already used for another event",
            fields={"idempotency_key": ["already used for another event"]},
        )
    return event


def event_publish(
    *,
    publisher: Agent,
    actor: Actor,
    topic: str,
    payload: dict[str, Any],
    source: str = "",
    idempotency_key: str = "",
    hops: int = 0,
    emitted_by_run: Run | None = None,
) -> Event:
    """Store an event (audited) and, after commit, add it to the stream. With an idempotency key
    the publisher's earlier event with that key is returned (409 if it said something else).

    `stream_id` is set on the returned event when the caller is not inside a transaction (the
    stream entry is added as this returns); inside one, it is added when that commits."""
    topic = topic_validate(topic)
    payload = event_payload_validate(payload)
    source = (source or "")[:SOURCE_MAX_CHARS]
    if idempotency_key:
        earlier = Event.objects.filter(publisher=publisher, idempotency_key=idempotency_key).first()
        if earlier is not None:
            return _same_event(earlier, topic=topic, payload=payload, source=source)
    try:
        with transaction.atomic():
            event = Event.objects.create(
                topic=topic,
                payload=payload,
                source=source,
                publisher=publisher,
                idempotency_key=idempotency_key,
                hops=hops,
                broadcast=publisher.is_admin,
                emitted_by_run=emitted_by_run,
            )
            audit_record(
                actor=actor,
                action="event.publish",
                subject_type="event",
                subject_id=event.pk,
                details={
                    "topic": topic,
                    "source": source,
                    "hops": hops,
                    "run": str(emitted_by_run.pk) if emitted_by_run is not None else None,
                },
            )
            transaction.on_commit(lambda: event_stream_add(event), robust=True)
            transaction.on_commit(lambda: metrics.event_published(by_step=emitted_by_run is not None))
    except IntegrityError:
        # Another request with the same key committed first.
        earlier = Event.objects.filter(publisher=publisher, idempotency_key=idempotency_key).first()
        if not idempotency_key or earlier is None:
            raise
        return _same_event(earlier, topic=topic, payload=payload, source=source)
    return event


def _entry_fields(event: Event) -> dict[Any, Any]:
    fields = {ENTRY_EVENT: str(event.pk), ENTRY_TOPIC: event.topic}
    for key, field in ((ENTRY_REQUEST_ID, "request_id"), (ENTRY_AGENT, "agent")):
        value = logs.current(field)
        if value:
            fields[key] = value
    return fields


def event_stream_add(event: Event) -> str | None:
    """XADD the event to the capped stream and record its stream id. Returns None (and logs) when
    Redis cannot take it: the row stays without a stream id and the consumer adds it later."""
    try:
        stream_id = str(
            stream_redis().xadd(
                settings.ORDINAUT_EVENT_STREAM,
                _entry_fields(event),
                maxlen=settings.ORDINAUT_EVENT_STREAM_MAXLEN,
                approximate=True,
            )
        )
    except redis.RedisError as exc:
        logger.warning(
            "event %s (%s) is not on the stream yet: %s; the events consumer adds it", event.pk, event.topic, exc
        )
        return None
    try:
        Event.objects.filter(pk=event.pk).update(stream_id=stream_id)
    except DatabaseError as exc:
        # The entry is on the stream and will be delivered; only the id is not recorded.
        logger.warning("event %s is on the stream as %s, but recording that failed: %s", event.pk, stream_id, exc)
    event.stream_id = stream_id
    return stream_id


def events_republish(*, now: datetime | None = None, limit: int = REPUBLISH_BATCH) -> int:
    """Add to the stream the events that are still off it ORDINAUT_EVENT_REPUBLISH_AFTER_S after
    they were published (Redis was away then). Returns how many were added."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.ORDINAUT_EVENT_REPUBLISH_AFTER_S)
    added = 0
    for event in Event.objects.filter(stream_id="", published_at__lte=cutoff).order_by("published_at")[:limit]:
        if event_stream_add(event) is None:
            break  # Redis is away; the next pass tries again
        added += 1
    if added:
        logger.info("added %d event(s) published while Redis was away to the stream", added)
    return added


def events_restore(*, client: redis.Redis, now: datetime | None = None, limit: int = REPUBLISH_BATCH) -> int:
    """Add again the unconsumed events whose stream entry is gone: older than the stream's first
    entry (trimmed by MAXLEN before a consumer read it), or the whole stream was lost (Redis
    restarted without persistence). Returns how many were added."""
    now = now or timezone.now()
    first = client.xrange(settings.ORDINAUT_EVENT_STREAM, count=1)
    candidates = Event.objects.filter(
        consumed_at__isnull=True,
        stream_id__gt="",
        published_at__lte=now - timedelta(seconds=settings.ORDINAUT_EVENT_REPUBLISH_AFTER_S),
    )
    if first:
        first_id = str(first[0][0])
        first_at = datetime.fromtimestamp(stream_id_key(first_id)[0] / 1000, tz=timezone.get_current_timezone())
        # An entry is added after its event is stored: an event published after the first entry
        # (give or take clock skew) cannot have an entry older than it.
        candidates = candidates.filter(published_at__lt=first_at + timedelta(seconds=CLOCK_SKEW_S))
    lost = [
        event
        for event in candidates.order_by("published_at")[:limit]
        if not first or stream_id_key(str(event.stream_id)) < stream_id_key(first_id)
    ]
    added = 0
    for event in lost:
        if event_stream_add(event) is None:
            break
        added += 1
    if added:
        logger.warning("added %d unconsumed event(s) whose stream entry was gone to the stream again", added)
    return added


# --- Delivery (called by the events consumer) -------------------------------------------------


def topic_matches(pattern: str, topic: str) -> bool:
    """An event task's topic: exact, or a glob (`email.*`, `alerts.?`, `build.[ab]`), case-sensitive."""
    return fnmatch.fnmatchcase(topic, pattern)


def event_tasks_matching(event: Event) -> list[Task]:
    """The event tasks an event reaches when it is delivered (see the module docstring for who
    sees what): active ones, so a task paused then does not get it, nor later when resumed."""
    tasks = Task.objects.filter(schedule_kind=Task.Kind.EVENT, status=Task.Status.ACTIVE, deleted_at__isnull=True).only(
        "id", "schedule_expr", "owner_id"
    )
    if not event.broadcast:
        tasks = tasks.filter(owner_id=event.publisher_id)
    return [task for task in tasks if topic_matches(task.schedule_expr, event.topic)]


def event_deliver(*, event_id: str, now: datetime | None = None) -> list[Run] | None:
    """Create the runs of an event for the tasks it matches and mark it consumed, in one
    transaction. Returns the runs created, or None when no such event exists. An event already
    consumed is not matched again (a replayed stream or a claimed entry creates nothing, even for
    a task that was paused at the first delivery and is active now)."""
    try:
        uuid.UUID(str(event_id))
    except ValueError:
        return None
    now = now or timezone.now()
    with transaction.atomic():
        event = Event.objects.select_related("publisher").filter(pk=event_id).first()
        if event is None:
            return None
        if event.consumed_at is not None:
            return []
        matched = event_tasks_matching(event)
        runs = (
            services.task_fire_event(
                task_ids=[task.pk for task in matched],
                event=event.as_context(),
                published_at=event.published_at,
                now=now,
            )
            if matched
            else []
        )
        Event.objects.filter(pk=event.pk, consumed_at__isnull=True).update(consumed_at=now)
    return runs


def events_deliver(
    *,
    event_ids: Sequence[str],
    now: datetime | None = None,
    bind: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
    lock_timeout_s: float | None = None,
) -> dict[str, list[Run] | None]:
    """event_deliver for many events in one transaction (the events consumer's read): the events
    loaded with one query and matched against the event tasks read once; the runs of all of them
    created by as few fires as delivering them one after the other, in the order given, allows
    (_rounds: overlap and conditions see the runs of the events before); the events marked
    consumed with one statement. The first fire locks every matched task, in id order, so this
    never deadlocks with a fire batch or another consumer. Returns event id -> its runs created
    ([] when it was consumed already), None for an id that names no event. All or nothing: on any
    error nothing is committed.

    `bind(event_id)`: a context (log fields) in which the first steps of the event's runs are sent
    after commit (the messages carry the publishing request's id and agent).
    `lock_timeout_s`: lock waits in the transaction end with an error after this long (outside a
    transaction only; lock_not_available, SQLSTATE 55P03)."""
    now = now or timezone.now()
    results: dict[str, list[Run] | None] = {}
    wanted: list[str] = []
    for event_id in event_ids:
        key = str(event_id)
        if key in results:
            continue
        results[key] = None
        try:
            uuid.UUID(key)
        except ValueError:
            continue
        wanted.append(key)
    if not wanted:
        return results
    # Inside a transaction begun outside (a test's), the setting would outlive this one.
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if lock_timeout_s and connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_s * 1000)}ms"])
        events = {str(event.pk): event for event in Event.objects.select_related("publisher").filter(pk__in=wanted)}
        fresh = [events[key] for key in wanted if key in events and events[key].consumed_at is None]
        for key in wanted:
            if key in events:
                results[key] = []
        if not fresh:
            return results
        tasks = _event_tasks()
        matched = {str(event.pk): [task for task in tasks if _reaches(task, event)] for event in fresh}
        contexts = {str(event.pk): _context_of(bind, str(event.pk)) for event in fresh if matched[str(event.pk)]}
        by_key = {services.event_trigger_key(event.pk): str(event.pk) for event in fresh}
        # The first fire locks every matched task (each has its first occurrence there), in id
        # order, so this never deadlocks with a fire batch or another consumer; the later ones
        # hold a subset of those locks already.
        for occurrences in _rounds(fresh, matched):
            pending: list[Any] = connection.run_on_commit  # (savepoint ids, callback, robust)
            start = len(pending)
            created = services.occurrences_fire(occurrences, now)
            context_of_run: dict[Any, contextvars.Context] = {}
            for run in created:
                key = by_key[run.trigger_key]
                runs = results[key]
                assert runs is not None
                runs.append(run)
                context_of_run[run.pk] = contexts[key]
            _sends_in_their_context(pending, start, context_of_run)
        Event.objects.filter(pk__in=[event.pk for event in fresh], consumed_at__isnull=True).update(consumed_at=now)
    return results


def _rounds(events: list[Event], matched: dict[str, list[Task]]) -> list[list[services.Occurrence]]:
    """The events' occurrences, fired as few times as the policies allow with the result of
    delivering the events one after the other. A task with no condition and overlap allow, skip or
    queue sees the occurrences before it in the same fire (the fire tracks them); one with a
    condition (over last_run) or overlap cancel_previous (which cancels the runs before it) gets
    its k-th occurrence of the read in the k-th fire, after the runs of the earlier ones exist."""
    rounds: list[list[services.Occurrence]] = [[]]
    seen: dict[Any, int] = {}
    for event in events:
        context = event.as_context()
        for task in matched[str(event.pk)]:
            number = 0
            if task.condition or task.overlap == Task.Overlap.CANCEL_PREVIOUS:
                number = seen.get(task.pk, 0)
                seen[task.pk] = number + 1
            while len(rounds) <= number:
                rounds.append([])
            rounds[number].append(
                services.Occurrence(
                    task_id=task.pk,
                    at=event.published_at,
                    trigger_key=services.event_trigger_key(event.pk),
                    trigger=Run.Trigger.EVENT,
                    event=context,
                )
            )
    return [occurrences for occurrences in rounds if occurrences]


def _context_of(bind: Callable[[str], contextlib.AbstractContextManager[Any]] | None, key: str) -> contextvars.Context:
    with bind(key) if bind is not None else contextlib.nullcontext():
        return contextvars.copy_context()


def _event_tasks() -> list[Task]:
    return list(
        Task.objects.filter(schedule_kind=Task.Kind.EVENT, status=Task.Status.ACTIVE, deleted_at__isnull=True)
        .only("id", "schedule_expr", "owner_id", "overlap", "condition")
        .order_by("pk")
    )


def _reaches(task: Task, event: Event) -> bool:
    return (event.broadcast or task.owner_id == event.publisher_id) and topic_matches(task.schedule_expr, event.topic)


def _sends_in_their_context(pending: list[Any], start: int, context_of_run: dict[Any, contextvars.Context]) -> None:
    """Each run's first step, sent after commit by a callback registered since `start`, is sent in
    the context (log fields) of the event that created the run, not in the one the transaction
    commits in: the step's messages carry the publishing request's id and agent. The callback's run
    is the `run_id` it closes over (runs.services.dispatch.dispatch_on_commit); others are left as
    they are."""
    for index in range(start, len(pending)):
        savepoints, func, robust = pending[index]
        context = context_of_run.get(_closed_over(func, "run_id"))
        if context is not None:
            pending[index] = (savepoints, _in_context(context, func), robust)


def _closed_over(func: Any, name: str) -> Any:
    code, cells = getattr(func, "__code__", None), getattr(func, "__closure__", None)
    if code is None or not cells or name not in code.co_freevars:
        return None
    try:
        return cells[code.co_freevars.index(name)].cell_contents
    except ValueError:  # an empty cell
        return None


def _in_context(context: contextvars.Context, func: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        return context.copy().run(func)

    call.__qualname__ = getattr(func, "__qualname__", "callback")
    return call


# --- Reading --------------------------------------------------------------------------------


def event_visible_to(agent: Agent) -> QuerySet[Event]:
    """An agent sees the events it published; an admin sees every event."""
    events = Event.objects.select_related("publisher")
    return events if agent.is_admin else events.filter(publisher=agent)


def event_get(*, agent: Agent, event_id: uuid.UUID | str) -> Event:
    event = event_visible_to(agent).filter(pk=event_id).first()
    if event is None:
        raise NotFound("Event not found.")
    return event


def _glob_regex(pattern: str) -> str:
    return "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"


def event_list(
    *, agent: Agent, topic: str | None = None, since: datetime | None = None, until: datetime | None = None
) -> QuerySet[Event]:
    """Events newest first; `topic` exact or a glob with `*` and `?` (`email.*`)."""
    events = event_visible_to(agent)
    if topic:
        if not TOPIC_FILTER.match(topic):
            raise ValidationFailed.on("topic", "must be a topic, or a glob of one with * and ?")
        if "*" not in topic and "?" not in topic:
            events = events.filter(topic=topic)
        elif topic.endswith("*") and "*" not in topic[:-1] and "?" not in topic:
            events = events.filter(topic__startswith=topic[:-1])
        else:
            events = events.filter(topic__regex=_glob_regex(topic))
    if since is not None:
        events = events.filter(published_at__gte=since)
    if until is not None:
        events = events.filter(published_at__lt=until)
    return events.order_by("-published_at", "-id")


def event_topics(*, agent: Agent) -> QuerySet[Any, Any]:
    """The topics an agent has published (every agent's for an admin), each with how many events
    and when the last was published, most recent first: one GROUP BY over its events."""
    return (
        event_visible_to(agent)
        .order_by()
        .values("topic")
        .annotate(count=Count("id"), last_published_at=Max("published_at"))
        .order_by("-last_published_at", "topic")
    )


def events_purge(*, before: datetime, batch: int = 1000) -> int:
    """Delete consumed events published before `before`, in transactions of at most `batch`.
    Events not consumed yet stay (the consumer still owes them their runs), whatever their age."""
    old = Event.objects.filter(consumed_at__isnull=False, published_at__lt=before)
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(old.order_by("published_at").values_list("pk", flat=True)[:batch])
            if not ids:
                return deleted
            Event.objects.filter(pk__in=ids).delete()
        deleted += len(ids)
