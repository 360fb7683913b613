"""R2: restart beat, then Redis, then PostgreSQL while tasks fire every few seconds.

A whole stack on private servers of its own (tests/support/netlab.py's LoopbackLab: PostgreSQL and
Redis on 127.0.0.1 with free ports, Redis with its append-only file on, so a restart keeps the
broker's messages): migrate, create_agent, web (uvicorn), beat and a worker, each a real process.
Interval tasks (every R2_EVERY_S, a 2-step orchestrator.echo pipeline, overlap allow) are created
through the API; one in five has a catch-up window of 3 s, so the faults also exercise the catch-up
policy (its late occurrences become skipped runs, reason `missed`). Phases: steady; beat killed -9
and started again after R2_DOWN_S; Redis stopped (SIGTERM: it writes its append-only file) and
started on the same port and folder; PostgreSQL stopped (`pg_ctl stop -m fast`) and started again;
each fault is followed by R2_SETTLE_S of steady running, then the tasks are paused through the API.

Checked in the database, over the measured window (from one interval after beat loaded to one
interval before the pause): every occurrence of every task has exactly one run (lost 0; a run
skipped with reason `missed` counts as recorded, and only where it was created later than the
task's catch-up window allows); no two runs for one (task, scheduled_for); every run that started
ended (none left queued or running once the sweeper had its time) and none failed; web, beat and
worker are still the processes started (nothing restarted by hand). Printed per phase: the
occurrences due, runs, missed, late, duplicates, lost, and how long each component took to work
again after its fault; both PostgreSQL logs are read for "deadlock detected". Report in
var/reliability-r2.json.

Quick profile (the default test run): 30 tasks every 5 s, one round of the three faults, each down
5 s. Long (`make reliability-r2`: RELIABILITY_PROFILE=long): 60 tasks, three rounds, down 10 s.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery

from tests.support.netlab import LabUnavailable, LoopbackLab, Process, free_port, wait_until

pytestmark = [pytest.mark.e2e]

BASE_DIR = Path(__file__).resolve().parents[2]
REPORT = BASE_DIR / "var" / "reliability-r2.json"
LOGS = BASE_DIR / "var" / "reliability-r2-logs"
LONG = os.environ.get("RELIABILITY_PROFILE") == "long"
TASKS = int(os.environ.get("R2_TASKS") or (60 if LONG else 30))
EVERY_S = int(os.environ.get("R2_EVERY_S") or 5)
ROUNDS = int(os.environ.get("R2_ROUNDS") or (3 if LONG else 1))
STEADY_S = float(os.environ.get("R2_STEADY_S") or (30 if LONG else 10))
DOWN_S = float(os.environ.get("R2_DOWN_S") or (10 if LONG else 5))
SETTLE_S = float(os.environ.get("R2_SETTLE_S") or (25 if LONG else 12))
TIGHT_EVERY = 5  # one task in five has a catch-up window of TIGHT_WINDOW_S
TIGHT_WINDOW_S = 3
DEFAULT_WINDOW_S = 300
# The faults of a round, in order: beat, redis, postgres; `redis-in-postgres` (Redis restarted while
# PostgreSQL is away) may be added with R2_FAULTS.
FAULTS = (os.environ.get("R2_FAULTS") or "beat,redis,postgres").split(",")
LATE_S = 5.0  # a run whose first step started this long after its occurrence counts as late
UNFINISHED = ("scheduled", "queued", "running", "waiting_approval")
# A run of 2 steps of SLOW_STEP_S is running at each fault: the worker holds an unacknowledged
# message while it still polls for more (one slot of two busy), which is what R2 found stopping it.
IN_FLIGHT = 1
SLOW_STEP_S = 2.0
# Shorter than an outage: the worker's main process, reconnecting, sees the step's soft time limit
# pass before it reads that the step ended (the second thing R2 found stopping it).
SLOW_TIMEOUT_S = 3
LOCK_TTL_S = 3
QUEUE = "ordinaut-r2"
WORKER = "r2@loopback"
# Scaled down so recovery is quick (docs/operations.md, Recovery): a step lost in a restart is
# re-sent by the sweeper once its deadline (timeout 10 s + grace) has passed.
ENV = {
    "ORDINAUT_WORKER_HEARTBEAT_S": "1",
    "ORDINAUT_WORKER_DEAD_AFTER_S": "4",
    "ORDINAUT_SWEEP_INTERVAL_S": "2",
    "ORDINAUT_QUEUED_GRACE_S": "10",
    "ORDINAUT_RUNNING_GRACE_S": "10",
    "ORDINAUT_BEAT_LOCK_TTL_S": str(LOCK_TTL_S),
    "ORDINAUT_MISSED_GRACE_S": "1",  # so the tight tasks' 3 s window is the one applied
}


def say(message: str) -> None:
    print(f"[r2 {datetime.now():%H:%M:%S}] {message}", flush=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[LoopbackLab]:
    lab = LoopbackLab()
    try:
        yield lab
    finally:
        for process in lab.processes:  # the logs stay, for a look after a failure
            process.stop(signal.SIGTERM, timeout=10)
        shutil.rmtree(LOGS, ignore_errors=True)
        LOGS.mkdir(parents=True)
        for log in lab.workdir.glob("*.log"):
            shutil.copy(log, LOGS / log.name)
        lab.down()


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 (http only)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def answers(self, path: str) -> bool:
        try:
            self.call("GET", path)
            return True
        except (OSError, urllib.error.HTTPError):
            return False


class Db:
    """Reads of the private database on a fresh connection each time: it survives the restart."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
            return list(conn.execute(sql, params).fetchall())

    def value(self, sql: str, *params: Any) -> Any:
        try:
            return self.rows(sql, *params)[0][0]
        except psycopg.OperationalError:
            return None


