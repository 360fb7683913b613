"""The events consumer: reads the event stream in a consumer group and fires the event tasks each
event matches (`manage.py consume_events` runs it; start several on any hosts to share the work).

Each entry is acknowledged (XACK) after its runs are committed, so a consumer that dies mid-batch
leaves its entries pending; another consumer claims them once they have been idle for
ORDINAUT_EVENT_CLAIM_IDLE_S (XAUTOCLAIM) and delivers them again, which creates nothing twice
(trigger key `event:<id>`, and an event marked consumed is not delivered again). An entry that
names no event, or no event that exists, is acknowledged and logged. When Redis or Postgres is
away the loop logs, backs off and tries again; it never exits on its own.

Each delivery has time limits, as fire jobs do (ORDINAUT_FIRE_SOFT_TIME_LIMIT_S, ORDINAUT_FIRE_TIME_LIMIT_S):
past the soft one (SIGALRM, in the main thread) the delivery is rolled back and its entry left
pending, so the consumer goes on with the next entries and the entry is claimed again later; after
DELIVERY_TIME_LIMIT_TRIES such tries it is acknowledged and logged as given up. Past the hard one
(a delivery that swallowed the soft limit) the process exits with EXIT_HARD_TIME_LIMIT for its
supervisor to restart, and the entry is claimed by another consumer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from ordinaut_site import logs, metrics
from ordinaut_site.jobs import connection_abandon
from runs.models import Run

from .events import (
    ENTRY_AGENT,
    ENTRY_EVENT,
    ENTRY_REQUEST_ID,
    event_deliver,
    events_deliver,
    events_republish,
    events_restore,
    stream_id_key,
)

logger = logging.getLogger(__name__)

BLOCK_MS = 1000
# Claiming, re-publishing and the heartbeat's clean-up happen this often, not on every read.
MAINTENANCE_INTERVAL_S = 5.0
HEARTBEAT_INTERVAL_S = 5.0
# /health calls the consumer alive when one beat within this long.
HEARTBEAT_TTL_S = 30
# Beats older than this are dropped from the heartbeat set.
HEARTBEAT_FORGET_S = 3600
# A consumer name with nothing pending, silent this long, is removed from the group.
DEAD_CONSUMER_IDLE_MS = 24 * 3600 * 1000
MAX_CLAIM_ROUNDS = 10
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
SUMMARY_INTERVAL_S = 60.0
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
# Deliveries of one entry that may reach the soft time limit before it is given up.
DELIVERY_TIME_LIMIT_TRIES = 3
EXIT_HARD_TIME_LIMIT = 70


class DeliveryTimeLimitExceeded(Exception):
    """An event delivery ran past ORDINAUT_FIRE_SOFT_TIME_LIMIT_S."""


def _soft_limit_reached(signum: int, frame: Any) -> None:
    raise DeliveryTimeLimitExceeded()


def _hard_limit_reached(what: str, seconds: float) -> None:
    logger.critical("events consumer: %s ran past the hard time limit (%ss); exiting", what, seconds)
    logging.shutdown()
    os._exit(EXIT_HARD_TIME_LIMIT)


@contextlib.contextmanager
def time_limits(*, soft_s: float, hard_s: float, what: str) -> Iterator[None]:
    """The soft limit raises DeliveryTimeLimitExceeded in the block (main thread only: SIGALRM; an
    alarm already set, such as a test runner's, is put back after); the hard one ends the process."""
    hard = threading.Timer(hard_s, _hard_limit_reached, args=(what, hard_s))
    hard.daemon = True
    hard.start()
    armed = threading.current_thread() is threading.main_thread()
    if armed:
        started = time.monotonic()
        previous_handler = signal.signal(signal.SIGALRM, _soft_limit_reached)
        previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, soft_s)
    try:
        yield
    finally:
        hard.cancel()
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_handler)
            if previous_delay > 0:
                left = max(previous_delay - (time.monotonic() - started), 0.001)
                signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


