"""Ordinaut's beat scheduler: django-celery-beat's DatabaseScheduler, made exact, safe and scalable.

What it changes against the stock scheduler, and why:
- Each Ordinaut entry is built from the task's django-celery-beat row (tasks/beat_schedule.py,
  `beat_row_schedule`: crontab, interval, clocked or RRULE row -> OccurrenceSchedule), whose
  occurrences come from tasks/schedules.py (the same function as the preview and next_runs),
  not from celery's `is_due(last_run_at)`: nominal times with the DST rules, never "now" with
  seconds. Each dispatch carries the nominal `scheduled_for`; the fire job makes it a run whose
  trigger key is unique, so a duplicate dispatch creates nothing.
- A durable cursor per task (Task.fired_through) replaces last_run_at: after downtime, beat knows
  exactly which occurrences it owes. Those inside the catch-up window fire, older ones are recorded
  as skipped runs (reason `missed`). The cursor is written after the messages are sent, and only
  for the schedule version beat loaded, so a crash re-sends (deduplicated) rather than loses, and
  a concurrent edit is never overwritten.
- A Redis leader lock (short TTL, token-checked renewal): a second beat stays on standby and
  takes over within one TTL when the leader dies.
- No full reload per change: rows changed since the last look (PeriodicTask.date_changed) are
  reloaded each second, and a cheap id/version reconcile catches deletions. The heap holds due
  times; every due entry of a tick is sent in one batch.
- Each entry is isolated: a row that raises while it is built or evaluated is logged and its task
  parked (Task.schedule_error, shown by the API, the admin and /health); every other entry keeps
  firing. The task is unparked when its row changes and can be evaluated again.
- A heartbeat in Redis every few seconds (beat_heartbeat_key()), which /health reports as beat's age.
Rows that are not Ordinaut tasks (CELERY_BEAT_SCHEDULE entries, operators' own periodic tasks)
keep django-celery-beat's semantics.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection, transaction
from django.db.models import CharField
from django.db.models.functions import Cast
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from ordinaut_site import metrics
from ordinaut_site.errors import OrdinautError

from .beat import FIRE_BATCH_JOB_NAME, FIRE_JOB_NAME, RECORD_MISSED_JOB_NAME
from .beat_schedule import CRONTAB_TIMEZONE_TEXT, beat_row_schedule
from .models import Task
from .schedules import Schedule, next_due, next_run
from .services import catchup_window_s

logger = logging.getLogger(__name__)


def _namespace() -> str:
    """Beat's Redis keys are prefixed by the default queue's name, so two Ordinauts (or two test
    suites) on one Redis database never share a leader lock; "ordinaut" by default."""
    return str(current_app.conf.task_default_queue or "ordinaut")


def leader_key() -> str:
    return f"{_namespace()}:beat:leader"


def beat_heartbeat_key() -> str:
    return f"{_namespace()}:beat:last_tick"


# The leader writes its heartbeat this often (a Redis round trip each time; every tick would be
# up to one a second for nobody's benefit), and the key outlives a dead beat by HEARTBEAT_EXPIRE_S.
# /health calls beat silent once the heartbeat is older than BEAT_SILENT_S (tasks/health.py).
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_EXPIRE_S = 3600
# A foreign (non-Ordinaut) row that raised when evaluated is looked at again after this long.
FOREIGN_RETRY_S = 60.0
SCHEDULE_ERROR_MAX_CHARS = 1000
LEADER_RETRY_S = 0.5
SYNC_INTERVAL_S = 1.0
RECONCILE_INTERVAL_S = 30.0
# Re-read rows changed this long before the newest change seen: a transaction that saved a row
# earlier but committed later is still picked up.
CHANGE_OVERLAP_S = 5.0
MAX_DISPATCH_PER_TICK = 5000
MAX_MISSED_RECORDED = 1000
# Occurrences per fire message: a burst at one instant becomes a few messages that the workers
# share, instead of one message (and one job's overhead) per occurrence.
FIRE_BATCH_SIZE = 20
MAX_SLEEP_S = 1.0

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


@dataclass(eq=False, slots=True)
class TaskEntry:
    """An Ordinaut task as beat sees it: its schedule and a cursor of what has been dispatched."""

    pt_id: int
    pt_version: datetime
    task_id: Any
    schedule_version: int
    schedule: Schedule  # the occurrence function of the row's OccurrenceSchedule
    cursor: datetime
    wake: datetime | None
    catchup_window_s: int
    name: str
    next_run_at: datetime | None = None  # as of the last collect, for the cursor write

    @property
    def version(self) -> tuple[datetime, int]:
        return (self.pt_version, self.schedule_version)

    def next_due(self, cursor: datetime | None = None) -> datetime | None:
        return next_due(self.schedule, cursor=self.cursor if cursor is None else cursor, wake=self.wake)

    def next_run(self) -> datetime | None:
        """When the task will next actually run (what Task.next_run_at shows)."""
        return next_run(self.schedule, cursor=self.cursor, wake=self.wake)


@dataclass(eq=False)
class ParkedEntry:
    """An Ordinaut task whose beat row raised when built or evaluated: kept (never queued) so that
    beat does not try it again until the row or the task's schedule version changes."""

    pt_id: int
    pt_version: datetime
    task_id: Any
    schedule_version: int
    name: str
    error: str

    @property
    def version(self) -> tuple[datetime, int]:
        return (self.pt_version, self.schedule_version)