@dataclass
class Phase:
    name: str
    start: datetime
    injected: str = ""
    in_flight: int = 0
    recovery_s: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Stack:
    lab: LoopbackLab
    env: dict[str, str]
    db: Db
    broker: Celery
    api: Api
    web: Process
    worker: Process
    beat: Process | None = None
    beats: int = 0
    slow_task: str = ""
    in_flight: list[str] = field(default_factory=list)

    def start_beat(self) -> Process:
        self.beats += 1
        args = [sys.executable, "-m", "celery", "-A", "ordinaut_site", "beat", "-l", "INFO", "--pidfile="]
        self.beat = self.lab.start(f"beat-{self.beats}", args, env=self.env)
        return self.beat

    def worker_answers(self) -> bool:
        try:
            return bool(self.broker.control.ping(destination=[WORKER], timeout=0.5))
        except Exception:  # the broker is away
            return False

    def beat_log(self) -> str:
        return self.beat.log_text() if self.beat is not None else ""

    def alive(self) -> dict[str, bool]:
        beat = self.beat is not None and self.beat.alive()
        return {"web": self.web.alive(), "worker": self.worker.alive(), "beat": beat}


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "PYTEST"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_QUEUE=QUEUE,
        SECRET_KEY="r2-only-secret-key-not-for-production",
        ALLOWED_HOSTS="127.0.0.1",
        ORDINAUT_RATE_LIMIT="off",
        ORDINAUT_WRITE_RATE_LIMIT="off",
        ORDINAUT_TOOL_MODULES="tests.support.tools",
        # Other suites may run beside this one: no fixed metrics ports.
        ORDINAUT_METRICS_PORT_WORKER="0",
        ORDINAUT_METRICS_PORT_BEAT="0",
        ORDINAUT_METRICS_PORT_EVENTS="0",
        LOG_FORMAT="text",
        PYTHONUNBUFFERED="1",
        **ENV,
    )
    env.pop("TEST_DATABASE_NAME", None)
    return env


