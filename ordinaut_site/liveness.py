"""Worker liveness: each Celery worker keeps a short-lived key in Redis and lists the jobs it is
running, so the sweeper can tell a dead worker within ORDINAUT_WORKER_DEAD_AFTER_S and recover
exactly the jobs it had in flight (runs/services/recovery.py), instead of waiting out a run's
deadline or the broker's visibility timeout.

Per worker incarnation (hostname plus a nonce: a worker restarted under the same name is a new one)
the keys are, under the namespace beat uses (the default queue's name):

- `<ns>:workers`: the set of incarnations that announced themselves;
- `<ns>:worker:<incarnation>:alive`: set every ORDINAUT_WORKER_HEARTBEAT_S with a lifetime of
  ORDINAUT_WORKER_DEAD_AFTER_S, by a thread of the worker's main process. A pool child busy with a
  long tool call does not hold it up: the child never writes it;
- `<ns>:worker:<incarnation>:inflight`: a hash, Celery task id -> "<pid> [<run id> <step index>]":
  written when the main process receives the message (task_received: prefetched, or waiting out a
  countdown, pid of the main process), again by task_prerun in the pool child that runs it (its
  pid), and removed by task_postrun (after success, failure, retry). The pid makes the removal
  exact: a retried message (same id) already started by another child is not removed by the first
  child's postrun. The run and step a step job names let the sweeper recover a run whose next
  message was lost before it started (its step still pending, unclaimed).

A worker is dead when its incarnation is listed but its alive key has expired. Redis' own clock
decides the expiry, so clocks of the hosts do not matter; a Redis restarted less than
ORDINAUT_WORKER_DEAD_AFTER_S ago declares nobody dead (keys written before the outage may have
expired meanwhile, and the workers get one lifetime to beat again).
A warm shutdown (SIGTERM) drains the pool and then removes the worker's keys; jobs still listed
then (a cold shutdown) are left for the sweeper.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps, current_app
from celery.signals import task_postrun, task_prerun, task_received, task_revoked, worker_shutdown
from django.conf import settings

logger = logging.getLogger(__name__)

# Removes a task id from an in-flight hash only when this process is the one running it.
_FORGET_MINE = (
    "local v = redis.call('hget', KEYS[1], ARGV[1]) "
    "if v and string.match(v, '^%d+') == ARGV[2] then return redis.call('hdel', KEYS[1], ARGV[1]) "
    "else return 0 end"
)
# A dead incarnation's ids the sweeper has recovered: removed, and the incarnation forgotten once
# nothing is left, unless it came back meanwhile (its alive key exists again).
_FORGET_DEAD = """
if redis.call('exists', KEYS[2]) == 1 then return 0 end
for i = 1, #ARGV - 1 do redis.call('hdel', KEYS[1], ARGV[i]) end
if redis.call('hlen', KEYS[1]) == 0 then
  redis.call('srem', KEYS[3], ARGV[#ARGV])
  redis.call('hdel', KEYS[4], ARGV[#ARGV])
end
return 1
"""


def _namespace() -> str:
    """The keys of two Ordinauts (or two test suites) on one Redis never mix: prefixed by the
    default queue's name, like beat's leader lock."""
    return str(current_app.conf.task_default_queue or "ordinaut")


def registry_key() -> str:
    return f"{_namespace()}:workers"


def beats_key() -> str:
    """A hash: incarnation -> the time (its host's clock) of its last heartbeat. Kept after the
    alive key expires, until the incarnation is forgotten: it dates a dead worker's end."""
    return f"{_namespace()}:workers:beat"


def alive_key(incarnation: str) -> str:
    return f"{_namespace()}:worker:{incarnation}:alive"


def inflight_key(incarnation: str) -> str:
    return f"{_namespace()}:worker:{incarnation}:inflight"


def client() -> redis.Redis:
    """A Redis client of this process (a forked pool child gets its own: redis-py's pool reconnects
    after a fork)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    return _client


_client: redis.Redis | None = None
# This process' worker incarnation: set in the worker's main process before the pool forks, so the
# pool children inherit it. None outside a worker (web, beat, tests): nothing is recorded.
_incarnation: str | None = None


# --- The worker side ---------------------------------------------------------------------------


class Heartbeat(threading.Thread):
    """Renews the alive key on a thread of the worker's main process, and drops in-flight entries
    whose pool process is gone."""

    def __init__(self, incarnation: str, *, every_s: float, ttl_s: float) -> None:
        super().__init__(name="worker-liveness", daemon=True)
        self.incarnation, self.every_s, self.ttl_s = incarnation, every_s, ttl_s
        self._stop_event = threading.Event()
        self._warned = False

    def run(self) -> None:
        while True:
            self.beat()
            if self._stop_event.wait(self.every_s):
                return

    def beat(self) -> None:
        try:
            pipe = client().pipeline(transaction=True)
            pipe.set(alive_key(self.incarnation), os.getpid(), px=int(self.ttl_s * 1000))
            pipe.sadd(registry_key(), self.incarnation)
            pipe.hset(beats_key(), self.incarnation, repr(time.time()))
            pipe.execute()
            inflight_prune(self.incarnation)
            if self._warned:
                logger.info("worker liveness: Redis reachable again")
            self._warned = False
        except redis.RedisError as exc:
            if not self._warned:  # once per outage
                logger.warning("worker liveness: cannot reach Redis (%s); retrying every %.0fs", exc, self.every_s)
            self._warned = True

    def stop(self) -> None:
        self._stop_event.set()


def inflight_prune(incarnation: str) -> None:
    """Drop in-flight entries whose pool process is gone (a child killed by its hard time limit,
    or by the OOM killer, never ran its postrun; Celery re-queues or fails its message)."""
    entries: Any = client().hgetall(inflight_key(incarnation))
    gone = [task_id for task_id, value in entries.items() if not _process_exists(_pid_of(value))]
    if gone:
        client().hdel(inflight_key(incarnation), *gone)


def _pid_of(value: Any) -> int:
    return int(_text(value).split()[0])


def _entry(pid: int, args: Any, kwargs: Any) -> str:
    """A hash value: the pid, then the run id and step index when the job names them (a step
    job's arguments are (run_id, index); this package does not import runs/ to ask)."""
    if isinstance(kwargs, dict) and kwargs and set(kwargs) == {"run_id", "index"}:
        args = (kwargs["run_id"], kwargs["index"])
    if (
        isinstance(args, list | tuple)
        and len(args) == 2
        and isinstance(args[0], str)
        and len(args[0]) == 36
        and isinstance(args[1], int)
    ):
        return f"{pid} {args[0]} {args[1]}"
    return str(pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerLiveness(bootsteps.StartStopStep):
    """Worker bootstep (ordinaut_site/celery.py adds it): names this incarnation while the worker
    is built, before the pool forks, and starts the heartbeat before the consumer takes jobs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        global _incarnation
        super().__init__(worker, **kwargs)
        _incarnation = f"{worker.hostname}:{uuid.uuid4().hex[:8]}"
        self.heartbeat: Heartbeat | None = None

    def start(self, worker: Any) -> None:
        global _heartbeat
        if _incarnation is None:
            return
        self.heartbeat = _heartbeat = Heartbeat(
            _incarnation,
            every_s=float(settings.ORDINAUT_WORKER_HEARTBEAT_S),
            ttl_s=float(settings.ORDINAUT_WORKER_DEAD_AFTER_S),
        )
        self.heartbeat.beat()  # announced before the first job starts
        self.heartbeat.start()
        logger.info(
            "worker liveness: %s beats every %ss, dead after %ss",
            _incarnation,
            settings.ORDINAUT_WORKER_HEARTBEAT_S,
            settings.ORDINAUT_WORKER_DEAD_AFTER_S,
        )

    # stop() is left to worker_shutdown: the blueprint stops this step before the pool has drained,
    # and the worker must stay alive until its last job ended.


_heartbeat: Heartbeat | None = None


@worker_shutdown.connect
def _farewell(**kwargs: Any) -> None:
    """After a warm shutdown drained the pool: the worker's keys go. Jobs still listed (a cold
    shutdown, or children that died) keep the in-flight hash, and the sweeper recovers them at once."""
    global _heartbeat
    if _heartbeat is None or _incarnation is None:
        return
    _heartbeat.stop()
    _heartbeat = None
    with contextlib.suppress(redis.RedisError):
        inflight_prune(_incarnation)
        conn = client()
        # Received but never started: the broker gets those messages back as the worker closes.
        entries: Any = conn.hgetall(inflight_key(_incarnation))
        unstarted = [task_id for task_id, value in entries.items() if _pid_of(value) == os.getpid()]
        if unstarted:
            conn.hdel(inflight_key(_incarnation), *unstarted)
        left = conn.hlen(inflight_key(_incarnation))
        conn.delete(alive_key(_incarnation))
        if not left:
            conn.srem(registry_key(), _incarnation)
            conn.hdel(beats_key(), _incarnation)
        logger.info("worker liveness: %s signed off (%s job(s) left in flight)", _incarnation, left)


@task_received.connect
def _job_received(request: Any = None, **kwargs: Any) -> None:
    """In the main process, as the message arrives (before it waits for a pool process or its countdown)."""
    task_id = getattr(request, "id", None)
    if _incarnation is None or not task_id:
        return
    try:
        entry = _entry(os.getpid(), getattr(request, "args", None), getattr(request, "kwargs", None))
        client().hset(inflight_key(_incarnation), task_id, entry)
    except redis.RedisError as exc:
        logger.warning("worker liveness: cannot record job %s as received: %s", task_id, exc)


@task_revoked.connect
def _job_dropped(request: Any = None, **kwargs: Any) -> None:
    """Revoked or expired before it started (a sweep superseded by the next one): never runs."""
    task_id = getattr(request, "id", None)
    if _incarnation is None or not task_id:
        return
    with contextlib.suppress(redis.RedisError):
        client().eval(_FORGET_MINE, 1, inflight_key(_incarnation), task_id, os.getpid())


@task_prerun.connect
def _job_started(task_id: str | None = None, args: Any = None, kwargs: Any = None, **extra: Any) -> None:
    if _incarnation is None or not task_id:
        return
    try:
        client().hset(inflight_key(_incarnation), task_id, _entry(os.getpid(), args, kwargs))
    except redis.RedisError as exc:
        logger.warning("worker liveness: cannot record job %s as in flight: %s", task_id, exc)


@task_postrun.connect
def _job_ended(task_id: str | None = None, **kwargs: Any) -> None:
    if _incarnation is None or not task_id:
        return
    try:
        client().eval(_FORGET_MINE, 1, inflight_key(_incarnation), task_id, os.getpid())
    except redis.RedisError as exc:
        logger.warning("worker liveness: cannot record job %s as ended: %s", task_id, exc)


# --- The sweeper side --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadWorker:
    incarnation: str
    task_ids: frozenset[str]
    # (run id, step index) of the step jobs among them.
    steps: frozenset[tuple[str, int]] = frozenset()
    # Its last heartbeat (its host's clock, seconds since the epoch): it died (or stalled) between
    # then and ORDINAUT_WORKER_DEAD_AFTER_S later. None when it never beat with this version.
    last_beat: float | None = None


def workers_dead(*, conn: redis.Redis | None = None) -> list[DeadWorker]:
    """Incarnations whose alive key expired, with the task ids they still listed as in flight.
    Empty while Redis itself has been up for less than ORDINAUT_WORKER_DEAD_AFTER_S."""
    conn = conn or client()
    uptime = int(conn.info("server").get("uptime_in_seconds", 0))
    if uptime < settings.ORDINAUT_WORKER_DEAD_AFTER_S:
        return []
    names = _registered(conn)
    if not names:
        return []
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.exists(alive_key(name))
    alive = pipe.execute()
    dead = [name for name, exists in zip(names, alive, strict=True) if not exists]
    beats = dict(zip(dead, conn.hmget(beats_key(), dead), strict=True)) if dead else {}
    found = []
    for name in dead:
        entries: Any = conn.hgetall(inflight_key(name))
        steps = {step for step in map(_step_of, entries.values()) if step is not None}
        beat = beats[name]
        found.append(
            DeadWorker(
                name,
                frozenset(_text(i) for i in entries),
                frozenset(steps),
                last_beat=float(_text(beat)) if beat is not None else None,
            )
        )
    return found


def workers_alive(*, conn: redis.Redis | None = None) -> list[str]:
    conn = conn or client()
    names = _registered(conn)
    return [name for name in names if conn.exists(alive_key(name))]


def dead_worker_forget(dead: DeadWorker, *, conn: redis.Redis | None = None) -> bool:
    """Drop the ids of a dead incarnation that were recovered, and the incarnation once its hash
    is empty; nothing when it is alive again (it came back: its late results are refused by the
    claim check, its new jobs stay listed). True when it was forgotten."""
    conn = conn or client()
    keys = [inflight_key(dead.incarnation), alive_key(dead.incarnation), registry_key(), beats_key()]
    return bool(conn.eval(_FORGET_DEAD, len(keys), *keys, *sorted(dead.task_ids), dead.incarnation))


def _registered(conn: redis.Redis) -> list[str]:
    """Every worker incarnation that announced itself and was not forgotten, sorted."""
    return sorted(_text(name) for name in conn.smembers(registry_key()))  # type: ignore[union-attr]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def steps_listed() -> set[tuple[str, int]]:
    """(run id, step index) of every step job some registered worker lists as in flight (running,
    prefetched, or waiting out a countdown)."""
    conn = client()
    names = _registered(conn)
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.hvals(inflight_key(name))
    return {step for values in pipe.execute() for step in map(_step_of, values) if step is not None}


def _step_of(value: Any) -> tuple[str, int] | None:
    """The (run id, step index) an in-flight entry names (see _entry), if any."""
    parts = _text(value).split()
    return (parts[1], int(parts[2])) if len(parts) == 3 and parts[2].isdigit() else None