@dataclass(eq=False)
class ForeignEntry:
    """Any other PeriodicTask row, evaluated the django-celery-beat way."""

    pt_id: int
    pt_version: datetime
    model_entry: ModelEntry
    name: str

    @property
    def version(self) -> tuple[datetime, int]:
        return (self.pt_version, 0)


Entry = TaskEntry | ForeignEntry | ParkedEntry


@dataclass
class Batch:
    fires: list[tuple[TaskEntry, datetime]] = field(default_factory=list)
    missed: dict[Any, list[datetime]] = field(default_factory=dict)
    cursors: dict[Any, TaskEntry] = field(default_factory=dict)
    foreign: list[ForeignEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.fires) + sum(len(v) for v in self.missed.values()) + len(self.foreign)


class LeaseKeeper(threading.Thread):
    """Renews the leader lock every third of its lifetime on a thread of its own, so a long tick
    (a large load, a slow database) cannot starve the renewal and lose a healthy leader its lock.
    `lost` is set when the lock is gone (another beat holds it) or could not be renewed in time."""

    def __init__(self, client: redis.Redis, token: str, ttl_s: float) -> None:
        super().__init__(name="beat-leader-lease", daemon=True)
        self.client, self.token, self.ttl_s = client, token, ttl_s
        self.lost = threading.Event()
        self._stop_event = threading.Event()
        self.last_renewed = time.monotonic()

    def run(self) -> None:
        ttl_ms = int(self.ttl_s * 1000)
        while not self._stop_event.wait(self.ttl_s / 3):
            try:
                if not self.client.eval(_RENEW, 1, leader_key(), self.token, ttl_ms):
                    self.lost.set()
                    return
                self.last_renewed = time.monotonic()
            except redis.RedisError as exc:
                logger.warning("beat cannot renew the leader lock: %s", exc)
                if time.monotonic() - self.last_renewed >= self.ttl_s:
                    self.lost.set()
                    return

    def stop(self) -> None:
        self._stop_event.set()