def _stack(lab: LoopbackLab) -> Stack:
    try:
        database_url = lab.start_postgres()
        redis_url = lab.start_redis(appendfsync="everysec")
    except LabUnavailable as exc:
        pytest.skip(f"R2 needs PostgreSQL's and Redis' server binaries: {exc}")
    web_port = free_port()
    env = _env(database_url, redis_url)
    migrate = lab.start("migrate", [sys.executable, "manage.py", "migrate", "--noinput"], env=env)
    assert migrate.proc.wait(timeout=300) == 0, migrate.log_text()[-3000:]
    agent = lab.start("agent", [sys.executable, "manage.py", "create_agent", "r2", "--admin"], env=env)
    assert agent.proc.wait(timeout=120) == 0, agent.log_text()[-3000:]
    token = agent.log_text().strip().splitlines()[-1].strip()
    web_args = [sys.executable, "-m", "uvicorn", "ordinaut_site.asgi:application", "--host", "127.0.0.1"]
    web = lab.start("web", [*web_args, "--port", str(web_port), "--no-access-log"], env=env)
    worker_args = [sys.executable, "-m", "celery", "-A", "ordinaut_site", "worker", "-P", "prefork", "-c", "2"]
    worker_args += ["-n", WORKER, "-Q", f"{QUEUE}.schedule,{QUEUE}", "--without-mingle", "--without-gossip"]
    worker = lab.start("worker", [*worker_args, "-l", "INFO"], env=env)
    broker = Celery(broker=redis_url)
    api = Api(f"http://127.0.0.1:{web_port}", token)
    stack = Stack(lab, env, Db(lab.postgres_url("ordinaut")), broker, api, web, worker)
    beat = stack.start_beat()
    wait_until(stack.worker_answers, timeout=90, message=f"the worker to answer (logs in {lab.workdir})")
    wait_until(lambda: api.answers("/health/live"), timeout=60, message="the web process")
    wait_until(lambda: "beat loaded" in beat.log_text(), timeout=60, message="beat to start")
    return stack


def _tasks_create(api: Api) -> dict[str, int]:
    """The tasks, through the API; their catch-up window by id."""
    pipeline = [{"id": f"s{n}", "uses": "orchestrator.echo", "with": {"n": n}} for n in range(2)]
    windows: dict[str, int] = {}
    for number in range(TASKS):
        window = TIGHT_WINDOW_S if number % TIGHT_EVERY == 0 else DEFAULT_WINDOW_S
        body = {
            "title": f"r2 {number}",
            "schedule_kind": "interval",
            "schedule_expr": str(EVERY_S),
            "payload": {"pipeline": pipeline},
            "overlap": "allow",
            "timeout_seconds": 10,
            "catchup_window_seconds": window,
        }
        windows[api.call("POST", "/tasks", body)["id"]] = window
    return windows


def _slow_runs_start(stack: Stack, phase: Phase) -> None:
    """Runs whose step is running when the fault hits, so the worker holds unacknowledged
    messages then (a step job of each, acknowledged late)."""
    runs = [stack.api.call("POST", f"/tasks/{stack.slow_task}/run_now", {})["id"] for _ in range(IN_FLIGHT)]
    wait_until(
        lambda: (
            stack.db.value(
                "SELECT count(*) FROM runs_steprun WHERE status = 'running' AND run_id = ANY(%s::uuid[])", runs
            )
            == IN_FLIGHT
        ),
        timeout=60,
        message="the slow runs' steps to be running",
        interval=0.05,
    )
    stack.in_flight += runs
    phase.in_flight = len(runs)


def _first_after(probes: dict[str, Callable[[], bool]], since: float, timeout: float) -> dict[str, float | None]:
    """Seconds from `since` (monotonic) until each probe first held (None: not within timeout)."""
    found: dict[str, float | None] = dict.fromkeys(probes)
    deadline = time.monotonic() + timeout
    while any(v is None for v in found.values()) and time.monotonic() < deadline:
        for name, probe in probes.items():
            if found[name] is None and probe():
                found[name] = round(time.monotonic() - since, 2)
        time.sleep(0.1)
    return found


