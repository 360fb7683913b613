"""Ordinaut's own Prometheus metrics: the families, how each process exposes them, and the
scrape-time collectors the apps register (docs/operations.md, "Metrics" lists every family).

Counters and histograms are counted where things happen, in whichever process does them (the web,
a worker's pool process, beat, the events consumer), through the small functions below. Labels are
bounded: a trigger, a status, an outcome, a queue, a tool server and tool name (capped per process,
the rest "other"), never a task, run, agent or item id.

Exposition, per process:
- web: `/metrics` (`metrics_view`): django-prometheus's series and these, plus the state the apps'
  collectors read at scrape time (approvals pending, queue depth, workers alive, beat's lock and
  heartbeat, the event stream's lag): one bounded query or Redis round trip each.
- worker, beat, events consumer: their own port (ORDINAUT_METRICS_PORT_WORKER / _BEAT / _EVENTS,
  on ORDINAUT_METRICS_HOST; 0: off). A prefork worker's jobs run in pool processes: they count in
  files of prometheus_client's multiprocess mode (ordinaut_site/multiproc.py gives each worker a
  private directory), which the worker's main process serves.
- With PROMETHEUS_MULTIPROC_DIR set for every process of a host, each of them writes there and any
  one of them (the web's /metrics) shows the host's sum.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import redis
from celery import current_app
from celery.signals import beat_init, worker_ready, worker_shutdown
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, start_http_server

from . import liveness, multiproc

logger = logging.getLogger(__name__)

TRIGGERS = ("schedule", "event", "manual", "replay")
FINISHED_STATUSES = ("succeeded", "failed", "canceled", "skipped")
TOOL_OUTCOMES = ("ok", "failed", "retryable", "timeout", "suspended", "error")
# Tools are registered by operators, but a label set must stay bounded whatever they register:
# past these many distinct servers, and (server, tool) pairs, per process, the name is "other".
MAX_SERVER_LABELS = 50
MAX_TOOL_LABELS = 500
LABEL_MAX_CHARS = 64
OTHER = "other"
NO_TOOL = "none"

RUN_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
STEP_BUCKETS_S = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# B3's goals (fire p99 0.25 s, first step p99 1 s and max 2 s) fall on bucket edges.
LATENESS_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)

# --- The families counted where things happen -------------------------------------------------

RUNS_STARTED = Counter(
    "ordinaut_runs_started", "Runs that started (queued -> running, at their first step's claim).", ["trigger"]
)
RUNS_FINISHED = Counter(
    "ordinaut_runs_finished",
    "Runs that ended: succeeded, failed, canceled, or skipped (recorded without running).",
    ["trigger", "status"],
)
RUN_DURATION = Histogram(
    "ordinaut_run_duration_seconds",
    "From a run's start to its end (runs that started).",
    ["trigger", "status"],
    buckets=RUN_BUCKETS_S,
)
STEP_DURATION = Histogram(
    "ordinaut_step_duration_seconds",
    "One step job on a worker, claim to record; server: the tool's namespace (`uses` before the first "
    'dot), "none" for a job that called no tool (condition false, run ended, duplicate delivery).',
    ["server"],
    buckets=STEP_BUCKETS_S,
)
TOOL_CALLS = Counter(
    "ordinaut_tool_calls",
    "Tool calls by server (namespace), tool and outcome: ok, failed (permanent error), retryable "
    "(transient error), timeout, suspended (a wait or an approval), error (the tool raised).",
    ["server", "tool", "outcome"],
)
FIRE_LATENESS = Histogram(
    "ordinaut_schedule_fire_lateness_seconds",
    "When a fire job ran an occurrence (first attempt), minus its nominal time.",
    buckets=LATENESS_BUCKETS_S,
)
SEND_LATENESS = Histogram(
    "ordinaut_beat_send_lateness_seconds",
    "When beat sent an occurrence to the workers, minus its nominal time.",
    buckets=LATENESS_BUCKETS_S,
)
FIRST_STEP_LATENESS = Histogram(
    "ordinaut_schedule_first_step_lateness_seconds",
    "A run's start (its first step claimed) minus its scheduled_for (nominal time, or the event's).",
    ["trigger"],
    buckets=LATENESS_BUCKETS_S,
)
MISSED = Counter(
    "ordinaut_schedule_missed_occurrences", "Occurrences recorded as missed (older than the catch-up window)."
)
EVENTS_PUBLISHED = Counter(
    "ordinaut_events_published", "Events stored for delivery; origin: agent (API, MCP) or step.", ["origin"]
)
EVENTS_CONSUMED = Counter(
    "ordinaut_events_consumed",
    "Stream entries the events consumer handled: delivered (matched and marked consumed), bad "
    "(no such event, or delivery failed).",
    ["outcome"],
)
EVENT_DELIVERY_LAG = Histogram(
    "ordinaut_events_delivery_lag_seconds",
    "From an entry's addition to the stream to its delivery by a consumer.",
    buckets=LATENESS_BUCKETS_S,
)
BUDGET_REJECTIONS = Counter(
    "ordinaut_budget_rejections",
    "Tool calls refused by an agent's daily budget, by the limit spent: tool_calls, cost_units.",
    ["kind"],
)
RATE_LIMIT_REJECTIONS = Counter(
    "ordinaut_rate_limit_rejections",
    "Requests refused by a rate limit: requests (ORDINAUT_RATE_LIMIT), writes (ORDINAUT_WRITE_RATE_LIMIT), "
    "anonymous (ORDINAUT_ANON_RATE_LIMIT).",
    ["kind"],
)

# Known label values exist from the start (at 0), so rate() and the alert rules see the series
# before the first occurrence of each.
for _trigger in TRIGGERS:
    RUNS_STARTED.labels(_trigger)
    FIRST_STEP_LATENESS.labels(_trigger)
    for _status in FINISHED_STATUSES:
        RUNS_FINISHED.labels(_trigger, _status)
for _origin in ("agent", "step"):
    EVENTS_PUBLISHED.labels(_origin)
for _outcome in ("delivered", "bad"):
    EVENTS_CONSUMED.labels(_outcome)
for _kind in ("tool_calls", "cost_units"):
    BUDGET_REJECTIONS.labels(_kind)
for _kind in ("requests", "writes", "anonymous"):
    RATE_LIMIT_REJECTIONS.labels(_kind)


# --- Bounded tool labels ----------------------------------------------------------------------

_label_lock = threading.Lock()
_servers_seen: set[str] = set()
_tools_seen: set[tuple[str, str]] = set()


def _clip(text: str) -> str:
    return text[:LABEL_MAX_CHARS] or OTHER


def server_label(name: str) -> str:
    """The tool server (namespace) label of a tool name: the part before the first dot, one of at
    most MAX_SERVER_LABELS per process."""
    server = _clip(name.split(".", 1)[0])
    with _label_lock:
        if server in _servers_seen:
            return server
        if len(_servers_seen) >= MAX_SERVER_LABELS:
            return OTHER
        _servers_seen.add(server)
    return server


def tool_labels(name: str) -> tuple[str, str]:
    """(server, tool) labels of a tool name, at most MAX_TOOL_LABELS pairs per process."""
    server = server_label(name)
    tool = _clip(name.split(".", 1)[1]) if "." in name else OTHER
    if server == OTHER:
        return OTHER, OTHER
    with _label_lock:
        if (server, tool) in _tools_seen:
            return server, tool
        if len(_tools_seen) >= MAX_TOOL_LABELS:
            return server, OTHER
        _tools_seen.add((server, tool))
    return server, tool


# --- What the call sites call ------------------------------------------------------------------


def _trigger_label(value: str) -> str:
    return value if value in TRIGGERS else OTHER


def tool_called(name: str, outcome: str) -> None:
    server, tool = tool_labels(name)
    TOOL_CALLS.labels(server, tool, outcome if outcome in TOOL_OUTCOMES else "error").inc()


def run_started(*, trigger: str, lateness_s: float | None) -> None:
    RUNS_STARTED.labels(_trigger_label(trigger)).inc()
    if lateness_s is not None:
        FIRST_STEP_LATENESS.labels(_trigger_label(trigger)).observe(max(0.0, lateness_s))


def run_finished(*, trigger: str, status: str, duration_s: float | None) -> None:
    status = status if status in FINISHED_STATUSES else OTHER
    RUNS_FINISHED.labels(_trigger_label(trigger), status).inc()
    if duration_s is not None:
        RUN_DURATION.labels(_trigger_label(trigger), status).observe(max(0.0, duration_s))


def occurrences_fired(nominal: Iterable[datetime]) -> None:
    """A fire job is running these occurrences now."""
    now = time.time()
    for at in nominal:
        FIRE_LATENESS.observe(max(0.0, now - at.timestamp()))


def occurrences_sent(nominal: Iterable[datetime], *, now: float) -> None:
    """Beat has sent these occurrences to the workers (`now`: beat's clock)."""
    for at in nominal:
        SEND_LATENESS.observe(max(0.0, now - at.timestamp()))


def occurrences_missed(count: int) -> None:
    if count > 0:
        MISSED.inc(count)


def event_published(*, by_step: bool) -> None:
    EVENTS_PUBLISHED.labels("step" if by_step else "agent").inc()


def event_consumed(*, delivered: bool, lag_s: float | None = None) -> None:
    EVENTS_CONSUMED.labels("delivered" if delivered else "bad").inc()
    if lag_s is not None:
        EVENT_DELIVERY_LAG.observe(max(0.0, lag_s))


def budget_rejected(kind: str) -> None:
    BUDGET_REJECTIONS.labels(kind if kind in ("tool_calls", "cost_units") else OTHER).inc()


def rate_limited(kind: str) -> None:
    RATE_LIMIT_REJECTIONS.labels(kind if kind in ("requests", "writes", "anonymous") else OTHER).inc()


# --- A step job's duration, by the server of the tool it called -------------------------------

# Per thread (a prefork pool process runs one job at a time; a thread pool one per thread).
_step = threading.local()


def step_job_begin() -> None:
    _step.started, _step.server = time.perf_counter(), NO_TOOL


def step_tool(name: str) -> None:
    """The step job running on this thread resolved the tool `name` (no-op outside a step job)."""
    if getattr(_step, "started", None) is not None:
        _step.server = server_label(name)


def step_job_end() -> None:
    started = getattr(_step, "started", None)
    if started is None:
        return
    _step.started = None
    STEP_DURATION.labels(_step.server).observe(time.perf_counter() - started)


# --- Beat's own state (served on beat's port) --------------------------------------------------


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class BeatState:
    """What the beat process knows about itself, set by its scheduler at every tick."""

    def __init__(self) -> None:
        self.leader = False
        self.last_tick = 0.0  # time.time() of the last tick; 0: none yet
        self.schedules = 0

    def tick(self, *, leader: bool, schedules: int) -> None:
        self.leader, self.last_tick, self.schedules = leader, time.time(), schedules

    def collect(self) -> Iterator[Metric]:
        yield gauge("ordinaut_beat_leader", "1 while this beat holds the leader lock (1 across beats).", self.leader)
        yield gauge("ordinaut_beat_last_tick_timestamp_seconds", "When this beat last ticked.", self.last_tick)
        yield gauge("ordinaut_beat_schedules", "Schedules this beat has loaded (0 on standby).", self.schedules)


BEAT = BeatState()


# --- Scrape-time collectors of the apps ---------------------------------------------------------

# name -> collect function (yielding metric families), read at every scrape of the web's /metrics.
StateSource = Callable[[], Iterable[Metric]]
_sources: dict[str, StateSource] = {}


def source_register(name: str, collect: StateSource) -> None:
    """Read `collect()` at every scrape of the web's /metrics; registering a name again replaces it.
    A source that raises is skipped for that scrape, and ordinaut_metrics_source_up says so."""
    _sources[name] = collect


# Kombu's Redis transport keeps a queue's messages of priority > 0 in lists of their own.
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{KOMBU_PRIORITY_SEPARATOR}{step}" for step in KOMBU_PRIORITY_STEPS)]


def celery_state() -> Iterator[Metric]:
    """Messages waiting in each Celery queue (LLEN of its lists on the broker), and workers alive."""
    app = current_app
    queues = [queue.name for queue in app.conf.task_queues or ()] or [app.conf.task_default_queue]
    client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for name in queues:
            for key in queue_keys(name):
                pipe.llen(key)
        lengths = pipe.execute()
    finally:
        client.close()
    depth = GaugeMetricFamily("ordinaut_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])
    per_queue = len(KOMBU_PRIORITY_STEPS) + 1
    for index, name in enumerate(queues):
        depth.add_metric([name], float(sum(lengths[index * per_queue : (index + 1) * per_queue])))
    yield depth
    yield gauge(
        "ordinaut_workers_alive",
        "Celery workers whose liveness key is fresh (renewed within ORDINAUT_WORKER_DEAD_AFTER_S).",
        len(liveness.workers_alive()),
    )


class StateCollector:
    """The registered sources, each guarded: one failing (the database away) never hides the others."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "ordinaut_metrics_source_up", "1 when a scrape-time source answered this scrape.", labels=["source"]
        )
        for name, source in list(_sources.items()):
            try:
                families = list(source())
            except Exception as exc:
                logger.warning("metrics source %s failed: %s", name, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


class _Forward:
    """The process's default registry, as one collector of another registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get(multiproc.ENV) or None


def registry_with(*collectors: Any) -> CollectorRegistry:
    """This process's series (every process's of the directory, in multiprocess mode) plus `collectors`."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward())
    for collector in collectors:
        registry.register(collector)
    return registry


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The web's /metrics: django-prometheus's series, Ordinaut's, and the state sources."""
    registry = registry_with(StateCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)


# --- The other processes' ports ---------------------------------------------------------------

source_register("celery", celery_state)

_served: dict[str, Any] = {}


def serve(role: str, port: int, *collectors: Any) -> int | None:
    """Serve this process's metrics on `port` (0: not at all); returns the port, or None. A port
    already taken (a second worker on the host) is logged, not fatal: give each its own port."""
    if not port or role in _served:
        return None
    host = settings.ORDINAUT_METRICS_HOST
    try:
        server, _ = start_http_server(port, addr=host, registry=registry_with(*collectors))
    except OSError as exc:
        logger.warning("%s: cannot serve metrics on %s:%s (%s); set its ORDINAUT_METRICS_PORT_*", role, host, port, exc)
        return None
    _served[role] = server
    bound = int(server.server_address[1])
    logger.info("%s metrics on http://%s:%s/metrics", role, host, bound)
    return bound


@worker_ready.connect(weak=False)
def _worker_serve(**kwargs: Any) -> None:
    if multiprocess_dir() is None:
        logger.warning("worker metrics: no PROMETHEUS_MULTIPROC_DIR; the pool processes' series are not served")
    serve("worker", settings.ORDINAUT_METRICS_PORT_WORKER)


@worker_shutdown.connect(weak=False)
def _worker_done(**kwargs: Any) -> None:
    server = _served.pop("worker", None)
    if server is not None:
        server.shutdown()
    multiproc.private_dir_remove()


@beat_init.connect(weak=False)
def _beat_serve(**kwargs: Any) -> None:
    serve("beat", settings.ORDINAUT_METRICS_PORT_BEAT, BEAT)