class OrdinautScheduler(DatabaseScheduler):
    """Selected by CELERY_BEAT_SCHEDULER, so `celery -A ordinaut_site beat` runs it."""

    #: Wall clock (seconds since the epoch). Tests drive beat through DST days by replacing it.
    clock: Any = staticmethod(time.time)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._entries: dict[int, Entry] = {}
        # Parsed schedules by what their row says: tasks with the same cron or RRULE (and zone) share
        # one, parsed once; a schedule no entry holds any more drops out.
        self._schedules: weakref.WeakValueDictionary[tuple[Any, ...], Schedule] = weakref.WeakValueDictionary()
        self._queue: list[tuple[float, int, int, Entry]] = []
        self._seq = itertools.count()
        self._loaded = False
        self._watermark: datetime | None = None
        self._last_sync = 0.0
        self._last_reconcile = 0.0
        self._last_heartbeat = 0.0
        self._leader = False
        self._last_renew = 0.0
        self._lease: LeaseKeeper | None = None
        self._token = uuid.uuid4().hex
        self._lock_ttl_s = float(settings.ORDINAUT_BEAT_LOCK_TTL_S)
        self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        super().__init__(*args, **kwargs)
        self.max_interval: float = min(float(self.max_interval), MAX_SLEEP_S)

    # --- django-celery-beat hooks ------------------------------------------------------------

    def setup_schedule(self) -> None:
        # Write CELERY_BEAT_SCHEDULE entries as PeriodicTask rows (dcb's way); load lazily in tick.
        for name, fields in (self.app.conf.beat_schedule or {}).items():
            try:
                self.Entry.from_entry(name, app=self.app, **fields)
            except Exception:
                logger.exception("cannot install beat_schedule entry %s", name)

    @property
    def schedule(self) -> dict[str, Any]:  # type: ignore[override]
        return {entry.name: entry for entry in self._entries.values()}

    def sync(self) -> None:
        """Persist django-celery-beat bookkeeping of foreign entries (last_run_at, run count)."""
        for entry in list(self._entries.values()):
            if isinstance(entry, ForeignEntry) and entry.name in self._dirty:
                try:
                    entry.model_entry.save()
                except Exception:
                    logger.exception("cannot save beat entry %s", entry.name)
        self._dirty.clear()

    def close(self) -> None:
        self._lease_stop()
        try:
            if self._leader:
                self._redis.eval(_RELEASE, 1, leader_key(), self._token)  # a standby takes over at once
        except redis.RedisError:
            pass
        finally:
            self._leader = False
        super().close()

    # --- leadership ---------------------------------------------------------------------------

    def _hold_leadership(self) -> bool:
        now = time.monotonic()
        renew_every = self._lock_ttl_s / 3
        if self._leader and self._lease is not None and self._lease.lost.is_set():
            logger.warning("beat lost the leader lock; standing by")
            self._become_standby()
            return False
        if self._leader and now - self._last_renew < renew_every:
            return True
        ttl_ms = int(self._lock_ttl_s * 1000)
        try:
            if self._leader:
                if self._redis.eval(_RENEW, 1, leader_key(), self._token, ttl_ms):
                    self._last_renew = now
                    return True
                logger.warning("beat lost the leader lock; standing by")
                self._become_standby()
                return False
            if self._redis.set(leader_key(), self._token, nx=True, px=ttl_ms):
                logger.info("beat acquired the leader lock (ttl %.1fs)", self._lock_ttl_s)
                self._leader, self._last_renew, self._loaded = True, now, False
                self._lease_start()
                return True
        except redis.RedisError as exc:
            logger.warning("beat cannot reach Redis for the leader lock: %s", exc)
            self._become_standby()
        return False

    def _lease_start(self) -> None:
        self._lease_stop()
        self._lease = LeaseKeeper(self._redis, self._token, self._lock_ttl_s)
        self._lease.start()

    def _lease_stop(self) -> None:
        if self._lease is not None:
            self._lease.stop()
            self._lease = None

    def _become_standby(self) -> None:
        # Cursors in the database are the truth; a leader reloads them when it takes over.
        self._lease_stop()
        self._leader = False
        self._loaded = False
        self._entries.clear()
        self._queue.clear()

    @property
    def is_leader(self) -> bool:
        return self._leader

    # --- loading ------------------------------------------------------------------------------

    def _rows(self) -> Any:
        """Beat rows with what building an entry reads, and no more: a task's payload, a row's
        kwargs and description are not loaded (at 100,000 rows they were much of the start-up's
        time and memory). A row that is not an Ordinaut task is read again in full (_install)."""
        # The crontab's timezone comes as text (see CRONTAB_TIMEZONE_TEXT): one row holding a name
        # that is not a timezone must fail its own entry, not the query that loads them all.
        return self._full_rows().only(*ROW_FIELDS)

    @staticmethod
    def _full_rows() -> Any:
        return (
            PeriodicTask.objects.select_related(
                "ordinaut_task", "crontab", "interval", "clocked", "solar", "rrule_schedule"
            )
            .defer("crontab__timezone")
            .annotate(**{CRONTAB_TIMEZONE_TEXT: Cast("crontab__timezone", CharField())})
        )

    def _full_load(self) -> None:
        close_old_connections()
        self._entries.clear()
        self._queue.clear()
        newest: datetime | None = None
        count = 0
        for row in self._rows().filter(enabled=True).iterator(chunk_size=2000):
            self._install(row)
            newest = max(newest, row.date_changed) if newest else row.date_changed
            count += 1
        self._watermark = newest
        self._loaded = True
        self._last_sync = self._last_reconcile = time.monotonic()
        logger.info("beat loaded %d schedules", count)

    def _incremental_sync(self) -> None:
        close_old_connections()
        rows = self._rows()
        if self._watermark is not None:
            rows = rows.filter(date_changed__gt=self._watermark - timedelta(seconds=CHANGE_OVERLAP_S))
        for row in rows:
            current = self._entries.get(row.pk)
            if current is not None and current.version == self._row_version(row):
                continue
            if row.enabled:
                self._install(row)
            else:
                self._entries.pop(row.pk, None)
            if self._watermark is None or row.date_changed > self._watermark:
                self._watermark = row.date_changed
        self._last_sync = time.monotonic()

    def _reconcile(self) -> None:
        """Catch what the change feed cannot show: deleted rows and late-committed changes."""
        close_old_connections()
        # One query with the task's version beside its row (a join), not a second one naming every
        # row's id: at 100,000 rows that list was most of a reconcile's cost, every 30 s.
        rows = {
            pk: (changed, version or 0)
            for pk, changed, version in PeriodicTask.objects.filter(enabled=True).values_list(
                "pk", "date_changed", "ordinaut_task__schedule_version"
            )
        }
        for pk in [pk for pk in self._entries if pk not in rows]:
            del self._entries[pk]
        entries = self._entries
        stale = [pk for pk, version in rows.items() if pk not in entries or entries[pk].version != version]
        for row in self._rows().filter(pk__in=stale):
            self._install(row)
        self._last_reconcile = time.monotonic()

    @staticmethod
    def _row_version(row: PeriodicTask) -> tuple[datetime, int]:
        task = getattr(row, "ordinaut_task", None)
        return (row.date_changed, task.schedule_version if task is not None else 0)

    def _install(self, row: PeriodicTask) -> None:
        self._entries.pop(row.pk, None)
        if row.task == FIRE_JOB_NAME:
            task = getattr(row, "ordinaut_task", None)
            if task is not None:  # else the task row is gone; nothing to fire
                self._install_task(row, task)
            return
        try:
            row = self._full_rows().get(pk=row.pk)  # _rows() leaves out what ModelEntry reads
            entry = ForeignEntry(row.pk, row.date_changed, ModelEntry(row, app=self.app), row.name)
        except Exception:
            logger.exception("cannot load periodic task %s", row.name)
            return
        self._entries[row.pk] = entry
        self._push(entry, self._first_due(entry))

    def _install_task(self, row: PeriodicTask, task: Task) -> None:
        if task.status != Task.Status.ACTIVE or task.deleted_at is not None:
            return
        try:
            entry = self._task_entry(row, task)
            first = self._first_due(entry)
        except Exception as exc:  # whatever a corrupt row raises parks its task, nothing else
            self._park(row.pk, row.date_changed, task.pk, task.schedule_version, row.name, exc)
            return
        if task.schedule_parked_at is not None:
            self._unpark(task.pk)
        self._entries[row.pk] = entry
        self._push(entry, first)

    def _task_entry(self, row: PeriodicTask, task: Task) -> TaskEntry:
        key = _schedule_key(row, task.schedule_kind)
        schedule = self._schedules.get(key) if key is not None else None
        if schedule is None:
            schedule = beat_row_schedule(row, task_kind=task.schedule_kind, task_timezone=task.timezone).occurrence
            if key is not None:
                self._schedules[key] = schedule
        return TaskEntry(
            pt_id=row.pk,
            pt_version=row.date_changed,
            task_id=task.pk,
            schedule_version=task.schedule_version,
            schedule=schedule,
            cursor=task.fired_through or datetime.fromtimestamp(self.clock(), UTC),
            wake=task.snoozed_until,
            catchup_window_s=catchup_window_s(task),
            name=row.name,
        )

    def _park(self, pt_id: int, pt_version: datetime, task_id: Any, version: int, name: str, exc: Exception) -> None:
        """Keep the task out of the heap and say so on the task, for the version beat loaded (a
        fix committed meanwhile is not marked parked; beat loads and judges it next)."""
        error = exc.message if isinstance(exc, OrdinautError) else f"{type(exc).__name__}: {exc}"
        error = error[:SCHEDULE_ERROR_MAX_CHARS]
        logger.error("task %s: its beat row %s cannot be evaluated; parked: %s", task_id, name, error, exc_info=exc)
        self._entries[pt_id] = ParkedEntry(pt_id, pt_version, task_id, version, name, error)
        Task.objects.filter(pk=task_id, schedule_version=version).update(
            schedule_error=error, schedule_parked_at=datetime.now(UTC)
        )

    @staticmethod
    def _unpark(task_id: Any) -> None:
        logger.info("task %s: its beat row can be evaluated again; unparked", task_id)
        Task.objects.filter(pk=task_id).update(schedule_error="", schedule_parked_at=None)

    def _first_due(self, entry: Entry) -> float | None:
        if isinstance(entry, TaskEntry):
            due = entry.next_due()
            return None if due is None else due.timestamp()
        if isinstance(entry, ParkedEntry):
            return None
        try:
            is_due, delay = entry.model_entry.is_due()
        except Exception:
            logger.exception("cannot evaluate periodic task %s", entry.name)
            return self.clock() + self.max_interval
        return self.clock() + (0 if is_due else float(delay))

    def _push(self, entry: Entry, when: float | None) -> None:
        if when is not None:
            heapq.heappush(self._queue, (when, next(self._seq), entry.pt_id, entry))

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send everything due (in one batch) and say how long to sleep."""
        if not self._hold_leadership():
            metrics.BEAT.tick(leader=False, schedules=0)
            return LEADER_RETRY_S
        metrics.BEAT.tick(leader=True, schedules=len(self._entries))
        try:
            monotonic = time.monotonic()
            if not self._loaded:
                self._full_load()
            else:
                if monotonic - self._last_sync >= SYNC_INTERVAL_S:
                    self._incremental_sync()
                if monotonic - self._last_reconcile >= RECONCILE_INTERVAL_S:
                    self._reconcile()
            self._heartbeat(monotonic)
            batch = self._collect(self.clock())
            if batch:
                self._dispatch(batch)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("beat cannot reach the database (%s); retrying", exc)
            self._loaded = False
            return self.max_interval
        except Exception:
            # Something failed mid-batch (e.g. the broker): start over from the database cursors.
            logger.exception("beat tick failed; reloading from the database")
            self._loaded = False
            return self.max_interval
        if not self._queue:
            return self.max_interval
        return max(0.0, min(self._queue[0][0] - self._lead_s() - self.clock(), self.max_interval))

    @staticmethod
    def _lead_s() -> float:
        """How far ahead of its instant an occurrence is fired (ORDINAUT_DISPATCH_LEAD_S)."""
        return float(max(0, settings.ORDINAUT_DISPATCH_LEAD_S))

    def _heartbeat(self, monotonic: float) -> None:
        if monotonic - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self._last_heartbeat = monotonic
            with contextlib.suppress(redis.RedisError):
                self._redis.set(beat_heartbeat_key(), f"{time.time():.3f}", ex=HEARTBEAT_EXPIRE_S)

    def _collect(self, now_ts: float) -> Batch:
        """Everything due by now plus the dispatch lead: occurrences are fired that much ahead, and
        their runs wait, scheduled, for their instant (foreign entries are sent when due)."""
        batch = Batch()
        now = datetime.fromtimestamp(now_ts, UTC)
        ahead = now_ts + self._lead_s()
        while self._queue and self._queue[0][0] <= ahead and len(batch) < MAX_DISPATCH_PER_TICK:
            _, _, pt_id, entry = heapq.heappop(self._queue)
            if self._entries.get(pt_id) is not entry:
                continue  # replaced or removed since it was queued
            if isinstance(entry, ForeignEntry):
                batch.foreign.append(entry)  # sent only once due (_send_foreign asks it)
                continue
            if isinstance(entry, TaskEntry):
                self._collect_task(entry, now, batch)
        return batch

    def _collect_task(self, entry: TaskEntry, now: datetime, batch: Batch) -> None:
        """Add the entry's owed occurrences to the batch. Computed first, added after: an entry
        whose schedule raises half-way is parked and adds nothing."""
        cursor = entry.cursor
        missed: list[datetime] = []
        fire: datetime | None = None
        try:
            due = entry.next_due(cursor)
            oldest_allowed = now - timedelta(seconds=entry.catchup_window_s)
            # After downtime: occurrences older than the catch-up window are recorded, not run.
            while due is not None and due < oldest_allowed and len(missed) < MAX_MISSED_RECORDED:
                missed.append(due)
                cursor = due
                due = entry.next_due(cursor)
            if due is not None and due < oldest_allowed:
                logger.warning(
                    "task %s missed more than %d occurrences; skipping ahead without recording the rest",
                    entry.task_id,
                    MAX_MISSED_RECORDED,
                )
                cursor = oldest_allowed
                due = entry.next_due(cursor)
            if due is not None and due <= now + timedelta(seconds=self._lead_s()):
                fire = cursor = due
                due = entry.next_due(cursor)
            entry.cursor = cursor
            next_run_at = entry.next_run()  # evaluated here, where a failure parks this entry only
        except Exception as exc:
            self._park(entry.pt_id, entry.pt_version, entry.task_id, entry.schedule_version, entry.name, exc)
            return
        if missed:
            batch.missed[entry.task_id] = missed
        if fire is not None:
            batch.fires.append((entry, fire))
        entry.next_run_at = next_run_at
        batch.cursors[entry.task_id] = entry
        self._push(entry, None if due is None else due.timestamp())
        if due is None:
            self._entries.pop(entry.pt_id, None)

    def _dispatch(self, batch: Batch) -> None:
        with self.app.producer_or_acquire() as producer:
            for task_id, occurrences in batch.missed.items():
                self.app.send_task(
                    RECORD_MISSED_JOB_NAME,
                    kwargs={"task_id": str(task_id), "occurrences": [_iso(o) for o in occurrences]},
                    producer=producer,
                )
            fires = [[str(entry.task_id), _iso(at)] for entry, at in batch.fires]
            for start in range(0, len(fires), FIRE_BATCH_SIZE):
                self.app.send_task(
                    FIRE_BATCH_JOB_NAME,
                    kwargs={"occurrences": fires[start : start + FIRE_BATCH_SIZE]},
                    producer=producer,
                )
            for foreign in batch.foreign:
                self._send_foreign(foreign, producer)
        if batch.fires:
            logger.info("beat sent %d occurrence(s)", len(batch.fires))
            metrics.occurrences_sent([at for _, at in batch.fires], now=self.clock())
        self._save_cursors(list(batch.cursors.values()))

    def _send_foreign(self, entry: ForeignEntry, producer: Any) -> None:
        try:
            is_due, delay = entry.model_entry.is_due()
        except Exception:
            logger.exception("cannot evaluate periodic task %s; trying again in %.0fs", entry.name, FOREIGN_RETRY_S)
            self._push(entry, self.clock() + FOREIGN_RETRY_S)
            return
        if is_due:
            self.apply_async(entry.model_entry, producer=producer, advance=False)
            entry.model_entry = next(entry.model_entry)
            self._dirty.add(entry.name)
            _, delay = entry.model_entry.is_due()
        self._push(entry, self.clock() + float(delay))

    def _save_cursors(self, entries: list[TaskEntry]) -> None:
        cursors_save(entries)


# What _rows() loads: the fields of the row, its task and its schedule rows that beat_row_schedule,
# _task_entry, _install_task and _park read.
ROW_FIELDS = (
    "id",
    "name",
    "task",
    "enabled",
    "date_changed",
    "crontab",
    "interval",
    "clocked",
    "solar",
    "ordinaut_task__id",
    "ordinaut_task__status",
    "ordinaut_task__deleted_at",
    "ordinaut_task__schedule_kind",
    "ordinaut_task__timezone",
    "ordinaut_task__schedule_version",
    "ordinaut_task__fired_through",
    "ordinaut_task__snoozed_until",
    "ordinaut_task__catchup_window_seconds",
    "ordinaut_task__schedule_parked_at",
    "crontab__minute",
    "crontab__hour",
    "crontab__day_of_month",
    "crontab__month_of_year",
    "crontab__day_of_week",
    "interval__every",
    "interval__period",
    "clocked__clocked_time",
    "rrule_schedule__rrule",
    "rrule_schedule__timezone",
    "rrule_schedule__periodic_task",
)


def _schedule_key(row: PeriodicTask, task_kind: str) -> tuple[Any, ...] | None:
    """What a cron or RRULE row's schedule depends on (None: not cached, other kinds are cheap)."""
    rrule = getattr(row, "rrule_schedule", None)
    if rrule is not None:
        return ("rrule", task_kind, rrule.rrule, rrule.timezone)
    if row.crontab_id is not None:
        c = row.crontab
        text = getattr(row, CRONTAB_TIMEZONE_TEXT, None)
        return ("cron", task_kind, c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week, text)
    return None


