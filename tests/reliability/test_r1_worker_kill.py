"""R1: kill -9 one worker every R1_KILL_EVERY_S during a B1-like load, with a second worker alive.

Quick profile (the default test run): 32 s of load, a kill every 10 s, heartbeat 1 s, dead after 3 s,
sweep every 2 s. Long profile (`make reliability-r1`: RELIABILITY_PROFILE=long): 5 minutes, a kill every 30 s,
Ordinaut's default liveness and sweep settings. Runs of a 5-step pipeline whose tool appends a
side effect per call (tests/reliability/tools.py) are created at a steady rate; two workers consume
them and a real beat runs the sweeper; every kill hits the older worker's whole process group and a
fresh worker replaces it at once. Afterwards the database must show: every run finished and
succeeded, every step record succeeded once, tool calls beyond one per record no more than the
steps in flight at the kills. Prints what it injected and counted; report in var/reliability-r1.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.utils import timezone

import tests.reliability.tools  # noqa: F401  (the tool, registered here too for payload validation)
from ordinaut_site import liveness
from runs.models import Run, StepRun
from runs.services import run_create
from tasks.scheduler import leader_key
from tests.support.pipelines import make_task
from tests.support.processes import Beat, Worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

BASE_DIR = Path(__file__).resolve().parents[2]
REPORT = BASE_DIR / "var" / "reliability-r1.json"
LONG = os.environ.get("RELIABILITY_PROFILE") == "long"
DURATION_S = float(os.environ.get("R1_DURATION_S") or (300 if LONG else 32))
KILL_EVERY_S = float(os.environ.get("R1_KILL_EVERY_S") or (30 if LONG else 10))
RUNS_PER_S = float(os.environ.get("R1_RUNS_PER_S") or 8)
STEPS = 5
STEP_SLEEP_S = 0.02
# Long: Ordinaut's defaults (heartbeat 5 s, dead after 20 s, sweep every 30 s). Quick: scaled down.
LIVENESS_ENV = {} if LONG else {"ORDINAUT_WORKER_HEARTBEAT_S": "1", "ORDINAUT_WORKER_DEAD_AFTER_S": "3"}
QUICK_QUEUED_GRACE_S = 20
SWEEP_ENV = {} if LONG else {"ORDINAUT_SWEEP_INTERVAL_S": "2", "ORDINAUT_QUEUED_GRACE_S": str(QUICK_QUEUED_GRACE_S)}
TOOLS_ENV = {"ORDINAUT_TOOL_MODULES": "tests.support.tools,tests.reliability.tools"}


def say(message: str) -> None:
    print(f"[r1 {datetime.now():%H:%M:%S}] {message}", flush=True)


def pipeline(key: str) -> dict[str, Any]:
    return {
        "pipeline": [
            {"id": f"s{i}", "uses": "reliability.count", "with": {"key": key, "sleep_s": STEP_SLEEP_S, "n": i}}
            for i in range(STEPS)
        ]
    }


def in_flight(client: redis.Redis, worker: Worker) -> set[str]:
    names = [m.decode() for m in client.smembers(liveness.registry_key())]  # type: ignore[union-attr]
    ids: set[str] = set()
    for name in names:
        if name.startswith(worker.name + ":"):
            ids |= {i.decode() for i in client.hkeys(liveness.inflight_key(name))}  # type: ignore[union-attr]
    return ids


def test_r1_kill_a_worker_every_interval_under_load(
    agent: Any, session_worker_paused: None, worker_logs: Path, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    if not LONG:
        # The quick profile's drain is shorter than the default queued grace: the deadline, the
        # backstop for a run whose unstarted first message died with a worker while the sweep could
        # not take it (its row locked elsewhere), comes within it. Runs are created here.
        monkeypatch.setattr(settings, "ORDINAUT_QUEUED_GRACE_S", QUICK_QUEUED_GRACE_S)
    key = f"r1:{uuid.uuid4().hex[:8]}:calls"
    task = make_task(agent.agent, pipeline(key), max_retries=10)
    env = {**LIVENESS_ENV, **TOOLS_ENV, **SWEEP_ENV}
    started_workers: list[Worker] = []
    redis_client.delete(leader_key())
    beat = Beat(worker_logs, "r1", env=SWEEP_ENV).start()

    def new_worker() -> Worker:
        worker = Worker(worker_logs, concurrency=2, name=f"r1-{uuid.uuid4().hex[:6]}@r1", env=env).start()
        started_workers.append(worker)
        return worker

    kills: list[dict[str, Any]] = []
    created = 0
    try:
        pool = [new_worker(), new_worker()]
        say(
            f"profile {'long' if LONG else 'quick'}: {DURATION_S:.0f}s of load at {RUNS_PER_S:g} runs/s, "
            f"kill -9 every {KILL_EVERY_S:g}s, liveness {LIVENESS_ENV or 'defaults'}, sweep {SWEEP_ENV or 'default'}"
        )
        start = time.monotonic()
        next_kill = start + KILL_EVERY_S
        while (now := time.monotonic()) < start + DURATION_S:
            while created < (now - start) * RUNS_PER_S:
                run_create(task=task, trigger="manual")
                created += 1
            if now >= next_kill:
                victim = pool.pop(0)
                flying = in_flight(redis_client, victim)
                running = StepRun.objects.filter(status="running", claim_id__in=flying).count()
                victim.stop(signal.SIGKILL)
                kills.append({"at": timezone.now(), "worker": victim.name, "in_flight": running})
                say(f"kill -9 {victim.name}: {running} step(s) in flight; {created} runs created so far")
                pool.append(new_worker())
                next_kill += KILL_EVERY_S
            time.sleep(0.05)
        say(f"load over: {created} runs created, {len(kills)} kills; waiting for every run to end")
        runs = Run.objects.filter(task=task)
        drain_s = 120 if not LONG else 300
        with contextlib.suppress(AssertionError):  # what did not finish is counted below
            wait_for(lambda: runs.filter(status__in=Run.TERMINAL).count() == created, timeout=drain_s, message="runs")
    finally:
        for worker in started_workers:
            worker.stop()
        beat.stop()
        redis_client.delete(leader_key())

    runs = Run.objects.filter(task=task)
    statuses = Counter(runs.values_list("status", flat=True))
    finished = sum(n for s, n in statuses.items() if s in Run.TERMINAL)
    steps = list(StepRun.objects.filter(run__task=task))
    calls = Counter(c.decode().rsplit(":", 1)[0] for c in redis_client.lrange(key, 0, -1))  # type: ignore[union-attr]
    redis_client.delete(key)
    succeeded_twice = [s for s in steps if sum(1 for h in s.attempt_history if h.get("outcome") == "succeeded") > 1]
    records = {f"{s.run_id}:{s.step_id}": s for s in steps}
    duplicates = sum(n - 1 for n in calls.values() if n > 1)
    uncalled = [k for k, s in records.items() if s.status == "succeeded" and calls[k] == 0]
    more_calls_than_attempts = [k for k, s in records.items() if calls[k] > s.attempts]
    in_flight_total = sum(k["in_flight"] for k in kills)
    recoveries = _recovery_delays(steps, [k["at"] for k in kills])
    summary: dict[str, Any] = {
        "profile": "long" if LONG else "quick",
        "duration_s": DURATION_S,
        "kill_every_s": KILL_EVERY_S,
        "kills": len(kills),
        "steps_in_flight_at_kills": [k["in_flight"] for k in kills],
        "runs_expected": created,
        "runs_finished": finished,
        "runs_by_status": dict(statuses),
        "runs_lost": created - finished,
        "step_records": len(steps),
        "tool_calls": sum(calls.values()),
        "duplicate_tool_calls": duplicates,
        "step_records_succeeded_twice": len(succeeded_twice),
        "steps_re_run": sum(1 for s in steps if s.attempts > 1),
        "recovery_after_kill_s": {
            "max": round(max(recoveries), 1) if recoveries else None,
            "median": round(statistics.median(recoveries), 1) if recoveries else None,
        },
        "liveness": LIVENESS_ENV or {"heartbeat_s": 5, "dead_after_s": 20},
        "sweep_interval_s": float(SWEEP_ENV.get("ORDINAUT_SWEEP_INTERVAL_S", settings.ORDINAUT_SWEEP_INTERVAL_S)),
    }
    # What an unfinished run was left with, for the report and the failure message.
    summary["unfinished"] = [
        {
            "run": str(run.pk),
            "status": run.status,
            "deadline_at": run.deadline_at,
            "steps": [(s.index, s.status, s.claim_id, s.attempts) for s in steps if s.run_id == run.pk],
        }
        for run in runs.exclude(status__in=Run.TERMINAL)[:5]
    ]
    summary["goal_met"] = bool(
        summary["runs_lost"] == 0
        and statuses.get("succeeded", 0) == created
        and not succeeded_twice
        and duplicates <= in_flight_total
        and not uncalled
        and not more_calls_than_attempts
    )
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2, default=str))
    say(
        f"R1 {'PASS' if summary['goal_met'] else 'FAIL'}: {len(kills)} kills (every {KILL_EVERY_S:g}s), "
        f"runs expected {created}, finished {finished} ({dict(statuses)}), lost {created - finished}; "
        f"{len(steps)} step records, {sum(calls.values())} tool calls, {duplicates} duplicate calls "
        f"(<= {in_flight_total} in flight at the kills), {len(succeeded_twice)} records succeeded twice; "
        f"re-run {summary['steps_re_run']} steps, {summary['recovery_after_kill_s']} s after their kill; "
        f"report {REPORT}"
    )
    assert created - finished == 0, (
        f"{created - finished} runs never finished: {dict(statuses)}; {summary['unfinished']}"
    )
    assert statuses.get("succeeded", 0) == created, dict(statuses)
    assert not succeeded_twice
    assert duplicates <= in_flight_total, f"{duplicates} duplicate calls, {in_flight_total} in flight at the kills"
    assert not uncalled, uncalled[:5]
    assert not more_calls_than_attempts, more_calls_than_attempts[:5]


def _recovery_delays(steps: list[StepRun], kills: list[datetime]) -> list[float]:
    """For each re-run step: when its next attempt started, after the kill just before."""
    delays = []
    for step in steps:
        for entry in step.attempt_history:
            started = entry.get("started_at")
            if entry.get("attempt", 1) < 2 or not started:
                continue
            at = datetime.fromisoformat(started)
            before = [k for k in kills if k <= at]
            if before:
                delays.append((at - before[-1]).total_seconds())
    return delays