def _work_probes(stack: Stack, at: datetime) -> dict[str, Callable[[], bool]]:
    """The fire path and the steps work again: a run created, a step finished after `at`."""
    return {
        "run created": lambda: bool(stack.db.value("SELECT count(*) FROM runs_run WHERE created_at > %s", at)),
        "step finished": lambda: bool(stack.db.value("SELECT count(*) FROM runs_steprun WHERE finished_at > %s", at)),
    }


def _beat_sends_after(stack: Stack) -> Callable[[], bool]:
    before = stack.beat_log().count("beat sent")
    return lambda: stack.beat_log().count("beat sent") > before


def _fault_beat(stack: Stack, phase: Phase) -> None:
    assert stack.beat is not None
    stack.beat.stop(signal.SIGKILL)
    phase.injected = f"beat kill -9, down {DOWN_S:g}s"
    time.sleep(DOWN_S)
    now = datetime.now(UTC)
    since = time.monotonic()
    beat = stack.start_beat()
    phase.recovery_s = _first_after(
        {
            "beat leader": lambda: "acquired the leader lock" in beat.log_text(),
            "beat sends": lambda: "beat sent" in beat.log_text(),
            **_work_probes(stack, now),
        },
        since,
        timeout=60,
    )


def _fault_redis(stack: Stack, phase: Phase) -> None:
    leads = stack.beat_log().count("acquired the leader lock")
    stack.lab.redis_stop(signal.SIGTERM)
    phase.injected = f"Redis stopped (SIGTERM, AOF everysec), down {DOWN_S:g}s"
    time.sleep(DOWN_S)
    now = datetime.now(UTC)
    probes = {
        "worker answers": stack.worker_answers,
        "beat leader": lambda: stack.beat_log().count("acquired the leader lock") > leads,
        "beat sends": _beat_sends_after(stack),
        **_work_probes(stack, now),
    }
    since = time.monotonic()
    stack.lab.redis_start()
    phase.recovery_s = _first_after(probes, since, timeout=90)


def _fault_postgres(stack: Stack, phase: Phase, some_task: str) -> None:
    stack.lab.postgres_stop("fast")
    phase.injected = f"PostgreSQL pg_ctl stop -m fast, down {DOWN_S:g}s"
    time.sleep(DOWN_S)
    now = datetime.now(UTC)
    probes = {
        "web answers": lambda: stack.api.answers(f"/tasks/{some_task}"),
        "beat sends": _beat_sends_after(stack),
        **_work_probes(stack, now),
    }
    since = time.monotonic()
    stack.lab.postgres_start()
    phase.recovery_s = _first_after(probes, since, timeout=90)


def _fault_redis_in_postgres(stack: Stack, phase: Phase) -> None:
    """PostgreSQL away (fire jobs wait out their retry countdown in the worker), and Redis
    restarted meanwhile."""
    stack.lab.postgres_stop("fast")
    time.sleep(DOWN_S / 2)
    stack.lab.redis_stop(signal.SIGTERM)
    time.sleep(1)
    stack.lab.redis_start()
    time.sleep(DOWN_S / 2)
    phase.injected = f"PostgreSQL down {DOWN_S:g}s, Redis restarted inside"
    now = datetime.now(UTC)
    probes = {"worker answers": stack.worker_answers, "beat sends": _beat_sends_after(stack)}
    probes.update(_work_probes(stack, now))
    since = time.monotonic()
    stack.lab.postgres_start()
    phase.recovery_s = _first_after(probes, since, timeout=90)


