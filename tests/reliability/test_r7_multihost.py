"""R7, more than one host: Redis and PostgreSQL on a data host, web and beat on a control host,
workers on two worker hosts, each a network namespace of its own. Under B1-like load the first
worker host's link is cut: every run finishes on the other one, no step record is duplicated, and
the steps that were in flight on the cut host are re-run once it is declared dead (by its
heartbeat, well before any deadline). Then the link comes back: the returning worker does no harm
(nothing it finishes late is recorded) and works again.

Quick profile by default (R7_RUNS=40 runs of 5 steps); `make reliability-r7` runs the long one.
Skips with a message where network namespaces cannot be created."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery

from tests.support.netlab import LabUnavailable, NetLab, Process, wait_until

RUNS = int(os.environ.get("R7_RUNS", "40"))
STEPS = 5
STEP_SLEEP_S = 0.5
HEARTBEAT_S, DEAD_AFTER_S, SWEEP_S = 1, 4, 2
QUEUE = "ordinaut-r7"


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    lab = NetLab(["data", "control", "worker1", "worker2"])
    try:
        lab.up()
    except LabUnavailable as exc:
        pytest.skip(f"R7 needs network namespaces: {exc}")
    try:
        yield lab
    finally:
        lab.down()


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "PYTEST"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_QUEUE=QUEUE,
        SECRET_KEY="r7-only-secret-key-not-for-production",
        ORDINAUT_TOOL_MODULES="tests.support.tools",
        ORDINAUT_RATE_LIMIT="off",
        ORDINAUT_WRITE_RATE_LIMIT="off",
        ORDINAUT_WORKER_HEARTBEAT_S=str(HEARTBEAT_S),
        ORDINAUT_WORKER_DEAD_AFTER_S=str(DEAD_AFTER_S),
        ORDINAUT_SWEEP_INTERVAL_S=str(SWEEP_S),
        LOG_FORMAT="text",
        PYTHONUNBUFFERED="1",
    )
    return env


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 (http only)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"null")


def _worker(lab: NetLab, host: str, env: dict[str, str]) -> Process:
    args = [sys.executable, "-m", "celery", "-A", "ordinaut_site", "worker", "-P", "prefork", "-c", "2"]
    args += ["-n", f"{host}@r7", "-Q", f"{QUEUE}.schedule,{QUEUE}", "--without-mingle", "--without-gossip"]
    return lab.start(host, host, [*args, "-l", "INFO"], env=env)


def _rows(db: psycopg.Connection[Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def test_r7_a_worker_host_cut_off_mid_load(lab: NetLab) -> None:
    database_url = lab.start_postgres("data")
    redis_url = lab.start_redis("data")
    control = lab.hosts["control"].address
    env = {**_env(database_url, redis_url), "ALLOWED_HOSTS": control}

    migrate = lab.start("control", "migrate", [sys.executable, "manage.py", "migrate", "--noinput"], env=env)
    assert migrate.proc.wait(timeout=300) == 0, migrate.log_text()[-3000:]
    agent = lab.start("control", "agent", [sys.executable, "manage.py", "create_agent", "r7", "--admin"], env=env)
    assert agent.proc.wait(timeout=120) == 0, agent.log_text()[-3000:]
    token = agent.log_text().strip().splitlines()[-1].strip()

    web_args = [sys.executable, "-m", "uvicorn", "ordinaut_site.asgi:application", "--host", control, "--port", "8000"]
    lab.start("control", "web", [*web_args, "--no-access-log"], env=env)
    beat_args = [sys.executable, "-m", "celery", "-A", "ordinaut_site", "beat", "-l", "INFO", "--pidfile="]
    lab.start("control", "beat", beat_args, env=env)
    cut_worker = _worker(lab, "worker1", env)
    _worker(lab, "worker2", env)

    broker = Celery(broker=redis_url)
    names = ["worker1@r7", "worker2@r7"]
    wait_until(
        lambda: len(broker.control.ping(destination=names, timeout=1) or []) == 2,
        timeout=90,
        message="both worker hosts to answer (logs in " + str(lab.workdir) + ")",
    )
    api = Api(f"http://{control}:8000", token)
    wait_until(lambda: _ready(api), timeout=60, message="the web process")

    pipeline = [{"id": f"s{n}", "uses": "testing.sleep", "with": {"seconds": STEP_SLEEP_S}} for n in range(STEPS)]
    task = api.call(
        "POST", "/tasks", {"title": "r7 load", "schedule_kind": "manual", "payload": {"pipeline": pipeline}}
    )
    started = time.monotonic()
    run_ids = [api.call("POST", f"/tasks/{task['id']}/run_now", {})["id"] for _ in range(RUNS)]

    db = psycopg.connect(database_url.replace("postgres://", "postgresql://"), autocommit=True)

    def w1_busy() -> list[str]:
        active = broker.control.inspect(destination=["worker1@r7"], timeout=1).active() or {}
        return [job["id"] for job in active.get("worker1@r7", []) if job["name"] == "pipelines.run_step"]

    wait_until(
        lambda: _rows(db, "SELECT count(*) FROM runs_run WHERE status = 'succeeded'")[0][0] >= RUNS // 5,
        timeout=120,
        message="a fifth of the runs to finish",
    )
    active = wait_until(w1_busy, timeout=60, message="worker1 to be running steps")
    lab.cut("worker1")
    cut_at = time.monotonic()
    stuck = _rows(
        db,
        "SELECT id, claim_id FROM runs_steprun WHERE status = 'running' AND claim_id = ANY(%s)",
        active,
    )
    assert stuck, "the steps worker1 ran when its link was cut finished before the cut took effect"
    stuck_claims = [claim for _, claim in stuck]
    wait_until(
        lambda: (
            not _rows(db, "SELECT 1 FROM runs_steprun WHERE status = 'running' AND claim_id = ANY(%s)", stuck_claims)
        ),
        timeout=120,
        message="the cut host's steps to be taken back",
        interval=0.1,
    )
    declared_after = time.monotonic() - cut_at

    wait_until(
        lambda: _rows(db, "SELECT count(*) FROM runs_run WHERE status IN ('succeeded', 'failed')")[0][0] == RUNS,
        timeout=300,
        message="every run to finish on worker2",
    )
    finished_s = time.monotonic() - started
    runs = _rows(db, "SELECT status, count(*) FROM runs_run GROUP BY status")
    assert runs == [("succeeded", RUNS)], runs
    steps = _rows(
        db, "SELECT run_id, count(*), count(*) FILTER (WHERE status = 'succeeded') FROM runs_steprun GROUP BY run_id"
    )
    assert sorted({(total, done) for _, total, done in steps}) == [(STEPS, STEPS)], "one succeeded record per step"
    assert len(steps) == RUNS

    rerun = {
        step_id: (attempts, history, claim)
        for step_id, attempts, history, claim in _rows(
            db,
            "SELECT id, attempts, attempt_history, claim_id FROM runs_steprun WHERE id = ANY(%s)",
            [step_id for step_id, _ in stuck],
        )
    }
    first_claims = dict(stuck)
    for step_id, (attempts, history, claim) in rerun.items():
        assert attempts >= 2, "the cut host's in-flight step was re-run"
        assert claim != first_claims[step_id], "by another message"
        outcomes = [entry["outcome"] for entry in history]
        assert outcomes[0] == "lost"
        assert outcomes[-1] == "succeeded"
        assert history[0]["started_at"] is not None, "the lost attempt keeps its start"

    snapshot_sql = "SELECT id, status, attempts, claim_id, output, finished_at FROM runs_steprun ORDER BY id"
    before = _rows(db, snapshot_sql)
    recovered_after = _max_delay_s(db, [step_id for step_id, _ in stuck], cut_at)

    lab.restore("worker1")
    wait_until(
        lambda: broker.control.ping(destination=["worker1@r7"], timeout=1),
        timeout=180,
        message="worker1 to come back",
    )
    time.sleep(DEAD_AFTER_S + 2 * STEP_SLEEP_S)  # its late attempts finish (and are refused) meanwhile
    assert cut_worker.alive(), "worker1 survived the cut"
    assert _rows(db, snapshot_sql) == before, "the returning worker changed no record"

    more = [api.call("POST", f"/tasks/{task['id']}/run_now", {})["id"] for _ in range(10)]
    wait_until(
        lambda: (
            _rows(db, "SELECT count(*) FROM runs_run WHERE status = 'succeeded' AND id = ANY(%s)", more)[0][0]
            == len(more)
        ),
        timeout=120,
        message="runs after the link came back to finish",
    )
    stats: dict[str, Any] = {}
    for name in names:
        stats.update(broker.control.inspect(destination=[name], timeout=2).stats() or {})
    by_worker = {name: stats.get(name, {}).get("total", {}).get("pipelines.run_step", 0) for name in names}
    db.close()
    print(
        f"\n[R7] {RUNS} runs x {STEPS} steps on 2 worker hosts; worker1's link cut with {len(stuck)} step(s) in "
        f"flight: all {RUNS} runs succeeded in {finished_s:.1f} s, 0 duplicate step records; its steps were "
        f"taken back {declared_after:.1f} s after the cut (dead after {DEAD_AFTER_S} s without a heartbeat, "
        f"sweep every {SWEEP_S} s) and re-run on worker2 {recovered_after:.1f} s after the cut (behind the queue "
        f"of steps the load made); link restored: 0 records changed by the returning worker, "
        f"{len(more)} more runs succeeded; step jobs run per worker since start: {by_worker}"
    )
    assert len(run_ids) == RUNS


def _ready(api: Api) -> bool:
    try:
        api.call("GET", "/health/live")
        return True
    except OSError:
        return False


def _max_delay_s(db: psycopg.Connection[Any], step_ids: list[int], cut_at: float) -> float:
    """Seconds from the cut to the latest re-run start of the stuck steps (wall clock of the DB)."""
    rows = _rows(
        db,
        "SELECT max((attempt_history->-1->>'started_at')::timestamptz) FROM runs_steprun WHERE id = ANY(%s)",
        step_ids,
    )
    latest = rows[0][0]
    now_db = _rows(db, "SELECT now()")[0][0]
    return float((latest - now_db).total_seconds() + (time.monotonic() - cut_at))