def cursors_save(entries: list[Any]) -> None:
    """Persist beat's cursors and next_run_at (entries with task_id, cursor, next_run_at,
    schedule_version, pt_id), only where the schedule version is still the one loaded."""
    if not entries:
        return
    # In task id order, like every other writer of task rows (fire batches lock them ORDER BY id):
    # two transactions taking the same rows in one global order cannot deadlock.
    rows = sorted((str(e.task_id), e.cursor, e.next_run_at, e.schedule_version, e.pt_id) for e in entries)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # UPDATE ... FROM (VALUES ...) locks rows in the join's order, not the list's:
                # take the locks first, in id order.
                cursor.execute(
                    "SELECT id FROM tasks_task WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE",
                    [[row[0] for row in rows]],
                )
                for start in range(0, len(rows), 1000):
                    chunk = rows[start : start + 1000]
                    values = ", ".join(
                        ["(%s::uuid, %s::timestamptz, %s::timestamptz, %s::integer, %s::integer)"] * len(chunk)
                    )
                    params = [value for row in chunk for value in row]
                    cursor.execute(
                        f"UPDATE tasks_task AS t SET fired_through = v.ft, next_run_at = v.nr "  # noqa: S608
                        f"FROM (VALUES {values}) AS v(id, ft, nr, ver, pt) "
                        f"WHERE t.id = v.id AND t.schedule_version = v.ver",
                        params,
                    )
                    # The dcb row's last_run_at, for operators looking at beat rows in the admin.
                    # A plain UPDATE leaves date_changed alone, so beat does not reload itself.
                    cursor.execute(
                        f"UPDATE django_celery_beat_periodictask AS p SET last_run_at = v.ft "  # noqa: S608
                        f"FROM (VALUES {values}) AS v(id, ft, nr, ver, pt) WHERE p.id = v.pt",
                        params,
                    )
        else:
            for task_id, fired_through, next_run_at, version, pt_id in rows:
                Task.objects.filter(pk=task_id, schedule_version=version).update(
                    fired_through=fired_through, next_run_at=next_run_at
                )
                PeriodicTask.objects.filter(pk=pt_id).update(last_run_at=fired_through)