@pytest.mark.timeout(1200 if LONG else 600)  # the set-up (initdb, migrate) is slow on a busy machine
def test_r2_restart_beat_redis_postgres_while_tasks_fire(lab: LoopbackLab) -> None:
    say(f"private PostgreSQL and Redis in {lab.workdir}")
    stack = _stack(lab)
    say(f"creating {TASKS} interval tasks every {EVERY_S}s through the API")
    windows = _tasks_create(stack.api)
    slow = [{"id": f"s{n}", "uses": "testing.sleep", "with": {"seconds": SLOW_STEP_S}} for n in range(2)]
    body = {"title": "r2 in flight", "schedule_kind": "manual", "payload": {"pipeline": slow}}
    stack.slow_task = stack.api.call("POST", "/tasks", {**body, "timeout_seconds": SLOW_TIMEOUT_S})["id"]
    # Beat picks new rows up within a second, from each task's creation on.
    span_start = datetime.now(UTC) + timedelta(seconds=EVERY_S)
    phases = [Phase("steady", span_start, injected="none")]
    say(f"steady {STEADY_S:g}s")
    time.sleep(STEADY_S + EVERY_S)
    some_task = next(iter(windows))
    faults: dict[str, Callable[[Stack, Phase], None]] = {
        "beat": _fault_beat,
        "redis": _fault_redis,
        "postgres": lambda s, p: _fault_postgres(s, p, some_task),
        "redis-in-postgres": _fault_redis_in_postgres,
    }
    for round_ in range(1, ROUNDS + 1):
        for name in FAULTS:
            fault = faults[name]
            phase = Phase(f"{name} #{round_}" if ROUNDS > 1 else name, datetime.now(UTC))
            phases.append(phase)
            _slow_runs_start(stack, phase)
            fault(stack, phase)
            say(f"{phase.name}: {phase.injected}; back after {_recovery_text(phase.recovery_s)}")
            assert stack.alive() == {"web": True, "worker": True, "beat": True}, stack.alive()
            time.sleep(SETTLE_S)
    phases.append(Phase("steady again", datetime.now(UTC), injected="none"))
    time.sleep(SETTLE_S + EVERY_S)

    paused_at = datetime.now(UTC)
    for task_id in windows:
        stack.api.call("POST", f"/tasks/{task_id}/pause", {})
    span_end = paused_at - timedelta(seconds=EVERY_S)
    say("tasks paused; waiting for every run to end")
    drain_started = time.monotonic()
    active_sql = "SELECT count(*) FROM runs_run WHERE status = ANY(%s)"
    wait_until(
        lambda: stack.db.value(active_sql, list(UNFINISHED)) == 0, timeout=180, message="every run to end", interval=0.5
    )
    drained_s = time.monotonic() - drain_started
    alive = stack.alive()

    runs = stack.db.rows(
        # When the occurrence was decided: a skipped run's end (a run created ahead of its instant may
        # be skipped later), else its creation.
        "SELECT task_id::text, scheduled_for, status, skip_reason, coalesce(finished_at, created_at), started_at "
        "FROM runs_run "
        "WHERE trigger = 'schedule'"
    )
    summary = _count(phases, span_start, span_end, windows, runs)
    by_status_sql = "SELECT status, count(*) FROM runs_run WHERE id = ANY(%s::uuid[]) GROUP BY status"
    in_flight = dict(stack.db.rows(by_status_sql, stack.in_flight))
    steps = dict(stack.db.rows("SELECT status, count(*) FROM runs_steprun GROUP BY status"))
    deadlocks = _deadlocks(lab)
    orphans = _unacked(stack.env["REDIS_URL"])
    report = {
        "profile": "long" if LONG else "quick",
        "tasks": TASKS,
        "every_s": EVERY_S,
        "rounds": ROUNDS,
        "down_s": DOWN_S,
        "settle_s": SETTLE_S,
        "settings": ENV,
        "window": [span_start.isoformat(), span_end.isoformat()],
        "phases": summary["phases"],
        "total": summary["total"],
        "runs_by_status": summary["by_status"],
        "in_flight_runs_by_status": in_flight,
        "step_records_by_status": steps,
        "missed_outside_policy": summary["missed_outside_policy"],
        "drained_s": round(drained_s, 1),
        "processes_alive": alive,
        "deadlocks": deadlocks,
        "unacked_left": orphans,
    }
    total = summary["total"]
    report["goal_met"] = (
        total["lost"] == 0
        and total["duplicates"] == 0
        and not summary["missed_outside_policy"]
        and summary["unfinished"] == 0
        and summary["failed"] == 0
        and in_flight == {"succeeded": len(stack.in_flight)}
        and all(alive.values())
        and deadlocks["private"] == 0
    )
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    assert all(alive.values()), f"a process died: {alive} (logs in {lab.workdir})"
    assert total["lost"] == 0, summary["lost_examples"]
    assert total["duplicates"] == 0
    assert not summary["missed_outside_policy"], summary["missed_outside_policy"][:5]
    assert summary["unfinished"] == 0
    assert summary["failed"] == 0, summary["by_status"]
    assert in_flight == {"succeeded": len(stack.in_flight)}, "every run in flight at a fault succeeded"
    assert deadlocks["private"] == 0, "deadlock detected in the private PostgreSQL's log"
    assert total["due"] == total["recorded"]