def _entry_log_fields(fields: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """The publishing request's id and agent, for the lines (and the runs' messages) of an entry."""
    return logs.bind(request_id=fields.get(ENTRY_REQUEST_ID) or None, agent=fields.get(ENTRY_AGENT) or None)


def _valid_event_id(value: str | None) -> bool:
    if not value:
        return False
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _lock_timed_out(exc: Exception) -> bool:
    return getattr(getattr(exc, "__cause__", None), "sqlstate", None) == "55P03"  # lock_not_available


def heartbeat_key(stream: str) -> str:
    return f"{stream}:consumers"


def consumers_alive(client: redis.Redis, *, stream: str | None = None, now: float | None = None) -> dict[str, float]:
    """Consumers that beat within HEARTBEAT_TTL_S: name -> seconds since their last beat."""
    now = time.time() if now is None else now
    beats: Any = client.zrangebyscore(
        heartbeat_key(stream or settings.ORDINAUT_EVENT_STREAM), now - HEARTBEAT_TTL_S, "+inf", withscores=True
    )
    return {(name.decode() if isinstance(name, bytes) else str(name)): round(now - score, 3) for name, score in beats}


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Stats:
    entries: int = 0
    delivered: int = 0
    runs: int = 0
    skipped_runs: int = 0
    bad: int = 0
    claimed: int = 0
    republished: int = 0
    errors: int = 0
    timed_out: int = 0


class EventConsumer:
    """One consumer of the group. `run()` loops until `stop()`; `run(iterations=n)` does n reads."""

    def __init__(
        self,
        *,
        name: str | None = None,
        stream: str | None = None,
        group: str | None = None,
        batch: int | None = None,
        block_ms: int = BLOCK_MS,
        claim_idle_ms: int | None = None,
        client: redis.Redis | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.name = name or default_consumer_name()
        self.stream = stream or settings.ORDINAUT_EVENT_STREAM
        self.group = group or settings.ORDINAUT_EVENT_GROUP
        self.batch = batch or settings.ORDINAUT_EVENT_BATCH
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms if claim_idle_ms is not None else settings.ORDINAUT_EVENT_CLAIM_IDLE_S * 1000
        # The read blocks up to block_ms: the socket must wait longer than that.
        self.client = client or redis.Redis.from_url(
            settings.REDIS_URL,
            decode_responses=True,
            socket_timeout=block_ms / 1000 + 5,
            socket_connect_timeout=5,
        )
        self.sleep = sleep
        self.stats = Stats()
        self._stopping = False
        self._group_ready = False
        # After a failure (or at start), read this consumer's own pending entries before new ones.
        self._pending_first = True
        self._backoff_s = 0.0
        self._next_maintenance = 0.0
        self._next_beat = 0.0
        self._next_summary = time.monotonic() + SUMMARY_INTERVAL_S

    # --- The loop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end after the read in progress (a signal handler may call it)."""
        self._stopping = True

    def run(self, *, iterations: int | None = None) -> Stats:
        logger.info(
            "events consumer %s reading stream %s as group %s (batch %d, claim after %d ms idle)",
            self.name,
            self.stream,
            self.group,
            self.batch,
            self.claim_idle_ms,
        )
        done = 0
        while not self._stopping and (iterations is None or done < iterations):
            done += 1
            try:
                self.step()
            except Exception as exc:
                self._failed(exc)
        self._farewell()
        logger.info(
            "events consumer %s stopped: %d entries, %d events delivered, %d runs (%d skipped), %d bad",
            self.name,
            self.stats.entries,
            self.stats.delivered,
            self.stats.runs,
            self.stats.skipped_runs,
            self.stats.bad,
        )
        return self.stats

    def step(self) -> int:
        """One read (and, when due, maintenance). Returns the number of entries handled."""
        if not connection.in_atomic_block:  # (tests may run the loop inside their transaction)
            close_old_connections()  # as Django does per request: drop a broken or too old connection
            if connection.connection is not None:
                # Not the health-check ping Django would send before the next query (a round
                # trip per read, as for jobs: ordinaut_site/jobs.py): a dead connection fails that
                # query instead, a transient error, and the next step drops it.
                setattr(connection, "health_check_done", True)  # noqa: B010 - not in django-stubs
        self._ensure_group()
        now = time.monotonic()
        if now >= self._next_beat:
            self._beat()
            self._next_beat = now + HEARTBEAT_INTERVAL_S
        handled = 0
        if now >= self._next_maintenance:
            handled += self._maintain()
            self._next_maintenance = now + MAINTENANCE_INTERVAL_S
        if self._pending_first:
            entries = self._read("0", block_ms=None)
            if not entries:
                self._pending_first = False
        else:
            entries = self._read(">", block_ms=self.block_ms)
        handled += self.handle(entries)
        self._backoff_s = 0.0
        self._summary()
        return handled

    def _failed(self, exc: Exception) -> None:
        self.stats.errors += 1
        self._pending_first = True
        if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
            logger.warning("the consumer group %s of %s is gone; creating it again", self.group, self.stream)
            self._group_ready = False
            return
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2 if self._backoff_s else BACKOFF_START_S)
        if isinstance(exc, redis.RedisError):
            logger.warning("events consumer: Redis unavailable (%s); retrying in %.1fs", exc, self._backoff_s)
        elif isinstance(exc, TRANSIENT_DB_ERRORS):
            # The next step() starts with close_old_connections(), which drops the broken connection.
            logger.warning("events consumer: database unavailable (%s); retrying in %.1fs", exc, self._backoff_s)
        else:
            logger.exception("events consumer: unexpected error; retrying in %.1fs", self._backoff_s)
        self.sleep(self._backoff_s)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's start: events added before any consumer ever ran are still owed.
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, start: str, *, block_ms: int | None) -> list[tuple[str, dict[str, str] | None]]:
        reply: Any = self.client.xreadgroup(
            self.group, self.name, {self.stream: start}, count=self.batch, block=block_ms
        )
        if not reply:
            return []
        # [[stream, [(id, fields), ...]]]; an entry trimmed while pending comes back with no fields.
        return [(str(entry_id), fields) for entry_id, fields in reply[0][1]]

    # --- Entries ---------------------------------------------------------------------------------

    def handle(self, entries: list[tuple[str, dict[str, str] | None]]) -> int:
        """Deliver the entries' events and acknowledge the entries after commit. The events of a
        read are delivered together, in one transaction (events_deliver); when that fails (a poison
        event, a lock wait or the soft time limit), it is rolled back and the entries are delivered
        one by one, each in its own transaction with its own time limits, so one bad event cannot
        take the others with it. A transient database error stops the batch with the rest
        unacknowledged (read again after the backoff)."""
        done: list[str] = []
        try:
            together = [
                (entry_id, fields) for entry_id, fields in entries if _valid_event_id((fields or {}).get(ENTRY_EVENT))
            ]
            if len(together) > 1 and self._handle_together(together):
                self.stats.entries += len(together)
                done.extend(entry_id for entry_id, _ in together)
                taken = {entry_id for entry_id, _ in together}
                entries = [entry for entry in entries if entry[0] not in taken]
            for entry_id, fields in entries:
                self.stats.entries += 1
                if self._handle_one(entry_id, fields):
                    done.append(entry_id)
        finally:
            if done:
                self.client.xack(self.stream, self.group, *done)
        return len(done)

    def _handle_together(self, entries: list[tuple[str, dict[str, str] | None]]) -> bool:
        """Deliver the events of several entries in one transaction; False (rolled back, nothing
        counted) when they are to be delivered one by one instead."""
        fields_of = {entry_id: fields or {} for entry_id, fields in entries}
        event_of = {entry_id: fields[ENTRY_EVENT] for entry_id, fields in fields_of.items()}
        first_entry: dict[str, str] = {}
        for entry_id, event_id in event_of.items():
            first_entry.setdefault(event_id, entry_id)

        def bind(event_id: str) -> contextlib.AbstractContextManager[None]:
            return _entry_log_fields(fields_of[first_entry[event_id]])

        what = f"delivering {len(entries)} events (entries {entries[0][0]} to {entries[-1][0]})"
        try:
            with time_limits(
                soft_s=settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S, hard_s=settings.ORDINAUT_FIRE_TIME_LIMIT_S, what=what
            ):
                results = events_deliver(
                    event_ids=list(event_of.values()), bind=bind, lock_timeout_s=self._lock_timeout_s()
                )
        except DeliveryTimeLimitExceeded:
            if not connection.in_atomic_block:
                connection_abandon()
            limit = settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S
            logger.warning("%s ran past %ss; delivering them one by one", what, limit)
            return False
        except TRANSIENT_DB_ERRORS as exc:
            if not _lock_timed_out(exc):
                raise
            logger.warning("%s waited too long for a task's lock; delivering them one by one", what)
            return False
        except Exception:
            logger.exception("%s failed; delivering them one by one", what)
            return False
        for entry_id, event_id in event_of.items():
            runs = results.get(event_id) if first_entry[event_id] == entry_id else []
            with _entry_log_fields(fields_of[entry_id]):
                self._delivered(entry_id, event_id, runs)
        return True

    @staticmethod
    def _lock_timeout_s() -> float:
        """A lock wait of a read's transaction ends before the soft time limit would."""
        return max(0.5, settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S / 3)

    def _handle_one(self, entry_id: str, fields: dict[str, str] | None) -> bool:
        """Deliver one entry's event, with the publishing request's id and agent in the log lines
        (and so in the messages of the runs it starts); True when the entry is to be acknowledged."""
        with _entry_log_fields(fields or {}):
            return self._deliver(entry_id, fields)

    def _deliver(self, entry_id: str, fields: dict[str, str] | None) -> bool:
        event_id = (fields or {}).get(ENTRY_EVENT)
        if not event_id:
            self.stats.bad += 1
            metrics.event_consumed(delivered=False)
            logger.warning("stream entry %s has no event id (%r); acknowledged and ignored", entry_id, fields)
            return True
        try:
            with time_limits(
                soft_s=settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S,
                hard_s=settings.ORDINAUT_FIRE_TIME_LIMIT_S,
                what=f"delivering event {event_id} (entry {entry_id})",
            ):
                runs = event_deliver(event_id=event_id)
        except DeliveryTimeLimitExceeded:
            return self._timed_out(entry_id, event_id)
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception:
            self.stats.bad += 1
            metrics.event_consumed(delivered=False)
            logger.exception("delivering event %s (entry %s) failed; acknowledged and ignored", event_id, entry_id)
            return True
        return self._delivered(entry_id, event_id, runs)

    def _delivered(self, entry_id: str, event_id: str, runs: list[Run] | None) -> bool:
        """Count and log one entry's delivery (inside its log fields); True: acknowledge it."""
        if runs is None:
            self.stats.bad += 1
            metrics.event_consumed(delivered=False)
            logger.warning("stream entry %s names event %r, which does not exist; acknowledged", entry_id, event_id)
            return True
        self.stats.delivered += 1
        metrics.event_consumed(delivered=True, lag_s=time.time() - stream_id_key(entry_id)[0] / 1000)
        skipped = sum(1 for run in runs if run.skip_reason)
        self.stats.runs += len(runs) - skipped
        self.stats.skipped_runs += skipped
        if runs:
            logger.info(
                "event %s (entry %s): %d run(s) created, %d skipped", event_id, entry_id, len(runs) - skipped, skipped
            )
        else:
            logger.debug("event %s (entry %s): no new runs", event_id, entry_id)
        return True

    def _timed_out(self, entry_id: str, event_id: str) -> bool:
        """The delivery reached its soft time limit and was rolled back: leave the entry pending
        (claimed again after claim_idle_ms) until DELIVERY_TIME_LIMIT_TRIES, then give it up."""
        self.stats.timed_out += 1
        if not connection.in_atomic_block:
            connection_abandon()  # interrupted mid-statement perhaps: canceled; the next delivery reconnects
        key = f"{self.stream}:timeouts"
        tries = int(self.client.hincrby(key, entry_id, 1))
        self.client.expire(key, 86400)
        limit = settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S
        if tries < DELIVERY_TIME_LIMIT_TRIES:
            logger.error(
                "delivering event %s (entry %s) ran past %ss (try %d of %d); left pending, claimed again later",
                event_id,
                entry_id,
                limit,
                tries,
                DELIVERY_TIME_LIMIT_TRIES,
            )
            return False
        self.client.hdel(key, entry_id)
        self.stats.bad += 1
        metrics.event_consumed(delivered=False)
        logger.error(
            "delivering event %s (entry %s) ran past %ss %d times; acknowledged and given up",
            event_id,
            entry_id,
            limit,
            tries,
        )
        return True

    # --- Maintenance ---------------------------------------------------------------------------

    def _beat(self) -> None:
        now = time.time()
        key = heartbeat_key(self.stream)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {self.name: now})
        pipe.zremrangebyscore(key, "-inf", now - HEARTBEAT_FORGET_S)
        pipe.execute()

    def _farewell(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(heartbeat_key(self.stream), self.name)

    def _maintain(self) -> int:
        handled = self.claim()
        self._republish()
        self._forget_dead_consumers()
        return handled

    def claim(self) -> int:
        """Take over entries other consumers (dead ones, or this one before a failure) read but
        left unacknowledged for claim_idle_ms, and deliver them. Returns the entries handled."""
        handled = 0
        start = "0-0"
        for _ in range(MAX_CLAIM_ROUNDS):
            reply: Any = self.client.xautoclaim(
                self.stream, self.group, self.name, self.claim_idle_ms, start_id=start, count=self.batch
            )
            start, entries = str(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if entries:
                self.stats.claimed += len(entries)
                logger.info("claimed %d pending entr(ies) idle for %d ms or more", len(entries), self.claim_idle_ms)
                handled += self.handle([(str(entry_id), fields) for entry_id, fields in entries])
            if deleted:
                # Trimmed before anyone acknowledged them; events_restore adds their events again.
                logger.warning("%d pending entr(ies) were trimmed from the stream before delivery", len(deleted))
            if start == "0-0":
                break
        return handled

    def _republish(self) -> None:
        """Events stored while Redis was away, or whose entry is gone: one consumer at a time."""
        lock = f"{self.stream}:republish-lock"
        if not self.client.set(lock, self.name, nx=True, ex=int(MAINTENANCE_INTERVAL_S) + 1):
            return
        added = events_republish() + events_restore(client=self.client)
        self.stats.republished += added

    def _forget_dead_consumers(self) -> None:
        for consumer in self.client.xinfo_consumers(self.stream, self.group):
            name = str(consumer.get("name"))
            if name != self.name and not consumer.get("pending") and consumer.get("idle", 0) > DEAD_CONSUMER_IDLE_MS:
                self.client.xgroup_delconsumer(self.stream, self.group, name)

    def _summary(self) -> None:
        now = time.monotonic()
        if now < self._next_summary:
            return
        self._next_summary = now + SUMMARY_INTERVAL_S
        lag = None
        try:
            for info in self.client.xinfo_groups(self.stream):
                if str(info.get("name")) == self.group:
                    lag = info.get("lag")
        except redis.RedisError:
            pass
        logger.info(
            "events consumer %s: %d entries, %d events delivered, %d runs (%d skipped), %d bad, %d claimed, "
            "%d re-published, lag %s",
            self.name,
            self.stats.entries,
            self.stats.delivered,
            self.stats.runs,
            self.stats.skipped_runs,
            self.stats.bad,
            self.stats.claimed,
            self.stats.republished,
            lag,
        )