def _grid(start: datetime, end: datetime) -> list[datetime]:
    first = math.ceil(start.timestamp() / EVERY_S) * EVERY_S
    return [datetime.fromtimestamp(t, UTC) for t in range(first, int(end.timestamp()) + 1, EVERY_S)]


def _count(
    phases: list[Phase],
    span_start: datetime,
    span_end: datetime,
    windows: dict[str, int],
    runs: list[tuple[Any, ...]],
) -> dict[str, Any]:
    by_occurrence: dict[tuple[str, datetime], list[tuple[Any, ...]]] = {}
    for row in runs:
        by_occurrence.setdefault((row[0], row[1]), []).append(row)
    bounds = [*(p.start for p in phases[1:]), span_end + timedelta(microseconds=1)]
    out: list[dict[str, Any]] = []
    total: Counter[str] = Counter()
    lost_examples: list[str] = []
    for phase, start, end in zip(phases, [span_start, *bounds[:-1]], bounds, strict=True):
        start = max(start, span_start)
        grid = [at for at in _grid(start, end) if at < end and at <= span_end]
        counts: Counter[str] = Counter()
        lateness: list[float] = []
        for task_id in windows:
            for at in grid:
                counts["due"] += 1
                found = by_occurrence.get((task_id, at), [])
                if not found:
                    counts["lost"] += 1
                    lost_examples.append(f"{task_id} {at.isoformat()} ({phase.name})")
                    continue
                counts["recorded"] += 1
                counts["duplicates"] += len(found) - 1
                _, _, status, reason, _, started_at = found[0]
                if status == "skipped":
                    counts[reason or "skipped"] += 1
                    continue
                counts["ran"] += 1
                if started_at is not None:
                    late = (started_at - at).total_seconds()
                    lateness.append(late)
                    counts["late"] += late > LATE_S
        total.update(counts)
        out.append(
            {
                "phase": phase.name,
                "injected": phase.injected,
                "in_flight": phase.in_flight,
                "from": start.isoformat(),
                "due": counts["due"],
                "recorded": counts["recorded"],
                "ran": counts["ran"],
                "missed": counts["missed"],
                "other_skips": {k: v for k, v in counts.items() if k not in _COUNTED},
                "late": counts["late"],
                "max_lateness_s": round(max(lateness), 2) if lateness else None,
                "duplicates": counts["duplicates"],
                "lost": counts["lost"],
                "recovery_s": phase.recovery_s,
            }
        )
    in_span = [row for row in runs if span_start <= row[1] <= span_end]
    outside_policy = [
        f"{task_id} {at.isoformat()}: missed after {(created - at).total_seconds():.1f}s, window {windows[task_id]}s"
        for task_id, at, _, reason, created, _ in in_span
        if reason == "missed" and (created - at).total_seconds() < windows.get(task_id, DEFAULT_WINDOW_S)
    ]
    by_status = Counter(row[2] for row in in_span)
    duplicates_all = sum(len(v) - 1 for v in by_occurrence.values())
    total["duplicates"] = max(total["duplicates"], duplicates_all)
    return {
        "phases": out,
        "total": {k: total[k] for k in ("due", "recorded", "ran", "missed", "late", "duplicates", "lost")},
        "by_status": dict(by_status),
        "missed_outside_policy": outside_policy,
        "unfinished": sum(by_status[s] for s in UNFINISHED),
        "failed": by_status["failed"],
        "lost_examples": lost_examples[:20],
    }


_COUNTED = {"due", "recorded", "ran", "missed", "late", "duplicates", "lost"}


def _unacked(redis_url: str) -> dict[str, int]:
    """Messages the Redis transport still holds as delivered but not acknowledged, by job, once
    every run has ended: nothing runs them again before the visibility timeout."""
    client = redis.Redis.from_url(redis_url)
    try:
        names: Counter[str] = Counter()
        for raw in client.hvals("unacked"):
            message = json.loads(raw)[0]
            names[str(message.get("headers", {}).get("task"))] += 1
        return dict(names)
    finally:
        client.close()


def _deadlocks(lab: LoopbackLab) -> dict[str, Any]:
    private = lab.postgres_log.read_text(errors="replace").count("deadlock detected")
    system: dict[str, int] = {}
    for path in sorted(Path("/var/log/postgresql").glob("*.log")):
        try:
            system[path.name] = path.read_text(errors="replace").count("deadlock detected")
        except OSError:
            continue
    return {"private": private, "system": system}


def _recovery_text(recovery: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {'-' if s is None else f'{s:.1f}s'}" for name, s in recovery.items())


def _print(report: dict[str, Any]) -> None:
    say(
        f"R2 {'PASS' if report['goal_met'] else 'FAIL'} ({report['profile']}): {report['tasks']} tasks every "
        f"{report['every_s']}s (1 in {TIGHT_EVERY} with a {TIGHT_WINDOW_S}s catch-up window), {report['rounds']} "
        f"round(s) of beat / Redis / PostgreSQL restarts, each down {report['down_s']:g}s"
    )
    for phase in report["phases"]:
        say(
            f"  {phase['phase']:<14} {phase['injected'] or '':<48} due {phase['due']:>5}  runs {phase['recorded']:>5}"
            f"  ran {phase['ran']:>5}  missed {phase['missed']:>4}  late(>{LATE_S:g}s) {phase['late']:>4}"
            f"  max lateness {phase['max_lateness_s']}s  duplicates {phase['duplicates']}  lost {phase['lost']}"
            + (f"  other skips {phase['other_skips']}" if phase["other_skips"] else "")
        )
        if phase["recovery_s"]:
            say(
                f"  {'':<14} {phase['in_flight']} slow runs in flight at the fault; working again after the "
                f"restart: {_recovery_text(phase['recovery_s'])}"
            )
    total = report["total"]
    say(
        f"  total: {total['due']} occurrences due, {total['recorded']} recorded ({total['ran']} ran, "
        f"{total['missed']} missed within the catch-up policy, {len(report['missed_outside_policy'])} outside it), "
        f"{total['late']} late, {total['duplicates']} duplicates, {total['lost']} lost; runs {report['runs_by_status']}"
        f"; runs in flight at the faults {report['in_flight_runs_by_status']}"
        f"; step records {report['step_records_by_status']}; every run ended {report['drained_s']}s after the pause; "
        f"processes alive {report['processes_alive']}; left unacknowledged in the broker "
        f"{report['unacked_left']}; 'deadlock detected' in the logs: {report['deadlocks']}; "
        f"report {REPORT}"
    )
